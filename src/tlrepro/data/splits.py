"""Each study's splits: data/splits/<study>.csv (one row per image, view and protocol) and the leakage audit.

A study names one or more protocols (params `studies.<id>.protocols`); each is a pure function of the index
and the seed, so the same seed gives a byte-identical file. Rows are sorted by path before any shuffling, so
a split does not depend on the order files were found in. Protocols with `views` expand every image into
its dihedral copies (rows with a `view`), before the split or on the training side only.

A split that cannot be meaningful (an empty side, a class missing from a side, too few patients for a
grouped split) stops with a UserError naming the protocol; nothing is written.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from tlrepro.core import config, fileio, paths
from tlrepro.core.config import SIDES, Split
from tlrepro.core.errors import UserError
from tlrepro.core.numbers import allocate
from tlrepro.data import folds as dataset_folds_file
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
        # grouped_kfold: folds 1..k, a partition; folds: the file's own fold numbers, repeated splits
        assignments = (dict(enumerate(groups.grouped_kfold(frame, frame["group"], protocol.folds, seed, where,
                                                           column), start=1))
                       if protocol.method == "grouped_kfold" else groups.dataset_folds(frame, where))
        return pd.concat([
            _finish(frame, groups.carve_validation(frame, sides, frame["group"], protocol.val or 0.0, seed + int(fold)),
                    protocol, f"{where} (fold {fold})", str(fold))
            for fold, sides in assignments.items()], ignore_index=True)
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
    folds' (each group tested once under grouped_kfold, as the file says under the dataset's own folds), and its
    validation side holds what the groups allow."""
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
    full = read_index(study.dataset)
    index = cap_per_class(full, params.scale.max_images_per_class, params.seed)
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
        # what the split file shows of the protocol (tests per image, groups never tested, straddling groups):
        # the dataset's folds are repeated splits, not a partition, and the report says so from these facts
        coverage = dataset_folds_file.coverage(full, dataset.folds_file) if protocol.method == "folds" else None
        facts = describe_protocol(rows, images=index["path"], folds_file=coverage)
        audits[name].update(protocol_kind=facts["kind"], tests=facts["tests"],
                            images_never_tested=facts["images_never_tested"], facts=facts,
                            sentence=protocol_sentence(facts))
        if coverage:
            audits[name]["folds_file"] = coverage
        frames.append(rows.assign(protocol=name))
    split = pd.concat(frames, ignore_index=True)
    columns = FRONT + [c for c in split.columns if c not in FRONT]
    return split[columns], audits


def write_study_split(study_id: str) -> pd.DataFrame:
    """Write data/splits/<study>.csv, its audit (reports/leakage/<study>.json, and every detail beside the
    split) from the study's params; returns the split."""
    params = config.load_params()
    split, audits = build_split(study_id, params)
    # the metric file keeps the counts (and the straddling groups of each fold), the details file everything
    counts = {name: {k: v for k, v in a.items() if k != "sentence" and (not isinstance(v, dict)
                                                                        or k.endswith("_straddling_by_fold"))}
              for name, a in audits.items()}
    fileio.write_csv(paths.split_csv(study_id), split)
    fileio.write_json(paths.leakage_json(study_id), counts)
    fileio.write_json(paths.leakage_details_json(study_id), audits)
    for name, frame in split.groupby("protocol", sort=False):
        print(f"{study_id} ({params.study(study_id).dataset}) protocol {name}:")
        print(pd.crosstab(frame["label"], frame["side"], margins=True).to_string())
        print(leakage.summary_line(audits[name]))
        print(f"protocol {name}: {audits[name]['sentence']}")
    return split


def read_split(study_id: str) -> pd.DataFrame:
    """data/splits/<study>.csv, checked: a UserError says which stage to re-run."""
    return fileio.read_table(paths.split_csv(study_id), "split", f"split@{study_id}", [*FRONT, "sha256", "train_match"])


# ---------------------------------------------------------------- what a protocol's split file shows

GROUP_NAMES = {"accession": ("accession", "accessions"), "patient": ("patient folder", "patient folders")}


def _straddling(rows: pd.DataFrame, column: str) -> dict[str, int]:
    """Per fold: the groups with an image on the test side and another on a training side (train or val)."""
    out = {}
    for fold, part in rows.groupby("fold", sort=False):
        tested = set(part.loc[part["side"] == "test", column])
        trained = set(part.loc[part["side"].isin(("train", "val")), column])
        out[str(fold) or "1"] = len(tested & trained)
    return out


def describe_protocol(rows: pd.DataFrame, *, images: Iterable[str] | None = None,
                      folds_file: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The facts of one protocol's split rows (`study.protocol(name)`, or data/splits/<study>.csv filtered to it),
    from which its description is built (protocol_sentence). A test is one image on the test side of one fold
    (an image's views in one fold count once). Returns:

    - `kind`: "single split" (no folds), "partition" (folds, and every image of the protocol tested exactly once,
      none left out) or "repeated splits" (folds that test some images several times or never: BreakHis's
      Folds.csv);
    - `folds`: how many (1 for a single split); `images`: distinct images in the protocol's rows;
    - `tests`: test rows, one per (fold, image); `tests_per_image`: {min, max, mean, histogram} over the
      protocol's images, histogram {"0": images never tested, "1": tested once, ...} (keys are text, for JSON);
    - `images_never_tested`, `images_tested_more_than_once`;
    - `images_left_out`: of `images` (e.g. every image the study's other protocols use), those with no row in this
      protocol (an image no fold of the dataset's file lists); None without `images`;
    - `unit`: which column the rows' `group` is (`accession`, `patient`, else `group`): the unit intervals resample
      and validation is carved by; the dataset's folds keep patient folders whole, not always accessions;
    - `groups`: per group column present (accession, patient; else the protocol's `group`): {count, never_tested,
      never_tested_examples (up to 10), straddling_by_fold {fold: n}, straddling (summed over folds)}, where a
      group straddles a fold when it has an image on that fold's test side and another on its training or
      validation side (e.g. folder 22549AB on train, 22549CD of the same accession on test);
    - `straddling`: the unit's straddling, summed over folds;
    - `folds_file`: None, or {file, rows_used: (fold, image) rows of this split the file gave}, merged with
      `folds_file` (prepare's coverage: rows, rows_matched, folds, images, images_without_fold_row; from
      tlrepro.data.folds.recorded_coverage, or the split audit's `folds_file`).
    """
    rows = rows[rows["side"].notna() & (rows["side"] != "")]
    folds = sorted({str(f) for f in rows["fold"]}, key=lambda f: int(f) if f else 0)
    tested = rows[rows["side"] == "test"].drop_duplicates(["fold", "path"])
    per_image = tested.groupby("path").size().reindex(pd.unique(rows["path"]), fill_value=0)
    histogram = per_image.value_counts().sort_index()
    present = set(per_image.index)
    left_out = None if images is None else len(set(images) - present)
    columns = [c for c in GROUP_NAMES if c in rows] or ["group"]
    unit = next((c for c in columns if c in rows and rows[c].astype(str).equals(rows["group"].astype(str))), "group")
    groups_facts = {}
    for column in dict.fromkeys([*columns, unit]):
        if column not in rows:
            continue
        never = sorted(set(rows[column]) - set(tested[column]))
        by_fold = _straddling(rows, column)
        groups_facts[column] = {"count": int(rows[column].nunique()), "never_tested": len(never),
                                "never_tested_examples": never[:10], "straddling_by_fold": by_fold,
                                "straddling": int(sum(by_fold.values()))}
    if folds == [""]:
        kind = "single split"
    elif per_image.min() == per_image.max() == 1 and not left_out:
        kind = "partition"
    else:
        kind = "repeated splits"
    used = None if folds_file is None else {"rows_used": int(len(rows.drop_duplicates(["fold", "path"]))),
                                            **folds_file}
    return {
        "kind": kind, "folds": len(folds), "images": len(per_image), "tests": len(tested),
        "tests_per_image": {"min": int(per_image.min()), "max": int(per_image.max()),
                            "mean": round(float(per_image.mean()), 4),
                            "histogram": {str(k): int(v) for k, v in histogram.items()}},
        "images_never_tested": int((per_image == 0).sum()), "images_tested_more_than_once": int((per_image > 1).sum()),
        "images_left_out": left_out, "unit": unit, "groups": groups_facts,
        "straddling": groups_facts.get(unit, {}).get("straddling", 0), "folds_file": used,
    }


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n:,} {one if n == 1 else many or one + 's'}"


def _names(column: str, n: int) -> str:
    return _count(n, *GROUP_NAMES.get(column, (column, f"{column}s")))


def protocol_sentence(facts: Mapping[str, Any]) -> str:
    """One sentence saying what a protocol is, built only from describe_protocol's facts: how often each image is
    tested, what is never tested, and which groups sit on both sides. It never says "tested once" of repeated
    splits, and never calls a protocol honest (a reader judges that from the straddling groups it names)."""
    n, folds, kind = facts["images"], facts["folds"], facts["kind"]
    per, groups, unit = facts["tests_per_image"], facts["groups"], facts["unit"]
    if kind == "single split":
        text = f"One split: {facts['tests']:,} of its {_count(n, 'image')} are tested"
    elif kind == "partition":
        text = f"{folds} folds that partition the data: each of its {_count(n, 'image')} is tested exactly once"
    else:
        times = f"{per['min']} to {per['max']}" if per["min"] != per["max"] else f"{per['max']}"
        text = (f"{folds} repeated train/test splits, not a partition: {_count(facts['tests'], 'test')} of "
                f"{_count(n, 'image')}, each image tested {times} times")
        never = [(facts["images_never_tested"], _count(facts["images_never_tested"], "image"))]
        never += [(g["never_tested"], f"{g['never_tested']:,} of the {_names(c, g['count'])}") for c, g in groups.items()]
        never = [(k, words) for k, words in never if k]
        if never:
            verb = "are" if len(never) > 1 or never[0][0] > 1 else "is"
            listed = [words for _, words in never]
            text += f"; {', '.join(listed[:-1]) + ' and ' if len(listed) > 1 else ''}{listed[-1]} {verb} never tested"
    if facts.get("images_left_out"):
        text += f"; {_count(facts['images_left_out'], 'image')} of the study not in it (no row in any fold)"
    straddle = [(c, g) for c, g in groups.items() if g["straddling"]]
    if straddle:
        parts = [_names(c, g["straddling"]) + ("" if kind == "single split" else
                                                " in all (per fold: " + ", ".join(map(str, g["straddling_by_fold"]
                                                                                      .values())) + ")")
                 for c, g in straddle]
        text += (f"; {' and '.join(parts)} have images on the test side and on a training side of the same "
                 f"{'split' if kind == 'single split' else 'fold'}")
    elif unit in groups:
        text += f"; no {GROUP_NAMES.get(unit, (unit,))[0]} has images on both the test and a training side"
    used = facts.get("folds_file")
    if used and used.get("rows_matched") is not None:
        of = f" of the {used['rows']:,}" if used.get("rows") else ""
        text += f"; {used['rows_matched']:,}{of} rows of {used.get('file') or 'the folds file'} match images of this copy"
    return text + "."
