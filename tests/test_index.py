"""Image inspection and dataset indexing: formats, broken files, labels, source splits, duplicates."""

from __future__ import annotations

import pandas as pd
import pytest
from PIL import Image

from tlrepro.core import paths
from tlrepro.core.errors import UserError
from tlrepro.data.images import ImageInfo, inspect_image, load_rgb
from tlrepro.data.index import prepare_dataset, read_index
from tlrepro.data.labels import parse_breakhis_name

ZOO = [
    ("rgb.jpg", "RGB"),
    ("gray.jpeg", "L"),
    ("cmyk.jpg", "CMYK"),
    ("anim.gif", "P"),
    ("alpha.png", "RGBA"),
    ("palette.png", "P"),
    ("deep.png", "I;16"),
    ("bitmap.BMP", "RGB"),
    ("scan.tif", "RGB"),
    ("scan16.tiff", "I;16"),
]


@pytest.mark.parametrize(("name", "mode"), ZOO)
def test_every_format_and_mode_is_accepted(tmp_path, make_image, name, mode):
    path = make_image(tmp_path / name, seed=3, mode=mode, size=(40, 30))
    info = inspect_image(path)
    assert isinstance(info, ImageInfo), info
    assert (info.width, info.height) == (40, 30)
    assert len(info.phash) == 16 and len(info.sha256) == 64
    assert info.dihedral_phashes.split()[0] == info.phash and len(info.dihedral_phashes.split()) == 8
    rgb = load_rgb(path)
    assert rgb.mode == "RGB" and rgb.size == (40, 30)


def test_16_bit_is_scaled_not_clipped(tmp_path):
    import numpy as np

    path = tmp_path / "mid.png"
    Image.fromarray(np.full((8, 8), 128 * 257, dtype=np.uint16)).save(path)
    assert inspect_image(path).mode == "I;16"
    assert load_rgb(path).getpixel((0, 0)) == (128, 128, 128)


def test_transparency_is_flattened_on_white(tmp_path):
    path = tmp_path / "clear.png"
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(path)
    assert load_rgb(path).getpixel((0, 0)) == (255, 255, 255)


def test_broken_files_give_reasons(tmp_path, make_image):
    good = make_image(tmp_path / "good.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello")
    assert "truncated" in inspect_image(tmp_path / "truncated.jpg")
    assert inspect_image(tmp_path / "empty.png") == "empty file (0 bytes)"
    assert inspect_image(tmp_path / "text.jpg").startswith("not an image")
    assert inspect_image(tmp_path / "missing.jpg").startswith("unreadable")
    with pytest.raises(UserError, match="text.jpg"):
        load_rgb(tmp_path / "text.jpg")


def test_breakhis_names():
    assert parse_breakhis_name("SOB_B_A-14-22549AB-100-001.png") == {
        "label": "benign",
        "subtype": "A",
        "subtype_name": "adenosis",
        "patient": "14-22549AB",
        "accession": "14-22549",
        "magnification": 100,
    }
    parsed = parse_breakhis_name("SOB_M_DC-14-2523-400-012.png")
    assert (parsed["label"], parsed["subtype"], parsed["patient"], parsed["magnification"]) == (
        "malignant",
        "DC",
        "14-2523",
        400,
    )
    assert parse_breakhis_name("SOB_B_PT-14-29315EF-40-003.png")["subtype_name"] == "phyllodes_tumor"
    assert "not BreakHis" in parse_breakhis_name("photo.png")
    assert "unknown" in parse_breakhis_name("SOB_B_XX-14-1-100-001.png")
    assert "says B" in parse_breakhis_name("SOB_B_DC-14-1-100-001.png")


def test_skin_index_counts_each_image_once(skin_raw, tmp_project):
    index = prepare_dataset("skin")
    # tree copies count once; a byte-identical file under another name (here with the other label) is kept
    conflicts = skin_raw["label_conflicts"]
    assert len(index) == skin_raw["images"] + conflicts
    assert index["sha256"].nunique() == skin_raw["images"]
    labels = {**skin_raw["labels"], "malignant": skin_raw["labels"]["malignant"] + conflicts}
    assert index["label"].value_counts().to_dict() == labels
    splits = {**skin_raw["source_splits"], "train": skin_raw["source_splits"]["train"] + conflicts}
    assert index["source_split"].value_counts().to_dict() == splits
    assert list(index["path"]) == sorted(index["path"])
    assert all(p.startswith("data/raw/skin/") for p in index["path"])
    tree_copies = [p for p in index["path"] if p.startswith("data/raw/skin/data/") and "conflict" not in p]
    assert tree_copies == []

    written = read_index("skin")
    pd.testing.assert_frame_equal(written, index.astype(str), check_dtype=False)
    rejected = pd.read_csv(paths.rejected_csv("skin"))
    assert {p.removeprefix("data/raw/skin/") for p in rejected["path"]} == skin_raw["rejected"]
    reasons = dict(zip(rejected["path"].str.removeprefix("data/raw/skin/"), rejected["reason"], strict=True))
    assert reasons["loose.jpg"] == "no benign/malignant folder above it"
    assert reasons["train/benign/empty.jpg"] == "empty file (0 bytes)"

    duplicates = pd.read_csv(paths.duplicates_csv("skin"))
    assert len(duplicates) == skin_raw["duplicates"]
    assert (~duplicates["same_label"]).sum() == skin_raw["label_conflicts"]
    assert set(duplicates["duplicate_of"]) <= set(index["path"])
    conflict = duplicates.set_index("path").loc["data/raw/skin/data/train/malignant/conflict.jpg"]
    assert conflict["duplicate_of"] == "data/raw/skin/train/Benign/b0.jpg"
    assert conflict["kept"] and duplicates["kept"].sum() == conflicts


def test_index_is_deterministic(skin_raw, tmp_project):
    prepare_dataset("skin")
    first = paths.index_csv("skin").read_bytes()
    prepare_dataset("skin")
    assert paths.index_csv("skin").read_bytes() == first


def test_breakhis_index(breakhis_raw, tmp_project):
    index = prepare_dataset("breakhis")
    assert len(index) == breakhis_raw["images"]
    assert index["patient"].nunique() == breakhis_raw["patients"]
    assert set(index["magnification"]) == {40, 100}
    assert set(index["label"]) == {"benign", "malignant"}
    assert (index["source_split"] == "").all()
    rejected = pd.read_csv(paths.rejected_csv("breakhis"))
    assert len(rejected) == breakhis_raw["rejected"] and "SOB_" in rejected["reason"][0]
    assert list(index.columns[:7]) == ["path", "label", "subtype", "subtype_name", "patient", "accession",
                                       "magnification"]
    assert index["accession"].nunique() == breakhis_raw["accessions"]


def test_folder_labels(lc25000_raw, tmp_project):
    index = prepare_dataset("lc25000")
    assert len(index) == lc25000_raw["images"]
    assert sorted(index["label"].unique()) == sorted(lc25000_raw["labels"])
    assert pd.read_csv(paths.duplicates_csv("lc25000")).empty


def test_user_errors(tmp_project, make_image):
    with pytest.raises(UserError, match="download@skin"):
        prepare_dataset("skin")
    (tmp_project / "data/raw/skin/unlabelled").mkdir(parents=True)
    make_image(tmp_project / "data/raw/skin/unlabelled/x.jpg")
    with pytest.raises(UserError, match="data/raw/skin.*no benign/malignant folder above it.*previous index was kept"):
        prepare_dataset("skin")
    assert not paths.index_csv("skin").exists() and not paths.rejected_csv("skin").exists()
    with pytest.raises(UserError, match="Unknown dataset"):
        prepare_dataset("nope")
    params = paths.PARAMS_FILE.read_text().replace("labels: binary}", "labels: colours}", 1)
    paths.PARAMS_FILE.write_text(params)
    with pytest.raises(UserError, match="datasets.skin.labels"):
        prepare_dataset("skin")
