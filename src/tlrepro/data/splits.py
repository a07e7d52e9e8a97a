"""Each study's splits: data/splits/<study>.csv (one row per image, view and protocol) and the leakage audit.

A study names one or more protocols (params `studies.<id>.protocols`); each is a pure function of the index
and the seed, so the same seed gives a byte-identical file. Rows are sorted by path before any shuffling, so
a split does not depend on the order files were found in. Protocols with `views` expand every image into
its dihedral copies (rows with a `view`), before the split or on the training side only.

A split that cannot be meaningful (an empty side, a class missing from a side, too few patients for a
grouped split) stops with a UserError naming the protocol; nothing is written.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tlrepro.core import config, fileio, paths
from tlrepro.core.config import SIDES, Split
from tlrepro.core.errors import UserError
from tlrepro.core.numbers import allocate
from tlrepro.data import groups, leakage
from tlrepro.data import labels as lab
from tlrepro.data.index import read_index

FRONT = ["protocol", "fold", "side", "view", "path", "label", "class_index", "group"]


def cap_per_class(frame: pd.DataFrame, max_per_class: int | None, seed: int) -> pd.DataFrame:
    """At most `max_per_class` images of each label, drawn at random (seeded) for quick passes.

    Within a label the cap is shared among the dataset's own splits in proportion to their size, so the
    `source` protocol keeps the dataset's train/test ratio.
    """
    if not max_per_class:
        return frame
    rng = np.random.default_rng(seed)
    frame = frame.sort_values("path").reset_index(drop=True)
    keep = []
    for _, group in frame.groupby("label", sort=True):
        strata = [s for _, s in group.groupby("source_split", sort=True)]
        quotas = allocate(min(int(max_per_class), len(group)), [len(s) / len(group) for s in strata])
        for stratum, quota in zip(strata, quotas, strict=True):
            keep.extend(rng.choice(stratum.index.to_numpy(), size=quota, replace=False).tolist())
    return frame.loc[sorted(keep)].reset_index(drop=True)


def stratified(frame: pd.DataFrame, fractions: dict[str, float], seed: int) -> pd.Series:
    """Shuffle each label's rows (seeded) and cut them in the given train/val/test fractions."""
    rng = np.random.default_rng(seed)
    sides = pd.Series("", index=frame.index, dtype=object)
    weights = [fractions.get(side, 0.0) for side in SIDES]
    for _, group in frame.groupby("label", sort=True):
        order = rng.permutation(group.index.to_numpy())
        sides[order] = np.repeat(SIDES, allocate(len(order), weights))
    return sides


def from_source(frame: pd.DataFrame, val: float, seed: int, where: str) -> pd.Series:
    """The dataset's own train/test folders; `val` of train (stratified by label) becomes validation.

    Images from the dataset's own validation folder, if any, stay validation.
    """
    have = set(frame["source_split"])
    if not {"train", "test"} <= have or "" in have:
        raise UserError(f"{where}: method `source` needs the dataset's own train/ and test/ folders, but its "
                        f"images have source_split {sorted(have)}: use method stratified or grouped.")
    sides = frame["source_split"].astype(object).copy()
    train = frame[frame["source_split"] == "train"]
    sides[train.index] = stratified(train, {"train": 1.0 - val, "val": val}, seed)
    return sides


def expand_views(frame: pd.DataFrame, views: list[str]) -> pd.DataFrame:
    """Each row once as it is (view `identity`) and once per dihedral view: the paper's 'N x augmentation'."""
    copies = [frame.assign(view="identity")] + [frame.assign(view=v) for v in views]
    return pd.concat(copies, ignore_index=True).sort_values(["path", "view"], ignore_index=True)


def split_protocol(frame: pd.DataFrame, protocol: Split, *, seed: int, group: str | None,
                   where: str = "split", max_distance: int = 4) -> pd.DataFrame:
    """`frame` (an index) as rows (fold, side, view, group, ...) under one protocol; checked to be meaningful.

    `group` (the protocol's `group`, else the dataset's) fills the `group` column even where the split ignores
    it, since evaluation resamples groups; cross-validation protocols give one set of rows per fold."""
    frame = frame.sort_values("path").reset_index(drop=True).assign(view="identity")
    if protocol.expand == "before_split":
        frame = expand_views(frame.drop(columns="view"), protocol.views)
    column = protocol.group or group
    needs_groups = protocol.method in ("grouped", *Split.CROSS_VALIDATION)
    if needs_groups or (column and column in frame.columns):
        frame = frame.assign(group=groups.group_values(frame, column, where=where, max_distance=max_distance))
    else:
        frame = frame.assign(group="")
    if protocol.cross_validation:
        assignments = (groups.grouped_kfold(frame, frame["group"], protocol.folds, seed, where, column)
                       if protocol.method == "grouped_kfold" else groups.dataset_folds(frame, where))
        return pd.concat([
            _finish(frame, groups.carve_validation(frame, sides, frame["group"], protocol.val or 0.0, seed + fold),
                    protocol, f"{where} (fold {fold})", str(fold))
            for fold, sides in enumerate(assignments, start=1)], ignore_index=True)
    fractions = protocol.fractions()
    if protocol.method == "source":
        side = from_source(frame, protocol.val or 0.0, seed, where)
    elif protocol.method == "stratified":
        side = stratified(frame, fractions, seed)
    else:
        side = groups.grouped(frame, fractions, frame["group"], seed, where, column)
    return _finish(frame, side, protocol, where, "")


def _finish(frame: pd.DataFrame, side: pd.Series, protocol: Split, where: str, fold: str) -> pd.DataFrame:
    """Rows with their side (rows without one, unlisted by a dataset's folds, dropped), the training side expanded
    into its views when the protocol says so, sorted and checked."""
    out = frame.assign(side=side, fold=fold)
    out = out[out["side"].notna()]
    if protocol.expand == "train_only":
        train = expand_views(out[out["side"] == "train"].drop(columns="view"), protocol.views)
        out = pd.concat([train, out[out["side"] != "train"]], ignore_index=True)
    out = out.sort_values(["side", "path", "view"], key=_side_order, ignore_index=True)
    check_sides(out, protocol, where)
    return out


def _side_order(column: pd.Series) -> pd.Series:
    return column.map({s: i for i, s in enumerate(SIDES)}) if column.name == "side" else column


def check_sides(frame: pd.DataFrame, protocol: Split, where: str) -> None:
    """Every side the protocol asks for holds images of every class; otherwise the split is refused.

    A cross-validation fold needs every class on its training side only: its test side is pooled with the other
    folds' (every group tested once), and its validation side holds what the groups allow."""
    classes = sorted(frame["label"].unique())
    if len(classes) < 2:
        raise UserError(f"{where}: the data has one class only ({classes}): check the dataset and the cap.")
    for side in SIDES:
        if not protocol.has_side(side) or (protocol.cross_validation and side != "train"):
            continue
        present = set(frame.loc[frame["side"] == side, "label"])
        missing = [c for c in classes if c not in present]
        if missing:
            raise UserError(f"{where}: the {side} side has no {', '.join(missing)} images "
                            f"({int((frame['side'] == side).sum())} images there): raise "
                            f"scale.max_images_per_class, change the fractions, or use more data.")


def build_split(study_id: str, params: config.Params) -> tuple[pd.DataFrame, dict]:
    """The study's split rows for every protocol, and the leakage audit of each."""
    study = params.study(study_id)
    dataset = params.dataset(study.dataset)
    index = cap_per_class(read_index(study.dataset), params.scale.max_images_per_class, params.seed)
    # the class order and the unit of independence travel with the split, so study stages need no dataset setting
    classes = lab.class_names(index["label"], dataset.labels, dataset.classes)
    index = index.assign(class_index=[classes.index(v) for v in index["label"]])
    distance = params.leakage.phash_max_distance
    frames, audits = [], {}
    for name, protocol in study.protocols.items():
        where = f"studies.{study_id}.protocols.{name}"
        rows = split_protocol(index, protocol, seed=params.seed, group=dataset.group, where=where,
                              max_distance=distance)
        column = protocol.group or dataset.group
        grouped_by = column if (rows["group"] != "").any() else None
        if grouped_by and grouped_by not in rows:
            rows[grouped_by] = rows["group"]  # a computed group (dihedral_cluster), named in the audit
        audited = [c for c in dict.fromkeys([grouped_by, "accession", "patient"]) if c and c in rows]
        folds = [rows[rows["fold"] == f] for f in rows["fold"].unique()]
        rows["train_match"] = pd.concat([leakage.train_matches(f, max_distance=distance) for f in folds])
        audits[name] = leakage.audit_folds([rows.loc[f.index] for f in folds], max_distance=distance,
                                           group=audited)
        audits[name].update(group=grouped_by, folds=len(folds) if protocol.cross_validation else None,
                            folds_source=("the dataset's (" + (dataset.folds_file or "") + ")"
                                          if protocol.method == "folds" else "ours (grouped_kfold)"
                                          if protocol.method == "grouped_kfold" else None))
        audits[name]["eval_images_matching_train"] = {
            side: {kind: int(((rows["side"] == side) & (rows["train_match"] == kind)).sum())
                   for kind in leakage.MATCH_KINDS} for side in ("val", "test")}
        frames.append(rows.assign(protocol=name))
    split = pd.concat(frames, ignore_index=True)
    columns = FRONT + [c for c in split.columns if c not in FRONT]
    return split[columns], audits


def write_study_split(study_id: str) -> pd.DataFrame:
    """Write data/splits/<study>.csv, its audit (reports/leakage/<study>.json, and every detail beside the
    split) from the study's params; returns the split."""
    params = config.load_params()
    split, audits = build_split(study_id, params)
    counts = {name: {k: v for k, v in a.items() if not isinstance(v, dict)} for name, a in audits.items()}
    fileio.write_csv(paths.split_csv(study_id), split)
    fileio.write_json(paths.leakage_json(study_id), counts)
    fileio.write_json(paths.leakage_details_json(study_id), audits)
    for name, frame in split.groupby("protocol", sort=False):
        print(f"{study_id} ({params.study(study_id).dataset}) protocol {name}:")
        print(pd.crosstab(frame["label"], frame["side"], margins=True).to_string())
        print(leakage.summary_line(audits[name]))
    return split


def read_split(study_id: str) -> pd.DataFrame:
    """data/splits/<study>.csv, checked: a UserError says which stage to re-run."""
    return fileio.read_table(paths.split_csv(study_id), "split", f"split@{study_id}", [*FRONT, "sha256", "train_match"])
