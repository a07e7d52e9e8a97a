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
from tlrepro.data import labels as lab
from tlrepro.data import leakage
from tlrepro.data.index import read_index

FRONT = ["protocol", "side", "view", "path", "label", "class_index", "group"]


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


def grouped(frame: pd.DataFrame, fractions: dict[str, float], group: str, seed: int, where: str) -> pd.Series:
    """Whole groups (e.g. patients) to each side, so no group appears on two sides.

    Per label (a group's most common label), groups are shuffled (seeded); each side that should get images
    first receives one group, then every further group goes to the side furthest below its target number of
    images. With few groups the fractions can only be approximated; with fewer groups of a label than
    sides, no honest split exists and this says so.
    """
    rng = np.random.default_rng(seed)
    wanted = [s for s in SIDES if fractions.get(s, 0.0) > 0]
    sizes = frame.groupby(group, sort=True).size()
    group_label = frame.groupby(group, sort=True)["label"].agg(lambda s: s.value_counts().index[0])
    assigned: dict[str, str] = {}
    for label in sorted(group_label.unique()):
        members = group_label.index[group_label == label].to_numpy()
        if len(members) < len(wanted):
            raise UserError(f"{where}: only {len(members)} {group}(s) with label {label!r}, too few for the "
                            f"{len(wanted)} sides {'/'.join(wanted)} without sharing one: set a side's fraction "
                            f"to 0, or use method stratified (then {group}s sit on several sides).")
        members = members[rng.permutation(len(members))]
        total = sizes[members].sum()
        filled = dict.fromkeys(SIDES, 0)
        for i, member in enumerate(members):
            # the smallest sides get their first group first, so a 10 % side is never left empty
            side = (sorted(wanted, key=lambda s: fractions[s])[i] if i < len(wanted)
                    else max(wanted, key=lambda s: fractions[s] * total - filled[s]))
            assigned[member] = side
            filled[side] += sizes[member]
    return frame[group].map(assigned)


def expand_views(frame: pd.DataFrame, views: list[str]) -> pd.DataFrame:
    """Each row once as it is (view `identity`) and once per dihedral view: the paper's 'N x augmentation'."""
    copies = [frame.assign(view="identity")] + [frame.assign(view=v) for v in views]
    return pd.concat(copies, ignore_index=True).sort_values(["path", "view"], ignore_index=True)


def split_protocol(frame: pd.DataFrame, protocol: Split, *, seed: int, group: str | None,
                   where: str = "split") -> pd.DataFrame:
    """`frame` (an index) as rows (side, view, ...) under one protocol; checked to be meaningful."""
    frame = frame.sort_values("path").reset_index(drop=True).assign(view="identity")
    if protocol.expand == "before_split":
        frame = expand_views(frame.drop(columns="view"), protocol.views)
    fractions = protocol.fractions()
    if protocol.method == "source":
        side = from_source(frame, protocol.val or 0.0, seed, where)
    elif protocol.method == "stratified":
        side = stratified(frame, fractions, seed)
    else:
        column = protocol.group or group
        if not column or column not in frame.columns:
            raise UserError(f"{where}: method `grouped` needs a group column (the protocol's `group` or the "
                            f"dataset's `group`), and the index has {column!r}: "
                            f"{'set one' if not column else 'choose one of ' + ', '.join(frame.columns)}.")
        side = grouped(frame, fractions, column, seed, where)
    out = frame.assign(side=side)
    if protocol.expand == "train_only":
        train = expand_views(out[out["side"] == "train"].drop(columns="view"), protocol.views)
        out = pd.concat([train, out[out["side"] != "train"]], ignore_index=True)
    out = out.sort_values(["side", "path", "view"], key=_side_order, ignore_index=True)
    check_sides(out, protocol, where)
    return out


def _side_order(column: pd.Series) -> pd.Series:
    return column.map({s: i for i, s in enumerate(SIDES)}) if column.name == "side" else column


def check_sides(frame: pd.DataFrame, protocol: Split, where: str) -> None:
    """Every side the protocol asks for holds images of every class; otherwise the split is refused."""
    classes = sorted(frame["label"].unique())
    if len(classes) < 2:
        raise UserError(f"{where}: the data has one class only ({classes}): check the dataset and the cap.")
    for side in SIDES:
        if not protocol.has_side(side):
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
    index = index.assign(class_index=[classes.index(v) for v in index["label"]],
                         group=index[dataset.group] if dataset.group in index else "")
    frames, audits = [], {}
    for name, protocol in study.protocols.items():
        where = f"studies.{study_id}.protocols.{name}"
        rows = split_protocol(index, protocol, seed=params.seed, group=dataset.group, where=where)
        rows["train_match"] = leakage.train_matches(rows, max_distance=params.leakage.phash_max_distance)
        group = protocol.group or dataset.group
        audits[name] = leakage.audit(rows, group=group if group in rows else None,
                                     max_distance=params.leakage.phash_max_distance)
        audits[name]["group"] = group if group in rows else None
        audits[name]["eval_images_matching_train"] = {
            side: {kind: int(((rows["side"] == side) & (rows["train_match"] == kind)).sum())
                   for kind in leakage.MATCH_KINDS} for side in ("val", "test")}
        frames.append(rows.assign(protocol=name))
    split = pd.concat(frames, ignore_index=True)
    columns = FRONT + [c for c in split.columns if c not in FRONT]
    return split[columns], audits


def write_study_split(study_id: str) -> pd.DataFrame:
    """Write data/splits/<study>.csv and <study>.leakage.json from the study's params; returns the split."""
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
    path = paths.split_csv(study_id)
    if not path.is_file():
        raise UserError(f"{paths.relative(path)} not found: run `dvc repro split@{study_id}` first.")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        raise UserError(f"{paths.relative(path)} is not a readable split: re-run `dvc repro split@{study_id}`.") from None
    missing = [c for c in [*FRONT, "sha256", "train_match"] if c not in frame.columns]
    if missing or frame.empty:
        raise UserError(f"{paths.relative(path)} lacks {missing or 'rows'}: re-run `dvc repro split@{study_id}`.")
    return frame
