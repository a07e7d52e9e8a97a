"""Evaluation figures with bootstrap confidence intervals, for binary benign (0) / malignant (1) models.

Conventions, shared by every study so that reports compare like with like:
- label 1 = malignant is the positive class; precision, recall and F1 are the malignant class's;
- a probability counts as malignant when `y_prob >= threshold` (`labels.predicted_positive`, the rule every
  part of the project uses; scikit-learn's curves use the same);
- a metric that is undefined for the data (ROC AUC with one class only) is None, never NaN, so that the
  metrics JSON stays valid JSON; an undefined precision/recall (no predicted or true positives) is 0.0,
  as scikit-learn's `zero_division=0`;
- intervals are percentile bootstraps over the independent unit: images, or, where images come in groups (a
  patient's images are not independent of each other), whole groups; with fewer than MIN_GROUPS groups no
  interval is given ("too few patients for an interval"). The number of resamples in which a metric was
  defined is reported beside it;
- a group bootstrap is stratified by class where every group holds one class (a BreakHis patient is benign or
  malignant): benign groups are drawn among benign ones and malignant among malignant, so every resample keeps
  the data's count of each (with 7 benign patients in 23, an unstratified draw has no benign patient once in
  about 5,000 draws and often only 3 or 4, which makes specificity and AUC swing for want of patients, not for
  anything the model did). Where groups mix classes they are drawn unstratified. Image-level bootstraps (no
  groups) are unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from tlrepro.core.fileio import plain
from tlrepro.data.labels import BINARY_CLASSES, predicted_positive

LABELS = (0, 1)
CI_METRICS = ("accuracy", "precision", "recall", "specificity", "f1", "roc_auc")
MIN_GROUPS = 10  # fewer groups than this cannot bound a figure: no interval is shown


def _arrays(y_true: Any, y_prob: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).ravel()
    if y.dtype.kind in "OUS":  # the split CSVs' "benign"/"malignant"
        y = np.array([BINARY_CLASSES.index(v) if v in BINARY_CLASSES else -1 for v in y])
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
    pred = predicted_positive(p, threshold).astype(int)
    cm = skm.confusion_matrix(y, pred, labels=LABELS)
    rows = cm.sum(axis=1, keepdims=True)
    normalized = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    return {
        "accuracy": float(skm.accuracy_score(y, pred)),
        "precision": float(skm.precision_score(y, pred, labels=LABELS, zero_division=0)),
        "recall": float(skm.recall_score(y, pred, labels=LABELS, zero_division=0)),  # sensitivity
        "specificity": float(skm.recall_score(y, pred, labels=LABELS, pos_label=0, zero_division=0)),
        "f1": float(skm.f1_score(y, pred, labels=LABELS, zero_division=0)),
        "roc_auc": _auc(y, p),
        "loss": float(skm.log_loss(y, np.clip(p, 1e-7, 1 - 1e-7), labels=LABELS)),
        "confusion": cm.tolist(),
        "confusion_normalized": normalized.tolist(),
        "n": int(y.size),
    }


def _resample_metrics(y: np.ndarray, p: np.ndarray, weights: np.ndarray, threshold: float) -> dict:
    """Metrics for many resamples at once; row r of `weights` counts how often each image was drawn.

    A bootstrap resample is the same as sample weights, so the weighted confusion counts of all resamples
    are one matrix product (scikit-learn per resample would cost seconds). tests/test_metrics.py checks
    every value against scikit-learn with `sample_weight`.
    """
    pred = predicted_positive(p, threshold)
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
            "specificity": np.where(tn + fp > 0, tn / (tn + fp), 0.0),
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


def draw_weights(rng: np.random.Generator, rows: int, n: int) -> np.ndarray:
    idx = rng.integers(0, n, size=(rows, n))
    return np.bincount((idx + n * np.arange(rows)[:, None]).ravel(), minlength=rows * n).reshape(rows, n).astype(float)


def group_strata(y: np.ndarray, members: np.ndarray) -> np.ndarray | None:
    """Each group's class (0 benign, 1 malignant) when every group holds one class, else None (mixed groups:
    the bootstrap then draws groups unstratified). `members` is each image's group as 0..G-1."""
    positives = np.bincount(members, weights=y, minlength=int(members.max()) + 1)
    sizes = np.bincount(members, minlength=positives.size)
    if ((positives > 0) & (positives < sizes)).any():
        return None
    return (positives > 0).astype(int)


def draw_group_weights(rng: np.random.Generator, rows: int, strata: np.ndarray | None, groups: int | None = None
                       ) -> np.ndarray:
    """rows x G counts of how often each group is drawn. With `strata` (each group's class, group_strata), each
    stratum's groups are drawn among themselves, as many as it holds, so every resample keeps the count of groups
    of each class; without, G groups are drawn from all G (`groups` gives G). Seeded by `rng` alone."""
    if strata is None:
        return draw_weights(rng, rows, int(groups))
    strata = np.asarray(strata)
    weights = np.zeros((rows, strata.size))
    for stratum in np.unique(strata):  # sorted: the same draws for the same seed
        where = np.flatnonzero(strata == stratum)
        weights[:, where] = draw_weights(rng, rows, where.size)
    return weights


def bootstrap_ci(y_true: Any, y_prob: Any, *, metrics: Sequence[str] = CI_METRICS, resamples: int = 1000,
                 confidence: float = 0.95, seed: int = 42, threshold: float = 0.5, chunk: int = 250,
                 groups: Sequence | None = None, stratify: bool = True
                 ) -> dict[str, tuple[float | None, float | None, int]]:
    """Percentile bootstrap over images, or over whole groups when `groups` gives each image's group (a drawn
    group brings all its images): (low, high, valid resamples) per metric. With `stratify` (the default) and
    groups that each hold one class, groups are drawn within their class (see the module's docstring).

    Resamples where a metric is undefined (AUC of a one-class resample) are skipped for that metric and
    counted out of `valid`; a metric undefined in every resample gets (None, None, 0). Seeded.
    """
    y, p = _arrays(y_true, y_prob)
    members = _group_index(groups, y.size)
    strata = group_strata(y, members) if members is not None and stratify else None
    unknown = set(metrics) - set(CI_METRICS)
    if unknown:
        raise ValueError(f"bootstrap_ci cannot compute {sorted(unknown)}.")
    rng = np.random.default_rng(seed)
    values: dict[str, list[np.ndarray]] = {m: [] for m in metrics}
    for start in range(0, resamples, chunk):  # chunks bound memory at chunk x n weights
        size = min(chunk, resamples - start)
        weights = (draw_weights(rng, size, y.size) if members is None
                   else draw_group_weights(rng, size, strata, int(members.max()) + 1)[:, members])
        result = _resample_metrics(y, p, weights, threshold)
        for m in metrics:
            values[m].append(result[m])
    return {m: percentiles(np.concatenate(values[m]), confidence) for m in metrics}


def _group_index(groups: Sequence | None, n: int) -> np.ndarray | None:
    """Each image's group as 0..G-1 (groups in sorted order), or None for image-level resampling."""
    if groups is None:
        return None
    values = np.asarray(groups, dtype=object).astype(str)
    if values.size != n:
        raise ValueError(f"groups has {values.size} entries for {n} images.")
    return np.unique(values, return_inverse=True)[1]


def percentiles(v: np.ndarray, confidence: float) -> tuple[float | None, float | None, int]:
    v = v[~np.isnan(v)]
    alpha = (1 - confidence) / 2
    if not v.size:
        return None, None, 0
    return float(np.quantile(v, alpha)), float(np.quantile(v, 1 - alpha)), int(v.size)


def evaluate(y_true: Any, y_prob: Any, *, seed: int, resamples: int, confidence: float, threshold: float = 0.5,
             ci_metrics: Sequence[str] = CI_METRICS, groups: Sequence | None = None, unit: str = "patient"
             ) -> dict[str, Any]:
    """Everything a study stores for one model on one side: flat keys, rounded, JSON-ready.

    Keys: accuracy, precision, recall (sensitivity), specificity, f1, roc_auc, loss, n, confusion,
    confusion_normalized, threshold, `<m>_ci_low` / `<m>_ci_high` / `<m>_ci_valid` for each CI metric,
    ci_confidence, ci_resamples, ci_unit, classification_report. With `groups` (each image's `unit`, e.g.
    patient), intervals resample groups, `<unit>s` counts them and `<unit>_accuracy` is the mean over groups of
    each group's accuracy (with its interval); under MIN_GROUPS groups the intervals are None and `ci_note`
    says why.
    """
    y, p = _arrays(y_true, y_prob)
    result = binary_metrics(y, p, threshold)
    ci = bootstrap_ci(y, p, metrics=ci_metrics, resamples=resamples, confidence=confidence, seed=seed,
                      threshold=threshold, groups=groups)
    too_few = groups is not None and len(set(map(str, groups))) < MIN_GROUPS
    for name, (low, high, valid) in ci.items():
        if too_few:
            low, high = None, None
        result[f"{name}_ci_low"], result[f"{name}_ci_high"], result[f"{name}_ci_valid"] = low, high, valid
    result.update(threshold=threshold, ci_confidence=confidence, ci_resamples=resamples,
                  ci_unit=unit if groups is not None else "image")
    if groups is not None:
        per = group_accuracy(y, p, groups, threshold=threshold, seed=seed, resamples=resamples,
                             confidence=confidence)
        result[f"{unit}s"] = per["groups"]
        result[f"{unit}_accuracy"] = per["accuracy"]
        result[f"{unit}_accuracy_ci_low"], result[f"{unit}_accuracy_ci_high"] = (
            (None, None) if too_few else (per["ci_low"], per["ci_high"]))
        if too_few:
            result["ci_note"] = f"too few {unit}s for an interval ({per['groups']}; at least {MIN_GROUPS} needed)"
    result["classification_report"] = skm.classification_report(
        y, predicted_positive(p, threshold).astype(int), labels=LABELS, target_names=BINARY_CLASSES, output_dict=True,
        zero_division=0)
    return plain(result)


def group_accuracy(y_true: Any, y_prob: Any, groups: Sequence, *, threshold: float, seed: int, resamples: int,
                   confidence: float) -> dict[str, Any]:
    """Group-level accuracy, the mean over groups of each group's accuracy (wang2024's patient-level accuracy,
    Eq. 1-2), with a percentile interval from resampling groups (within their class where each holds one)."""
    y, p = _arrays(y_true, y_prob)
    members = _group_index(groups, y.size)
    correct = (predicted_positive(p, threshold).astype(int) == y).astype(float)
    sizes = np.bincount(members).astype(float)
    per_group = np.bincount(members, weights=correct) / sizes
    weights = draw_group_weights(np.random.default_rng(seed + 1), resamples, group_strata(y, members), len(per_group))
    draws = weights @ per_group / len(per_group)
    low, high, _ = percentiles(draws, confidence)
    return {"accuracy": float(per_group.mean()), "ci_low": low, "ci_high": high, "groups": int(len(per_group))}


def without_matches(y_true: Any, y_prob: Any, matches: Sequence[str], **kwargs: Any) -> dict[str, Any] | None:
    """`evaluate` on the images that match no training image (`matches` == ''), or None when none match
    (or all do): the figures a leak cannot have inflated."""
    clean = np.asarray(matches, dtype=object) == ""
    if clean.all() or not clean.any():
        return None
    y, p = _arrays(y_true, y_prob)
    if kwargs.get("groups") is not None:
        kwargs["groups"] = np.asarray(kwargs["groups"], dtype=object)[clean]
    return {**evaluate(y[clean], p[clean], **kwargs), "removed": int((~clean).sum())}


def multiclass_accuracy(labels: np.ndarray, probs: np.ndarray, *, seed: int, resamples: int, confidence: float,
                        groups: Sequence | None = None) -> dict[str, Any]:
    """Accuracy of argmax predictions (a pretraining step's figure) with its bootstrap interval, which resamples
    whole groups when `groups` is given (e.g. an image's rotated and flipped copies: they are not independent)."""
    correct = (np.asarray(probs).argmax(axis=1) == np.asarray(labels)).astype(float)
    members = _group_index(groups, correct.size)
    rng = np.random.default_rng(seed)
    weights = (draw_weights(rng, resamples, correct.size) if members is None
               else draw_weights(rng, resamples, int(members.max()) + 1)[:, members])
    draws = (weights @ correct) / weights.sum(axis=1)
    low, high, valid = percentiles(draws, confidence)
    return plain({"accuracy": float(correct.mean()), "accuracy_ci_low": low, "accuracy_ci_high": high,
                  "accuracy_ci_valid": valid, "n": int(correct.size),
                  "ci_groups": None if members is None else int(members.max()) + 1})


def threshold_for_recall(y_true: Any, y_prob: Any, target: float = 0.95) -> float:
    """The highest threshold whose malignant recall on (y_true, y_prob) is at least `target`.

    Choose it on validation and apply it to test: chosen on test, it would be tuned to the test images.
    """
    y, p = _arrays(y_true, y_prob)
    if not (y == 1).any():
        raise ValueError("threshold_for_recall needs at least one malignant (1) label.")
    _, recall, thresholds = skm.precision_recall_curve(y, p)
    # thresholds increase and recall[i] (predict malignant when p >= thresholds[i]) never increases
    return float(thresholds[int(np.flatnonzero(recall[:-1] >= target)[-1])])


def operating_point(y_val: Any, p_val: Any, y_test: Any, p_test: Any, target: float) -> dict[str, float]:
    """The recall-first threshold chosen on validation, and what it gives on test."""
    threshold = threshold_for_recall(y_val, p_val, target)
    val, test = binary_metrics(y_val, p_val, threshold), binary_metrics(y_test, p_test, threshold)
    return {"threshold": threshold, "target_recall": target, "val_recall": val["recall"],
            "val_precision": val["precision"], "test_recall": test["recall"], "test_precision": test["precision"],
            "test_accuracy": test["accuracy"]}


def seed_spread(values: Sequence[float]) -> dict[str, float | int]:
    """Mean, standard deviation (ddof 1), min and max of one figure across training seeds."""
    v = np.asarray(values, dtype=float)
    return plain({"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
                  "min": float(v.min()), "max": float(v.max()), "seeds": int(v.size)})


def grouped_accuracy(frame: pd.DataFrame, correct: np.ndarray, *, group: str, by: str | None = None,
                     seed: int, resamples: int, confidence: float, stratify: str | None = "label") -> pd.DataFrame:
    """Image-level and group-level (patient-level) accuracy, overall and per `by` value (magnification).

    Group-level accuracy is the mean over groups of each group's accuracy (wang2024's Eq. 1-2). Intervals
    resample groups, not images: images of one patient are not independent; under MIN_GROUPS groups there are none.
    Where `frame` has the `stratify` column (the class) and each group holds one value of it, groups are drawn
    within their class.
    """
    data = frame.assign(_correct=np.asarray(correct, dtype=float)).reset_index(drop=True)
    groups = sorted(data.groupby(by), key=lambda kv: (0, float(kv[0])) if str(kv[0]).replace(".", "").isdigit()
                    else (1, str(kv[0]))) if by else []
    parts = [("all", data)] + [(v, d) for v, d in groups]
    rng = np.random.default_rng(seed)
    rows = []
    for value, part in parts:
        per_group = part.groupby(group)["_correct"].agg(["sum", "count"])
        k = len(per_group)
        weights = draw_group_weights(rng, resamples, column_strata(part, group, stratify), k)
        image = weights @ per_group["sum"].to_numpy() / (weights @ per_group["count"].to_numpy())
        patient = weights @ (per_group["sum"] / per_group["count"]).to_numpy() / k
        il, ih, _ = percentiles(image, confidence) if k >= MIN_GROUPS else (None, None, 0)
        pl, ph, _ = percentiles(patient, confidence) if k >= MIN_GROUPS else (None, None, 0)
        rows.append({"subset": str(value), "images": int(per_group["count"].sum()), f"{group}s": k,
                     "image_accuracy": float(part["_correct"].mean()), "image_ci_low": il, "image_ci_high": ih,
                     f"{group}_accuracy": float((per_group["sum"] / per_group["count"]).mean()),
                     f"{group}_ci_low": pl, f"{group}_ci_high": ph})
    return pd.DataFrame(rows)


def column_strata(frame: pd.DataFrame, group: str, column: str | None) -> np.ndarray | None:
    """Each group's value of `column` as 0..S-1 (groups in sorted order, as groupby gives them), or None where
    the column is missing or a group holds several values."""
    if not column or column not in frame:
        return None
    values = frame.groupby(group)[column].agg(["nunique", "first"])
    if (values["nunique"] > 1).any():
        return None
    return np.unique(values["first"].astype(str).to_numpy(), return_inverse=True)[1]


def roc_curve_points(y_true: Any, y_prob: Any) -> pd.DataFrame:
    """The ROC curve as a table (fpr, tpr, threshold), for plots and for CSV outputs."""
    y, p = _arrays(y_true, y_prob)
    fpr, tpr, thresholds = skm.roc_curve(y, p)
    return pd.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": thresholds})
