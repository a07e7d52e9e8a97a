"""Split protocols: stratification, seeds, patient grouping, views, degenerate splits refused, the written files."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from tlrepro.core import paths
from tlrepro.core.config import Split
from tlrepro.core.errors import UserError
from tlrepro.core.numbers import allocate
from tlrepro.data.index import prepare_dataset
from tlrepro.data.splits import cap_per_class, read_split, split_protocol, write_study_split


def fake_index(n_benign=60, n_malignant=40, patients=20, source=True, seed=0) -> pd.DataFrame:
    """An index frame without images: random hashes, patients each with one label."""
    rng = np.random.default_rng(seed)
    labels = ["benign"] * n_benign + ["malignant"] * n_malignant
    n = len(labels)
    per_label = {"benign": range(0, patients // 2), "malignant": range(patients // 2, patients)}
    hashes = [f"{v:016x}" for v in rng.integers(0, 2**63, n)]
    return pd.DataFrame({
        "path": [f"data/raw/x/{i:04d}.png" for i in range(n)], "label": labels,
        "patient": [f"p{rng.choice(per_label[lab]):02d}" for lab in labels],
        "source_split": np.where(rng.random(n) < 0.8, "train", "test") if source else [""] * n,
        "sha256": [f"{i:064x}" for i in range(n)], "phash": hashes,
        "dihedral_phashes": [" ".join([h] * 8) for h in hashes],
    })


STRATIFIED = Split(method="stratified", train=0.7, val=0.15, test=0.15)


def test_allocate_sums_and_rounds():
    assert allocate(10, [0.7, 0.15, 0.15]) == [7, 2, 1]
    assert allocate(44, [0.7, 0.15, 0.15]) == [31, 7, 6]
    assert allocate(3, [0.8, 0.2, 0.0]) == [2, 1, 0]
    assert sum(allocate(997, [0.7, 0.1, 0.2])) == 997


def test_stratified_keeps_class_balance():
    out = split_protocol(fake_index(), STRATIFIED, seed=1, group=None)
    counts = pd.crosstab(out["label"], out["side"])
    assert counts.loc["benign"].to_dict() == {"train": 42, "val": 9, "test": 9}
    assert counts.loc["malignant"].to_dict() == {"train": 28, "val": 6, "test": 6}
    assert {"sha256", "phash", "source_split", "patient", "view"} <= set(out.columns)


def test_seed_fixes_the_split():
    frame = fake_index()
    a = split_protocol(frame, STRATIFIED, seed=7, group=None)
    assert a.equals(split_protocol(frame.sample(frac=1, random_state=3), STRATIFIED, seed=7, group=None))
    sides = lambda f: f.set_index("path")["side"].sort_index()  # noqa: E731
    assert not sides(a).equals(sides(split_protocol(frame, STRATIFIED, seed=8, group=None)))


def test_no_test_rows_when_test_is_zero():
    out = split_protocol(fake_index(), Split(method="stratified", train=0.8, val=0.2), seed=1, group=None)
    assert set(out["side"]) == {"train", "val"} and (out["side"] == "val").sum() == 20


def test_source_keeps_dataset_test_and_carves_val_from_train():
    frame = fake_index()
    out = split_protocol(frame, Split(method="source", val=0.25), seed=1, group=None)
    assert ((out["side"] == "test") == (out["source_split"] == "test")).all()
    for _, group in out[out["source_split"] == "train"].groupby("label"):
        assert (group["side"] == "val").sum() == allocate(len(group), [0.75, 0.25])[1]
    with pytest.raises(UserError, match="method `source`"):
        split_protocol(fake_index(source=False), Split(method="source", val=0.2), seed=1, group=None)


def test_patient_grouping_keeps_each_patient_on_one_side():
    protocol = Split(method="grouped", train=0.7, val=0.1, test=0.2)
    frame = fake_index(n_benign=300, n_malignant=300, patients=60)
    out = split_protocol(frame, protocol, seed=3, group="patient")
    assert (out.groupby("patient")["side"].nunique() == 1).all()
    shares = out["side"].value_counts(normalize=True)
    assert abs(shares["train"] - 0.7) < 0.1 and abs(shares["test"] - 0.2) < 0.1 and shares["val"] > 0
    assert split_protocol(frame, protocol, seed=3, group="patient").equals(out)
    other = split_protocol(frame, protocol, seed=4, group="patient")
    assert not other.set_index("path")["side"].sort_index().equals(out.set_index("path")["side"].sort_index())
    with pytest.raises(UserError, match="group column"):
        split_protocol(frame.drop(columns="patient"), protocol, seed=3, group="patient")


def test_too_few_patients_for_the_sides_is_refused():
    frame = fake_index(n_benign=20, n_malignant=20, patients=4)  # two patients per class, three sides
    with pytest.raises(UserError, match=r"only 2 patient\(s\) with label 'benign'.*3 sides"):
        split_protocol(frame, Split(method="grouped", train=0.7, val=0.15, test=0.15), seed=1, group="patient",
                       where="studies.x.protocols.patient")
    two = split_protocol(frame, Split(method="grouped", train=0.5, test=0.5), seed=1, group="patient")
    assert set(two["side"]) == {"train", "test"}


def test_a_side_without_a_class_is_refused():
    frame = fake_index(n_benign=30, n_malignant=2)
    with pytest.raises(UserError, match="side has no malignant images"):
        split_protocol(frame, Split(method="stratified", train=0.7, val=0.15, test=0.15), seed=1, group=None)
    with pytest.raises(UserError, match="one class only"):
        split_protocol(fake_index(n_malignant=0), STRATIFIED, seed=1, group=None)


def test_views_before_the_split_and_on_train_only():
    frame = fake_index(n_benign=30, n_malignant=30, patients=10)
    views = ["rot90", "flip_h"]
    before = split_protocol(frame, Split(method="stratified", train=0.7, val=0.1, test=0.2, views=views,
                                         expand="before_split"), seed=2, group=None)
    assert len(before) == 3 * len(frame)
    assert before.groupby("path")["side"].nunique().max() > 1  # copies of one image on several sides
    honest = split_protocol(frame, Split(method="grouped", train=0.7, val=0.1, test=0.2, views=views,
                                         expand="train_only"), seed=2, group="patient")
    assert set(honest.loc[honest["side"] != "train", "view"]) == {"identity"}
    assert set(honest.loc[honest["side"] == "train", "view"]) == {"identity", *views}
    assert (honest.groupby("path")["side"].nunique() == 1).all()


def test_cap_per_class_is_stratified_and_seeded():
    frame = fake_index(n_benign=100, n_malignant=30)
    capped = cap_per_class(frame, 20, seed=1)
    assert capped["label"].value_counts().to_dict() == {"benign": 20, "malignant": 20}
    for label, group in capped.groupby("label"):
        full = frame[frame["label"] == label]["source_split"].value_counts(normalize=True)
        assert abs((group["source_split"] == "train").mean() - full["train"]) <= 0.05 + 1 / 20
    assert capped.equals(cap_per_class(frame, 20, seed=1))
    assert not capped.equals(cap_per_class(frame, 20, seed=2))
    assert cap_per_class(frame, None, seed=1) is frame


def set_params(**changes):
    params = yaml.safe_load(paths.PARAMS_FILE.read_text())
    for dotted, value in changes.items():
        node = params
        *parents, last = dotted.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    paths.PARAMS_FILE.write_text(yaml.safe_dump(params, sort_keys=False))


def test_write_study_split_files(breakhis_raw, tmp_project):
    prepare_dataset("breakhis")
    set_params(**{"studies.wang2024.dataset": "breakhis"})
    frame = write_study_split("kumar2022")
    csv, report = paths.split_csv("kumar2022"), paths.leakage_json("kumar2022")
    first = csv.read_bytes(), report.read_bytes()
    written = read_split("kumar2022")
    # the split by image, the dataset's five folds (every image listed in each) and five folds of the patient
    # cross-validation (every image in each fold)
    assert len(written) == len(frame) == (1 + 5 + 5) * breakhis_raw["images"]
    assert list(written["protocol"].unique()) == ["image", "official", "patient"]
    assert list(written.columns[:8]) == ["protocol", "fold", "side", "view", "path", "label", "class_index", "group"]
    assert {"patient", "accession", "subtype", "magnification", "sha256", "phash", "train_match"} <= set(written.columns)
    audit = json.loads(report.read_text())
    assert audit["patient"]["patients_on_several_sides"] == audit["patient"]["accessions_on_several_sides"] == 0
    assert audit["patient"]["folds"] == 5 and audit["image"]["patients_on_several_sides"] > 0
    write_study_split("kumar2022")
    assert (csv.read_bytes(), report.read_bytes()) == first

    wang = write_study_split("wang2024")  # views: 6 rows per image under `paper`
    assert (wang["protocol"] == "paper").sum() == 6 * breakhis_raw["images"]
    wang_audit = json.loads(paths.leakage_json("wang2024").read_text())
    assert wang_audit["paper"]["dihedral_copy_pairs"] > 0 and wang_audit["honest"]["dihedral_copy_pairs"] == 0
    assert wang_audit["honest"]["patients_on_several_sides"] == 0
    honest = wang[wang["protocol"] == "honest"]
    assert (honest[honest["side"] != "train"]["view"] == "identity").all()  # only training sides are expanded

    with pytest.raises(UserError, match="prepare@skin"):
        write_study_split("lin2024")
