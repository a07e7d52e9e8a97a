"""A study run: its settings and split, the row runner (with `start_from`, `init_from` and `repeats`),
saved models with cards, and the writers of its outputs.

Notebooks tell the story and call these; nothing here knows a particular study. (Over 400 lines: the study,
its row runner and its model writers share the Study object and are read together.)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd

from tlrepro.core import config, fileio, identity, paths
from tlrepro.core.config import Row
from tlrepro.core.errors import UserError
from tlrepro.data import derive
from tlrepro.data import labels as lab
from tlrepro.data.index import read_index
from tlrepro.data.leakage import with_hashes
from tlrepro.data.splits import read_split
from tlrepro.modeling import backbones, cards, compute, models, training
from tlrepro.results import compare, metrics
from tlrepro.studies import crossval
from tlrepro.studies.crossval import Unit

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
        """The downloaded dataset behind the study's (a derived dataset's source, which its stage recorded)."""
        derived = paths.derived_json(self.dataset)
        return fileio.read_json(derived, "derived dataset record")["from"] if derived.is_file() else self.dataset

    @property
    def group(self) -> str | None:
        """The unit the split keeps on one side (e.g. patient), as the split stage recorded it; None if none."""
        audit = fileio.read_json(paths.leakage_details_json(self.id), "leakage audit")
        return next((a.get("group") for a in audit.values() if a.get("group")), None)

    @property
    def unit(self) -> str:
        """What the group is, as reports name it: a patient, whether identified by folder or accession number."""
        return "patient" if self.group in (None, "patient", "accession") else str(self.group)

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

    def units(self, protocol: str | None = None) -> list[Unit]:
        """What the protocol trains one model for: each fold (cross-validation), each magnification
        (`per_magnification`), or the whole split."""
        return crossval.units_of(self.protocol(protocol), self.settings.per_magnification, self.params.scale.max_folds)

    def cross_validated(self, protocol: str | None = None) -> bool:
        return self.settings.protocols[protocol or self.primary].cross_validation

    def part(self, side: str, protocol: str | None = None, unit: Unit = crossval.WHOLE) -> pd.DataFrame:
        frame = self.protocol(protocol)
        return frame[(frame["side"] == side) & unit.select(frame)].reset_index(drop=True)

    def labels(self, frame: pd.DataFrame) -> np.ndarray:
        return lab.encode(frame["label"], self.classes)

    def epochs(self, row: Row, epochs: int | None = None) -> int:
        return self.params.epochs(row, epochs)

    def _groups(self, frame: pd.DataFrame) -> dict[str, Any]:
        """Intervals resample the split's groups (patients) where it has them, else images."""
        grouped = "group" in frame and len(frame) and (frame["group"] != "").all()
        return {"groups": frame["group"].to_numpy(), "unit": self.unit} if grouped else {}

    def evaluate(self, frame: pd.DataFrame, probs: np.ndarray, threshold: float = 0.5) -> dict[str, Any]:
        e = self.params.evaluation
        return metrics.evaluate(self.labels(frame), probs, seed=self.seed, resamples=e.bootstrap_resamples,
                                confidence=e.confidence, threshold=threshold, **self._groups(frame))

    def evaluate_clean(self, frame: pd.DataFrame, probs: np.ndarray) -> dict[str, Any] | None:
        """The figures without the evaluation images that match a training image (None if none match)."""
        e = self.params.evaluation
        return metrics.without_matches(self.labels(frame), probs, frame["train_match"], seed=self.seed,
                                       resamples=e.bootstrap_resamples, confidence=e.confidence,
                                       **self._groups(frame))

    def model_path(self, row: str, protocol: str) -> Path:
        """models/<study>/<row>.keras, or models/<study>/<protocol>/<row>.keras when there are several."""
        sub = f"{row}.keras" if len(self.protocols) == 1 else f"{protocol}/{row}.keras"
        return paths.study_output(f"models/{self.id}/{sub}")

    def model_name(self, row: str, protocol: str) -> str:
        return f"{self.id}/{row}" if len(self.protocols) == 1 else f"{self.id}/{protocol}/{row}"

    def random_init(self) -> list[str]:
        """Rows trained without ImageNet weights: `weights: random`, or through their `init_from` entry."""
        via = self.random_init_via()
        return [r.name for r in self.rows if (r.name in via if r.init_from else r.weights == "random")]

    def random_init_via(self) -> dict[str, str]:
        """Rows whose `init_from` pretraining entry was trained from random initialisation -> that entry."""
        return {r.name: r.init_from for r in self.rows if r.init_from and self.initial_weights(r)["source"] == "random"}

    def initial_weights(self, row: Row) -> dict[str, str]:
        """Where a row's starting weights come from: ImageNet or random; for an `init_from` row, where its
        pretraining entry started, as that model's card says (the study depends on the model, not its settings)."""
        if row.init_from:
            card = fileio.read_json(paths.card_of(paths.pretrained_model(row.init_from)), "pretrained model card")
            return {**card["weights"], "init_from": row.init_from}
        return backbones.weights_provenance(row.backbone, row.weights, row.image_size)

    def provenance(self) -> dict[str, Any]:
        """What every report states about the run: data, sizes, caps, weights (source and sha256)."""
        sizes = {p: self.protocol(p).groupby("side").size().to_dict() for p in self.protocols}
        return {
            "study": self.id, "dataset": self.dataset, "source_dataset": self.source_dataset,
            "paper_dataset": self.paper.get("dataset"),
            "images": len(read_index(self.dataset)), "images_in_split": int(self.split["path"].nunique()),
            "published_images": compare.datasets().get(self.source_dataset, {}).get("published_images"),
            "primary_protocol": self.primary, "sides": sizes, "random_init": self.random_init(),
            "capped_epochs": {r.name: c for r in self.rows if (c := self.params.capped_epochs(r, self.settings.grid))},
            "random_init_via": self.random_init_via(), "max_images_per_class": self.params.scale.max_images_per_class,
            "max_epochs": self.params.scale.max_epochs, "max_folds": self.params.scale.max_folds,  # quick-pass caps
            "weights": {r.name: self.initial_weights(r) for r in self.rows},
            "seed": self.seed, "repeats": self.settings.repeats, "compute": compute.current().describe(),
            "run": identity.current(compute.current().gpus),  # commit, experiment, date, versions, hardware
            # what the repeated seeds vary: in the grid, only each head's initial weights and batch order
            "seed_kind": "head seeds" if self.settings.grid or all(head_seeds(self, r, self.seed + 1) for r in self.rows)
            else "training seeds",
            "evaluated_on": self.settings.evaluate_on,
            "validation_chose": {r.name: training.chosen_on_validation(r) + (["grid cell"] if self.settings.grid else [])
                                 for r in self.rows},
        }


def load_study(study_id: str, params_file: str | Path | None = None) -> Study:
    """Read and validate params.yaml and data/splits/<study>.csv, set up where TensorFlow runs (params
    `compute`), and seed everything with the study's seed."""
    params = config.load_params(Path(params_file) if params_file else None)
    compute.activate(params.compute)
    settings = params.study(study_id)
    split = read_split(study_id)
    order = split.drop_duplicates("label").assign(i=lambda f: f["class_index"].astype(int)).sort_values("i")
    study = Study(study_id, params, settings, split, tuple(order["label"]))
    training.seed_everything(study.seed)
    return study


# ---------------------------------------------------------------- the row runner


@dataclass
class RowResult:
    """One trained row under one protocol and seed: its training, and its figures on the evaluation side.

    Under cross-validation (or with one model per magnification) the result pools its units: `frame` and `probs`
    hold every fold's evaluation rows (each image of a grouped k-fold exactly once), `folds` each unit's own
    result, `training` the first unit's (each unit's is in `folds`), and `classifier` the last unit's model.
    """

    row: Row
    protocol: str
    seed: int
    classifier: models.Classifier | None
    training: training.TrainResult
    side: str  # the evaluation side
    frame: pd.DataFrame  # the evaluation side's rows
    probs: np.ndarray
    metrics: dict[str, Any] = field(default_factory=dict)
    clean_metrics: dict[str, Any] | None = None  # without the evaluation images that match a training image
    train_metrics: dict[str, Any] | None = None
    predict_seconds: float = 0.0
    model_path: Path | None = None
    unit: Unit = crossval.WHOLE
    folds: list[RowResult] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def init_backbone(row: Row) -> Any:
    """The backbone of a pretrained model named by `init_from` (its head is replaced)."""
    model, _ = cards.load(paths.pretrained_model(row.init_from))
    return models.parts_of(model)[0]


def head_seeds(study: Study, row: Row, seed: int) -> bool:
    """Whether `seed` is a head seed of `row`: a repeat (not the study seed) of a row whose whole backbone stays
    frozen (no squeeze-and-excitation inserted). Its backbone, random-init included, and its augmented views are the
    study seed's, so their cached features are reused; the seed varies the head's initial weights, dropout and
    batch order only (lin2024's head seeds)."""
    return seed != study.seed and frozen(row)


def frozen(row: Row) -> bool:
    """Whether nothing ever trains the row's backbone: no trainable layer, and no squeeze-and-excitation inserted."""
    return row.trainable_layers == 0 and not row.trainable_from and row.se is None


# A frozen backbone, built once per process and shared by every fold, protocol and seed of the rows that use it:
# nothing changes its weights, and building one (ImageNet weights read from disk) costs seconds per fit.
_FROZEN_BACKBONES: dict[tuple, Any] = {}


def shared_backbone(study: Study, row: Row) -> Any:
    """The study seed's backbone of a frozen row (random-init ones included: built under the study seed), built
    once for the active distribution strategy and precision, and for the weights file as it is now."""
    plan = compute.current()
    source = "random" if row.weights == "random" else backbones.weights_location(row.backbone, row.image_size)
    stamp = Path(source).stat().st_mtime_ns if Path(source).is_file() else None
    key = (row.backbone, row.image_size, source, stamp, keras.mixed_precision.global_policy().name, study.seed)
    strategy, backbone = _FROZEN_BACKBONES.get(key, (None, None))
    if strategy is not plan.strategy:  # a backbone's variables belong to the strategy they were made under
        keras.utils.set_random_seed(study.seed)
        backbone = backbones.build_backbone(row.backbone, row.image_size, row.weights)
        _FROZEN_BACKBONES[key] = (plan.strategy, backbone)
    return backbone


def build(study: Study, row: Row, seed: int) -> models.Classifier:
    """The row's classifier with its freeze policy, its variables made under the run's distribution strategy."""
    with compute.current().scope():
        backbone = init_backbone(row) if row.init_from else None
        if backbone is None and frozen(row):  # the study seed's backbone, whatever the seed (see head_seeds)
            backbone = shared_backbone(study, row)
        classifier = models.build_classifier(row, classes=study.classes, seed=seed, backbone=backbone)
    models.set_trainable(classifier, row.trainable_layers, row.trainable_from)
    return classifier


class Recycler:
    """Classifiers of finished units, reused for the next unit of the same row from the values a new one starts with.

    Every unit (fold, magnification) of a row and seed starts from the same values, since its build is seeded. So a
    finished unit's classifier, its variables set back to those values, trains exactly as a new one would, and keeps
    what a new one would spend seconds on per fit: building it (a backbone with squeeze-and-excitation blocks, a
    pretrained model read from disk) and tracing its training and prediction functions. The values are taken from
    the first build of each row and seed; a shared frozen backbone (shared_backbone) is never changed, so it is not
    copied. Studies with `start_from` rows do not use it: their classifiers share one model.
    """

    def __init__(self, study: Study) -> None:
        self.study = study
        self.starts: dict[tuple[str, int], list[np.ndarray]] = {}
        self.spares: dict[str, list[models.Classifier]] = {}

    def state(self, classifier: models.Classifier) -> list[Any]:
        """The variables a fit may change (every one, random-seed states included, but a shared frozen backbone's)."""
        shared = {id(v) for v in classifier.backbone.variables} if frozen(classifier.row) and not classifier.row.init_from \
            else set()
        return [v for v in classifier.model.variables if id(v) not in shared]

    def take(self, row: Row, seed: int) -> models.Classifier:
        key, spares = (row.name, seed), self.spares.get(row.name, [])
        fresh = None
        if key not in self.starts:
            fresh = build(self.study, row, seed)
            self.starts[key] = [np.array(keras.ops.convert_to_numpy(v)) for v in self.state(fresh)]
        if not spares:
            return fresh or build(self.study, row, seed)
        classifier = spares.pop()
        for variable, start in zip(self.state(classifier), self.starts[key], strict=True):
            variable.assign(start)
        return classifier

    def give_back(self, classifier: models.Classifier) -> None:
        self.spares.setdefault(classifier.row.name, []).append(classifier)


def run_row(study: Study, name: str, *, protocol: str | None = None, seed: int | None = None,
            start_from: models.Classifier | None = None, unit: Unit = crossval.WHOLE, evaluate: bool = True,
            recycler: Recycler | None = None) -> RowResult:
    """Build (or continue, or take from `recycler`) a row's classifier, train it on one unit of the protocol (a fold,
    a magnification, or the whole split), and predict the evaluation side; with `evaluate`, its figures too."""
    protocol = protocol or study.primary
    seed = study.seed if seed is None else seed
    row = study.row(name)
    training.seed_everything(seed)
    if start_from is not None:
        classifier = models.Classifier(start_from.model, start_from.backbone, start_from.preprocessing,
                                       start_from.head, start_from.augmentation, row, study.classes)
        models.set_trainable(classifier, row.trainable_layers, row.trainable_from)
    elif recycler is not None:
        classifier = recycler.take(row, seed)
    else:
        classifier = build(study, row, seed)
    training.seed_everything(seed)  # a build draws from the global generators: the fit's draws are the same without
    with compute.current().scope():  # compiled, fitted and run on every replica of the strategy
        train_frame, val_frame = study.part("train", protocol, unit), study.part("val", protocol, unit)
        label = ", ".join(x for x in (protocol if len(study.protocols) > 1 else "", unit.describe(study.units(protocol)))
                          if x)
        result = training.train(classifier, train_frame, val_frame, train_labels=study.labels(train_frame),
                                val_labels=study.labels(val_frame), epochs=study.epochs(row), seed=seed,
                                name=f"{study.id} · {name}" + (f" ({label})" if label else ""),
                                live=training.log_folder(study.id, protocol if len(study.protocols) > 1 else "", name,
                                                         unit.fold and f"fold{unit.fold}",
                                                         unit.magnification and f"{unit.magnification}X")
                                if seed == study.seed else None,
                                views_seed=study.seed if head_seeds(study, row, seed) else None)
        side = study.settings.evaluate_on
        frame = study.part(side, protocol, unit)
        # the evaluation reads the frozen part's outputs from the cache, as training does (folds and protocols
        # share one extraction), and a few images run through the whole model tie the figures to the saved model
        probs, seconds = training.predict(classifier, frame)
        where = f"studies.{study.id}.rows.{name}"
        context = f"protocol {protocol}{', ' + label if label else ''}, seed {seed}"
        check_finite(probs, where, context)
        if not head_seeds(study, row, seed):
            training.check_end_to_end(classifier, frame, probs, where=f"{where} ({context})")
    out = RowResult(row, protocol, seed, classifier, result, side, frame, probs, predict_seconds=seconds, unit=unit)
    if evaluate:
        train_probs, _ = training.predict(classifier, train_frame)
        out.metrics, out.clean_metrics = study.evaluate(frame, probs), study.evaluate_clean(frame, probs)
        out.train_metrics = study.evaluate(train_frame, train_probs)
    else:  # one unit of a pooled result: its own point figures (the intervals come from the pool)
        out.metrics = {**metrics.binary_metrics(study.labels(frame), probs), "threshold": 0.5}
    return out


def pooled(study: Study, parts: list[RowResult]) -> RowResult:
    """One result from a row's units (folds, magnifications): their evaluation rows and probabilities together,
    evaluated once over every image (intervals resample the groups of all of them), with the spread across folds."""
    first, last = parts[0], parts[-1]
    frame = pd.concat([p.frame for p in parts], ignore_index=True)
    probs = np.concatenate([np.asarray(p.probs) for p in parts])
    result = RowResult(first.row, first.protocol, first.seed, last.classifier, first.training, first.side, frame,
                       probs, predict_seconds=sum(p.predict_seconds for p in parts), folds=parts)
    result.metrics, result.clean_metrics = study.evaluate(frame, probs), study.evaluate_clean(frame, probs)
    result.extra["fold_spread"] = crossval.fold_spread(frame, probs, study.labels(frame))
    return result


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
    """Every row of the study under every protocol, in order (a `start_from` row continues its source's model
    within the same fold), `repeats` times with seeds seed, seed + 1, ...; each protocol's units (its folds,
    and magnifications with `per_magnification`) train separately and their predictions are pooled. The study
    seed's models of single-unit protocols are saved with cards (a fold's model saw only part of the data)."""
    results = Results()
    recycler = None if any(row.start_from for row in study.rows) else Recycler(study)
    for protocol in protocols or study.protocols:
        units = study.units(protocol)
        for repeat in range(study.settings.repeats):
            seed = study.seed + repeat
            parts: dict[str, list[RowResult]] = {}
            for unit in units:
                trained: dict[str, models.Classifier] = {}
                for row in study.rows:
                    started = time.perf_counter()
                    source = trained.get(row.start_from) if row.start_from else None
                    part = run_row(study, row.name, protocol=protocol, seed=seed, start_from=source, unit=unit,
                                   evaluate=len(units) == 1, recycler=recycler)
                    part.extra["wall_seconds"] = time.perf_counter() - started
                    parts.setdefault(row.name, []).append(part)
                    trained[row.name] = part.classifier
                if repeat > 0 or unit is not units[-1]:
                    # kept: the study seed's model of each protocol (saved, or its last fold's, for Grad-CAM)
                    for done in parts.values():
                        if recycler is not None and done[-1].classifier is not None:
                            recycler.give_back(done[-1].classifier)
                        done[-1].classifier = None
            for row in study.rows:
                result = parts[row.name][0] if len(units) == 1 else pooled(study, parts[row.name])
                key = (protocol, row.name)
                results.seeds.setdefault(key, []).append(result.metrics)
                if repeat == 0:
                    if save and len(units) == 1:
                        result.model_path = save_model(study, result)
                    results.by_key[key] = result
                    if on_result is not None:
                        on_result(result)
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
    mode = backbones.backbone_spec(row.backbone).preprocessing if row.preprocessing == "native" else row.preprocessing
    return {
        "study": study.id, "row": row.name, "protocol": protocol, "name": study.model_name(row.name, protocol),
        "seed": seed, "backbone": row.backbone,
        "weights": study.initial_weights(row),  # an init_from row: its pretraining entry's start
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
        **cards.seen_fields(train_frame, study.part("val", protocol), row.init_from),
        "before_model": derive.input_steps(study.dataset),  # e.g. stain normalization, fitted
    }


def save_model(study: Study, result: RowResult) -> Path:
    card = card_for(study, result.row, protocol=result.protocol, seed=result.seed, result=result.training,
                    figures=result.metrics, train_frame=study.part("train", result.protocol))
    path, _ = cards.save(result.classifier.model, study.model_path(result.row.name, result.protocol), card)
    return path
