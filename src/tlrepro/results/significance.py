"""What a grouped (patient-level) figure can and cannot claim: a permutation test by patient, what a
cross-validation of this many patients can resolve, and whether a row's predictions are one class.

- `permutation_test`: the null hypothesis is that a model's predictions carry no information about the
  patients' labels. Each patient keeps one label for all its images; a draw permutes the labels among patients
  (so the count of malignant patients is fixed) and scores the fixed out-of-fold predictions against them. No
  model is retrained: this tests the predictions as they stand (the cheapest valid form). A variant that refits a
  logistic regression per draw, testing the whole procedure, is tlrepro.results.baselines.refit_permutation_test
  (colour statistics, or any per-image features such as a frozen backbone's; the Keras heads are not refitted).
  p = (1 + draws at or above the observed) / (1 + draws). A model that calls everything malignant gets p = 1 for patient accuracy: its 0.696 is what every
  permutation gives.
- `resolution`: the counts of benign and malignant patients, and the smallest patient accuracy (above the
  trivial baseline) and AUC (above 0.5) that a test on this many patients would detect at the given power and
  two-sided level, by the normal approximation with patients as the independent unit (see its docstring).
- `one_class`: whether a row predicts one class for every image, pooled or within any fold.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

from tlrepro.core.fileio import plain
from tlrepro.data.labels import BINARY_CLASSES, predicted_positive
from tlrepro.results import metrics

MIN_DRAWS = 200


def _patient_labels(y: np.ndarray, members: np.ndarray) -> np.ndarray:
    labels = metrics.group_strata(y, members)
    if labels is None:
        raise ValueError("A permutation by patient needs one class per patient; some patient holds both.")
    return labels


def _permutations(rng: np.random.Generator, labels: np.ndarray, draws: int) -> np.ndarray:
    """draws x patients: each row the patients' labels in a random order."""
    return rng.permuted(np.tile(labels, (draws, 1)), axis=1)


def summarize_null(observed: float | None, null: np.ndarray) -> dict[str, Any]:
    """An observed figure against its permutation null: {observed, p_value = (1 + draws at or above it) / (1 +
    draws), null_mean, null_high (95th percentile), percentile (share of draws below it)}; NaN draws left out."""
    if observed is None:
        return {"observed": None, "p_value": None, "null_mean": None, "null_high": None, "percentile": None}
    null = null[~np.isnan(null)]
    at_least = int((null >= observed - 1e-12).sum())  # ties count against the model
    return {"observed": float(observed), "p_value": (1 + at_least) / (1 + null.size),
            "null_mean": float(null.mean()), "null_high": float(np.quantile(null, 0.95)),
            "percentile": float((null < observed - 1e-12).mean())}


def permutation_test(y_true: Any, y_prob: Any, groups: Sequence, *, draws: int = 1000, seed: int = 42,
                     threshold: float = 0.5, unit: str = "patient", chunk: int = 250) -> dict[str, Any]:
    """Permutation test by patient of fixed predictions (see the module's docstring), seeded.

    Returns {draws, <unit>s, seed, method, roc_auc, accuracy, <unit>_accuracy}; each figure is {observed, p_value,
    null_mean, null_high (the null's 95th percentile), percentile (share of the null below the observed)}. ROC AUC
    is None (and so its p-value) when the data hold one class. Images tested several times (repeated folds) are
    scored each time, with their patient's one permuted label."""
    if draws < MIN_DRAWS:
        raise ValueError(f"permutation_test needs at least {MIN_DRAWS} draws, not {draws}.")
    y, p = metrics._arrays(y_true, y_prob)
    members = metrics._group_index(groups, y.size)
    labels = _patient_labels(y, members)
    n, sizes = y.size, np.bincount(members).astype(float)
    said_malignant = np.bincount(members, weights=predicted_positive(p, threshold).astype(float), minlength=sizes.size)
    ranks = stats.rankdata(p)  # ties share their mean rank: the AUC counts a tie as one half, as scikit-learn's
    rng = np.random.default_rng(seed)
    null: dict[str, list[np.ndarray]] = {"roc_auc": [], "accuracy": [], "group": []}
    for start in range(0, draws, chunk):
        size = min(chunk, draws - start)
        perm = _permutations(rng, labels, size).astype(float)
        image_labels = perm[:, members]
        positives = image_labels.sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            auc = (image_labels @ ranks - positives * (positives + 1) / 2) / (positives * (n - positives))
        null["roc_auc"].append(np.where((positives > 0) & (positives < n), auc, np.nan))
        right = perm * said_malignant + (1 - perm) * (sizes - said_malignant)  # per patient: images right
        null["accuracy"].append(right.sum(axis=1) / n)
        null["group"].append((right / sizes).mean(axis=1))
    right = labels * said_malignant + (1 - labels) * (sizes - said_malignant)
    observed = {"roc_auc": metrics._auc(y, p), "accuracy": float(right.sum() / n), "group": float((right / sizes).mean())}
    out: dict[str, Any] = {
        "draws": draws, f"{unit}s": int(sizes.size), "seed": seed,
        "method": f"labels permuted among {unit}s ({draws} draws), scored against the fixed out-of-fold predictions"}
    for name, key in (("roc_auc", "roc_auc"), ("accuracy", "accuracy"), (f"{unit}_accuracy", "group")):
        out[name] = summarize_null(observed[key], np.concatenate(null[key]))
    return plain(out)


def _detectable(start: float, need: Any) -> float | None:
    """The smallest value on a fine grid from `start` to 1 whose `need(value)` is true, or None."""
    grid = np.linspace(start, 1.0, 20001)[1:]
    hits = np.flatnonzero(need(grid))
    return float(grid[hits[0]]) if hits.size else None


def _auc_se(auc: np.ndarray | float, positives: int, negatives: int) -> np.ndarray:
    """Hanley & McNeil's (1982) standard error of an AUC from `positives` and `negatives` independent scores."""
    a = np.asarray(auc, dtype=float)
    q1, q2 = a / (2 - a), 2 * a**2 / (1 + a)
    return np.sqrt((a * (1 - a) + (positives - 1) * (q1 - a**2) + (negatives - 1) * (q2 - a**2))
                   / (positives * negatives))


def resolution(y_true: Any, groups: Sequence, *, baseline: float | None = None, alpha: float = 0.05,
               power: float = 0.8, unit: str = "patient") -> dict[str, Any]:
    """What a test on these patients can resolve: the count of benign and malignant patients, and the smallest
    patient accuracy and ROC AUC it would tell apart from the baseline and from chance.

    Method (normal approximation, patients as the independent unit, two-sided level `alpha`, `power`):
    - patient accuracy, against `baseline` b (default: the majority class's share of patients, what calling every
      image that class scores): the smallest a with sqrt(n) (a - b) >= z(1 - alpha/2) sqrt(b (1 - b)) +
      z(power) sqrt(a (1 - a)), treating each patient's accuracy as right-or-wrong (the largest variance a
      patient's accuracy can have, so the figure errs toward what the data can detect at best);
    - ROC AUC, against 0.5: the smallest A with A - 0.5 >= z(1 - alpha/2) SE(0.5) + z(power) SE(A), SE from
      Hanley & McNeil with one score per patient (images of one patient add less than independent patients).
    None where no value up to 1 is detectable. Returns {benign, malignant, <unit>s, baseline, alpha, power,
    detectable_<unit>_accuracy, detectable_difference, detectable_auc, method, sentence}."""
    y, _ = metrics._arrays(y_true, np.zeros(len(np.asarray(y_true).ravel())))
    members = metrics._group_index(groups, y.size)
    labels = _patient_labels(y, members)
    malignant, n = int(labels.sum()), int(labels.size)
    benign = n - malignant
    b = float(max(benign, malignant) / n) if baseline is None else float(baseline)
    z_level, z_power = stats.norm.ppf(1 - alpha / 2), stats.norm.ppf(power)
    accuracy = _detectable(b, lambda a: np.sqrt(n) * (a - b) >= z_level * np.sqrt(b * (1 - b))
                           + z_power * np.sqrt(a * (1 - a)))
    auc = (_detectable(0.5, lambda a: a - 0.5 >= z_level * _auc_se(0.5, malignant, benign)
                       + z_power * _auc_se(a, malignant, benign)) if benign and malignant else None)
    level = f"{power:.0%} power and a {alpha:.0%} two-sided level"
    said_accuracy = (f"a {unit} accuracy apart from the baseline's {b:.3f} only from about {accuracy:.2f} up "
                     f"(a difference of {accuracy - b:.2f})" if accuracy is not None
                     else f"no {unit} accuracy, even 1.0, apart from the baseline's {b:.3f}")
    said_auc = (f"an AUC apart from 0.5 only from about {auc:.2f} up" if auc is not None
                else "no AUC apart from 0.5")
    sentence = (f"{benign} benign and {malignant} malignant {unit}s: at {level}, they can tell {said_accuracy}, and "
                f"{said_auc}.")
    return plain({"benign": benign, "malignant": malignant, f"{unit}s": n, "baseline": b, "alpha": alpha,
                  "power": power, f"detectable_{unit}_accuracy": accuracy,
                  "detectable_difference": None if accuracy is None else accuracy - b, "detectable_auc": auc,
                  "method": f"normal approximation over {unit}s (Hanley & McNeil for the AUC)",
                  "sentence": sentence})


def one_class(y_prob: Any, folds: Sequence | None = None, *, threshold: float = 0.5) -> dict[str, Any]:
    """Whether predictions are one class: pooled, or within any fold (`folds`: each prediction's fold; '' or None
    for none). Returns {one_class (pooled or in a fold), pooled, predicted (the pooled one class, else None),
    folds (the folds of one class, as {fold: class}), malignant_share (of all predictions), note (words, '' when
    both classes are predicted everywhere)}."""
    said = predicted_positive(np.asarray(y_prob, dtype=float).ravel(), threshold)
    share = float(said.mean()) if said.size else 0.0
    pooled = bool(said.size) and share in (0.0, 1.0)
    predicted = BINARY_CLASSES[int(share == 1.0)] if pooled else None
    by_fold: dict[str, str] = {}
    if folds is not None:
        fold = np.array(["" if f is None else str(f) for f in folds], dtype=object)
        for value in sorted({str(f) for f in fold if f}, key=lambda f: (0, int(f)) if f.isdigit() else (1, f)):
            part = said[fold == value]
            if part.size and (part.all() or not part.any()):
                by_fold[value] = BINARY_CLASSES[int(part.all())]
    if pooled:
        note = f"predicts {predicted} for every image"
    elif by_fold:
        note = "predicts one class within " + ", ".join(f"fold {f} ({c})" for f, c in by_fold.items())
    else:
        note = ""
    return {"one_class": pooled or bool(by_fold), "pooled": pooled, "predicted": predicted, "folds": by_fold,
            "malignant_share": share, "note": note}
