"""Leakage audit: planted exact, near and rotated/flipped copies and shared patients are found; a clean split is
clean; thousands of byte-identical files stay cheap; datasets' overlap is counted."""

from __future__ import annotations

import time
import tracemalloc

import numpy as np
import pandas as pd
from PIL import Image

from tlrepro.data.images import VIEWS, inspect_image
from tlrepro.data.leakage import audit, dataset_overlap, train_matches

FAR = [0x0000000000000000, 0xFFFFFFFFFFFFFFFF, 0x00000000FFFFFFFF, 0xFFFFFFFF00000000, 0x0F0F0F0F0F0F0F0F]


def frame_with(phashes: list[int], sides: list[str], shas: list[str] | None = None, patients=None,
               views: list[str] | None = None) -> pd.DataFrame:
    """Rows whose eight dihedral hashes are the phash itself followed by far-away values (no rotation match)."""
    n = len(phashes)
    frame = pd.DataFrame({
        "path": [f"img{i:02d}.png" for i in range(n)], "side": sides,
        "view": views or ["identity"] * n, "sha256": shas or [f"sha{i}" for i in range(n)],
        "phash": [f"{h:016x}" for h in phashes],
        "dihedral_phashes": [" ".join([f"{h:016x}"] * 8) for h in phashes],
    })
    if patients:
        frame["patient"] = patients
    return frame


def test_clean_split_reports_nothing():
    report = audit(frame_with(FAR, ["train", "train", "val", "test", "test"], patients=list("aabcc")), group="patient")
    assert report["exact_duplicate_pairs"] == report["near_duplicate_pairs"] == report["dihedral_copy_pairs"] == 0
    assert report["patients_on_several_sides"] == 0
    assert report["images_per_side"] == {"train": 2, "val": 1, "test": 2}


def test_planted_exact_near_and_patient_leaks_are_found():
    phashes = [*FAR, FAR[0] ^ 0b101, FAR[1]]  # img05: 2 bits from img00; img06: exact copy of img01
    shas = [f"sha{i}" for i in range(5)] + ["sha5", "sha1"]
    sides = ["train", "train", "val", "test", "test", "test", "val"]
    patients = ["a", "a", "b", "c", "c", "c", "a"]
    frame = frame_with(phashes, sides, shas, patients)
    report = audit(frame, group="patient", max_distance=4)
    assert report["exact_duplicate_pairs"] == 1
    assert report["near_duplicate_pairs"] == 1  # the exact copy is not counted again as near
    assert report["by_sides"]["train-val"]["exact_duplicate_pairs"] == 1
    assert report["by_sides"]["train-test"]["near_duplicate_pairs"] == 1
    assert report["examples"]["exact"] == [["img01.png", "img06.png"]]
    assert report["examples"]["near"] == [["img00.png", "img05.png", 2]]
    assert report["patients_on_several_sides"] == 1
    assert report["examples"]["patients"] == {"a": ["train", "val"]}
    assert audit(frame, max_distance=1)["near_duplicate_pairs"] == 0
    assert list(train_matches(frame, max_distance=4)) == ["", "", "", "", "", "near", "exact"]


def test_same_side_copies_are_not_leaks():
    report = audit(frame_with([FAR[0], FAR[0]], ["train", "train"], ["s", "s"]))
    assert report["exact_duplicate_pairs"] == report["near_duplicate_pairs"] == 0


def test_rotated_and_flipped_copies_are_found(tmp_path, make_image):
    """Real files: an image, its rotations and flips saved separately, and unrelated images."""
    original = make_image(tmp_path / "a.png", seed=5, size=(96, 96))
    pixels = np.asarray(Image.open(original))
    for name in ("rot90", "rot270", "flip_h", "flip_v"):
        Image.fromarray(np.ascontiguousarray(VIEWS[name](pixels))).save(tmp_path / f"a_{name}.png")
    others = [make_image(tmp_path / f"o{i}.png", seed=50 + i, size=(96, 96)) for i in range(3)]
    files = [original, *(tmp_path / f"a_{n}.png" for n in ("rot90", "rot270", "flip_h", "flip_v")), *others]
    infos = [inspect_image(p) for p in files]
    frame = pd.DataFrame({"path": [p.name for p in files], "side": ["train"] + ["test"] * 4 + ["train", "test", "test"],
                          "view": "identity", "sha256": [i.sha256 for i in infos], "phash": [i.phash for i in infos],
                          "dihedral_phashes": [i.dihedral_phashes for i in infos]})
    report = audit(frame)
    assert report["exact_duplicate_pairs"] == 0
    assert report["dihedral_copy_pairs"] == 4  # each rotated/flipped copy of a.png on the test side
    assert list(train_matches(frame)) == ["", "dihedral", "dihedral", "dihedral", "dihedral", "", "", ""]


def test_views_of_one_file_on_two_sides_are_dihedral_copies(tmp_path, make_image):
    path = make_image(tmp_path / "x.png", seed=9, size=(64, 64))
    info = inspect_image(path)
    frame = pd.DataFrame({"path": ["x.png"] * 3, "side": ["train", "test", "test"],
                          "view": ["identity", "rot90", "identity"], "sha256": info.sha256, "phash": info.phash,
                          "dihedral_phashes": info.dihedral_phashes})
    report = audit(frame)
    assert report["exact_duplicate_pairs"] == 1  # the identity view on both sides
    assert report["dihedral_copy_pairs"] == 2
    assert list(train_matches(frame)) == ["", "dihedral", "exact"]


def test_reencoded_image_is_a_near_duplicate(tmp_path, make_image):
    original = make_image(tmp_path / "a.png", seed=5, size=(128, 128))
    Image.open(original).save(tmp_path / "b.jpg", quality=70)
    other = make_image(tmp_path / "c.png", seed=6, size=(128, 128))
    infos = [inspect_image(p) for p in (original, tmp_path / "b.jpg", other)]
    frame = pd.DataFrame({"path": ["a.png", "b.jpg", "c.png"], "side": ["train", "test", "test"], "view": "identity",
                          "sha256": [i.sha256 for i in infos], "phash": [i.phash for i in infos],
                          "dihedral_phashes": [i.dihedral_phashes for i in infos]})
    report = audit(frame)
    assert report["exact_duplicate_pairs"] == 0 and report["near_duplicate_pairs"] == 1
    assert report["examples"]["near"][0][:2] == ["a.png", "b.jpg"]


def test_thousands_of_identical_files_stay_linear_in_memory():
    """6,000 byte-identical files on each of two sides are 36 million pairs: counted, never listed."""
    n = 6_000
    frame = frame_with([FAR[0]] * (2 * n), ["train"] * n + ["test"] * n, ["same"] * (2 * n))
    tracemalloc.start()
    started = time.perf_counter()
    report = audit(frame)
    matches = train_matches(frame)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert report["exact_duplicate_pairs"] == n * n and report["near_duplicate_pairs"] == 0
    assert (matches[n:] == "exact").all()
    assert peak < 200e6, f"peak {peak / 1e6:.0f} MB"  # materialising the pairs would take gigabytes
    assert time.perf_counter() - started < 30


def test_fourteen_thousand_images_are_audited_in_chunks():
    """Every image counted, nothing close among random hashes; the time is benchmarks/leakage_audit.py's."""
    rng = np.random.default_rng(0)
    n = 14_000
    frame = frame_with([int(v) for v in rng.integers(0, 2**63, n, dtype=np.int64)],
                       list(rng.choice(["train", "val", "test"], n)))
    report = audit(frame)
    assert report["images"] == n and sum(report["images_per_side"].values()) == n
    assert report["near_duplicate_pairs"] == 0 and report["exact_duplicate_pairs"] == 0


def test_dataset_overlap_counts_exact_and_near_copies():
    a = frame_with(FAR[:3], ["train"] * 3)
    b = frame_with([FAR[0], FAR[1] ^ 0b11, FAR[4]], ["train"] * 3, shas=["sha0", "x", "y"])
    report = dataset_overlap({"a": a, "b": b}, max_distance=4)
    assert report["matrix"]["a"]["b"] == {"images": 3, "exact": 1, "near": 2}
    assert report["matrix"]["b"]["a"]["near"] == 2 and report["matrix"]["a"]["a"]["images"] == 3


def test_groups_straddling_test_and_training_are_counted_per_fold_and_summed():
    from tlrepro.data.leakage import audit_folds, summary_line

    # fold 1: accession a has a folder on train and another on test (a straddles); b only on val and test (b too);
    # fold 2: a is on test only, c on train only, d on val only: nothing straddles
    one = frame_with(FAR, ["train", "test", "val", "test", "train"], patients=list("aabbc")).assign(fold="1")
    two = frame_with(FAR, ["test", "test", "train", "val", "val"], patients=list("aacdd")).assign(fold="2")
    report = audit_folds([one, two], group="patient")
    assert report["patients_straddling_by_fold"] == {"1": 2, "2": 0} and report["patients_straddling"] == 2
    assert report["by_fold"]["1"]["patients_straddling"] == 2
    assert report["patients_on_several_sides"] == 2
    assert "2 patients straddling test and training (summed over folds)" in summary_line(report)
    assert audit(one.iloc[[0, 4]], group="patient")["patients_straddling"] == 0  # no test side
