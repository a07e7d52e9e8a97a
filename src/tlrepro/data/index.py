"""Indexing and validating data/raw/<key>/ into data/index/<key>.csv (+ .rejected.csv, .duplicates.csv).

Archives are messy: the skin archive holds every image twice (train/, test/ and again under data/), class
folders differ in case and depth, some files are corrupt or in formats we do not read. So every file is
looked at once: image files are decoded (tlrepro.data.images) and labelled from their folders or their
names (tlrepro.data.labels); everything that cannot be used is listed in .rejected.csv with the reason;
each distinct content is kept once. The dataset's own train/test assignment is kept in `source_split`.
Paths are relative to the project root, so split files are portable between machines.

The three files are replaced only when the whole index is good: a failed prepare keeps the old index.
"""

from __future__ import annotations

import contextlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

import pandas as pd
from tqdm import tqdm

from tlrepro.core import config, fileio, inputs, paths
from tlrepro.core.errors import UserError
from tlrepro.data import folds as dataset_folds
from tlrepro.data import labels as lab
from tlrepro.data import sanity
from tlrepro.data.images import UNSUPPORTED_EXTENSIONS, ImageInfo, inspect_image, is_image_file

SOURCE_SPLITS = {"train": "train", "test": "test", "val": "val", "valid": "val", "validation": "val"}
INDEX_COLUMNS = ["path", "label", "source_split", "width", "height", "mode", "sha256", "phash", "dihedral_phashes"]
REQUIRED_COLUMNS = ("path", "label", "source_split", "sha256", "phash", "dihedral_phashes")
REJECTED_COLUMNS = ["path", "reason"]
DUPLICATE_COLUMNS = ["path", "duplicate_of", "sha256", "same_label", "same_source_split", "kept"]


def source_split_of(relative: PurePosixPath) -> str:
    """The dataset's own assignment: the nearest folder named train/test/val(id)(ation), or ''."""
    folders = [part.lower() for part in relative.parts[:-1]]
    return next((SOURCE_SPLITS[f] for f in reversed(folders) if f in SOURCE_SPLITS), "")


def _hidden(part: str) -> bool:
    return part.startswith(".") or part == "__MACOSX"


class Scan(NamedTuple):
    files: list[PurePosixPath]  # regular files with UTF-8 names, in os.walk's top-down sorted order
    problems: list[dict]  # {path, reason}: special files, bad links, unreadable folders, undecodable names
    containers: set[PurePosixPath]  # folders that hold folders of images
    folders: list[PurePosixPath]  # every folder walked


def scan(folder: Path) -> Scan:
    """What is under `folder`, hidden entries skipped (tlrepro.core.inputs.walk: nothing but regular files
    is ever read; FIFOs, sockets, devices, broken and looping links are problems with their reason).

    Unreadable folders and file names that are not valid UTF-8 become problems (path, reason), never a crash.
    """
    found = inputs.walk(folder, skip=_hidden)
    files: list[PurePosixPath] = []
    problems: list[dict] = list(found.problems)
    image_dirs: set[PurePosixPath] = set()
    for rel in found.files:
        try:
            rel.name.encode("utf-8")
        except UnicodeEncodeError:
            problems.append({"path": inputs.printable(rel), "reason": "file name is not valid UTF-8: rename it"})
            continue
        files.append(rel)
        if is_image_file(rel.name):
            image_dirs.add(rel.parent)
    containers = {parent for d in image_dirs for parent in d.parents if parent != d} & image_dirs
    return Scan(files, problems, containers, found.folders)


def _unusable_reason(rel: PurePosixPath) -> str:
    suffix = rel.suffix.lower()
    if suffix in UNSUPPORTED_EXTENSIONS:
        return f"unsupported image format {suffix}: convert it to PNG or JPEG"
    return f"not an image file ({suffix or 'no extension'})"


def build_index(folder: Path, scheme: str, root: Path, classes: list[str] | None = None, key: str = ""
                ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, list[dict[str, Any]]]:
    """(index, rejected, duplicates, warnings) for the files under `folder`; paths relative to `root`."""
    files, rejected, containers, folders = scan(folder)
    prefix = PurePosixPath(Path(os.path.relpath(folder, root)).as_posix())
    rejected = [{"path": str(prefix / p["path"]), "reason": p["reason"]} for p in rejected]
    labelled = []
    for rel in files:
        if not is_image_file(rel.name):
            rejected.append({"path": str(prefix / rel), "reason": _unusable_reason(rel)})
            continue
        fields = lab.label_of(rel, scheme, container=rel.parent in containers, classes=classes)
        if isinstance(fields, str):
            rejected.append({"path": str(prefix / rel), "reason": fields})
        else:
            labelled.append((rel, fields))
    # Decoding releases the GIL, so threads speed this up while keeping the order (and output) fixed.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        decoded = list(tqdm(pool.map(inspect_image, [folder / rel for rel, _ in labelled]),
                            total=len(labelled), desc="images", unit="img", disable=None))
    rows = []
    for (rel, fields), info in zip(labelled, decoded, strict=True):
        if isinstance(info, ImageInfo):
            rows.append({"path": str(prefix / rel), **fields, "source_split": source_split_of(rel), **asdict(info)})
        else:
            rejected.append({"path": str(prefix / rel), "reason": info})
    columns = INDEX_COLUMNS[:2] + list(lab.extra_columns(scheme)) + INDEX_COLUMNS[2:]
    index, duplicates = drop_duplicates(pd.DataFrame(rows, columns=columns))
    rejected_frame = pd.DataFrame(rejected, columns=REJECTED_COLUMNS).sort_values("path", ignore_index=True)
    warnings = (sanity.rejected_warnings(key, rejected_frame)
                + sanity.empty_folders(key, folders, [f for f in files if is_image_file(f.name)], scheme, prefix)
                + sanity.magnification_coverage(key, index))
    return index, rejected_frame, duplicates, warnings


def drop_duplicates(index: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Count each image once and report every byte-identical file.

    A copy in a duplicated tree (same bytes, file name, label and source split, e.g. train/benign/1.jpg
    and data/train/benign/1.jpg) is the same image: only the shortest path is kept. Byte-identical
    files under other names are separate entries of the dataset: they are kept, and reported (the
    leakage audit then shows whether they land on both sides of a split). `same_label` False flags a
    label conflict.
    """
    order = index.assign(_len=index["path"].str.len(), _name=index["path"].map(lambda p: PurePosixPath(p).name.lower()))
    order = order.sort_values(["sha256", "_len", "path"])
    tree_copy = order.duplicated(["sha256", "_name", "label", "source_split"])
    first = order.groupby("sha256")[["path", "label", "source_split"]].transform("first")
    copies = order["path"] != first["path"]
    duplicates = pd.DataFrame(
        {
            "path": order["path"][copies],
            "duplicate_of": first["path"][copies],
            "sha256": order["sha256"][copies],
            "same_label": (order["label"] == first["label"])[copies],
            "same_source_split": (order["source_split"] == first["source_split"])[copies],
            "kept": ~tree_copy[copies],
        },
        columns=DUPLICATE_COLUMNS,
    )
    kept = order[~tree_copy].drop(columns=["_len", "_name"]).sort_values("path").reset_index(drop=True)
    return kept, duplicates.sort_values("path").reset_index(drop=True)


def prepare_dataset(key: str) -> pd.DataFrame:
    """Write data/index/<key>.csv, .rejected.csv and .duplicates.csv from data/raw/<key>/; returns the index."""
    params = config.load_params()
    settings = params.dataset(key)
    if key not in params.datasets:
        raise UserError(f"`{key}` is a derived dataset: run `dvc repro derive@{key}`, not prepare.")
    folder = paths.raw_dir(key)
    if not folder.is_dir():
        raise UserError(f"{paths.relative(folder)} not found: run `dvc repro download@{key}` first.")
    index, rejected, duplicates, warnings = build_index(folder, settings.labels, paths.PROJECT_ROOT,
                                                       settings.classes, key)
    index, fold_warnings = dataset_folds.attach(key, index, settings.folds_file, folder)
    warnings += fold_warnings
    _print_summary(key, index, rejected, duplicates)
    sanity.print_warnings(key, warnings)
    check_index(key, index, rejected)
    write_index(key, index, rejected, duplicates, warnings)
    return index


def check_index(key: str, index: pd.DataFrame, rejected: pd.DataFrame) -> None:
    """A usable index has images of at least two classes; otherwise nothing is written."""
    folder = paths.relative(paths.raw_dir(key))
    reasons = "; ".join(f"{n} x {r}" for r, n in _reason_counts(rejected)[:3])
    example = f", e.g. {rejected['path'].iloc[0]}" if len(rejected) else ""
    if index.empty:
        raise UserError(f"No usable images in {folder} ({len(rejected)} files rejected: {reasons or 'none found'}"
                        f"{example}): check the download, or params.yaml `datasets.{key}.labels`. "
                        f"The previous index was kept.")
    if index["label"].nunique() < 2:
        raise UserError(f"{folder} has images of one class only ({index['label'].iloc[0]}): check the download "
                        f"or params.yaml `datasets.{key}`. The previous index was kept.")


def write_index(key: str, index: pd.DataFrame, rejected: pd.DataFrame, duplicates: pd.DataFrame,
                warnings: list[dict[str, Any]]) -> None:
    """The three CSV files and the warnings, each written aside first, renamed into place together."""
    targets = [(paths.index_csv(key), index), (paths.rejected_csv(key), rejected),
               (paths.duplicates_csv(key), duplicates)]
    warnings_text = fileio.json_text(sanity.document(key, warnings), paths.warnings_json(key))
    with contextlib.ExitStack() as stack:
        for target, frame in targets:
            frame.to_csv(stack.enter_context(fileio.atomic_path(target)), index=False, lineterminator="\n")
        stack.enter_context(fileio.atomic_path(paths.warnings_json(key))).write_text(warnings_text)


def read_index(key: str) -> pd.DataFrame:
    """data/index/<key>.csv with every column as text (hashes, ids round-trip unchanged), checked."""
    return fileio.read_table(paths.index_csv(key), "index", f"prepare@{key}", REQUIRED_COLUMNS)


def _print_summary(key: str, index: pd.DataFrame, rejected: pd.DataFrame, duplicates: pd.DataFrame) -> None:
    print(f"{key}: {len(index)} images")
    if not index.empty:
        table = pd.crosstab(index["label"], index["source_split"].replace("", "(none)"), margins=True)
        print(table.to_string())
    if len(rejected):
        print(f"rejected {len(rejected)}: " + "; ".join(f"{n} {r}" for r, n in _reason_counts(rejected)))
    conflicts = int((~duplicates["same_label"].astype(bool)).sum())
    kept = int(duplicates["kept"].astype(bool).sum())
    print(f"byte-identical files: {len(duplicates) - kept} copies in duplicated trees left out, "
          f"{kept} under other names kept and reported ({conflicts} with a different label); "
          f"see {paths.relative(paths.duplicates_csv(key))}")


def _reason_counts(rejected: pd.DataFrame) -> list[tuple[str, int]]:
    """Rejection reasons, grouped by their leading words (decoder messages differ per file)."""
    counts = rejected["reason"].str.split(":").str[0].value_counts()
    return list(counts.items())
