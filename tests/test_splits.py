"""Split protocols: stratification, seeds, patient grouping, fractions, the per-class cap, the written files."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from tlrepro import paths
from tlrepro.errors import UserError
from tlrepro.index import prepare_dataset
from tlrepro.splits import allocate, cap_per_class, split_frame, write_study_split


def fake_index(n_benign=60, n_malignant=40, patients=20, source=True, seed=0) -> pd.DataFrame:
    """An index frame without images: random hashes, patients each with one label."""
    rng = np.random.default_rng(seed)
    labels = ["benign"] * n_benign + ["malignant"] * n_malignant
    n = len(labels)
    per_label = {"benign": range(0, patients // 2), "malignant": range(patients // 2, patients)}
    return pd.DataFrame(
        {
            "path": [f"data/raw/x/{i:04d}.png" for i in range(n)],
            "label": labels,
            "patient": [f"p{rng.choice(per_label[lab]):02d}" for lab in labels],
            "source_split": (rng.random(n) < 0.8).astype(int).astype(str) if source else [""] * n,
            "sha256": [f"{i:064x}" for i in range(n)],
            "phash": [f"{v:016x}" for v in rng.integers(0, 2**63, n)],
        }
    ).replace({"source_split": {"1": "train", "0": "test"}})


STRATIFIED = {"protocol": "stratified", "train": 0.7, "val": 0.15, "test": 0.15}


def test_allocate_sums_and_rounds():
    assert allocate(10, [0.7, 0.15, 0.15]) == [7, 2, 1]
    assert allocate(44, [0.7, 0.15, 0.15]) == [31, 7, 6]
    assert allocate(3, [0.8, 0.2, 0.0]) == [2, 1, 0]
    assert sum(allocate(997, [0.7, 0.1, 0.2])) == 997


def test_stratified_keeps_class_balance():
    out = split_frame(fake_index(), STRATIFIED, seed=1)
    counts = pd.crosstab(out["label"], out["split"])
    assert counts.loc["benign"].to_dict() == {"train": 42, "val": 9, "test": 9}
    assert counts.loc["malignant"].to_dict() == {"train": 28, "val": 6, "test": 6}
    assert list(out.columns[:3]) == ["path", "label", "split"]
    assert {"sha256", "phash", "source_split", "patient"} <= set(out.columns)


def test_seed_fixes_the_split():
    frame = fake_index()
    a = split_frame(frame, STRATIFIED, seed=7)
    assert a.equals(split_frame(frame.sample(frac=1, random_state=3), STRATIFIED, seed=7))
    assert not a["split"].equals(split_frame(frame, STRATIFIED, seed=8)["split"])


def test_no_test_rows_when_test_is_zero():
    out = split_frame(fake_index(), {"protocol": "stratified", "train": 0.8, "val": 0.2, "test": 0.0}, seed=1)
    assert set(out["split"]) == {"train", "val"}
    assert (out["split"] == "val").sum() == 20


def test_pooled_ignores_source_folders():
    out = split_frame(fake_index(), {"protocol": "pooled", "train": 0.7, "val": 0.15, "test": 0.15}, seed=1)
    assert pd.crosstab(out["source_split"], out["split"]).min().min() > 0
    assert (out["split"] == "train").sum() == 70


def test_source_keeps_dataset_test_and_carves_val_from_train():
    frame = fake_index()
    out = split_frame(frame, {"protocol": "source", "val": 0.25}, seed=1)
    assert (out["split"] == "test").equals(out["source_split"] == "test")
    train = out[out["source_split"] == "train"]
    for _, group in train.groupby("label"):
        assert (group["split"] == "val").sum() == allocate(len(group), [0.75, 0.25])[1]
    with pytest.raises(UserError, match="protocol `source`"):
        split_frame(fake_index(source=False), {"protocol": "source", "val": 0.2}, seed=1)


def test_patient_grouping_keeps_each_patient_on_one_side():
    spec = {**STRATIFIED, "also_group_by": "patient", "train": 0.7, "val": 0.1, "test": 0.2}
    frame = fake_index(n_benign=300, n_malignant=300, patients=60)
    out = split_frame(frame, spec, seed=3)
    assert (out.groupby("patient")["split_by_patient"].nunique() == 1).all()
    assert out.groupby("patient")["split"].nunique().max() > 1  # the by-image split mixes patients
    shares = out["split_by_patient"].value_counts(normalize=True)
    assert abs(shares["train"] - 0.7) < 0.1 and abs(shares["test"] - 0.2) < 0.1 and shares["val"] > 0
    again = split_frame(frame, spec, seed=3)
    assert again.equals(out)
    assert not split_frame(frame, spec, seed=4)["split_by_patient"].equals(out["split_by_patient"])
    with pytest.raises(UserError, match="also_group_by"):
        split_frame(frame.drop(columns="patient"), spec, seed=3)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({"protocol": "stratified", "train": 0.7, "val": 0.2, "test": 0.2}, "sum to 1.1"),
        ({"protocol": "stratified", "train": 0.0, "val": 0.5, "test": 0.5}, "train > 0"),
        ({"protocol": "stratified", "train": "most", "val": 0.5}, "numbers"),
        ({"protocol": "source", "val": 1.5}, "split.val"),
        ({"protocol": "random"}, "split.protocol"),
    ],
)
def test_bad_split_params(spec, match):
    with pytest.raises(UserError, match=match) as caught:
        split_frame(fake_index(), spec, seed=1, study="kumar2022")
    assert "kumar2022.split" in str(caught.value)


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
    assert len(cap_per_class(frame, 1000, seed=1)) == len(frame)


def set_params(**changes):
    params = yaml.safe_load(paths.PARAMS_FILE.read_text())
    for dotted, value in changes.items():
        node = params
        *parents, last = dotted.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    paths.PARAMS_FILE.write_text(yaml.safe_dump(params))


def test_write_study_split_files(breakhis_raw, tmp_project):
    prepare_dataset("breakhis")
    frame = write_study_split("wang2024")
    csv, report = paths.split_csv("wang2024"), paths.leakage_json("wang2024")
    first = csv.read_bytes(), report.read_bytes()
    written = pd.read_csv(csv, dtype=str, keep_default_na=False)
    assert len(written) == len(frame) == breakhis_raw["images"]
    assert list(written.columns[:4]) == ["path", "label", "split", "split_by_patient"]
    assert {"patient", "subtype", "magnification", "sha256", "phash", "source_split"} <= set(written.columns)
    audit = json.loads(report.read_text())
    assert audit["split_by_patient"]["patients_on_several_sides"] == 0
    assert audit["split"]["patients_on_several_sides"] > 0
    write_study_split("wang2024")
    assert (csv.read_bytes(), report.read_bytes()) == first

    set_params(**{"scale.max_images_per_class": 4})
    capped = write_study_split("kumar2022")
    assert capped["label"].value_counts().to_dict() == {"benign": 4, "malignant": 4}

    set_params(**{"kumar2022.split.test": 0.5})
    with pytest.raises(UserError, match="kumar2022.split"):
        write_study_split("kumar2022")
    with pytest.raises(UserError, match="prepare@skin"):
        write_study_split("lin2024")
