"""A dataset's own folds, carried into its index.

BreakHis on Kaggle ships `Folds.csv` (columns `fold, mag, grp, filename`): for each of its five folds, every image
is on the `train` or the `test` side, whole patient folders at a time (Spanhol et al. 2016's protocol). The folds
are five repeated train/test splits, not a partition: an image can be tested in several folds or in none. When
`datasets.<key>.folds_file` names such a file, prepare adds one index column per fold, `dataset_fold_<n>` (n: the
file's own fold number), holding `train`, `test` or '' (an image the fold does not list), matched by file name. A
split protocol with `method: folds` then uses them; derived datasets carry the columns over with the rest of the
index.

The file is checked line by line: a fold number that is not a positive integer, a side other than train or test, a
file listed twice in one fold, or on both sides of one fold is refused in one line that names the file, the line,
the fold and the image. A partial copy of the dataset (the offline mirror holds 90 of 7,909 images) matches only
some of the file's rows: one `folds_partial` warning counts them (its `facts` hold the numbers).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from tlrepro.core import inputs, paths
from tlrepro.core.errors import UserError
from tlrepro.data import sanity

COLUMNS = ("fold", "grp", "filename")
PREFIX = "dataset_fold_"
SIDES = ("train", "test")
PARTIAL = "folds_partial"  # the warning's check: the file and the index do not cover each other


def fold_columns(frame: pd.DataFrame) -> list[str]:
    """The index's dataset-fold columns, in fold order."""
    return sorted((c for c in frame.columns if c.startswith(PREFIX)), key=lambda c: int(c.removeprefix(PREFIX)))


def fold_number(column: str) -> str:
    """The file's fold number of a `dataset_fold_<n>` column, as text ('3')."""
    return column.removeprefix(PREFIX)


def _lines(path: Path, shown: str) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """The header and (line number, row) of every data row; a row spans lines when quoted, its first line counts."""
    try:
        text = inputs.read_regular(path).decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{shown} is not a readable folds file ({' '.join(str(exc).split())[:120]}): restore it "
                        f"from the download.") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header, rows, end = [], [], 0
    try:
        for cells in reader:
            start, end = end + 1, reader.line_num
            if not header:
                header = [h.strip() for h in cells]
            elif any(c.strip() for c in cells):  # blank lines are skipped, but counted
                rows.append((start, dict(zip(header, cells, strict=False))))
    except csv.Error as exc:
        raise UserError(f"{shown} line {reader.line_num}: not CSV ({exc}): restore the file from the download.") from None
    return header, rows


def read_folds(path: Path) -> pd.DataFrame:
    """The folds file as (fold, side, stem, filename, line) rows, checked: a bad line is one UserError naming the
    file, the line, the fold and the image."""
    shown = paths.relative(path)
    header, rows = _lines(path, shown)
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise UserError(f"{shown} lacks the columns {missing} (a folds file has fold, mag, grp, filename): restore it "
                        f"from the download, or unset the dataset's `folds_file`.")
    records, first_seen = [], {}
    for line, row in rows:
        name = (row.get("filename") or "").strip()
        fold, side = (row.get("fold") or "").strip(), (row.get("grp") or "").strip().lower()
        where = f"{shown} line {line}"
        what = f"fold {fold or '(empty)'}, {PurePosixPath(name.replace(chr(92), '/')).name or 'no file name'}"
        if not name:
            raise UserError(f"{where} ({what}): the line names no file: delete it, or restore the file from the "
                            f"download.")
        if not fold.isdigit() or int(fold) < 1:
            raise UserError(f"{where} ({what}): the fold number {fold!r} is not a positive integer (folds are "
                            f"numbered from 1): correct the line, or restore the file from the download.")
        if side not in SIDES:
            raise UserError(f"{where} ({what}): `grp` is {row.get('grp')!r}, not train or test: correct the line, or "
                            f"restore the file from the download.")
        stem = PurePosixPath(name.replace("\\", "/")).stem
        key = (int(fold), stem)
        if key in first_seen:
            before_line, before_side = first_seen[key]
            problem = (f"is listed twice in fold {int(fold)} (line {before_line}, also {before_side})"
                       if before_side == side else
                       f"is on both sides of fold {int(fold)} ({before_side} on line {before_line}, {side} here)")
            raise UserError(f"{where} ({what}): the image {problem}: a fold lists each image once, on one side; "
                            f"delete the wrong line, or restore the file from the download.")
        first_seen[key] = (line, side)
        records.append((int(fold), side, stem, name, line))
    return pd.DataFrame(records, columns=["fold", "side", "stem", "filename", "line"])


def attach(key: str, index: pd.DataFrame, folds_file: str | None, raw_folder: Path) -> tuple[pd.DataFrame, list]:
    """The index with its `dataset_fold_<n>` columns, and warnings (a missing file; rows and images that do not
    match, counted in one `folds_partial` warning whose `facts` say how many of the file's rows matched)."""
    if not folds_file:
        return index, []
    path = raw_folder / folds_file
    if not path.is_file():
        return index, [sanity.warning(key, "folds_missing", f"{paths.relative(path)} (`datasets.{key}.folds_file`) is "
                                      f"not in the download: protocols with `method: folds` cannot run; "
                                      f"grouped_kfold makes folds of its own")]
    folds = read_folds(path)
    stems = index["path"].map(lambda p: PurePosixPath(p).stem)
    out = index.copy()
    for fold, rows in folds.groupby("fold", sort=True):
        out[f"{PREFIX}{fold}"] = stems.map(dict(zip(rows["stem"], rows["side"], strict=True))).fillna("")
    facts = coverage(out, folds_file, folds)
    if facts["rows_matched"] == facts["rows"] and not facts["images_without_fold_row"]:
        return out, []
    unmatched = sorted(set(folds["stem"]) - set(stems))
    without = index["path"][(out[fold_columns(out)] == "").all(axis=1)].tolist()
    message = (f"{paths.relative(path)}: {facts['rows_matched']:,} of its {facts['rows']:,} rows (image x fold) match "
               f"images of this copy, in {facts['folds']} folds; {facts['rows'] - facts['rows_matched']:,} rows name "
               f"{len(unmatched):,} images not in the index (rejected or absent)"
               + (f", e.g. {unmatched[0]}" if unmatched else "")
               + (f"; {facts['images_without_fold_row']:,} of the index's {facts['images']:,} images have no row in "
                  f"any fold (a `method: folds` protocol leaves them out)" if facts["images_without_fold_row"] else
                  f"; every one of the index's {facts['images']:,} images has a row"))
    warning = sanity.warning(key, PARTIAL, message, unmatched or without, len(folds) - facts["rows_matched"])
    return out, [{**warning, "facts": facts}]


def coverage(index: pd.DataFrame, folds_file: str | None, folds: pd.DataFrame | None = None) -> dict[str, Any]:
    """How the folds file and the index cover each other: the rows (image x fold) that name an image of the index,
    the index's images that some fold lists and that none does; with the file's rows (read_folds), its own row and
    fold counts too."""
    columns = fold_columns(index)
    listed = (index[columns] != "").to_numpy() if columns else np.zeros((len(index), 0), dtype=bool)
    facts = {"file": folds_file, "folds": len(columns), "rows_matched": int(listed.sum()), "images": len(index),
             "images_matched": int(listed.any(axis=1).sum()), "images_without_fold_row": int((~listed.any(axis=1)).sum())}
    if folds is not None:
        facts.update(rows=len(folds), folds=int(folds["fold"].nunique()))
    return facts


def recorded_coverage(warnings: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The `facts` of a dataset's `folds_partial` warning (from sanity.read_warnings(dataset); a derived dataset
    repeats its source's), or None: then the file and the index matched row for row, or there was no file."""
    return next((w.get("facts") for w in warnings if w.get("check") == PARTIAL), None)
