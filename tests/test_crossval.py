"""Patient-level cross-validation (issue 16): grouped k-fold and the dataset's own Folds.csv, accession grouping,
dihedral clusters, the per-image feature store, the patient bootstrap and its "too few patients" rule, fold
spread and the paper-vs-honest gap. Generated BreakHis-named images; TinyCNN where a network is needed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import write_image

from tlrepro.core import paths
from tlrepro.core.config import Split
from tlrepro.core.errors import UserError
from tlrepro.data import leakage
from tlrepro.data.groups import carve_validation, grouped_kfold
from tlrepro.data.index import prepare_dataset, read_index
from tlrepro.data.splits import read_split, split_protocol, write_study_split
from tlrepro.results import metrics
from tlrepro.studies import crossval

BENIGN = [("A", "adenosis"), ("F", "fibroadenoma"), ("PT", "phyllodes_tumor"), ("TA", "tubular_adenoma")]
MALIGNANT = [("DC", "ductal_carcinoma"), ("LC", "lobular_carcinoma"), ("MC", "mucinous_carcinoma"),
             ("PC", "papillary_carcinoma")]


def breakhis_folders(root: Path, accessions: int = 12, per_folder: int = 3) -> pd.DataFrame:
    """`accessions` patients, half benign; every third has a second slide-set folder (suffix CD) of its own
    accession, so folders outnumber accessions. Returns (path, folder, accession, label) per image written."""
    written, seed = [], 5000
    for a in range(accessions):
        benign = a % 2 == 0
        code, name = (BENIGN if benign else MALIGNANT)[a // 2 % 4]
        cls, label = ("B", "benign") if benign else ("M", "malignant")
        accession = f"14-{1000 + a}"
        for folder in [f"{accession}AB"] + ([f"{accession}CD"] if a % 3 == 0 else []):
            for i in range(1, per_folder + 1):
                seed += 1
                path = (root / f"BreaKHis_v1/histology_slides/breast/{label}/SOB/{name}/SOB_{cls}_{code}_{folder}/100X"
                        / f"SOB_{cls}_{code}-{folder}-100-{i:03d}.png")
                write_image(path, seed, size=(48, 32))
                written.append((path, folder, accession, label))
    return pd.DataFrame(written, columns=["path", "folder", "accession", "label"])


def set_params(project: Path, edit) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    edit(params)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture
def breakhis(tmp_project):
    """12 accessions, 16 folders, no Folds.csv: kumar2022 without its `official` protocol (test_official_folds.py)."""
    images = breakhis_folders(tmp_project / "data/raw/breakhis")
    set_params(tmp_project, lambda p: p["studies"]["kumar2022"]["protocols"].pop("official"))
    prepare_dataset("breakhis")
    return images


def test_grouped_kfold_tests_every_accession_exactly_once_with_disjoint_sides(breakhis, tmp_project):
    split = write_study_split("kumar2022")
    folds = split[split["protocol"] == "patient"]
    assert sorted(folds["fold"].unique(), key=int) == ["1", "2", "3", "4", "5"]
    tested = folds[folds["side"] == "test"]
    # every image tested exactly once, and every accession in exactly one fold
    assert tested["path"].is_unique and len(tested) == len(breakhis)
    assert (tested.groupby("accession")["fold"].nunique() == 1).all()
    for _, fold in folds.groupby("fold"):
        sides = fold.groupby("side")["accession"].apply(set)
        assert not (sides["train"] & sides["test"]) and not (sides["train"] & sides.get("val", set()))
        assert not (sides["test"] & sides.get("val", set()))
        assert set(fold[fold["side"] == "train"]["label"]) == {"benign", "malignant"}
    # label-balanced as far as accessions allow: 12 accessions, 6 per class, 5 folds -> one or two of each per fold
    per_fold = tested.drop_duplicates("accession").groupby(["fold", "label"]).size()
    assert per_fold.max() <= 2
    audit = read_split("kumar2022")  # written once more, byte for byte
    before = paths.split_csv("kumar2022").read_bytes()
    write_study_split("kumar2022")
    assert paths.split_csv("kumar2022").read_bytes() == before and len(audit) == len(split)


def test_accession_grouping_keeps_every_slide_set_of_a_patient_together_and_reports_both_counts(breakhis,
                                                                                                  tmp_project):
    write_study_split("kumar2022")
    import json

    audit = json.loads(paths.leakage_json("kumar2022").read_text())["patient"]
    assert audit["accessions_on_several_sides"] == 0 and audit["patients_on_several_sides"] == 0
    assert audit["accessions"] == 12 and audit["patients"] == 16  # 12 accessions, 4 of them with two folders
    # grouped by folder instead, the two slide sets of one accession can land on two sides: the setting decides
    set_params(tmp_project, lambda p: p["datasets"]["breakhis"].update(group="patient"))
    for seed in range(6):
        set_params(tmp_project, lambda p, s=seed: p.update(seed=s))
        write_study_split("kumar2022")
        by_folder = json.loads(paths.leakage_json("kumar2022").read_text())["patient"]
        assert by_folder["patients_on_several_sides"] == 0
        if by_folder["accessions_on_several_sides"]:
            break
    else:
        pytest.fail("grouping by folder never split an accession's slide sets across sides in six seeds")


def test_validation_is_carved_from_training_groups_only():
    frame = pd.DataFrame({"label": ["benign"] * 6 + ["malignant"] * 6, "path": [str(i) for i in range(12)]})
    groups = pd.Series([f"g{i // 2}" for i in range(12)])  # six groups of two images
    sides = pd.Series(["train"] * 10 + ["test"] * 2)
    carved = carve_validation(frame, sides, groups, 0.25, seed=1)
    assert set(carved[10:]) == {"test"}  # the test side is untouched
    val_groups = set(groups[carved == "val"])
    assert val_groups and not (val_groups & set(groups[carved == "train"]))
    assert set(frame.loc[carved == "val", "label"]) == {"benign", "malignant"}


def test_too_few_groups_for_k_folds_is_one_line():
    frame = pd.DataFrame({"label": ["benign", "malignant"] * 3, "path": list("abcdef")})
    with pytest.raises(UserError, match="5 folds need at least 5 patients, and the data has 3: lower `k`"):
        grouped_kfold(frame, pd.Series(["p1", "p1", "p2", "p2", "p3", "p3"]), 5, 0, "studies.x.protocols.cv",
                      "patient")


def folds_csv(images: pd.DataFrame, path: Path, *, drop_one: bool = True) -> pd.DataFrame:
    """A Folds.csv in Kaggle's format (fold, mag, grp, filename): five repeated 70/30 splits by accession."""
    rng = np.random.default_rng(3)
    accessions = sorted(images["accession"].unique())
    rows = []
    for fold in range(1, 6):
        test = set(rng.choice(accessions, size=4, replace=False))
        for rec in images.itertuples():
            rows.append({"fold": fold, "mag": 100, "grp": "test" if rec.accession in test else "train",
                         "filename": "BreaKHis_v1/" + str(rec.path).split("BreaKHis_v1/")[1]})
    frame = pd.DataFrame(rows)
    if drop_one:
        frame = frame.iloc[1:]  # one image of fold 1 unlisted: it sits on no side of that fold
    frame.to_csv(path, index=False)
    return frame


def test_the_datasets_own_folds_map_to_the_index_and_become_a_protocol(breakhis, tmp_project):
    listed = folds_csv(breakhis, tmp_project / "data/raw/breakhis/Folds.csv")
    prepare_dataset("breakhis")
    index = read_index("breakhis")
    assert [c for c in index.columns if c.startswith("dataset_fold_")] == [f"dataset_fold_{f}" for f in range(1, 6)]
    assert (index["dataset_fold_2"] != "").all() and (index["dataset_fold_1"] == "").sum() == 1
    set_params(tmp_project, lambda p: p["studies"]["kumar2022"]["protocols"].update(
        patient={"method": "folds", "val": 0.15}))
    split = write_study_split("kumar2022")
    folds = split[split["protocol"] == "patient"]
    assert folds["fold"].nunique() == 5 and (folds.groupby("fold")["path"].nunique() <= len(breakhis)).all()
    for fold, part in folds.groupby("fold"):
        expected = listed[(listed["fold"] == int(fold)) & (listed["grp"] == "test")]
        assert part[part["side"] == "test"]["path"].nunique() == len(expected)
        sides = part.groupby("side")["accession"].apply(set)
        assert not (sides["train"] & sides["test"])
    import json

    audit = json.loads(paths.leakage_details_json("kumar2022").read_text())["patient"]
    assert audit["folds_source"].startswith("the dataset's") and audit["accessions_on_several_sides"] == 0


def test_without_a_folds_file_prepare_warns_and_the_folds_protocol_says_what_to_do(breakhis, tmp_project):
    warnings = (tmp_project / "data/index/breakhis.warnings.json").read_text()
    assert "Folds.csv" in warnings and "grouped_kfold" in warnings
    set_params(tmp_project, lambda p: p["studies"]["kumar2022"]["protocols"].update(
        patient={"method": "folds", "val": 0.15}))
    with pytest.raises(UserError, match="method `folds` needs the dataset's own folds in its index, and it has none"):
        write_study_split("kumar2022")


def test_dihedral_clusters_hold_rotated_and_flipped_copies_and_keep_them_on_one_side(tmp_project, make_image):
    from tlrepro.data.images import VIEWS, inspect_image

    rows = []
    for seed in range(8):
        original = make_image(tmp_project / f"o{seed}.png", seed=seed + 10)
        from PIL import Image

        pixels = np.asarray(Image.open(original))
        for view in ("identity", "rot90", "flip_h"):
            path = tmp_project / f"o{seed}-{view}.png"
            Image.fromarray(np.ascontiguousarray(VIEWS[view](pixels))).save(path)
            info = inspect_image(path)
            rows.append({"path": str(path), "label": "lung_n" if seed % 2 else "lung_aca", "sha256": info.sha256,
                         "phash": info.phash, "dihedral_phashes": info.dihedral_phashes, "source_split": ""})
    frame = pd.DataFrame(rows)
    clusters = leakage.dihedral_clusters(frame)
    assert clusters.nunique() == 8
    assert (frame.assign(c=clusters, o=frame["path"].str.extract(r"/o(\d)-")[0]).groupby("o")["c"].nunique() == 1).all()
    split = split_protocol(frame, Split(method="grouped", group="dihedral_cluster", train=0.75, val=0.25), seed=1,
                           group=None)
    audit = leakage.audit(split)
    assert audit["dihedral_copy_pairs"] == 0 and set(split["side"]) == {"train", "val"}


def test_the_patient_bootstrap_resamples_patients_and_needs_ten_of_them():
    rng = np.random.default_rng(0)
    # 12 patients of 10 images each; a patient's images are all right or all wrong: strongly clustered
    right = rng.random(12) < 0.7
    y = np.repeat(rng.integers(0, 2, 12), 10)
    p = np.where(np.repeat(right, 10), y * 0.8 + 0.1, 0.9 - y * 0.8)
    groups = np.repeat([f"p{i}" for i in range(12)], 10)
    by_patient = metrics.evaluate(y, p, seed=1, resamples=2000, confidence=0.95, groups=groups)
    by_image = metrics.evaluate(y, p, seed=1, resamples=2000, confidence=0.95)
    width = {k: m["accuracy_ci_high"] - m["accuracy_ci_low"] for k, m in (("patient", by_patient), ("image", by_image))}
    assert width["patient"] > 2 * width["image"]  # the honest interval is much wider for clustered images
    assert by_patient["ci_unit"] == "patient" and by_patient["patients"] == 12
    assert by_patient["patient_accuracy"] == pytest.approx(right.mean())
    assert by_patient["patient_accuracy_ci_low"] <= by_patient["patient_accuracy"] <= by_patient["patient_accuracy_ci_high"]
    few = metrics.evaluate(y[:90], p[:90], seed=1, resamples=200, confidence=0.95, groups=groups[:90])
    assert few["accuracy_ci_low"] is None and few["patient_accuracy_ci_high"] is None
    assert few["ci_note"] == "too few patients for an interval (9; at least 10 needed)"


def test_the_report_shows_too_few_patients_not_a_range():
    from tlrepro.reports.sections import interval_note

    few = {"ci_resamples": 1000, "ci_confidence": 0.95, "ci_unit": "patient",
           "ci_note": "too few patients for an interval (7; at least 10 needed)"}
    assert interval_note([few]) == "No intervals: too few patients for an interval (7; at least 10 needed)."
    enough = {"ci_resamples": 1000, "ci_confidence": 0.95, "ci_unit": "patient", "roc_auc_ci_valid": 990}
    assert "over whole patients" in interval_note([enough])


def test_fold_spread_and_the_gap_between_protocols():
    frame = pd.DataFrame({"fold": ["1"] * 4 + ["2"] * 4, "group": [f"p{i}" for i in range(8)]})
    labels = np.array([0, 1, 0, 1, 0, 1, 0, 1])
    probs = np.array([0.1, 0.9, 0.2, 0.8, 0.9, 0.1, 0.2, 0.8])  # fold 1 all right, fold 2 half right
    spread = crossval.fold_spread(frame, probs, labels)
    assert spread["accuracy"]["mean"] == pytest.approx(0.75) and spread["accuracy"]["folds"] == 2
    assert spread["accuracy"]["min"] == 0.5 and spread["accuracy"]["max"] == 1.0
    assert crossval.fold_spread(frame.assign(fold=""), probs, labels) == {}

    groups = [f"p{i}" for i in range(12)]
    paper = pd.DataFrame({"group": groups * 2})
    honest = pd.DataFrame({"group": groups})
    gap = crossval.protocol_gap(paper, np.ones(24), honest, np.array([1, 0] * 6), seed=0, resamples=500,
                                confidence=0.95)
    assert gap["difference"] == pytest.approx(0.5) and gap["ci_low"] <= 0.5 <= gap["ci_high"]
    few = crossval.protocol_gap(paper.iloc[:8], np.ones(8), honest.iloc[:4], np.ones(4), seed=0, resamples=100,
                                confidence=0.95)
    assert few["ci_low"] is None and "too few patients" in few["ci_note"]


def test_units_are_folds_and_magnifications():
    rows = pd.DataFrame({"fold": ["1", "1", "2", "2"], "magnification": ["40", "100", "40", "100"]})
    units = crossval.units_of(rows, per_magnification=True)
    assert [(u.fold, u.magnification) for u in units] == [("1", "40"), ("1", "100"), ("2", "40"), ("2", "100")]
    assert units[1].describe(units) == "fold 1/2, 100X"
    assert crossval.units_of(rows.assign(fold=""), per_magnification=False) == [crossval.WHOLE]


# ---------------------------------------------------------------- the per-image feature store


def tiny_classifier(seed: int = 0, **settings):
    from tlrepro.core.config import RowSettings, resolve_row
    from tlrepro.data.labels import BINARY_CLASSES
    from tlrepro.modeling import models

    row = resolve_row("t", RowSettings(), RowSettings(backbone="TinyCNN", weights="random", image_size=32, batch_size=4,
                                                      learning_rate=1e-3, epochs=1,
                                                      head=[{"pool": "avg"}, {"dense": 1, "activation": "sigmoid"}],
                                                      **settings))
    classifier = models.build_classifier(row, classes=BINARY_CLASSES, seed=seed)
    models.set_trainable(classifier, 0)  # a frozen backbone, as the studies' rows
    return classifier


def image_frame(folder: Path, n: int = 12) -> pd.DataFrame:
    paths_ = [write_image(folder / f"{i}.png", seed=100 + i) for i in range(n)]
    return pd.DataFrame({"path": [str(p) for p in paths_], "sha256": [f"sha{i}" for i in range(n)],
                         "view": "identity"})


def test_folds_protocols_and_rows_share_one_extraction_per_image(tmp_path):
    from tlrepro.modeling import frozen_cache as fc

    frame, cache = image_frame(tmp_path / "img"), tmp_path / "cache"
    clf = tiny_classifier()
    frozen = fc.split_frozen(clf)
    first, hit = fc.extract(frozen, frame.iloc[:8], classifier=clf, batch_size=4, cache_dir=cache)
    assert not hit
    # another protocol: other images in another order, four of them already stored: only the new ones are computed
    other = frame.iloc[[11, 3, 9, 0, 10, 7, 8]].reset_index(drop=True)
    again, hit = fc.extract(frozen, other, classifier=clf, batch_size=4, cache_dir=cache)
    assert not hit and len(list(cache.rglob("*.keys.npy"))) == 2
    np.testing.assert_array_equal(again[0][[1, 3, 5]], first[0][[3, 0, 7]])
    # a third split of the same images is read whole from the store
    _, hit = fc.extract(frozen, frame.sample(frac=1, random_state=1), classifier=clf, batch_size=4, cache_dir=cache)
    assert hit and len(list(cache.rglob("*.keys.npy"))) == 2
    # changed weights: another fingerprint, everything recomputed
    kernel = next(w for w in clf.backbone.weights if "kernel" in w.path)
    kernel.assign(kernel.numpy() * 1.5)
    _, hit = fc.extract(fc.split_frozen(clf), frame, classifier=clf, batch_size=4, cache_dir=cache)
    assert not hit


def test_augmented_views_depend_on_the_image_not_its_batch(tmp_path):
    from tlrepro.modeling import frozen_cache as fc

    frame = image_frame(tmp_path / "img", 6)
    clf = tiny_classifier(augmentation={"flip": "horizontal", "rotation": 0.2}, augmentation_views=2)
    frozen = fc.split_frozen(clf)
    whole, _ = fc.extract_views(frozen, frame, classifier=clf, views=2, seed=3, batch_size=4, cache_dir=tmp_path / "a")
    alone, _ = fc.extract_views(frozen, frame.iloc[[4]], classifier=clf, views=2, seed=3, batch_size=1,
                                cache_dir=tmp_path / "b")
    np.testing.assert_allclose(alone[1][0][0], whole[1][0][4], atol=1e-5)
    assert not np.allclose(whole[0][0], whole[1][0])


FILL = """
import sys
import pandas as pd
sys.path.insert(0, {tests!r})
from test_crossval import tiny_classifier
from tlrepro.modeling import frozen_cache as fc
frame = pd.read_csv({frame!r}, dtype=str)
clf = tiny_classifier()
arrays, _ = fc.extract(fc.split_frozen(clf), frame, classifier=clf, batch_size=2, cache_dir={cache!r})
print(float(arrays[0].sum()))
"""


@pytest.mark.extended  # two TensorFlow processes, about 9 s: CI runs it
def test_two_processes_can_fill_one_store_at_once(tmp_path):
    """Shared storage (TLREPRO_FEATURE_CACHE on a network folder): two writers never corrupt the store, and a
    reader afterwards gets the same features either wrote."""
    frame = image_frame(tmp_path / "img", 16)
    frame.to_csv(tmp_path / "frame.csv", index=False)
    code = FILL.format(tests=str(Path(__file__).parent), frame=str(tmp_path / "frame.csv"), cache=str(tmp_path / "c"))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env) for _ in range(2)]
    try:
        outs = [p.communicate(timeout=180) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert all(p.returncode == 0 for p in procs), [o[1][-1500:] for o in outs]
    sums = {round(float(o[0].strip().splitlines()[-1]), 3) for o in outs}
    assert len(sums) == 1
    from tlrepro.modeling import frozen_cache as fc

    clf = tiny_classifier()
    arrays, hit = fc.extract(fc.split_frozen(clf), frame, classifier=clf, batch_size=4, cache_dir=tmp_path / "c")
    assert hit and round(float(arrays[0].sum()), 3) in sums
