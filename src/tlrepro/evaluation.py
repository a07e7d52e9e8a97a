"""Test-set metrics for binary benign (0) / malignant (1) classifiers, with bootstrap confidence intervals.

Conventions, shared by every study so that reports compare like with like:
- label 1 = malignant is the positive class; precision, recall and F1 are the malignant class's;
- a probability counts as malignant when `y_prob >= threshold` (scikit-learn's curves use the same rule);
- a metric that is undefined for the data (ROC AUC with one class only) is None, never NaN, so that the
  metrics JSON stays valid JSON; an undefined precision/recall (no predicted or true positives) is 0.0,
  as scikit-learn's `zero_division=0`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm

LABELS = (0, 1)
TARGET_NAMES = ("benign", "malignant")
CI_METRICS = ("accuracy", "recall", "f1", "roc_auc")
REPORT_CI_METRICS = ("accuracy", "precision", "recall", "f1", "roc_auc")  # every figure the report compares


def _arrays(y_true: Any, y_prob: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).ravel()
    if y.dtype.kind in "OUS":  # the split CSVs' "benign"/"malignant"
        y = np.array([TARGET_NAMES.index(v) if v in TARGET_NAMES else -1 for v in y])
    y = y.astype(int)
    p = np.asarray(y_prob, dtype=float).ravel()
    if y.shape != p.shape:
        raise ValueError(f"y_true has {y.size} labels but y_prob has {p.size} probabilities.")
    if not np.isin(y, LABELS).all():
        raise ValueError("y_true must hold only 0/benign and 1/malignant.")
    return y, p


def _auc(y: np.ndarray, p: np.ndarray) -> float | None:
    return float(skm.roc_auc_score(y, p)) if len(np.unique(y)) == 2 else None


def binary_metrics(y_true: Any, y_prob: Any, threshold: float = 0.5) -> dict[str, Any]:
    """Point metrics at one threshold; roc_auc is None when y_true holds one class only."""
    y, p = _arrays(y_true, y_prob)
    pred = (p >= threshold).astype(int)
    cm = skm.confusion_matrix(y, pred, labels=LABELS)
    rows = cm.sum(axis=1, keepdims=True)
    normalized = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    return {
        "accuracy": float(skm.accuracy_score(y, pred)),
        "precision": float(skm.precision_score(y, pred, labels=LABELS, zero_division=0)),
        "recall": float(skm.recall_score(y, pred, labels=LABELS, zero_division=0)),
        "f1": float(skm.f1_score(y, pred, labels=LABELS, zero_division=0)),
        "roc_auc": _auc(y, p),
        "confusion": cm.tolist(),
        "confusion_normalized": normalized.tolist(),
        "n": int(y.size),
    }


def _resample_metrics(y: np.ndarray, p: np.ndarray, weights: np.ndarray, threshold: float) -> dict:
    """Metrics for many resamples at once; row r of `weights` counts how often each image was drawn.

    Calling scikit-learn once per resample costs ~2 ms a metric (input checks dominate), i.e. seconds
    for 1000 resamples; a bootstrap resample is the same as sample weights, so the weighted confusion
    counts of all resamples are one matrix product. tests/test_evaluation.py checks every value
    against scikit-learn with `sample_weight`.
    """
    pred = p >= threshold
    pos = y == 1
    tp = weights @ (pos & pred)
    fp = weights @ (~pos & pred)
    fn = weights @ (pos & ~pred)
    tn = weights @ (~pos & ~pred)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = {
            "accuracy": (tp + tn) / weights.sum(axis=1),
            "precision": np.where(tp + fp > 0, tp / (tp + fp), 0.0),
            "recall": np.where(tp + fn > 0, tp / (tp + fn), 0.0),
            "f1": np.where(tp > 0, 2 * tp / (2 * tp + fp + fn), 0.0),
        }
        # ROC AUC = P(score of a malignant > score of a benign), ties counting one half (Mann-Whitney),
        # which is exactly scikit-learn's trapezoidal area; tied scores are pooled into groups.
        order = np.argsort(p, kind="stable")
        w = weights[:, order]
        starts = np.flatnonzero(np.r_[True, np.diff(p[order]) != 0])
        pos_w = np.add.reduceat(w * pos[order], starts, axis=1)
        neg_w = np.add.reduceat(w * ~pos[order], starts, axis=1)
        below = np.cumsum(neg_w, axis=1) - neg_w
        n_pos, n_neg = pos_w.sum(axis=1), neg_w.sum(axis=1)
        auc = (pos_w * (below + 0.5 * neg_w)).sum(axis=1) / (n_pos * n_neg)
        out["roc_auc"] = np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)
    return out


def bootstrap_ci(
    y_true: Any,
    y_prob: Any,
    *,
    metrics: Sequence[str] = CI_METRICS,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 42,
    threshold: float = 0.5,
    chunk: int = 250,
) -> dict[str, tuple[float | None, float | None]]:
    """Percentile bootstrap over images: each resample draws n images with replacement.

    Resamples where a metric is undefined (AUC of a one-class resample) are skipped for that metric;
    a metric undefined in every resample gets (None, None). The same seed gives the same intervals.
    """
    y, p = _arrays(y_true, y_prob)
    unknown = set(metrics) - {"accuracy", "precision", "recall", "f1", "roc_auc"}
    if unknown:
        raise ValueError(f"bootstrap_ci cannot compute {sorted(unknown)}.")
    rng = np.random.default_rng(seed)
    n = y.size
    values: dict[str, list[np.ndarray]] = {m: [] for m in metrics}
    for start in range(0, resamples, chunk):  # chunks bound memory at chunk x n weights
        rows = min(chunk, resamples - start)
        idx = rng.integers(0, n, size=(rows, n))
        weights = np.bincount((idx + n * np.arange(rows)[:, None]).ravel(), minlength=rows * n)
        result = _resample_metrics(y, p, weights.reshape(rows, n).astype(float), threshold)
        for m in metrics:
            values[m].append(result[m])
    alpha = (1 - confidence) / 2
    out = {}
    for m in metrics:
        v = np.concatenate(values[m])
        v = v[~np.isnan(v)]
        out[m] = (float(np.quantile(v, alpha)), float(np.quantile(v, 1 - alpha))) if v.size else (None, None)
    return out


def _rounded(value: Any, digits: int = 6) -> Any:
    """Round every float (also inside lists/dicts) so that equal results serialise to equal bytes."""
    if isinstance(value, dict):
        return {k: _rounded(v, digits) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(v, digits) for v in value]
    if isinstance(value, float | np.floating):
        return None if np.isnan(value) else round(float(value), digits)
    if isinstance(value, np.integer):
        return int(value)
    return value


def evaluate(
    y_true: Any,
    y_prob: Any,
    *,
    seed: int,
    resamples: int,
    confidence: float,
    threshold: float = 0.5,
    ci_metrics: Sequence[str] = REPORT_CI_METRICS,
) -> dict[str, Any]:
    """Everything a study stores for one model: flat keys, ready for tlrepro.io.write_json.

    Keys: accuracy, precision, recall, f1, roc_auc, n, confusion, confusion_normalized, threshold,
    `<m>_ci_low` / `<m>_ci_high` for each CI metric, ci_confidence, ci_resamples, classification_report.
    """
    y, p = _arrays(y_true, y_prob)
    result = binary_metrics(y, p, threshold)
    ci = bootstrap_ci(y, p, metrics=ci_metrics, resamples=resamples, confidence=confidence, seed=seed,
                      threshold=threshold)
    for name, (low, high) in ci.items():
        result[f"{name}_ci_low"], result[f"{name}_ci_high"] = low, high
    result.update(threshold=threshold, ci_confidence=confidence, ci_resamples=resamples)
    result["classification_report"] = skm.classification_report(
        y, (p >= threshold).astype(int), labels=LABELS, target_names=TARGET_NAMES, output_dict=True,
        zero_division=0,
    )
    return _rounded(result)


def threshold_for_recall(y_true: Any, y_prob: Any, target: float = 0.95) -> dict[str, float]:
    """The highest threshold whose malignant recall is at least `target`, and the precision paid for it.

    Screening wants few missed malignancies; this says what that costs in false alarms.
    """
    y, p = _arrays(y_true, y_prob)
    if not (y == 1).any():
        raise ValueError("threshold_for_recall needs at least one malignant (1) label.")
    precision, recall, thresholds = skm.precision_recall_curve(y, p)
    # thresholds increase and recall[i] (predict malignant when p >= thresholds[i]) never increases;
    # recall at the lowest threshold is 1, so some index always qualifies.
    i = int(np.flatnonzero(recall[:-1] >= target)[-1])
    return {"threshold": float(thresholds[i]), "precision": float(precision[i]), "recall": float(recall[i])}


def roc_curve_points(y_true: Any, y_prob: Any) -> pd.DataFrame:
    """The ROC curve as a table (fpr, tpr, threshold), for plots and for CSV outputs."""
    y, p = _arrays(y_true, y_prob)
    fpr, tpr, thresholds = skm.roc_curve(y, p)
    return pd.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": thresholds})


class Timer:
    """`with Timer() as t: ...` then `t.seconds`: wall time for training and prediction time figures."""

    def __init__(self) -> None:
        self.seconds: float = 0.0
        self._start = 0.0

    def __enter__(self) -> Timer:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._start
