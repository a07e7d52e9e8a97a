"""Whole groups to sides: one grouped split, k grouped folds (a partition: every group tested once), the dataset's
own folds (repeated splits, as its file gives them), and validation groups carved from a fold's training groups.

A group is the unit that must never sit on two sides: a patient folder, an accession number (several BreakHis
folders are slides of one accession), or a cluster of rotated and flipped copies of one image
(`dihedral_cluster`, computed from the perceptual hashes: LC25000's lung images are rotations and flips of
750 originals). Every function here is seeded and sorts before it shuffles, so the same index and seed give the
same assignment.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from tlrepro.core.config import SIDES
from tlrepro.core.errors import UserError
from tlrepro.data import folds as dataset_folds_file
from tlrepro.data import leakage

DIHEDRAL_CLUSTER = "dihedral_cluster"  # a computed group: images equal up to a rotation or flip, or nearly


def group_values(frame: pd.DataFrame, column: str | None, *, where: str, max_distance: int) -> pd.Series:
    """The group of every row: an index column, or the computed `dihedral_cluster`."""
    if column == DIHEDRAL_CLUSTER:
        return leakage.dihedral_clusters(frame, max_distance)
    if not column or column not in frame.columns:
        known = ", ".join([DIHEDRAL_CLUSTER, *frame.columns])
        raise UserError(f"{where}: a grouped protocol needs a group column (the protocol's `group` or the dataset's "
                        f"`group`), and the index has {column!r}: {'set one' if not column else 'choose one of ' + known}.")
    return frame[column].astype(str)


def majority_labels(frame: pd.DataFrame, groups: pd.Series) -> pd.Series:
    """Each group's most common label (ties: the first label in sorted order)."""
    return frame["label"].groupby(groups.to_numpy()).agg(lambda s: s.value_counts().sort_index().idxmax())


def grouped(frame: pd.DataFrame, fractions: dict[str, float], groups: pd.Series, seed: int, where: str,
            name: str = "group") -> pd.Series:
    """Whole groups to each side of one split, so no group appears on two sides.

    Per label (a group's most common label), groups are shuffled (seeded); each side that should get images
    first receives one group, then every further group goes to the side furthest below its target number of
    images. With few groups the fractions can only be approximated; with fewer groups of a label than
    sides, no honest split exists and this says so.
    """
    rng = np.random.default_rng(seed)
    wanted = [s for s in SIDES if fractions.get(s, 0.0) > 0]
    sizes = groups.value_counts()
    group_label = majority_labels(frame, groups)
    assigned: dict[str, str] = {}
    for label in sorted(group_label.unique()):
        members = np.sort(group_label.index[group_label == label].to_numpy())
        if len(members) < len(wanted):
            raise UserError(f"{where}: only {len(members)} {name}(s) with label {label!r}, too few for the "
                            f"{len(wanted)} sides {'/'.join(wanted)} without sharing one: set a side's fraction "
                            f"to 0, or use method stratified (then {name}s sit on several sides).")
        members = members[rng.permutation(len(members))]
        total = sizes[members].sum()
        filled = dict.fromkeys(SIDES, 0)
        for i, member in enumerate(members):
            # the smallest sides get their first group first, so a 10 % side is never left empty
            side = (sorted(wanted, key=lambda s: fractions[s])[i] if i < len(wanted)
                    else max(wanted, key=lambda s: fractions[s] * total - filled[s]))
            assigned[member] = side
            filled[side] += sizes[member]
    return groups.map(assigned)


def grouped_kfold(frame: pd.DataFrame, groups: pd.Series, k: int, seed: int, where: str,
                  name: str = "group") -> list[pd.Series]:
    """k folds of whole groups (scikit-learn's StratifiedGroupKFold: label proportions kept as far as groups
    allow, seeded); fold f tests its groups and trains on the rest. Every group is tested exactly once."""
    n_groups = groups.nunique()
    if n_groups < k:
        raise UserError(f"{where}: {k} folds need at least {k} {name}s, and the data has {n_groups}: lower `k`.")
    folds = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    out = []
    # scikit-learn warns when a class has fewer images than folds; the folds are still valid for pooled results
    for _, test in folds.split(np.zeros(len(frame)), frame["label"].to_numpy(), groups.to_numpy()):
        sides = pd.Series("train", index=frame.index, dtype=object)
        sides.iloc[test] = "test"
        out.append(sides)
    return out


def dataset_folds(frame: pd.DataFrame, where: str) -> dict[str, pd.Series]:
    """The dataset's own folds (index columns `dataset_fold_<n>`), keyed by the file's fold number: train/test per
    image, None where the fold does not list it. They are repeated splits: an image may be tested in several folds
    or in none. A fold that lists none of these images is refused (it could train nothing)."""
    columns = dataset_folds_file.fold_columns(frame)
    if not columns:
        raise UserError(f"{where}: method `folds` needs the dataset's own folds in its index, and it has none: the "
                        f"file `datasets.<key>.folds_file` names (BreakHis: Folds.csv) was not in the download (see "
                        f"prepare's warning); restore it and re-run prepare, or use method grouped_kfold.")
    out = {}
    for column in columns:
        fold = dataset_folds_file.fold_number(column)
        sides = frame[column].replace("", None)
        if sides.isna().all():
            raise UserError(f"{where}: fold {fold} of the dataset's folds file lists none of the {len(frame):,} images "
                            f"of this split (see the `folds_partial` warning of prepare): use the full download, or "
                            f"method grouped_kfold.")
        out[fold] = sides
    return out


def carve_validation(frame: pd.DataFrame, sides: pd.Series, groups: pd.Series, val: float, seed: int) -> pd.Series:
    """Move `val` of the training groups of each label to the validation side (seeded), at least one group of a
    label that has two or more training groups, never all of them: as far as the groups allow."""
    sides = sides.copy()
    if val <= 0:
        return sides
    rng = np.random.default_rng(seed)
    train = sides == "train"
    labels = majority_labels(frame[train], groups[train])
    sizes = groups[train].value_counts()
    chosen = []
    for label in sorted(labels.unique()):
        members = np.sort(labels.index[labels == label].to_numpy())
        if len(members) < 2:
            continue
        members = members[rng.permutation(len(members))]
        target, taken = val * sizes[members].sum(), 0
        for member in members[:-1]:  # the last group always stays for training
            if taken and taken + sizes[member] / 2 > target:
                break
            chosen.append(member)
            taken += sizes[member]
    sides[train & groups.isin(chosen)] = "val"
    return sides
