"""Metrics against hand-computed cases, and the vectorised bootstrap against scikit-learn."""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from tlrepro.results import metrics as ev

# 4 benign, 4 malignant; at 0.5: TN=3 FP=1 / FN=1 TP=3
Y = [0, 0, 0, 0, 1, 1, 1, 1]
P = [0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9]


def noisy(n: int = 3000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return y, np.round(np.clip(0.35 * y + 0.65 * rng.random(n), 0, 1), 2)  # rounded: many ties


def test_binary_metrics_hand_computed():
    m = ev.binary_metrics(Y, P)
    assert m["confusion"] == [[3, 1], [1, 3]]
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["precision"] == pytest.approx(3 / 4)
    assert m["recall"] == pytest.approx(3 / 4)
    assert m["f1"] == pytest.approx(3 / 4)
    # pairs (malignant, benign) ranked right: 0.4 beats 3 of 4 benign, the others beat all 4 -> 15/16
    assert m["roc_auc"] == pytest.approx(15 / 16)
    assert m["confusion_normalized"] == [[0.75, 0.25], [0.25, 0.75]]
    assert m["n"] == 8


def test_threshold_and_string_labels():
    m = ev.binary_metrics(["benign"] * 4 + ["malignant"] * 4, P, threshold=0.35)
    assert m["confusion"] == [[3, 1], [0, 4]]
    assert m["recall"] == 1.0 and m["precision"] == pytest.approx(4 / 5)


def test_one_class_gives_none_auc_not_nan():
    m = ev.binary_metrics([0, 0, 0], [0.1, 0.7, 0.2])
    assert m["roc_auc"] is None
    assert m["recall"] == 0.0 and m["confusion"] == [[2, 1], [0, 0]]
    assert m["confusion_normalized"][1] == [0.0, 0.0]
    assert ev.bootstrap_ci([0, 0, 0], [0.1, 0.7, 0.2], resamples=100)["roc_auc"] == (None, None, 0)


def test_resampled_metrics_equal_sklearn_with_weights():
    y, p = noisy(400)
    weights = np.random.default_rng(1).integers(0, 3, (5, y.size)).astype(float)
    got = ev._resample_metrics(y, p, weights, 0.5)
    pred = (p >= 0.5).astype(int)
    for r, w in enumerate(weights):
        assert got["accuracy"][r] == pytest.approx(skm.accuracy_score(y, pred, sample_weight=w))
        assert got["precision"][r] == pytest.approx(skm.precision_score(y, pred, sample_weight=w))
        assert got["recall"][r] == pytest.approx(skm.recall_score(y, pred, sample_weight=w))
        assert got["f1"][r] == pytest.approx(skm.f1_score(y, pred, sample_weight=w))
        assert got["roc_auc"][r] == pytest.approx(skm.roc_auc_score(y, p, sample_weight=w))


def test_bootstrap_contains_estimate_is_seeded_and_fast():
    y, p = noisy()
    start = time.perf_counter()
    ci = ev.bootstrap_ci(y, p, resamples=1000, seed=7)
    assert time.perf_counter() - start < 3
    point = ev.binary_metrics(y, p)
    for name, (low, high, valid) in ci.items():
        assert low < point[name] < high, name
        assert valid == 1000
    assert ci == ev.bootstrap_ci(y, p, resamples=1000, seed=7)
    assert ci != ev.bootstrap_ci(y, p, resamples=1000, seed=8)
    wide = ev.bootstrap_ci(y, p, resamples=1000, seed=7, confidence=0.99)
    assert wide["accuracy"][0] <= ci["accuracy"][0] and wide["accuracy"][1] >= ci["accuracy"][1]


def test_evaluate_flat_rounded_and_stable_json():
    y, p = noisy(500)
    first = ev.evaluate(y, p, seed=42, resamples=200, confidence=0.95)
    for key in ("accuracy", "precision", "recall", "f1", "roc_auc", "accuracy_ci_low", "roc_auc_ci_high",
                "recall_ci_low", "f1_ci_high", "precision_ci_low", "classification_report", "confusion"):
        assert key in first
    assert first["accuracy_ci_low"] <= first["accuracy"] <= first["accuracy_ci_high"]
    assert first["classification_report"]["malignant"]["recall"] == first["recall"]
    assert first["accuracy_ci_valid"] == 200 and first["ci_resamples"] == 200 and first["loss"] > 0
    assert all(len(repr(v).split(".")[-1]) <= 6 for v in first.values() if isinstance(v, float))
    again = ev.evaluate(y, p, seed=42, resamples=200, confidence=0.95)
    assert json.dumps(first, sort_keys=True) == json.dumps(again, sort_keys=True)


def test_threshold_for_recall_reaches_target():
    y, p = noisy(1000)
    threshold = ev.threshold_for_recall(y, p, target=0.95)
    assert skm.recall_score(y, p >= threshold) >= 0.95
    higher = np.unique(p[p > threshold]).min()  # the next threshold up misses the target
    assert skm.recall_score(y, p >= higher) < 0.95
    assert ev.threshold_for_recall(Y, P, target=1.0) == 0.4


def test_operating_point_is_chosen_on_validation_and_applied_to_test():
    y_val, p_val = noisy(600, seed=1)
    y_test, p_test = noisy(600, seed=2)
    p_test = np.clip(p_test + 0.03, 0, 1)  # a shifted test distribution: its own threshold would differ
    point = ev.operating_point(y_val, p_val, y_test, p_test, target=0.9)
    assert point["threshold"] == ev.threshold_for_recall(y_val, p_val, 0.9)
    assert point["threshold"] != ev.threshold_for_recall(y_test, p_test, 0.9)  # test never picks it
    assert point["val_recall"] >= 0.9
    assert point["test_recall"] == pytest.approx(skm.recall_score(y_test, p_test >= point["threshold"]))


def test_patient_level_accuracy_is_the_mean_of_patients_accuracies():
    frame = pd.DataFrame({"patient": ["a", "a", "a", "a", "b", "c", "c"],
                          "magnification": [40, 40, 100, 100, 40, 100, 100]})
    correct = np.array([1, 1, 1, 0, 0, 1, 1])
    table = ev.grouped_accuracy(frame, correct, group="patient", by="magnification", seed=0, resamples=200,
                                confidence=0.95).set_index("subset")
    assert table.loc["all", "image_accuracy"] == pytest.approx(5 / 7)
    assert table.loc["all", "patient_accuracy"] == pytest.approx((3 / 4 + 0 + 1) / 3)
    assert table.loc["40", "patient_accuracy"] == pytest.approx((1 + 0) / 2)  # a: 2/2, b: 0/1
    assert table.loc["100", "patient_accuracy"] == pytest.approx((1 / 2 + 1) / 2)  # a: 1/2, c: 2/2
    assert table.loc["100", "patients"] == 2 and table.loc["all", "images"] == 7
    # three patients cannot bound a figure: no interval (tests/test_crossval.py covers ten and more)
    assert table.loc["all", "patient_ci_low"] is None and table.loc["all", "image_ci_high"] is None


def test_seed_spread():
    assert ev.seed_spread([0.8, 0.82, 0.84]) == {"mean": 0.82, "std": 0.02, "min": 0.8, "max": 0.84, "seeds": 3}


def test_roc_points():
    points = ev.roc_curve_points(Y, P)
    assert list(points.columns) == ["fpr", "tpr", "threshold"]
    assert points["tpr"].iloc[-1] == 1.0 and points["fpr"].is_monotonic_increasing


def test_figures_without_leaked_images_on_planted_duplicates(tmp_path, make_image):
    """Test images copied from training are flagged by the audit and left out of the leak-free figures."""
    from tlrepro.data.images import inspect_image
    from tlrepro.data.leakage import train_matches

    files = [make_image(tmp_path / f"{i}.png", seed=i, size=(48, 48)) for i in range(10)]
    infos = [inspect_image(p) for p in files]
    frame = pd.DataFrame({"path": [p.name for p in files], "view": "identity",
                          "side": ["train"] * 4 + ["test"] * 6, "label": ["benign", "malignant"] * 5,
                          "sha256": [i.sha256 for i in infos], "phash": [i.phash for i in infos],
                          "dihedral_phashes": [i.dihedral_phashes for i in infos]})
    for planted, source in ((4, 0), (5, 1)):  # two test images are exact copies of training images
        frame.loc[planted, ["sha256", "phash", "dihedral_phashes"]] = frame.loc[source, ["sha256", "phash", "dihedral_phashes"]].values
    frame["train_match"] = train_matches(frame)
    test = frame[frame["side"] == "test"]
    assert list(test["train_match"]) == ["exact", "exact", "", "", "", ""]
    y = (test["label"] == "malignant").astype(int).to_numpy()
    probs = np.where(y == 1, 0.9, 0.1).astype(float)
    probs[:2] = 1 - probs[:2]  # the copies are the two mistakes
    full = ev.evaluate(y, probs, seed=0, resamples=100, confidence=0.95)
    clean = ev.without_matches(y, probs, test["train_match"], seed=0, resamples=100, confidence=0.95)
    assert full["accuracy"] == pytest.approx(4 / 6) and clean["accuracy"] == 1.0
    assert clean["n"] == 4 and clean["removed"] == 2
    assert ev.without_matches(y, probs, [""] * 6, seed=0, resamples=100, confidence=0.95) is None


def test_multiclass_interval_resamples_whole_groups():
    """Eight copies of each of 12 originals: resampling copies as if independent gives a too-narrow interval;
    resampling originals gives the interval of 12 observations."""
    rng = np.random.default_rng(0)
    right = np.repeat(rng.random(12) < 0.7, 8)  # a copy is right exactly when its original is
    labels = np.zeros(96, dtype=int)
    probs = np.where(right[:, None], [[0.9, 0.05, 0.05]], [[0.1, 0.8, 0.1]])
    groups = np.repeat(np.arange(12), 8)
    per_image = ev.multiclass_accuracy(labels, probs, seed=1, resamples=2000, confidence=0.95)
    per_group = ev.multiclass_accuracy(labels, probs, seed=1, resamples=2000, confidence=0.95, groups=groups)
    assert per_image["accuracy"] == per_group["accuracy"] == pytest.approx(right.mean(), abs=1e-6)
    assert per_group["ci_groups"] == 12 and per_image["ci_groups"] is None
    width = {k: f["accuracy_ci_high"] - f["accuracy_ci_low"] for k, f in (("image", per_image), ("group", per_group))}
    assert width["group"] > 2 * width["image"]  # sqrt(8) narrower when copies are counted as independent


def test_patient_intervals_resample_patients_within_their_class():
    """12 patients, 4 benign (all wrong) and 8 malignant (all right): drawn within their class, every resample keeps
    4 and 8, so patient accuracy is 8/12 in all of them; drawn from all 12 at once, it varies."""
    patients = [f"p{i:02d}" for i in range(12) for _ in range(3)]
    labels = np.repeat([0] * 4 + [1] * 8, 3)
    frame = pd.DataFrame({"patient": patients, "label": np.where(labels == 1, "malignant", "benign")})
    correct = labels.astype(float)
    kwargs = {"group": "patient", "seed": 0, "resamples": 300, "confidence": 0.95}
    stratified = ev.grouped_accuracy(frame, correct, **kwargs).iloc[0]
    assert stratified["patient_ci_low"] == stratified["patient_ci_high"] == pytest.approx(8 / 12)
    loose = ev.grouped_accuracy(frame, correct, **kwargs, stratify=None).iloc[0]
    assert loose["patient_ci_low"] < 8 / 12 < loose["patient_ci_high"]
    grouped = ev.evaluate(labels, np.ones(labels.size), seed=0, resamples=300, confidence=0.95, groups=patients)
    assert grouped["patient_accuracy_ci_low"] == grouped["patient_accuracy_ci_high"] == pytest.approx(8 / 12)
    assert grouped["specificity_ci_high"] == 0.0 and grouped["roc_auc_ci_valid"] == 300
