"""Issue 28's uncertainty: the permutation test by patient, what a cross-validation of N patients can resolve,
one-class rows, and the patient bootstrap stratified by class. Arrays shaped like the held-out BreakHis copy
(7 benign and 16 malignant patients, unequal image counts)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from tlrepro.results import metrics, significance


def patients(benign: int = 7, malignant: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(label per image, patient per image): patients of 3 to 30 images, one class each."""
    rng = np.random.default_rng(seed)
    labels = np.array([0] * benign + [1] * malignant)
    members = np.repeat(np.arange(labels.size), rng.integers(3, 31, labels.size))
    return labels[members], np.array([f"p{i:02d}" for i in members])


def test_permutation_p_is_small_for_separable_predictions_and_large_for_shuffled_ones():
    y, groups = patients()
    rng = np.random.default_rng(1)
    separable = np.clip(0.2 + 0.6 * y + 0.1 * rng.standard_normal(y.size), 0, 1)
    test = significance.permutation_test(y, separable, groups, draws=400, seed=3)
    assert test["roc_auc"]["observed"] == pytest.approx(skm.roc_auc_score(y, separable), abs=1e-6)
    assert test["roc_auc"]["p_value"] == pytest.approx(1 / 401, abs=1e-6)  # no permutation reaches it
    assert test["patient_accuracy"]["p_value"] < 0.01 and test["patients"] == 23 and test["draws"] == 400
    # the same predictions against labels shuffled between patients: nothing to find
    labels = pd.Series(y).groupby(groups).first()
    shuffled = pd.Series(np.random.default_rng(2).permutation(labels.to_numpy()), index=labels.index)[groups]
    noise = significance.permutation_test(shuffled.to_numpy(), separable, groups, draws=400, seed=3)
    assert noise["roc_auc"]["p_value"] > 0.2 and noise["patient_accuracy"]["p_value"] > 0.2
    assert test == significance.permutation_test(y, separable, groups, draws=400, seed=3)  # seeded


def test_a_model_calling_every_image_malignant_has_p_one():
    """Every permutation keeps the count of malignant patients, so a constant model scores the same in all: its
    patient accuracy (the trivial baseline's) is no evidence of anything."""
    y, groups = patients(benign=4, malignant=8, seed=4)
    always = significance.permutation_test(y, np.ones(y.size), groups, draws=200)
    assert always["patient_accuracy"]["observed"] == pytest.approx(8 / 12)
    assert always["patient_accuracy"]["null_mean"] == pytest.approx(8 / 12)
    assert always["patient_accuracy"]["p_value"] == 1.0 and always["roc_auc"]["p_value"] == 1.0
    with pytest.raises(ValueError, match="one class per patient"):
        significance.permutation_test([0, 1, 1], [0.1, 0.2, 0.3], ["a", "a", "b"], draws=200)
    with pytest.raises(ValueError, match="at least 200"):
        significance.permutation_test(y, np.ones(y.size), groups, draws=50)


def test_the_null_auc_is_exactly_the_auc_of_permuted_patient_labels(monkeypatch):
    """Plant the permutations: every draw's AUC must equal scikit-learn's on those labels."""
    y, groups = patients(benign=5, malignant=7, seed=8)
    p = np.round(np.random.default_rng(9).random(y.size), 1)
    order = np.unique(groups)
    plans = [np.random.default_rng(s).permutation(pd.Series(y).groupby(groups).first().to_numpy()) for s in range(200)]
    monkeypatch.setattr(significance, "_permutations", lambda rng, labels, draws: np.array(plans[:draws]))
    got = significance.permutation_test(y, p, groups, draws=200, chunk=200)
    expected = [skm.roc_auc_score(pd.Series(plan, index=order)[groups].to_numpy(), p) for plan in plans]
    assert got["roc_auc"]["null_mean"] == pytest.approx(np.mean(expected), abs=1e-6)
    assert got["roc_auc"]["null_high"] == pytest.approx(np.quantile(expected, 0.95), abs=1e-6)


def test_resolution_counts_patients_and_its_detectable_accuracy_has_the_stated_power():
    y, groups = patients()
    r = significance.resolution(y, groups)
    assert (r["benign"], r["malignant"], r["patients"]) == (7, 16, 23)
    assert r["baseline"] == pytest.approx(16 / 23, abs=1e-6)
    assert 16 / 23 < r["detectable_patient_accuracy"] < 1 and 0.5 < r["detectable_auc"] < 1
    assert "7 benign and 16 malignant patients" in r["sentence"]
    bigger = significance.resolution(np.repeat([0, 1], [70, 160]), np.arange(230))
    assert bigger["detectable_difference"] < r["detectable_difference"] / 2  # ten times the patients
    # simulate the z-test over 400 patients at the detectable accuracy: it rejects about 80 % of the time
    n, b = 400, 0.7
    big = significance.resolution(np.repeat([0, 1], [120, 280]), np.arange(n))
    a = big["detectable_patient_accuracy"]
    right = np.random.default_rng(0).random((20000, n)) < a
    z = (right.mean(axis=1) - b) / np.sqrt(b * (1 - b) / n)
    assert (z > 1.959964).mean() == pytest.approx(0.8, abs=0.03)
    # the AUC too: patients' scores drawn so that the AUC is the detectable one, tested against 0.5
    auc = big["detectable_auc"]
    shift = np.sqrt(2) * __import__("scipy").stats.norm.ppf(auc)  # binormal: AUC = Phi(d / sqrt 2)
    rng = np.random.default_rng(1)
    hits = 0
    se0 = np.sqrt((n + 1) / (12 * 120 * 280))
    for _ in range(400):
        scores = np.r_[rng.standard_normal(120), rng.standard_normal(280) + shift]
        hits += (skm.roc_auc_score(np.repeat([0, 1], [120, 280]), scores) - 0.5) / se0 > 1.959964
    assert hits / 400 == pytest.approx(0.8, abs=0.08)
    assert significance.resolution([1, 1, 0], ["a", "b", "c"])["detectable_patient_accuracy"] is None  # 3 patients


def test_one_class_is_marked_pooled_and_per_fold():
    folds = ["1"] * 3 + ["2"] * 3
    everything = significance.one_class([0.9, 0.8, 0.6, 0.7, 0.99, 0.5], folds)
    assert everything["one_class"] and everything["pooled"] and everything["predicted"] == "malignant"
    assert everything["note"] == "predicts malignant for every image"
    in_a_fold = significance.one_class([0.9, 0.8, 0.6, 0.1, 0.7, 0.2], folds)
    assert in_a_fold["one_class"] and not in_a_fold["pooled"] and in_a_fold["folds"] == {"1": "malignant"}
    assert in_a_fold["note"] == "predicts one class within fold 1 (malignant)"
    both = significance.one_class([0.9, 0.1, 0.6, 0.1, 0.7, 0.2], folds)
    assert not both["one_class"] and both["note"] == "" and both["malignant_share"] == pytest.approx(0.5)
    assert significance.one_class([0.1, 0.2, 0.3])["predicted"] == "benign"
    assert significance.one_class([0.4, 0.5], threshold=0.6)["predicted"] == "benign"  # the threshold decides


def test_the_patient_bootstrap_keeps_each_class_count_in_every_resample():
    y, groups = patients()
    members = metrics._group_index(groups, y.size)
    strata = metrics.group_strata(y, members)
    assert strata.tolist() == [0] * 7 + [1] * 16
    weights = metrics.draw_group_weights(np.random.default_rng(0), 500, strata)
    assert (weights[:, :7].sum(axis=1) == 7).all() and (weights[:, 7:].sum(axis=1) == 16).all()
    plain = metrics.draw_group_weights(np.random.default_rng(0), 500, None, 23)
    assert (plain[:, :7].sum(axis=1) != 7).any()  # unstratified draws do not keep them
    # so every resample has both classes: the AUC is defined in all of them, and calling every image malignant
    # scores 16/23 at patient level in every resample
    p = np.random.default_rng(3).random(y.size)
    ci = metrics.bootstrap_ci(y, p, resamples=300, groups=groups)
    assert ci["roc_auc"][2] == 300
    constant = metrics.evaluate(y, np.ones(y.size), seed=1, resamples=300, confidence=0.95, groups=groups)
    assert constant["patient_accuracy_ci_low"] == constant["patient_accuracy_ci_high"] == pytest.approx(16 / 23, abs=1e-6)
    loose = metrics.bootstrap_ci(y, np.ones(y.size), resamples=300, groups=groups, stratify=False)
    assert loose["specificity"] == (0.0, 0.0, 300) and loose["accuracy"][0] < loose["accuracy"][1]
    # seeded: the same bytes for the same seed
    assert metrics.bootstrap_ci(y, p, resamples=300, groups=groups, seed=5) == metrics.bootstrap_ci(
        y, p, resamples=300, groups=groups, seed=5)


def test_the_gap_between_protocols_resamples_patients_within_their_class():
    """Paper's protocol all right; honest: 4 benign patients wrong, 8 malignant right. Drawn within their class,
    every resample keeps 4 and 8 and the difference is 4/12 in all; unlabelled frames are drawn as before."""
    from tlrepro.studies import crossval

    groups = [f"p{i:02d}" for i in range(12)]
    labels = ["benign"] * 4 + ["malignant"] * 8
    paper, honest = pd.DataFrame({"group": groups * 2, "label": labels * 2}), pd.DataFrame({"group": groups, "label": labels})
    honest_right = np.array([0] * 4 + [1] * 8)
    gap = crossval.protocol_gap(paper, np.ones(24), honest, honest_right, seed=0, resamples=300, confidence=0.95)
    assert gap["ci_low"] == gap["ci_high"] == pytest.approx(4 / 12)
    loose = crossval.protocol_gap(paper[["group"]], np.ones(24), honest[["group"]], honest_right, seed=0,
                                  resamples=300, confidence=0.95)
    assert loose["ci_low"] < 4 / 12 < loose["ci_high"]


def test_groups_that_mix_classes_are_drawn_unstratified():
    y = np.array([0, 1, 1, 0])
    members = np.array([0, 0, 1, 1])
    assert metrics.group_strata(y, members) is None
    frame = pd.DataFrame({"patient": list("aabbcc"), "label": ["b", "b", "m", "m", "b", "b"]})
    assert metrics.column_strata(frame, "patient", "label").tolist() == [0, 1, 0]
    assert metrics.column_strata(frame.assign(label=list("bmmmbb")), "patient", "label") is None
    assert metrics.column_strata(frame, "patient", None) is None


def test_head_seeds_reuse_the_study_seeds_cached_features(tmp_project, monkeypatch):
    """kumar2022's repeats are head seeds: a second seed builds the study seed's (random-init) backbone and reads its
    augmented views from the feature store, so no training feature is computed again; only the head differs."""
    import yaml
    from conftest import build_breakhis_tree

    from tlrepro.core import paths
    from tlrepro.data.index import prepare_dataset
    from tlrepro.data.splits import write_study_split
    from tlrepro.modeling import frozen_cache
    from tlrepro.studies import base

    params = yaml.safe_load((tmp_project / "params.yaml").read_text())
    kumar = params["studies"]["kumar2022"]
    kumar["protocols"] = {"image": kumar["protocols"]["image"]}  # one model per seed: the paper's split
    kumar["defaults"].update(image_size=32, weights="random", batch_size=8, epochs=1, augmentation_views=2)
    kumar["rows"] = {"VGG16": {**kumar["rows"]["VGG16"], "backbone": "TinyCNN"}}
    kumar["repeats"] = 2
    params["evaluation"]["bootstrap_resamples"] = 100
    (tmp_project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    build_breakhis_tree(paths.raw_dir("breakhis"), per_patient=2)
    prepare_dataset("breakhis")
    write_study_split("kumar2022")
    study = base.load_study("kumar2022")
    passes: dict[int, list[str]] = {}
    seed = {"now": None}
    real_run, real_row = frozen_cache._run, base.run_row
    monkeypatch.setattr(frozen_cache, "_run", lambda fn, data, steps, what: passes.setdefault(seed["now"], [])
                        .append(what) or real_run(fn, data, steps, what))
    monkeypatch.setattr(base, "run_row", lambda *a, **k: seed.update(now=k["seed"]) or real_row(*a, **k))
    results = base.run_rows(study, save=False)
    assert any("augmented view" in what for what in passes[42])
    assert not [what for what in passes.get(43, []) if "augmented view" in what or "train" in what]
    spread = results.spread(("image", "VGG16"), "accuracy")
    assert spread is not None and spread["seeds"] == 2
    assert base.head_seeds(study, study.row("VGG16"), 43) and not base.head_seeds(study, study.row("VGG16"), 42)
