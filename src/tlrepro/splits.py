"""Each study's train/val/test split: data/splits/<study>.csv and its leakage audit <study>.leakage.json.

The protocol comes from params `<study>.split.protocol`; each is a pure function of the index frame and
the seed, so the same seed gives a byte-identical file. Rows are sorted by path before any shuffling, so
the split does not depend on the order files were found in.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tlrepro import config, io, leakage, paths
from tlrepro.errors import UserError
from tlrepro.index import read_index

SIDES = ("train", "val", "test")


def allocate(n: int, fractions: list[float]) -> list[int]:
    """Split n items into counts proportional to `fractions` that sum to n (largest remainder)."""
    exact = np.asarray(fractions, dtype=float) * n
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    return counts.tolist()


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
        sizes = [len(s) for s in strata]
        quotas = allocate(min(int(max_per_class), len(group)), [n / len(group) for n in sizes])
        for stratum, quota in zip(strata, quotas, strict=True):
            keep.extend(rng.choice(stratum.index.to_numpy(), size=quota, replace=False).tolist())
    return frame.loc[sorted(keep)].reset_index(drop=True)


def stratified_split(frame: pd.DataFrame, fractions: dict[str, float], seed: int) -> pd.Series:
    """Shuffle each label's images (seeded) and cut them in the given train/val/test fractions.

    Stratified: every side gets the same class balance, which random splitting only approximates.
    """
    rng = np.random.default_rng(seed)
    sides = pd.Series("", index=frame.index, dtype=object)
    weights = [fractions.get(side, 0.0) for side in SIDES]
    for _, group in frame.sort_values("path").groupby("label", sort=True):
        order = rng.permutation(group.index.to_numpy())
        counts = allocate(len(order), weights)
        sides[order] = np.repeat(SIDES, counts)
    return sides


def pooled_split(frame: pd.DataFrame, fractions: dict[str, float], seed: int) -> pd.Series:
    """The dataset's own train and test images pooled, shuffled and re-split (mobilenet2025).

    The paper only says the images were shuffled and split; we split stratified by label.
    """
    return stratified_split(frame, fractions, seed)


def source_split(frame: pd.DataFrame, val: float, seed: int) -> pd.Series:
    """The dataset's own train/test folders; `val` of train (stratified by label) becomes validation.

    Images from the dataset's own validation folder, if any, stay validation.
    """
    have = set(frame["source_split"])
    if not {"train", "test"} <= have or "" in have:
        raise UserError(
            f"split protocol `source` needs the dataset's own train/ and test/ folders, but its images have "
            f"source_split {sorted(have)}: use protocol stratified or pooled, or another dataset."
        )
    sides = frame["source_split"].astype(object).copy()
    train = frame[frame["source_split"] == "train"]
    sides[train.index] = stratified_split(train, {"train": 1.0 - val, "val": val}, seed)
    return sides


def grouped_split(frame: pd.DataFrame, fractions: dict[str, float], group: str, seed: int) -> pd.Series:
    """Whole groups (e.g. patients) to each side, so no group appears on two sides.

    Groups are shuffled (seeded), then each goes to the side furthest below its target number of images;
    this is done per label (a group's most common label) so classes stay roughly balanced. With few groups
    the fractions can only be approximated.
    """
    rng = np.random.default_rng(seed)
    frame = frame.sort_values("path")
    sizes = frame.groupby(group, sort=True).size()
    group_label = frame.groupby(group, sort=True)["label"].agg(lambda s: s.value_counts().index[0])
    assigned: dict[str, str] = {}
    for label in sorted(group_label.unique()):
        members = group_label.index[group_label == label].to_numpy()
        members = members[rng.permutation(len(members))]
        total = sizes[members].sum()
        filled = dict.fromkeys(SIDES, 0)
        for member in members:
            side = max(SIDES, key=lambda s: fractions.get(s, 0.0) * total - filled[s])
            assigned[member] = side
            filled[side] += sizes[member]
    return frame[group].map(assigned).reindex(frame.index)


def fractions_of(spec: dict, study: str) -> dict[str, float]:
    """train/val/test fractions from `<study>.split`, checked: each in [0, 1], train > 0, summing to 1."""
    try:
        fractions = {side: float(spec.get(side, 0.0) or 0.0) for side in SIDES}
    except (TypeError, ValueError):
        raise UserError(f"params.yaml `{study}.split` train/val/test must be numbers.") from None
    if any(not 0.0 <= f <= 1.0 for f in fractions.values()) or fractions["train"] <= 0:
        raise UserError(
            f"params.yaml `{study}.split` fractions must be in [0, 1] with train > 0: {fractions}."
        )
    if abs(sum(fractions.values()) - 1.0) > 1e-6:
        raise UserError(
            f"params.yaml `{study}.split` fractions train/val/test sum to {sum(fractions.values()):g}, not 1."
        )
    return fractions


def split_frame(frame: pd.DataFrame, spec: dict, seed: int, study: str = "<study>") -> pd.DataFrame:
    """`frame` with a `split` column (and `split_by_<group>` when `also_group_by` is set), per `spec`."""
    protocol = spec.get("protocol")
    frame = frame.sort_values("path").reset_index(drop=True)
    if protocol == "source":
        val = spec.get("val", 0.0) or 0.0
        if not isinstance(val, int | float) or not 0.0 <= val < 1.0:
            raise UserError(f"params.yaml `{study}.split.val` must be a fraction in [0, 1), not {val!r}.")
        sides = source_split(frame, float(val), seed)
    elif protocol in ("pooled", "stratified"):
        sides = (pooled_split if protocol == "pooled" else stratified_split)(
            frame, fractions_of(spec, study), seed
        )
    else:
        raise UserError(
            f"params.yaml `{study}.split.protocol` is {protocol!r}: use source, pooled or stratified."
        )
    columns = {"split": sides}
    if group := spec.get("also_group_by"):
        if group not in frame.columns:
            raise UserError(
                f"params.yaml `{study}.split.also_group_by` is {group!r}, but the index has no such column."
            )
        columns[f"split_by_{group}"] = grouped_split(frame, fractions_of(spec, study), group, seed)
    front = ["path", "label", *columns]
    out = frame.assign(**columns)
    return out[front + [c for c in frame.columns if c not in front]]


def write_study_split(study: str) -> pd.DataFrame:
    """Write data/splits/<study>.csv and <study>.leakage.json from the study's params; returns the split."""
    params = config.load_params()
    key = config.require(params, f"{study}.dataset")
    spec = config.require(params, f"{study}.split")
    if not isinstance(spec, dict):
        raise UserError(f"params.yaml `{study}.split` must be a mapping, e.g. {{protocol: stratified, ...}}.")
    seed = int(config.require(params, "seed"))
    cap = (params.get("scale") or {}).get("max_images_per_class")
    max_distance = int(config.require(params, "leakage.phash_max_distance"))
    config.dataset(key, params)
    frame = split_frame(cap_per_class(read_index(key), cap, seed), spec, seed, study)
    split_columns = [c for c in frame.columns if c == "split" or c.startswith("split_by_")]
    group = "patient" if "patient" in frame.columns else None
    report = {c: leakage.audit(frame, c, group, max_distance) for c in split_columns}
    io.write_csv(paths.split_csv(study), frame)
    io.write_json(paths.leakage_json(study), report)
    for column in split_columns:
        print(f"{study} ({key}, {spec.get('protocol')}) {column}:")
        print(pd.crosstab(frame["label"], frame[column], margins=True).to_string())
        print(leakage.summary_line(report[column]))
    return frame
