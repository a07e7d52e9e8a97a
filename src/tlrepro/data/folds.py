"""A dataset's own cross-validation folds, carried into its index.

BreakHis on Kaggle ships `Folds.csv` (columns `fold, mag, grp, filename`): for each of its five folds, every image
is on the `train` or the `test` side, whole patients at a time (Spanhol et al. 2016's protocol). When
`datasets.<key>.folds_file` names such a file, prepare adds one index column per fold, `dataset_fold_<n>`, holding
`train`, `test` or '' (an image the file does not list), matched by file name. A split protocol with
`method: folds` then uses them; derived datasets carry the columns over with the rest of the index.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pandas as pd

from tlrepro.core import inputs, paths
from tlrepro.core.errors import UserError
from tlrepro.data import sanity

COLUMNS = ("fold", "grp", "filename")
PREFIX = "dataset_fold_"


def fold_columns(frame: pd.DataFrame) -> list[str]:
    """The index's dataset-fold columns, in fold order."""
    return sorted((c for c in frame.columns if c.startswith(PREFIX)), key=lambda c: int(c.removeprefix(PREFIX)))


def read_folds(path: Path) -> pd.DataFrame:
    """The folds file as (fold, side, stem) rows, checked: one line naming the file and what is wrong."""
    shown = paths.relative(path)
    try:
        raw = pd.read_csv(inputs.open_regular(path), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise UserError(f"{shown} is not a readable folds file ({' '.join(str(exc).split())[:120]}): restore it "
                        f"from the download.") from None
    missing = [c for c in COLUMNS if c not in raw.columns]
    if missing:
        raise UserError(f"{shown} lacks the columns {missing} (a folds file has fold, mag, grp, filename): restore it "
                        f"from the download, or unset the dataset's `folds_file`.")
    sides = raw["grp"].str.strip().str.lower()
    bad = sorted(set(sides) - {"train", "test"})
    if bad or not raw["fold"].str.strip().str.isdigit().all():
        raise UserError(f"{shown}: `grp` must be train or test and `fold` a number (found {bad[:3] or 'a non-number'}).")
    return pd.DataFrame({"fold": raw["fold"].str.strip().astype(int), "side": sides,
                         "stem": [PurePosixPath(f.replace("\\", "/")).stem for f in raw["filename"]]})


def attach(key: str, index: pd.DataFrame, folds_file: str | None, raw_folder: Path) -> tuple[pd.DataFrame, list]:
    """The index with its `dataset_fold_<n>` columns, and warnings (a missing file, unmatched names)."""
    if not folds_file:
        return index, []
    path = raw_folder / folds_file
    if not path.is_file():
        return index, [sanity.warning(key, "folds_missing", f"{paths.relative(path)} (`datasets.{key}.folds_file`) is "
                                      f"not in the download: protocols with `method: folds` cannot run; "
                                      f"grouped_kfold makes folds of its own")]
    folds = read_folds(path)
    stems = index["path"].map(lambda p: PurePosixPath(p).stem)
    out, warnings = index.copy(), []
    for fold, rows in folds.groupby("fold", sort=True):
        lookup = dict(zip(rows["stem"], rows["side"], strict=True))
        out[f"{PREFIX}{fold}"] = stems.map(lookup).fillna("")
        unmatched = sorted(set(rows["stem"]) - set(stems))
        if unmatched:
            warnings.append(sanity.warning(key, "folds_unmatched", f"{len(unmatched)} file(s) of fold {fold} in "
                                           f"{paths.relative(path)} are not in the index (rejected or absent), e.g. "
                                           f"{unmatched[0]}", unmatched, len(unmatched)))
    return out, warnings
