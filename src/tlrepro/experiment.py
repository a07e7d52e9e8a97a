"""What a study notebook calls: load a study's settings and split, run configurations, write outputs.

Notebooks tell the story; the steps they share live here so they are tested once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tlrepro import config, evaluation, features, io, models, paths, training
from tlrepro.tfdata import labels_of, read_split


@dataclass
class Study:
    """A study's parameters and its split, ready to run."""

    id: str
    params: dict[str, Any]  # the whole params.yaml
    settings: dict[str, Any]  # params.yaml[<id>]
    splits: pd.DataFrame

    @property
    def seed(self) -> int:
        return int(self.params.get("seed", 42))

    @property
    def dataset(self) -> str:
        return str(self.settings["dataset"])

    def part(self, name: str) -> pd.DataFrame:
        return self.splits[self.splits["split"] == name].reset_index(drop=True)

    def epochs(self, epochs: int) -> int:
        """An epoch count after the quick-pass cap `scale.max_epochs`."""
        return config.capped_epochs(epochs, self.params)

    def evaluate(self, y_true: np.ndarray, y_prob: np.ndarray) -> dict[str, Any]:
        settings = self.params.get("evaluation") or {}
        return evaluation.evaluate(
            y_true, y_prob, seed=self.seed,
            resamples=int(settings.get("bootstrap_resamples", 1000)),
            confidence=float(settings.get("confidence", 0.95)),
        )


def load_study(study_id: str, params_file: str | Path | None = None) -> Study:
    """Read params.yaml and data/splits/<study>.csv, and seed everything with the study's seed."""
    params = config.load_params(Path(params_file) if params_file else None)
    settings = config.study(study_id, params)
    splits = read_split(paths.split_csv(study_id))
    study = Study(study_id, params, settings, splits)
    training.seed_everything(study.seed)
    return study


def random_init_banner(random_init: list[str]) -> str:
    """The headline every report shows when a model was not given ImageNet weights."""
    if not random_init:
        return ""
    return (f"RANDOM INITIALISATION: {', '.join(random_init)} trained WITHOUT ImageNet weights "
            "(set explicitly in params.yaml). Their figures are not comparable with the paper's.")


@dataclass
class ConfigResult:
    """One trained configuration: its history, times, and train/test predictions and metrics."""

    name: str
    classifier: models.Classifier
    history: pd.DataFrame
    train_seconds: float
    feature_seconds: float
    predict_seconds: float
    cached: bool
    cut: str | None
    train_metrics: dict[str, Any]
    test_metrics: dict[str, Any]
    test_prob: np.ndarray
    extra: dict[str, Any] = field(default_factory=dict)


def run_configuration(
    study: Study, name: str, settings: dict[str, Any], *, start_from: models.Classifier | None = None
) -> ConfigResult:
    """Build (or continue) a classifier, apply the freeze policy, train, and evaluate on train and test.

    `settings` is one entry of a study's `configs`: trainable_layers, learning_rate, epochs, and
    optionally augmentation, early_stopping, reduce_lr.
    """
    s = study.settings
    if start_from is None:
        classifier = models.build_classifier(
            s["backbone"], image_size=int(s["image_size"]), weights=str(s.get("weights", "imagenet")),
            head=s["head"], preprocessing=s.get("preprocessing", "native"),
            augmentation=settings.get("augmentation"), seed=study.seed,
        )
    else:
        classifier = start_from
    models.set_trainable(classifier, settings.get("trainable_layers", 0))
    batch = int(s["batch_size"])
    result = training.train(
        classifier, study.splits, learning_rate=float(settings["learning_rate"]),
        epochs=study.epochs(int(settings["epochs"])), batch_size=batch, seed=study.seed,
        name=name, config=settings,
    )
    train_part, test_part = study.part("train"), study.part("test")
    train_prob, _ = training.predict(classifier, train_part, batch_size=batch)
    # test predictions run the whole model on images: the prediction time is end to end
    test_prob, predict_seconds = training.predict(classifier, test_part, batch_size=batch, use_cache=False)
    return ConfigResult(
        name, classifier, result.history, result.seconds, result.feature_seconds, predict_seconds,
        result.cached, result.cut, study.evaluate(labels_of(train_part), train_prob),
        study.evaluate(labels_of(test_part), test_prob), test_prob,
    )


# ---------------------------------------------------------------- the lin2024-style grid


@dataclass
class GridResult:
    """A backbone's (learning rate x epoch budget) grid, its best cell, and that cell's test figures."""

    backbone: str
    weights: str
    grid: pd.DataFrame  # backbone, learning_rate, epochs, val_accuracy, val_loss
    best: dict[str, Any]
    test_metrics: dict[str, Any]
    test_prob: np.ndarray
    feature_seconds: float
    grid_seconds: float
    histories: dict[float, pd.DataFrame]


def run_grid(study: Study, backbone: str, weights: str) -> GridResult:
    """Every (learning rate, epoch budget) cell of a frozen backbone at the cost of one forward pass.

    Features come from the cache (computed once per split). Per learning rate the head starts from
    the same seeded initial weights and trains once to the largest budget; the validation accuracy
    at each budget is read on the way, which equals separate runs because nothing in training depends
    on the total epoch count. With early stopping or a schedule configured, cells run separately.
    """
    s = study.settings
    batch = int(s["batch_size"])
    classifier = models.build_classifier(
        backbone, image_size=int(s["image_size"]), weights=weights, head=s["head"],
        preprocessing=s.get("preprocessing", "native"), seed=study.seed,
    )
    models.set_trainable(classifier, 0)
    frozen = features.split_frozen(classifier)
    started = time.perf_counter()
    cached = {}
    for part in ("train", "val", "test"):
        arrays, _ = features.extract(frozen, study.part(part), classifier=classifier, batch_size=batch,
                                     description=f"{backbone}: frozen outputs, {part}")
        cached[part] = arrays
    feature_seconds = time.perf_counter() - started

    initial = frozen.trainer.get_weights()
    budgets = sorted({study.epochs(int(e)) for e in s["epochs"]})
    separate = bool(s.get("early_stopping") or s.get("reduce_lr"))
    rows, snapshots, histories = [], {}, {}
    started = time.perf_counter()
    for lr in s["learning_rates"]:
        lr = float(lr)
        runs = [[b] for b in budgets] if separate else [budgets]
        for run_budgets in runs:
            frozen.trainer.set_weights(initial)
            result = training.train(classifier, study.splits, learning_rate=lr, epochs=max(run_budgets),
                                    batch_size=batch, seed=study.seed, name=f"{backbone} lr={lr:g}",
                                    config=s, budgets=run_budgets, log=False)
            histories[lr] = result.history
            for b in run_budgets:
                at = result.history.iloc[min(b, len(result.history)) - 1]
                rows.append({"backbone": backbone, "learning_rate": lr, "epochs": b,
                             "val_accuracy": round(float(at["val_accuracy"]), 6),
                             "val_loss": round(float(at["val_loss"]), 6)})
                snapshots[(lr, b)] = result.snapshots.get(b, frozen.trainer.get_weights())
        cells = [r for r in rows if r["learning_rate"] == lr]
        print(f"{backbone} lr={lr:g}: val accuracy " + ", ".join(f"{r['val_accuracy']:.3f} @{r['epochs']}" for r in cells))
    grid_seconds = time.perf_counter() - started
    grid = pd.DataFrame(rows)
    # best by validation accuracy; ties go to lower validation loss, then fewer epochs
    best_row = grid.sort_values(["val_accuracy", "val_loss", "epochs"], ascending=[False, True, True]).iloc[0]
    best = {"learning_rate": float(best_row["learning_rate"]), "epochs": int(best_row["epochs"]),
            "val_accuracy": float(best_row["val_accuracy"])}
    frozen.trainer.set_weights(snapshots[(best["learning_rate"], best["epochs"])])
    test_x = cached["test"]
    test_prob = frozen.trainer.predict(test_x if len(test_x) > 1 else test_x[0], batch_size=batch, verbose=0)
    test_prob = np.asarray(test_prob, dtype="float64").ravel()
    test_metrics = study.evaluate(labels_of(study.part("test")), test_prob)
    return GridResult(backbone, weights, grid, best, test_metrics, test_prob, feature_seconds, grid_seconds,
                      histories)


# ---------------------------------------------------------------- outputs


def write_metrics(study: Study, results: dict[str, dict[str, Any]], random_init: list[str],
                  extra: dict[str, Any] | None = None) -> Path:
    """reports/metrics/<study>.json, in the contract of tlrepro.report. Deterministic values only
    (no times), so the same parameters give the same bytes."""
    payload = {"study": study.id, "dataset": study.dataset, "random_init": sorted(random_init),
               "results": results, **(extra or {})}
    target = paths.metrics_json(study.id)
    io.write_json(target, _plain(payload))
    return target


def write_plot_table(study: Study, name: str, frame: pd.DataFrame) -> Path:
    """reports/plots/<study>/<name>.csv, declared as DVC plots."""
    target = paths.PLOTS / study.id / f"{name}.csv"
    io.write_csv(target, frame)
    return target


def write_timings(study: Study, timings: dict[str, Any]) -> Path:
    """reports/timings/<study>.json: wall times vary run to run, so they stay out of the metrics."""
    target = paths.REPORTS / "timings" / f"{study.id}.json"
    io.write_json(target, _plain(timings))
    return target


def _plain(value: Any) -> Any:
    """JSON-ready: numpy scalars to Python, floats rounded to 6 places, NaN to None."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return None if np.isnan(value) else round(value, 6)
    return value


def difference_notes(compare: pd.DataFrame) -> list[str]:
    """One plain-language sentence per (row, metric): how ours differs from the paper, and whether
    the paper's figure lies inside our 95% confidence interval."""
    notes = []
    for line in compare.itertuples():
        name = f"{line.row}, {line.metric.replace('_', ' ')}"
        if pd.isna(line.ours):
            notes.append(f"{name}: not measured here (paper {line.paper:.4f}).")
            continue
        direction = "higher" if line.difference > 0 else "lower" if line.difference < 0 else "equal"
        text = f"{name}: ours {line.ours:.4f} vs paper {line.paper:.4f} ({line.difference:+.4f}, {direction})"
        if line.paper_within_ci is None:
            notes.append(text + ".")
        elif line.paper_within_ci:
            notes.append(text + f"; the paper's figure lies inside our 95% CI [{line.ci_low:.3f}, {line.ci_high:.3f}],"
                         " so the difference is within what our test-set size can resolve.")
        else:
            notes.append(text + f"; the paper's figure lies outside our 95% CI [{line.ci_low:.3f}, {line.ci_high:.3f}],"
                         " a real difference on this data (see the notes on data and settings below).")
    return notes
