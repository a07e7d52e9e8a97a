"""Leakage audit: planted exact and near duplicates and shared patients are found; a clean split is clean."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from tlrepro.images import inspect_image
from tlrepro.leakage import audit


def frame_with(
    phashes: list[int], sides: list[str], shas: list[str] | None = None, patients=None
) -> pd.DataFrame:
    n = len(phashes)
    frame = pd.DataFrame(
        {
            "path": [f"img{i:02d}.png" for i in range(n)],
            "split": sides,
            "sha256": shas or [f"sha{i}" for i in range(n)],
            "phash": [f"{h:016x}" for h in phashes],
        }
    )
    if patients:
        frame["patient"] = patients
    return frame


FAR = [0x0000000000000000, 0xFFFFFFFFFFFFFFFF, 0x00000000FFFFFFFF, 0xFFFFFFFF00000000, 0x0F0F0F0F0F0F0F0F]


def test_clean_split_reports_nothing():
    report = audit(
        frame_with(FAR, ["train", "train", "val", "test", "test"], patients=list("aabcc")),
        group_column="patient",
    )
    assert report["exact_duplicate_pairs"] == report["near_duplicate_pairs"] == 0
    assert report["patients_on_several_sides"] == 0
    assert report["examples"] == {"exact": [], "near": [], "groups": {}}
    assert report["images_per_side"] == {"train": 2, "val": 1, "test": 2}


def test_planted_exact_near_and_patient_leaks_are_found():
    phashes = [*FAR, FAR[0] ^ 0b101, FAR[1]]  # img05: 2 bits from img00; img06: exact copy of img01
    shas = [f"sha{i}" for i in range(5)] + ["sha5", "sha1"]
    sides = ["train", "train", "val", "test", "test", "test", "val"]
    patients = ["a", "a", "b", "c", "c", "c", "a"]
    report = audit(frame_with(phashes, sides, shas, patients), group_column="patient", phash_max_distance=4)
    assert report["exact_duplicate_pairs"] == 1
    assert report["near_duplicate_pairs"] == 1  # the exact copy is not counted again as near
    assert report["by_sides"]["train-val"]["exact_duplicate_pairs"] == 1
    assert report["by_sides"]["train-test"]["near_duplicate_pairs"] == 1
    assert report["examples"]["exact"] == [["img01.png", "img06.png"]]
    assert report["examples"]["near"] == [["img00.png", "img05.png", 2]]
    assert report["patients_on_several_sides"] == 1
    assert report["examples"]["groups"] == {"a": ["train", "val"]}
    assert audit(frame_with(phashes, sides, shas), phash_max_distance=1)["near_duplicate_pairs"] == 0


def test_same_side_copies_are_not_leaks():
    report = audit(frame_with([FAR[0], FAR[0]], ["train", "train"], ["s", "s"]))
    assert report["exact_duplicate_pairs"] == report["near_duplicate_pairs"] == 0


def test_reencoded_image_is_a_near_duplicate(tmp_path, make_image):
    from PIL import Image

    original = make_image(tmp_path / "a.png", seed=5, size=(128, 128))
    Image.open(original).save(tmp_path / "b.jpg", quality=70)
    other = make_image(tmp_path / "c.png", seed=6, size=(128, 128))
    infos = [inspect_image(p) for p in (original, tmp_path / "b.jpg", other)]
    frame = pd.DataFrame(
        {
            "path": ["a.png", "b.jpg", "c.png"],
            "split": ["train", "test", "test"],
            "sha256": [i.sha256 for i in infos],
            "phash": [i.phash for i in infos],
        }
    )
    report = audit(frame)
    assert report["exact_duplicate_pairs"] == 0
    assert report["near_duplicate_pairs"] == 1
    assert report["examples"]["near"][0][:2] == ["a.png", "b.jpg"]


def test_fourteen_thousand_images_take_seconds():
    rng = np.random.default_rng(0)
    n = 14_000
    frame = frame_with(
        [int(v) for v in rng.integers(0, 2**63, n, dtype=np.int64)],
        list(rng.choice(["train", "val", "test"], n)),
    )
    start = time.perf_counter()
    report = audit(frame)
    assert time.perf_counter() - start < 15
    assert report["images"] == n
