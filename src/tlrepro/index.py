"""Indexing and validating data/raw/<key>/ into data/index/<key>.csv (+ .rejected.csv, .duplicates.csv).

Archives are messy: the skin archive holds every image twice (train/, test/ and again under data/), class
folders differ in case and depth, some files are corrupt. So every image file is decoded once
(tlrepro.images), labelled from its folders or (BreakHis) its file name, and each distinct content is kept
once. The dataset's own train/test assignment is kept in `source_split`. Paths are relative to the project
root so split files are portable between machines.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from tlrepro import config, io, paths
from tlrepro.errors import UserError
from tlrepro.images import ImageInfo, inspect_image, is_image_file

BINARY_CLASSES = ("benign", "malignant")
SOURCE_SPLITS = {"train": "train", "test": "test", "val": "val", "valid": "val", "validation": "val"}
BREAKHIS_SUBTYPES = {
    "A": ("benign", "adenosis"),
    "F": ("benign", "fibroadenoma"),
    "PT": ("benign", "phyllodes_tumor"),
    "TA": ("benign", "tubular_adenoma"),
    "DC": ("malignant", "ductal_carcinoma"),
    "LC": ("malignant", "lobular_carcinoma"),
    "MC": ("malignant", "mucinous_carcinoma"),
    "PC": ("malignant", "papillary_carcinoma"),
}
# SOB_<B|M>_<subtype>-<patient>-<magnification>-<sequence>, e.g. SOB_B_A-14-22549AB-100-001.png
BREAKHIS_NAME = re.compile(
    r"^SOB_(?P<cls>[BM])_(?P<subtype>[A-Z]+)-(?P<patient>\d+-\d+[A-Z]*)-(?P<magnification>\d+)-\d+$"
)
BREAKHIS_COLUMNS = ["subtype", "subtype_name", "patient", "magnification"]
INDEX_COLUMNS = ["path", "label", "source_split", "width", "height", "mode", "sha256", "phash"]
REJECTED_COLUMNS = ["path", "reason"]
DUPLICATE_COLUMNS = ["path", "duplicate_of", "sha256", "same_label", "same_source_split", "kept"]


def parse_breakhis_name(name: str) -> dict | str:
    """Label, subtype, patient and magnification from a BreakHis file name, or why it does not parse."""
    match = BREAKHIS_NAME.match(Path(name).stem)
    if not match:
        return "file name is not BreakHis's SOB_<B|M>_<subtype>-<patient>-<magnification>-<n>"
    code = match["subtype"]
    if code not in BREAKHIS_SUBTYPES:
        return f"unknown BreakHis subtype code {code!r} in file name"
    label, subtype_name = BREAKHIS_SUBTYPES[code]
    if label[0].upper() != match["cls"]:
        return f"file name says {match['cls']} but subtype {code} is {label}"
    return {
        "label": label,
        "subtype": code,
        "subtype_name": subtype_name,
        "patient": match["patient"],
        "magnification": int(match["magnification"]),
    }


def label_of(relative: Path, scheme: str) -> dict | str:
    """The label fields of an image (path relative to the dataset folder), or why it has none."""
    folders = [part.lower() for part in relative.parts[:-1]]
    if scheme == "binary":
        label = next((f for f in reversed(folders) if f in BINARY_CLASSES), None)
        return {"label": label} if label else "no benign/malignant folder above it"
    if scheme == "folder":
        return {"label": relative.parent.name} if folders else "not inside a class folder"
    if scheme == "breakhis":
        return parse_breakhis_name(relative.name)
    raise ValueError(scheme)


def source_split_of(relative: Path) -> str:
    """The dataset's own assignment: the nearest folder named train/test/val(id)(ation), or ''."""
    folders = [part.lower() for part in relative.parts[:-1]]
    return next((SOURCE_SPLITS[f] for f in reversed(folders) if f in SOURCE_SPLITS), "")


def list_image_files(folder: Path) -> list[Path]:
    """Image files under `folder`, sorted; hidden files and macOS `__MACOSX` metadata are skipped."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and is_image_file(p)
        and not any(part.startswith(".") or part == "__MACOSX" for part in p.relative_to(folder).parts)
    )


def build_index(folder: Path, scheme: str, root: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(index, rejected, duplicates) frames for the images under `folder`; paths relative to `root`."""
    files = list_image_files(folder)
    labels = [label_of(p.relative_to(folder), scheme) for p in files]
    to_decode = [p for p, lab in zip(files, labels, strict=True) if isinstance(lab, dict)]
    # Decoding releases the GIL, so threads speed this up while keeping the order (and output) fixed.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        decoded = iter(
            list(tqdm(pool.map(inspect_image, to_decode), total=len(to_decode), desc="images", unit="img"))
        )
    rows, rejected = [], []
    for file, lab in zip(files, labels, strict=True):
        rel = Path(os.path.relpath(file, root)).as_posix()
        info = next(decoded) if isinstance(lab, dict) else lab
        if isinstance(info, ImageInfo):
            source = source_split_of(file.relative_to(folder))
            rows.append({"path": rel, **lab, "source_split": source, **asdict(info)})
        else:
            rejected.append({"path": rel, "reason": info})
    columns = INDEX_COLUMNS[:2] + (BREAKHIS_COLUMNS if scheme == "breakhis" else []) + INDEX_COLUMNS[2:]
    index = pd.DataFrame(rows, columns=columns)
    index, duplicates = drop_duplicates(index)
    return index, pd.DataFrame(rejected, columns=REJECTED_COLUMNS), duplicates


def drop_duplicates(index: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Count each image once and report every byte-identical file.

    A copy in a duplicated tree (same bytes, file name, label and source split, e.g. train/benign/1.jpg
    and data/train/benign/1.jpg) is the same image: only the shortest path is kept. Byte-identical
    files under other names are separate entries of the dataset: they are kept, and reported (the
    leakage audit then shows whether they land on both sides of a split). `same_label` False flags a
    label conflict.
    """
    order = index.assign(_len=index["path"].str.len(), _name=index["path"].map(lambda p: Path(p).name.lower()))
    order = order.sort_values(["sha256", "_len", "path"])
    tree_copy = order.duplicated(["sha256", "_name", "label", "source_split"])
    canonical = order.groupby("sha256")["path"].transform("first")
    canonical_label = order.groupby("sha256")["label"].transform("first")
    canonical_split = order.groupby("sha256")["source_split"].transform("first")
    copies = order["path"] != canonical
    duplicates = pd.DataFrame(
        {
            "path": order["path"][copies],
            "duplicate_of": canonical[copies],
            "sha256": order["sha256"][copies],
            "same_label": (order["label"] == canonical_label)[copies],
            "same_source_split": (order["source_split"] == canonical_split)[copies],
            "kept": ~tree_copy[copies],
        },
        columns=DUPLICATE_COLUMNS,
    )
    kept = order[~tree_copy].drop(columns=["_len", "_name"]).sort_values("path").reset_index(drop=True)
    return kept, duplicates.sort_values("path").reset_index(drop=True)


def prepare_dataset(key: str) -> pd.DataFrame:
    """Write data/index/<key>.csv, .rejected.csv and .duplicates.csv from data/raw/<key>/; returns the index."""
    params = config.load_params()
    config.dataset(key, params)
    scheme = config.require(params, f"datasets.{key}.labels")
    if scheme not in ("binary", "folder", "breakhis"):
        raise UserError(f"params.yaml `datasets.{key}.labels` is {scheme!r}: use binary, folder or breakhis.")
    folder = paths.raw_dir(key)
    if not folder.is_dir():
        raise UserError(f"{paths.relative(folder)} not found: run `dvc repro download@{key}` first.")
    index, rejected, duplicates = build_index(folder, scheme, paths.PROJECT_ROOT)
    io.write_csv(paths.index_csv(key), index)
    io.write_csv(paths.rejected_csv(key), rejected)
    io.write_csv(paths.duplicates_csv(key), duplicates)
    _print_summary(key, index, rejected, duplicates)
    if index.empty:
        raise UserError(
            f"No usable images in {paths.relative(folder)} ({len(rejected)} rejected, see "
            f"{paths.relative(paths.rejected_csv(key))}): check the download, or params.yaml "
            f"`datasets.{key}.labels`."
        )
    return index


def read_index(key: str) -> pd.DataFrame:
    """data/index/<key>.csv with every column as text, so values (hashes, ids) round-trip unchanged."""
    path = paths.index_csv(key)
    if not path.is_file():
        raise UserError(f"{paths.relative(path)} not found: run `dvc repro prepare@{key}` first.")
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _print_summary(key: str, index: pd.DataFrame, rejected: pd.DataFrame, duplicates: pd.DataFrame) -> None:
    print(f"{key}: {len(index)} images")
    if not index.empty:
        table = pd.crosstab(index["label"], index["source_split"].replace("", "(none)"), margins=True)
        print(table.to_string())
    if len(rejected):
        print(f"rejected {len(rejected)}: " + "; ".join(f"{n} {r}" for r, n in _reason_counts(rejected)))
    conflicts = int((~duplicates["same_label"].astype(bool)).sum())
    kept = int(duplicates["kept"].astype(bool).sum())
    print(
        f"byte-identical files: {len(duplicates) - kept} copies in duplicated trees left out, "
        f"{kept} under other names kept and reported ({conflicts} with a different label); "
        f"see {paths.relative(paths.duplicates_csv(key))}"
    )


def _reason_counts(rejected: pd.DataFrame) -> list[tuple[str, int]]:
    """Rejection reasons, grouped by their leading words (decoder messages differ per file)."""
    counts = rejected["reason"].str.split(":").str[0].value_counts()
    return list(counts.items())
