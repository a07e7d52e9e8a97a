"""Baselines beside a model's figure, on the same folds, sides and unit: what a figure must beat to mean anything.

- the trivial baseline: each unit (fold, or fold and magnification) predicts its TRAINING side's majority class for
  every image of its evaluation side (never chosen on the evaluation side). At image level the majority is counted
  over training images, at patient level over training patients; "patient accuracy" is the mean over patients of
  each patient's image accuracy, so calling every image malignant scores the share of malignant patients
  (16/23 = 0.696 on the held-out BreakHis copy). A constant prediction has ROC AUC 0.5: chance.
- chance: ROC AUC 0.5 (CHANCE_AUC).
- the colour baseline: twelve colour statistics per image (mean and standard deviation of each RGB channel and of
  its optical density), standardized, and a scikit-learn logistic regression fitted per unit on its training side
  and applied to its evaluation side. No backbone: it measures how much of a figure slide colour alone explains.
  It runs on raw and stain-normalized images alike.

Both baselines pool their units' evaluation rows as a cross-validated model's figures do, and are evaluated by
`metrics.evaluate` with the same groups, so their intervals resample the same patients (within their class).
`verdict` says in words whether a figure beats a baseline by more than its interval. `refit_permutation_test`
refits the logistic regression on labels permuted among patients: a p-value for a learned baseline (or a linear probe
on any per-image features) that tests the whole procedure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from tlrepro.core import paths
from tlrepro.core.errors import UserError
from tlrepro.core.fileio import plain
from tlrepro.data.images import load_rgb
from tlrepro.data.labels import BINARY_CLASSES
from tlrepro.results import metrics, significance

CHANCE_AUC = 0.5
COLOUR_FEATURES = tuple(f"{stat}_{kind}{channel}" for kind in ("", "od_") for stat in ("mean", "std")
                        for channel in "rgb")
# optical density of each 8-bit value (Beer-Lambert, +1 so that black is finite): -log((I + 1) / 256)
_OD = -np.log((np.arange(256) + 1.0) / 256.0)
_COLOUR_CACHE: dict[tuple[str, int, int], np.ndarray] = {}


@dataclass
class Baseline:
    """A baseline's pooled evaluation: its rows (every unit's evaluation side, in unit order), its probabilities of
    malignant, `metrics.evaluate`'s flat figures for them (intervals resample the same groups as the model's), and
    per unit what it was fitted on."""

    name: str  # in words, for sentences: "calling every image malignant"
    frame: pd.DataFrame
    probs: np.ndarray
    metrics: dict[str, Any]
    units: list[dict[str, Any]] = field(default_factory=list)


def _labels(frame: pd.DataFrame) -> np.ndarray:
    return np.array([BINARY_CLASSES.index(v) for v in frame["label"]], dtype=int)


def _units(frame: pd.DataFrame, side: str, by: Sequence[str]) -> list[tuple[dict[str, str], pd.DataFrame, pd.DataFrame]]:
    """(unit, its training rows, its evaluation rows) per unit: the values of `by` (columns of the split; absent or
    empty columns do not split), in sorted order (folds numerically)."""
    keys = [c for c in by if c in frame and (frame[c].astype(str) != "").any()]
    data = frame.assign(**{c: frame[c].astype(str) for c in keys})
    parts = [((), data)] if not keys else list(data.groupby(keys, sort=False))
    parts.sort(key=lambda kv: [(0, int(v)) if str(v).isdigit() else (1, str(v)) for v in np.atleast_1d(kv[0])])
    out = []
    for values, part in parts:
        unit = dict(zip(keys, map(str, np.atleast_1d(values)), strict=True))
        out.append((unit, part[part["side"] == "train"], part[part["side"] == side]))
    return out


def _evaluate(frame: pd.DataFrame, probs: np.ndarray, evaluation: dict[str, Any], unit: str) -> dict[str, Any]:
    grouped = "group" in frame and len(frame) and (frame["group"].astype(str) != "").all()
    return metrics.evaluate(_labels(frame), probs, **evaluation,
                            **({"groups": frame["group"].to_numpy(), "unit": unit} if grouped else {}))


def _majority(train: pd.DataFrame, column: str) -> int:
    """The training side's majority class, counting each distinct `column` value once (path: images; group:
    patients); a tie goes to malignant."""
    counts = train.drop_duplicates(column)["label"].value_counts()
    return int(counts.get(BINARY_CLASSES[1], 0) >= counts.get(BINARY_CLASSES[0], 0))


def trivial_baseline(frame: pd.DataFrame, *, side: str = "test", by: Sequence[str] = ("fold",), seed: int,
                     resamples: int, confidence: float, unit: str = "patient") -> Baseline:
    """The majority class of each unit's training side, predicted for every image of its `side`, pooled over units.

    `frame` is one protocol's split rows (columns side, path, label, group, and the `by` columns: fold, and
    magnification for one model per magnification). `metrics` holds `metrics.evaluate`'s figures of the image-level
    majority (accuracy and its interval, sensitivity, specificity, ...) and `<unit>_accuracy` (with its interval) of
    the patient-level majority, where the two differ; roc_auc is CHANCE_AUC (no interval); `majority` is the class
    predicted ("malignant"), or "varies" when units or levels disagree; `constant` is True."""
    parts = _units(frame, side, by)
    if not parts or any(train.empty for _, train, _ in parts):
        raise UserError(f"trivial_baseline: a unit of the split has no training rows ({by}); it needs one.")
    evaluation = {"seed": seed, "resamples": resamples, "confidence": confidence}
    rows = pd.concat([test for _, _, test in parts], ignore_index=True)
    by_image = np.concatenate([np.full(len(test), float(_majority(train, "path"))) for _, train, test in parts])
    column = "group" if "group" in frame and (frame["group"].astype(str) != "").all() else "path"
    by_group = np.concatenate([np.full(len(test), float(_majority(train, column))) for _, train, test in parts])
    figures = _evaluate(rows, by_image, evaluation, unit)
    if column == "group" and not np.array_equal(by_image, by_group):
        patients = _evaluate(rows, by_group, evaluation, unit)
        figures.update({k: v for k, v in patients.items() if k.startswith(f"{unit}_accuracy")})
    chosen = {int(v) for v in np.concatenate([by_image, by_group])}
    majority = BINARY_CLASSES[chosen.pop()] if len(chosen) == 1 else "varies"
    # a constant within each unit ranks no image above another: its AUC is chance, whatever pooling units of
    # different constants would give, and an interval around a constant says nothing
    figures.update(roc_auc=CHANCE_AUC, roc_auc_ci_low=None, roc_auc_ci_high=None, majority=majority,
                   chance_auc=CHANCE_AUC, constant=True)
    name = (f"calling every image {majority}" if majority != "varies"
            else "calling every image its training side's majority class")
    units = [{**u, "majority_images": BINARY_CLASSES[_majority(train, "path")],
              f"majority_{unit}s": BINARY_CLASSES[_majority(train, column)], "tested": len(test)}
             for u, train, test in parts]
    return Baseline(name, rows, by_image, figures, units)


def colour_statistics(path: str | Path) -> np.ndarray:
    """The image's twelve colour statistics (COLOUR_FEATURES: mean and standard deviation of R, G, B and of their
    optical densities), from each channel's histogram of 8-bit values. A project-relative path is read from the
    project root. Computed once per file (kept in memory, keyed by path, size and modification time)."""
    full = Path(path) if Path(path).is_absolute() else paths.PROJECT_ROOT / path
    try:
        stat = full.stat()
    except OSError:
        raise UserError(f"Cannot read image {full}: it does not exist. Re-run `dvc repro` for its dataset.") from None
    key = (str(full), stat.st_size, stat.st_mtime_ns)
    if key not in _COLOUR_CACHE:
        pixels = np.asarray(load_rgb(full), dtype=np.uint8).reshape(-1, 3)
        values = np.arange(256.0)
        out = []
        for table in (values, _OD):
            means, stds = [], []
            for channel in range(3):
                counts = np.bincount(pixels[:, channel], minlength=256) / len(pixels)
                mean = float(counts @ table)
                means.append(mean)
                stds.append(float(np.sqrt(max(counts @ (table - mean) ** 2, 0.0))))
            out += means + stds
        _COLOUR_CACHE[key] = np.array(out)
    return _COLOUR_CACHE[key]


def colour_table(frame: pd.DataFrame) -> np.ndarray:
    """colour_statistics of every row's image (n x 12); each distinct image is read once (its rotated and
    flipped views share its statistics: they do not change a histogram)."""
    unique = frame["path"].astype(str).drop_duplicates().tolist()
    table = {p: colour_statistics(p) for p in unique}
    return np.stack([table[p] for p in frame["path"].astype(str)]) if len(frame) else np.zeros((0, len(COLOUR_FEATURES)))


@dataclass
class _Unit:
    """One unit's data for the logistic regression: its training side's distinct images (features standardized on
    them: the scaler sees no label, so every refit of a permutation test shares it) and its evaluation side's."""

    unit: dict[str, Any]
    train: pd.DataFrame
    test: pd.DataFrame
    x_train: np.ndarray
    x_test: np.ndarray


def _prepare(parts: list, table: dict[str, np.ndarray]) -> list[_Unit]:
    prepared = []
    for u, train, test in parts:
        train = train.drop_duplicates("path")
        x_train, x_test = (np.stack([table[p] for p in f["path"].astype(str)]) if len(f) else np.zeros((0, 0))
                           for f in (train, test))
        if len(train) and len(test):
            scaler = StandardScaler().fit(x_train)
            x_train, x_test = scaler.transform(x_train), scaler.transform(x_test)
        prepared.append(_Unit(u, train, test, x_train, x_test))
    return prepared


def _fit_units(prepared: list[_Unit], label_of: Any) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Per unit, a standardized logistic regression fitted on its training side's distinct images (labels from
    `label_of(rows)`) and applied to its evaluation side; the pooled probabilities. Call it inside
    threadpool_limits(1): a dozen features, and BLAS threads only contend (17x slower on 2 busy cores)."""
    probs, units = [], []
    for part in prepared:
        y = label_of(part.train)
        units.append({**part.unit, "trained_on": len(part.train), "tested": len(part.test)})
        if len(np.unique(y)) < 2:
            probs.append(np.full(len(part.test), float(y[0]) if len(y) else 0.5))
            units[-1]["note"] = "one class on the training side"
            continue
        model = LogisticRegression(max_iter=1000).fit(part.x_train, y)
        probs.append(model.predict_proba(part.x_test)[:, 1] if len(part.test) else np.zeros(0))
    return (np.concatenate(probs) if probs else np.zeros(0)), units


def _feature_table(frame: pd.DataFrame, features: Any) -> dict[str, np.ndarray]:
    unique = frame.drop_duplicates("path")
    return dict(zip(unique["path"].astype(str), np.asarray(features(unique), dtype=float), strict=True))


def colour_baseline(frame: pd.DataFrame, *, side: str = "test", by: Sequence[str] = ("fold",), seed: int,
                    resamples: int, confidence: float, unit: str = "patient") -> Baseline:
    """A logistic regression on COLOUR_FEATURES (standardized), fitted per unit on its training side's distinct
    images and applied to its `side`; pooled and evaluated like a model (see trivial_baseline for `frame` and
    `by`). A unit whose training side holds one class predicts that class (noted in `units`)."""
    parts = _units(frame, side, by)
    with threadpool_limits(1):
        probs, units = _fit_units(_prepare(parts, _feature_table(frame, colour_table)), _labels)
    rows = pd.concat([test for _, _, test in parts], ignore_index=True)
    evaluation = {"seed": seed, "resamples": resamples, "confidence": confidence}
    return Baseline("colour statistics alone (a logistic regression on 12 colour figures per image)", rows, probs,
                    _evaluate(rows, probs, evaluation, unit), units)


def refit_permutation_test(frame: pd.DataFrame, *, features: Any = colour_table, side: str = "test",
                           by: Sequence[str] = ("fold",), draws: int = 200, seed: int = 42, threshold: float = 0.5,
                           unit: str = "patient") -> dict[str, Any]:
    """Permutation test by patient that REFITS: each draw permutes the labels among patients (each keeps one label
    for all its images, in every fold), refits the per-unit logistic regression on the permuted training labels and
    scores its pooled predictions against the permuted labels. It tests the whole procedure (these features, this
    learner, these folds) against "the features carry no information about the patients' labels", which the
    fixed-prediction test (significance.permutation_test) cannot: a learner that finds patient-level structure by
    chance is retrained on every draw. `features` maps rows (path column) to a matrix: colour_table by default, or
    any cached per-image features (a linear probe). Returns {draws, <unit>s, seed, method, roc_auc,
    <unit>_accuracy}, each as significance.permutation_test's figures."""
    if draws < significance.MIN_DRAWS:
        raise ValueError(f"refit_permutation_test needs at least {significance.MIN_DRAWS} draws, not {draws}.")
    parts = _units(frame, side, by)
    prepared = _prepare(parts, _feature_table(frame, features))  # once: only the labels change between draws
    patients = frame.drop_duplicates("group").set_index("group")["label"].map(BINARY_CLASSES.index)
    if (frame.groupby("group")["label"].nunique() > 1).any():
        raise ValueError("A permutation by patient needs one class per patient; some patient holds both.")
    rows = pd.concat([test for _, _, test in parts], ignore_index=True)
    rng = np.random.default_rng(seed)

    def scores(labels: pd.Series) -> tuple[float | None, float]:
        probs, _ = _fit_units(prepared, lambda f: labels[f["group"]].to_numpy())
        y = labels[rows["group"]].to_numpy()
        right = pd.Series(((probs >= threshold).astype(int) == y).astype(float)).groupby(rows["group"].to_numpy())
        return metrics._auc(y, probs), float(right.mean().mean())

    with threadpool_limits(1):  # entered once: it inspects every loaded library (milliseconds per entry)
        observed = scores(patients)
        null = np.array([scores(pd.Series(rng.permutation(patients.to_numpy()), index=patients.index))
                         for _ in range(draws)], dtype=float)
    return plain({
        "draws": draws, f"{unit}s": int(rows["group"].nunique()), "seed": seed,
        "method": f"labels permuted among {unit}s ({draws} draws), the logistic regression refitted in every unit",
        "roc_auc": significance.summarize_null(observed[0], null[:, 0]),
        f"{unit}_accuracy": significance.summarize_null(observed[1], null[:, 1])})


# ---------------------------------------------------------------- a figure against a baseline, in words


def describe(baseline: Baseline, metric: str = "patient_accuracy") -> str:
    """'calling every image malignant (0.696 at patient level)': the baseline and its figure, for sentences."""
    value = baseline.metrics.get(metric)
    if metric == "accuracy":
        level = "image level"
    elif metric.endswith("_accuracy"):
        level = f"{metric.removesuffix('_accuracy')} level"
    else:
        level = metric.replace("_", " ")
    return f"{baseline.name} ({value:.3f} at {level})" if value is not None else baseline.name


def verdict(figure: float | None, low: float | None, high: float | None, baseline: float | None, words: str
            ) -> dict[str, Any]:
    """Whether a figure beats a baseline value by more than its interval, with a sentence fragment.

    verdict: "above" (the interval's lower end lies above the baseline), "within" (the interval holds it),
    "below" (the interval's upper end lies below it), "no interval" (too few patients: not shown to beat it), or
    "undefined" (no figure, e.g. AUC of one class). `words` names the baseline with its value, e.g. describe(...)
    or "chance (AUC 0.5)". Returns {verdict, margin (figure minus baseline, or None), sentence}."""
    if figure is None or baseline is None:
        return {"verdict": "undefined", "margin": None, "sentence": f"not comparable with {words}"}
    margin = float(figure) - float(baseline)
    if low is None or high is None:
        kind, sentence = "no interval", f"not shown to beat {words}: too few patients for an interval"
    elif low > baseline:
        kind, sentence = "above", f"better than {words} by more than its interval"
    elif high < baseline:
        kind, sentence = "below", f"no better than {words}; its whole interval lies below it"
    else:
        kind, sentence = "within", f"no better than {words}, which lies inside its interval"
    return {"verdict": kind, "margin": margin, "sentence": sentence}


def verdicts(figures: dict[str, Any], trivial: Baseline, unit: str = "patient") -> dict[str, dict[str, Any]]:
    """A model's flat figures (metrics.evaluate's keys) against the trivial baseline and chance: image-level
    accuracy and `<unit>_accuracy` against the majority class at the same level, ROC AUC against 0.5. Only the
    figures present are judged. Each value is verdict()'s dict plus `baseline` (its value)."""
    checks = {"accuracy": (trivial.metrics.get("accuracy"), describe(trivial, "accuracy")),
              f"{unit}_accuracy": (trivial.metrics.get(f"{unit}_accuracy"), describe(trivial, f"{unit}_accuracy")),
              "roc_auc": (CHANCE_AUC, f"chance (AUC {CHANCE_AUC})")}
    out = {}
    for name, (value, words) in checks.items():
        if name in figures and value is not None:
            out[name] = {**verdict(figures.get(name), figures.get(f"{name}_ci_low"), figures.get(f"{name}_ci_high"),
                                   value, words), "baseline": value}
    return out
