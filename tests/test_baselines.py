"""Issue 28's baselines: the trivial one (the training side's majority class, exact by hand), chance, the colour-only
logistic regression (beats chance where colour separates the classes, not where it does not), and the verdict
in words. A hand-made split, and generated H&E-like BreakHis trees through the real index and split."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import EOSIN, HEMATOXYLIN, he_image
from PIL import Image

from tlrepro.core.config import Split
from tlrepro.data.index import prepare_dataset, read_index
from tlrepro.data.splits import split_protocol
from tlrepro.results import baselines
from tlrepro.studies import crossval

EVALUATION = {"seed": 3, "resamples": 300, "confidence": 0.95}


def rows(fold: str, side: str, patient: str, label: str, images: int) -> list[dict]:
    return [{"fold": fold, "side": side, "path": f"{patient}-{i}.png", "label": label, "group": patient}
            for i in range(images)]


def hand_split() -> pd.DataFrame:
    """Two folds. Fold 1 trains on 3 malignant and 1 benign image (patients: 2 malignant, 1 benign), its large benign
    validation patient must not count, and its test side is mostly benign (it must not choose). Fold 2 trains on
    3 benign and 2 malignant images, but 1 benign and 2 malignant patients: image and patient majorities differ."""
    parts = (rows("1", "train", "M1", "malignant", 2) + rows("1", "train", "M2", "malignant", 1)
             + rows("1", "train", "B1", "benign", 1) + rows("1", "val", "B9", "benign", 5)
             + rows("1", "test", "B2", "benign", 3) + rows("1", "test", "M3", "malignant", 1)
             + rows("2", "train", "B2", "benign", 3) + rows("2", "train", "M3", "malignant", 1)
             + rows("2", "train", "M4", "malignant", 1)
             + rows("2", "test", "M1", "malignant", 2) + rows("2", "test", "B1", "benign", 1)
             + rows("2", "test", "M2", "malignant", 1))
    return pd.DataFrame(parts)


def test_the_trivial_baseline_is_the_training_sides_majority_by_hand():
    trivial = baselines.trivial_baseline(hand_split(), **EVALUATION)
    # image level: fold 1 says malignant (3 of 4 training images), fold 2 benign (3 of 5):
    # right are M3 (1 image) in fold 1 and B1 (1 image) in fold 2, of 8 test images
    assert trivial.metrics["accuracy"] == pytest.approx(2 / 8)
    # patient level: both folds say malignant (2 of 3 training patients): right are M3, M1, M2 of 5 patients
    assert trivial.metrics["patient_accuracy"] == pytest.approx(3 / 5)
    assert trivial.metrics["roc_auc"] == 0.5 and trivial.metrics["roc_auc_ci_low"] is None
    assert trivial.metrics["majority"] == "varies" and trivial.metrics["n"] == 8 and trivial.metrics["patients"] == 5
    assert [u["majority_images"] for u in trivial.units] == ["malignant", "benign"]
    assert [u["majority_patients"] for u in trivial.units] == ["malignant", "malignant"]
    assert list(trivial.frame["fold"]) == ["1"] * 4 + ["2"] * 4 and trivial.probs.tolist() == [1] * 4 + [0] * 4


def test_calling_every_image_malignant_scores_the_share_of_malignant_patients():
    """The held-out copy's case: 23 patients, 7 benign; every fold trains on a malignant majority, so the trivial
    baseline calls every image malignant and scores 16/23 at patient level, with the same patient interval
    machinery (stratified by class: a constant's patient accuracy is the same in every resample)."""
    rng = np.random.default_rng(0)
    labels = ["benign"] * 7 + ["malignant"] * 16
    sizes = rng.integers(5, 40, 23)
    parts = []
    for fold in range(5):
        for p, (label, size) in enumerate(zip(labels, sizes, strict=True)):
            side = "test" if p % 5 == fold else "train"
            parts += rows(str(fold + 1), side, f"P{p:02d}", label, int(size))
    trivial = baselines.trivial_baseline(pd.DataFrame(parts), **EVALUATION)
    assert trivial.name == "calling every image malignant" and trivial.metrics["majority"] == "malignant"
    assert trivial.metrics["patient_accuracy"] == pytest.approx(16 / 23, abs=1e-6)
    assert trivial.metrics["accuracy"] == pytest.approx(sizes[7:].sum() / sizes.sum(), abs=1e-6)
    assert trivial.metrics["patient_accuracy_ci_low"] == pytest.approx(16 / 23, abs=1e-6)
    assert trivial.metrics["specificity"] == 0.0 and trivial.metrics["recall"] == 1.0
    assert baselines.describe(trivial) == "calling every image malignant (0.696 at patient level)"


def test_a_figure_against_its_baseline_in_words():
    words = "calling every image malignant (0.696 at patient level)"
    below = baselines.verdict(0.531, 0.396, 0.653, 0.696, words)
    assert below["verdict"] == "below" and below["sentence"].startswith(f"no better than {words}")
    assert below["margin"] == pytest.approx(0.531 - 0.696)
    assert baselines.verdict(0.70, 0.55, 0.85, 0.696, words)["verdict"] == "within"
    above = baselines.verdict(0.90, 0.80, 0.97, 0.696, words)
    assert above == {"verdict": "above", "margin": pytest.approx(0.204),
                     "sentence": f"better than {words} by more than its interval"}
    assert baselines.verdict(0.9, None, None, 0.696, words)["verdict"] == "no interval"
    assert baselines.verdict(None, None, None, 0.5, "chance")["verdict"] == "undefined"
    trivial = baselines.trivial_baseline(hand_split(), **EVALUATION)
    model = {"accuracy": 0.5, "accuracy_ci_low": 0.3, "accuracy_ci_high": 0.7, "patient_accuracy": 0.9,
             "patient_accuracy_ci_low": 0.7, "patient_accuracy_ci_high": 1.0, "roc_auc": 0.55,
             "roc_auc_ci_low": 0.4, "roc_auc_ci_high": 0.7}
    judged = baselines.verdicts(model, trivial)
    assert judged["accuracy"]["verdict"] == "above" and judged["accuracy"]["baseline"] == pytest.approx(0.25)
    assert judged["patient_accuracy"]["verdict"] == "above" and judged["roc_auc"]["verdict"] == "within"
    assert "chance (AUC 0.5)" in judged["roc_auc"]["sentence"]


def write_breakhis(root, accessions: list[tuple[str, float]], per_patient: int = 4) -> None:
    """BreakHis-named H&E-like images, one accession per (class, stain intensity); each image's own blobs."""
    seed = 100
    for a, (label, intensity) in enumerate(accessions):
        cls, code, name = ("B", "F", "fibroadenoma") if label == "benign" else ("M", "DC", "ductal_carcinoma")
        folder = f"14-{2000 + a}AB"
        for i in range(1, per_patient + 1):
            seed += 1
            path = (root / f"BreaKHis_v1/histology_slides/breast/{label}/SOB/{name}/SOB_{cls}_{code}_{folder}/100X"
                    / f"SOB_{cls}_{code}-{folder}-100-{i:03d}.png")
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(he_image(seed, HEMATOXYLIN, EOSIN, intensity, (32, 48))).save(path)


def colour_run(tmp_project, separable: bool) -> baselines.Baseline:
    rng = np.random.default_rng(0)
    labels = ["benign"] * 7 + ["malignant"] * 13
    # separable: benign slides pale (intensity about 0.6), malignant dark (about 1.2); else the same for both
    shade = [(0.6 if (label == "benign" or not separable) else 1.2) + 0.1 * rng.standard_normal() for label in labels]
    write_breakhis(tmp_project / "data/raw/breakhis", list(zip(labels, shade, strict=True)))
    prepare_dataset("breakhis")
    return baselines.colour_baseline(accession_folds(), **EVALUATION)


def accession_folds() -> pd.DataFrame:
    """kumar2022's honest protocol on the generated index: grouped 5-fold by accession, validation carved."""
    return split_protocol(read_index("breakhis"), Split(method="grouped_kfold", k=5, val=0.15), seed=42,
                          group="accession")


def test_colour_alone_beats_chance_where_colour_separates_the_classes(tmp_project):
    colour = colour_run(tmp_project, separable=True)
    m = colour.metrics
    assert m["patients"] == 20 and m["n"] == 80 and len(colour.units) == 5
    assert m["roc_auc"] > 0.9 and m["roc_auc_ci_low"] > 0.5  # beyond chance by more than its interval
    assert m["patient_accuracy"] > 0.85
    assert all(u["trained_on"] > 0 for u in colour.units)
    # and the trivial baseline on the same folds
    frame = accession_folds()
    trivial = baselines.trivial_baseline(frame, **EVALUATION)
    assert trivial.metrics["patient_accuracy"] == pytest.approx(13 / 20) and trivial.metrics["roc_auc"] == 0.5
    # both pool the same evaluation rows in the order a cross-validated model's result pools them
    pooled = pd.concat([frame[(frame["side"] == "test") & u.select(frame)] for u in crossval.units_of(frame, False)])
    assert list(trivial.frame["path"]) == list(colour.frame["path"]) == list(pooled["path"])
    again = baselines.colour_baseline(frame, **EVALUATION)  # seeded, and the statistics come from memory
    assert json.dumps(again.metrics, sort_keys=True) == json.dumps(m, sort_keys=True)
    # refitted on labels permuted among patients, the regression never does as well: p = 1 / (1 + draws)
    refit = baselines.refit_permutation_test(frame, draws=200, seed=1)
    assert refit["roc_auc"]["observed"] == pytest.approx(m["roc_auc"], abs=1e-6)
    assert refit["roc_auc"]["p_value"] == pytest.approx(1 / 201, abs=1e-6) and refit["patient_accuracy"]["p_value"] < 0.02


def test_colour_alone_is_near_chance_where_colour_says_nothing(tmp_project):
    m = colour_run(tmp_project, separable=False).metrics
    assert m["roc_auc_ci_low"] < 0.5 < m["roc_auc_ci_high"]
    assert baselines.refit_permutation_test(accession_folds(), draws=200, seed=1)["roc_auc"]["p_value"] > 0.1


def test_colour_statistics_are_the_pixels_mean_and_spread_and_each_image_is_read_once(tmp_path, monkeypatch):
    pixels = he_image(7, size=(20, 30))
    path = tmp_path / "a.png"
    Image.fromarray(pixels).save(path)
    stats = baselines.colour_statistics(path)
    flat = pixels.reshape(-1, 3).astype(float)
    od = -np.log((flat + 1) / 256)
    expected = np.r_[flat.mean(0), flat.std(0), od.mean(0), od.std(0)]
    assert stats == pytest.approx(expected, rel=1e-9) and len(baselines.COLOUR_FEATURES) == 12
    reads = []
    real = baselines.load_rgb
    monkeypatch.setattr(baselines, "load_rgb", lambda p: reads.append(p) or real(p))
    other = tmp_path / "b.png"
    Image.fromarray(he_image(8, size=(20, 30))).save(other)
    table = baselines.colour_table(pd.DataFrame({"path": [str(other), str(path), str(other), str(other)]}))
    assert table.shape == (4, 12) and reads == [other]  # a.png was cached; b.png read once for its three rows
    Image.fromarray(pixels[::-1].copy()).save(path)  # rewritten (flipped: same statistics), so read again
    baselines.colour_statistics(path)
    assert len(reads) == 2
