"""A study run: its settings and split, the row runner (with `start_from`, `init_from` and `repeats`),
saved models with cards, and the writers of its outputs.

Notebooks tell the story and call these; nothing here knows a particular study.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tlrepro.core import config, fileio, paths
from tlrepro.core.config import Row
from tlrepro.core.errors import UserError
from tlrepro.data import labels as lab
from tlrepro.data.index import read_index
from tlrepro.data.leakage import with_hashes
from tlrepro.data.splits import read_split
from tlrepro.modeling import cards, models, training
from tlrepro.results import compare, metrics

HEADLINE = ("accuracy", "accuracy_ci_low", "accuracy_ci_high", "f1", "roc_auc")


@dataclass
class Study:
    """A study's parameters and its split, ready to run."""

    id: str
    params: config.Params
    settings: config.Study
    split: pd.DataFrame  # every protocol's rows
    classes: tuple[str, ...]

    @property
    def seed(self) -> int:
        return self.params.seed

    @property
    def dataset(self) -> str:
        return self.settings.dataset

    @property
    def protocols(self) -> list[str]:
        return list(self.settings.protocols)

    @property
    def primary(self) -> str:
        return self.settings.primary_protocol

    @property
    def source_dataset(self) -> str:
        """The downloaded dataset behind the study's (a derived dataset's source)."""
        derived = self.params.derived.get(self.dataset)
        return derived.source if derived else self.dataset

    @property
    def paper(self) -> dict[str, Any]:
        return compare.load(self.id)

    @property
    def rows(self) -> list[Row]:
        return self.settings.all_rows()

    def row(self, name: str) -> Row:
        return self.settings.row(name)

    def protocol(self, name: str | None = None) -> pd.DataFrame:
        return self.split[self.split["protocol"] == (name or self.primary)].reset_index(drop=True)

    def part(self, side: str, protocol: str | None = None) -> pd.DataFrame:
        frame = self.protocol(protocol)
        return frame[frame["side"] == side].reset_index(drop=True)

    def labels(self, frame: pd.DataFrame) -> np.ndarray:
        return lab.encode(frame["label"], self.classes)

    def epochs(self, row: Row, epochs: int | None = None) -> int:
        return self.params.epochs(row, epochs)

    def evaluate(self, frame: pd.DataFrame, probs: np.ndarray, threshold: float = 0.5) -> dict[str, Any]:
        e = self.params.evaluation
        return metrics.evaluate(self.labels(frame), probs, seed=self.seed, resamples=e.bootstrap_resamples,
                                confidence=e.confidence, threshold=threshold)

    def evaluate_clean(self, frame: pd.DataFrame, probs: np.ndarray) -> dict[str, Any] | None:
        """The figures without the evaluation images that match a training image (None if none match)."""
        e = self.params.evaluation
        return metrics.without_matches(self.labels(frame), probs, frame["train_match"], seed=self.seed,
                                       resamples=e.bootstrap_resamples, confidence=e.confidence)

    def model_path(self, row: str, protocol: str) -> Path:
        """models/<study>/<row>.keras, or models/<study>/<protocol>/<row>.keras when there are several."""
        sub = f"{row}.keras" if len(self.protocols) == 1 else f"{protocol}/{row}.keras"
        return paths.study_output(f"models/{self.id}/{sub}")

    def model_name(self, row: str, protocol: str) -> str:
        return f"{self.id}/{row}" if len(self.protocols) == 1 else f"{self.id}/{protocol}/{row}"

    def random_init(self) -> list[str]:
        return [r.name for r in self.rows if r.weights == "random"]

    def provenance(self) -> dict[str, Any]:
        """What every report states about the run: data, sizes, caps, weights (source and sha256)."""
        sizes = {p: self.protocol(p).groupby("side").size().to_dict() for p in self.protocols}
        capped = {}
        for r in self.rows:
            if r.epochs and self.epochs(r) < r.epochs:
                capped[r.name] = {"ours": self.epochs(r), "paper": r.epochs}
        return {
            "study": self.id, "dataset": self.dataset, "source_dataset": self.source_dataset,
            "paper_dataset": self.paper.get("dataset"),
            "images": len(read_index(self.dataset)), "images_in_split": int(self.split["path"].nunique()),
            "published_images": compare.datasets().get(self.source_dataset, {}).get("published_images"),
            "primary_protocol": self.primary, "sides": sizes, "random_init": self.random_init(), "capped_epochs": capped,
            "max_images_per_class": self.params.scale.max_images_per_class,
            "weights": {r.name: models.weights_provenance(r.backbone, r.weights, r.image_size) for r in self.rows},
            "seed": self.seed, "repeats": self.settings.repeats,
        }


def load_study(study_id: str, params_file: str | Path | None = None) -> Study:
    """Read and validate params.yaml and data/splits/<study>.csv, and seed everything with the study's seed."""
    params = config.load_params(Path(params_file) if params_file else None)
    settings = params.study(study_id)
    split = read_split(study_id)
    dataset = params.dataset(settings.dataset)
    classes = lab.class_names(split["label"], dataset.labels, dataset.classes)
    study = Study(study_id, params, settings, split, classes)
    training.seed_everything(study.seed)
    return study


# ---------------------------------------------------------------- the row runner


@dataclass
class RowResult:
    """One trained row under one protocol and seed: its training, and its figures on the evaluation side."""

    row: Row
    protocol: str
    seed: int
    classifier: models.Classifier
    training: training.TrainResult
    side: str  # the evaluation side
    frame: pd.DataFrame  # the evaluation side's rows
    probs: np.ndarray
    metrics: dict[str, Any]
    clean_metrics: dict[str, Any] | None  # without the evaluation images that match a training image
    train_metrics: dict[str, Any]
    predict_seconds: float
    model_path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.row.name


def init_backbone(row: Row) -> Any:
    """The backbone of a pretrained model named by `init_from` (its head is replaced)."""
    model, _ = cards.load(paths.pretrained_model(row.init_from))
    return models.parts_of(model)[0]


def build(study: Study, row: Row, seed: int) -> models.Classifier:
    backbone = init_backbone(row) if row.init_from else None
    classifier = models.build_classifier(row, classes=study.classes, seed=seed, backbone=backbone)
    models.set_trainable(classifier, row.trainable_layers, row.trainable_from)
    return classifier


def run_row(study: Study, name: str, *, protocol: str | None = None, seed: int | None = None,
            start_from: models.Classifier | None = None) -> RowResult:
    """Build (or continue) a row's classifier, train it, and evaluate it on the study's evaluation side."""
    protocol = protocol or study.primary
    seed = study.seed if seed is None else seed
    row = study.row(name)
    training.seed_everything(seed)
    if start_from is not None:
        classifier = models.Classifier(start_from.model, start_from.backbone, start_from.preprocessing,
                                       start_from.head, start_from.augmentation, row, study.classes)
        models.set_trainable(classifier, row.trainable_layers, row.trainable_from)
    else:
        classifier = build(study, row, seed)
    train_frame, val_frame = study.part("train", protocol), study.part("val", protocol)
    result = training.train(classifier, train_frame, val_frame, train_labels=study.labels(train_frame),
                            val_labels=study.labels(val_frame), epochs=study.epochs(row), seed=seed,
                            name=f"{name} ({protocol})" if len(study.protocols) > 1 else name)
    side = study.settings.evaluate_on
    frame = study.part(side, protocol)
    train_probs, _ = training.predict(classifier, train_frame)
    # the evaluation runs the whole model on images: the prediction time is end to end
    probs, seconds = training.predict(classifier, frame, use_cache=False)
    check_finite(probs, f"studies.{study.id}.rows.{name}", f"protocol {protocol}, seed {seed}")
    return RowResult(row, protocol, seed, classifier, result, side, frame, probs, study.evaluate(frame, probs),
                     study.evaluate_clean(frame, probs), study.evaluate(train_frame, train_probs), seconds)


def check_finite(probs: np.ndarray, where: str, context: str) -> None:
    """A diverged training (NaN or infinite outputs) is an error, not a row of degenerate figures."""
    if not np.isfinite(np.asarray(probs)).all():
        raise UserError(f"params.yaml `{where}` diverged ({context}): its predictions are not finite; lower its "
                        f"`learning_rate` (or change the optimizer). Previous results were kept.")


@dataclass
class Results:
    """Every row's result under every protocol (the study's seed), and the other seeds' figures."""

    by_key: dict[tuple[str, str], RowResult] = field(default_factory=dict)  # (protocol, row) -> result
    seeds: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)  # -> metrics per seed

    def __getitem__(self, key: str | tuple[str, str]) -> RowResult:
        if isinstance(key, str):
            return next(r for (p, n), r in self.by_key.items() if n == key)
        return self.by_key[key]

    def items(self, protocol: str | None = None):
        return [(k, r) for k, r in self.by_key.items() if protocol is None or k[0] == protocol]

    def spread(self, key: tuple[str, str], metric: str) -> dict[str, Any] | None:
        values = [m[metric] for m in self.seeds.get(key, []) if m.get(metric) is not None]
        return metrics.seed_spread(values) if len(values) > 1 else None


def run_rows(study: Study, *, protocols: list[str] | None = None, save: bool = True,
             on_result: Any = None) -> Results:
    """Every row of the study under every protocol, in order (a `start_from` row continues its source's
    model), `repeats` times with seeds seed, seed + 1, ...; the study seed's models are saved with cards."""
    results = Results()
    for protocol in protocols or study.protocols:
        for repeat in range(study.settings.repeats):
            seed = study.seed + repeat
            trained: dict[str, models.Classifier] = {}
            for row in study.rows:
                started = time.perf_counter()
                source = trained.get(row.start_from) if row.start_from else None
                result = run_row(study, row.name, protocol=protocol, seed=seed, start_from=source)
                result.extra["wall_seconds"] = time.perf_counter() - started
                key = (protocol, row.name)
                results.seeds.setdefault(key, []).append(result.metrics)
                if repeat == 0:
                    if save:
                        result.model_path = save_model(study, result)
                    results.by_key[key] = result
                    if on_result is not None:
                        on_result(result)
                trained[row.name] = result.classifier
    return results


# ---------------------------------------------------------------- saved models


def training_phashes(frame: pd.DataFrame) -> list[str]:
    """The perceptual hashes of the images a model was trained on, as shown to it (sorted, unique)."""
    return sorted(set(with_hashes(frame)["shown_phash"]))


def validation_figure(result: training.TrainResult | None) -> dict[str, Any] | None:
    """The validation accuracy of the weights a model holds (its best epoch's): what `tlrepro serve` chooses its
    default model by (never by a test figure). None when the training had no validation side."""
    if result is None or "val_accuracy" not in result.history or not result.epochs_run:
        return None
    epoch = result.best_epoch or result.epochs_run
    value = float(result.history["val_accuracy"].iloc[epoch - 1])
    return {"accuracy": value, "epoch": epoch} if np.isfinite(value) else None


def card_for(study: Study, row: Row, *, protocol: str, seed: int, result: training.TrainResult | None,
             figures: dict[str, Any], train_frame: pd.DataFrame, threshold: float = 0.5) -> dict[str, Any]:
    """A model card (see tlrepro.modeling.cards) for a row trained by this study."""
    sides = study.protocol(protocol).groupby("side").size().to_dict()
    mode = models.backbone_spec(row.backbone).preprocessing if row.preprocessing == "native" else row.preprocessing
    return {
        "study": study.id, "row": row.name, "protocol": protocol, "name": study.model_name(row.name, protocol),
        "seed": seed, "backbone": row.backbone,
        "weights": models.weights_provenance(row.backbone, row.weights, row.image_size),
        "init_from": row.init_from, "se": row.se.model_dump() if row.se else None,
        "head": [layer.model_dump(exclude_none=True) for layer in row.head],
        "image_size": row.image_size,
        "input": {"color": "RGB", "range": [0, 255], "resize": "bilinear", "dtype": "float32"},
        "preprocessing": mode, "classes": list(study.classes),
        "positive_class": lab.POSITIVE if lab.is_binary(study.classes) else None, "threshold": threshold,
        "training": {**row.settings(), "epochs_run": result.epochs_run if result else None,
                     "best_epoch": result.best_epoch if result else None, "path": result.path if result else None},
        "data": {"dataset": study.dataset, "index_sha256": fileio.file_sha256(paths.index_csv(study.dataset)),
                 "split_sha256": fileio.file_sha256(paths.split_csv(study.id)), "sides": sides},
        "metrics": {"side": study.settings.evaluate_on, **{k: figures.get(k) for k in (*HEADLINE, "n")}},
        "validation": validation_figure(result),
        "report": f"reports/{study.id}.html",
        "phash_max_distance": study.params.leakage.phash_max_distance,
        "training_phashes": training_phashes(train_frame),
    }


def save_model(study: Study, result: RowResult) -> Path:
    card = card_for(study, result.row, protocol=result.protocol, seed=result.seed, result=result.training,
                    figures=result.metrics, train_frame=study.part("train", result.protocol))
    path, _ = cards.save(result.classifier.model, study.model_path(result.row.name, result.protocol), card)
    return path


# ---------------------------------------------------------------- outputs


def headline(figures: dict[str, Any], spread: dict[str, Any] | None = None) -> dict[str, Any]:
    """The dozen figures per study `dvc metrics show` prints: per row accuracy with its CI, F1, AUC."""
    out = {k: figures.get(k) for k in HEADLINE}
    if spread:
        out["accuracy_seed_sd"] = spread["std"]
    return out


def result_key(study: Study, protocol: str, row: str) -> str:
    return row if len(study.protocols) == 1 else f"{protocol}/{row}"


def write_metrics(study: Study, rows: dict[str, dict[str, Any]], details: dict[str, Any]) -> Path:
    """reports/metrics/<study>.json (headline figures, a DVC metric) and <study>.details.json (everything
    else: classification reports, confusion matrices, seed spreads, leak-free figures, provenance).
    Deterministic values only (no times), so the same parameters give the same bytes."""
    target = paths.study_output(paths.study_outputs(study.id)["metrics"])
    fileio.write_json(target, {"study": study.id, "dataset": study.dataset, "random_init": study.random_init(),
                           "results": rows})
    fileio.write_json(paths.study_output(paths.study_outputs(study.id)["details"]),
                  {"study": study.id, "provenance": study.provenance(), **details})
    return target


def write_plot_table(study: Study, name: str, frame: pd.DataFrame) -> Path:
    """reports/plots/<study>/<name>.csv, declared as DVC plots."""
    return fileio.write_csv(paths.study_output(f"{paths.study_outputs(study.id)['plots']}/{name}.csv"), frame)


def write_timings(study: Study, timings: dict[str, Any]) -> Path:
    """reports/timings/<study>.json: wall times vary run to run, so they stay out of the metrics."""
    return fileio.write_json(paths.study_output(paths.study_outputs(study.id)["timings"]), timings)


def results_details(study: Study, results: Results) -> dict[str, Any]:
    """Per (protocol, row): every figure on the evaluation side, without leaked images, on train, the seed
    spread, and the training facts (epochs run, the epoch whose weights were evaluated, the path)."""
    out: dict[str, Any] = {}
    for (protocol, name), r in results.items():
        out[result_key(study, protocol, name)] = {
            "protocol": protocol, "row": name, "side": r.side, "evaluation": r.metrics,
            "without_train_matches": r.clean_metrics, "train": r.train_metrics,
            "seeds": {m: results.spread((protocol, name), m) for m in ("accuracy", "f1", "roc_auc")},
            "epochs_run": r.training.epochs_run, "best_epoch": r.training.best_epoch,
            "training_path": r.training.path, "model": study.model_name(name, protocol) if r.model_path else None,
        }
    return out
