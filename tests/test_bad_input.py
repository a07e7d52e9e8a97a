"""Bad input, as a new user would give it: every case ends in one line naming the file or setting and what to do,
exit status 2, no traceback, and every existing good output left untouched. Small generated files only."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tlrepro.core import fileio, paths
from tlrepro.core.errors import UserError
from tlrepro.data import index as index_module
from tlrepro.data.index import prepare_dataset, scan
from tlrepro.data.splits import write_study_split


def cli(project: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("KAGGLE_", "TLREPRO_"))}
    environ.update(TLREPRO_ROOT=str(project), **(env or {}))
    return subprocess.run([sys.executable, "-m", "tlrepro", *args], cwd=project, env=environ, capture_output=True,
                          text=True, timeout=300)


def one_line_error(result: subprocess.CompletedProcess, *expected: str) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    for text in expected:
        assert text in errors[0], errors[0]
    return errors[0]


def set_params(project: Path, **changes) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    for dotted, value in changes.items():
        node = params
        *parents, last = dotted.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


# ---------------------------------------------------------------- params and the command line


def test_binary_and_mistyped_params_and_malformed_set(tmp_project):
    good = (tmp_project / "params.yaml").read_bytes()
    set_params(tmp_project, **{"studies.lin2024.defaults.batch_size": "big"})
    one_line_error(cli(tmp_project, "split", "lin2024"), "studies.lin2024.defaults.batch_size", "'big'")
    (tmp_project / "params.yaml").write_bytes(b"\x00\x01\x02\xff binary junk")
    one_line_error(cli(tmp_project, "prepare", "skin"), "params.yaml", "UTF-8")
    (tmp_project / "params.yaml").write_bytes(good)
    one_line_error(cli(tmp_project, "run", "lin2024", "--set", "quick"), "--set 'quick' is not NAME=VALUE")
    one_line_error(cli(tmp_project, "split", "lin2023"), "Unknown study `lin2023`", "did you mean `lin2024`")


# ---------------------------------------------------------------- download


def test_empty_mirror_keeps_the_previous_download(tmp_project, tmp_path):
    mirror = tmp_path / "mirror"
    (mirror / "fanconic/skin-cancer-malignant-vs-benign").mkdir(parents=True)
    old = paths.raw_dir("skin") / "train/benign/old.jpg"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"the previous download")
    one_line_error(cli(tmp_project, "download", "skin", env={"KAGGLE_MIRROR": str(mirror)}), "empty folder",
                   "left as it was")
    assert old.read_bytes() == b"the previous download"


# ---------------------------------------------------------------- prepare


def test_all_bad_files_keep_the_previous_index(skin_raw, tmp_project):
    prepare_dataset("skin")
    before = {p: p.read_bytes() for p in (paths.index_csv("skin"), paths.rejected_csv("skin"))}
    for image in paths.raw_dir("skin").rglob("*.*"):
        image.write_bytes(b"not an image any more")
    one_line_error(cli(tmp_project, "prepare", "skin"), "No usable images in data/raw/skin", "previous index was kept")
    assert {p: p.read_bytes() for p in before} == before


def test_one_class_only_keeps_the_previous_index(tmp_project, make_image):
    for i in range(3):
        make_image(paths.raw_dir("skin") / f"train/benign/{i}.jpg", seed=i)
    one_line_error(cli(tmp_project, "prepare", "skin"), "one class only", "previous index was kept")
    assert not paths.index_csv("skin").exists()


def test_an_index_that_cannot_be_written_keeps_the_previous_one(skin_raw, tmp_project, monkeypatch):
    prepare_dataset("skin")
    before = paths.index_csv("skin").read_bytes()
    real_replace = os.replace

    def read_only(src, dst):
        if str(dst).endswith(".csv"):
            raise PermissionError(errno.EACCES, "Permission denied", str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(fileio.os, "replace", read_only)
    with pytest.raises(UserError, match=r"Cannot write data/index/skin.*Permission denied.*writable"):
        prepare_dataset("skin")
    assert paths.index_csv("skin").read_bytes() == before
    assert not list(paths.INDEX.glob(".*.tmp"))


def test_a_folder_where_a_file_should_be_is_one_line(skin_raw, tmp_project):
    paths.INDEX.parent.mkdir(parents=True, exist_ok=True)
    paths.INDEX.write_text("a file, not a folder")
    one_line_error(cli(tmp_project, "prepare", "skin"), "Cannot write data/index/skin.csv")


def test_unsupported_formats_and_odd_names_are_rejected_with_reasons(skin_raw, tmp_project, make_image):
    from PIL import Image

    folder = paths.raw_dir("skin") / "train/benign"
    Image.new("RGB", (16, 16), "red").save(folder / "photo.webp", "WEBP")
    (folder / "phone.heic").write_bytes(b"\x00\x00\x00\x18ftypheic")
    Image.new("RGB", (16, 16), "blue").save(folder / "disguised.jpg", "WEBP")  # WebP bytes under .jpg
    make_image(folder / "ok.png", seed=77)
    bad_name = os.fsencode(folder) + b"/caf\xe9.jpg"  # Latin-1, not UTF-8
    with open(bad_name, "wb") as handle:
        handle.write((folder / "ok.png").read_bytes())
    index = prepare_dataset("skin")
    rejected = pd.read_csv(paths.rejected_csv("skin"))
    reasons = dict(zip(rejected["path"].str.rsplit("/", n=1).str[-1], rejected["reason"], strict=True))
    assert reasons["photo.webp"] == "unsupported image format .webp: convert it to PNG or JPEG"
    assert reasons["phone.heic"].startswith("unsupported image format .heic")
    assert reasons["disguised.jpg"].startswith("unsupported image format WEBP")
    assert reasons["caf\\xe9.jpg"] == "file name is not valid UTF-8: rename it"
    assert index["path"].str.endswith("ok.png").any()


def test_stray_images_and_unreadable_folders_are_reported(lc25000_raw, tmp_project, make_image, monkeypatch):
    top = paths.raw_dir("lc25000") / "lung_colon_image_set/lung_image_sets"
    make_image(top / "stray.jpeg", seed=500)  # beside the class folders, not in one
    index = prepare_dataset("lc25000")
    assert "lung_image_sets" not in set(index["label"])
    rejected = pd.read_csv(paths.rejected_csv("lc25000"))
    assert rejected.loc[rejected["path"].str.endswith("stray.jpeg"), "reason"].item().startswith("a stray image")

    locked = paths.raw_dir("lc25000") / "lung_colon_image_set/colon_image_sets/colon_n"
    real_scandir = os.scandir

    def scandir(path="."):
        if Path(os.fsdecode(path)) == locked:  # root ignores permission bits, so refuse it here
            raise PermissionError(errno.EACCES, "Permission denied", os.fsdecode(path))
        return real_scandir(path)

    monkeypatch.setattr(index_module.os, "scandir", scandir)
    files, problems, _, _ = scan(paths.raw_dir("lc25000"))
    assert problems == [{"path": "lung_colon_image_set/colon_image_sets/colon_n",
                         "reason": "unreadable folder: Permission denied"}]
    assert not any("colon_n/" in str(f) for f in files)


# ---------------------------------------------------------------- split


def test_degenerate_splits_are_refused(breakhis_raw, tmp_project):
    prepare_dataset("breakhis")
    write_study_split("kumar2022")  # six accession numbers: enough for five folds
    before = paths.split_csv("kumar2022").read_bytes()
    # grouped by magnification there are two groups: no five folds of whole groups exist
    set_params(tmp_project, **{"studies.kumar2022.protocols.patient.group": "magnification"})
    one_line_error(cli(tmp_project, "split", "kumar2022"), "studies.kumar2022.protocols.patient",
                   "5 folds need at least 5 magnifications, and the data has 2: lower `k`")
    # a cross-validation's test side is its share of the groups: fractions are refused before any work
    set_params(tmp_project, **{"studies.kumar2022.protocols.patient.train": 0.5})
    one_line_error(cli(tmp_project, "split", "kumar2022"), "takes only `val`")
    set_params(tmp_project, **{"studies.kumar2022.protocols.image.train": 0.5})
    one_line_error(cli(tmp_project, "split", "kumar2022"), "must sum to 1")
    assert paths.split_csv("kumar2022").read_bytes() == before


def test_empty_or_malformed_index_is_one_line(tmp_project):
    paths.INDEX.mkdir(parents=True)
    paths.index_csv("skin").write_text("path,label\n")
    one_line_error(cli(tmp_project, "split", "lin2024"), "data/index/skin.csv lacks columns")
    paths.index_csv("skin").write_bytes(b"\xff\xfe\x00garbage")
    one_line_error(cli(tmp_project, "split", "lin2024"), "data/index/skin.csv")
    one_line_error(cli(tmp_project, "split", "mobilenet2025"), "data/index/melanoma.csv not found", "prepare@melanoma")
