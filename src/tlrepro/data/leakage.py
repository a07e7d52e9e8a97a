"""Leakage audit: the same image, a near-identical image, a rotated or flipped copy, or the same patient on
two sides of a split, and the overlap between datasets. Any of these inflates test scores.

- exact: the same bytes shown the same way (sha256 and view equal);
- near: 64-bit perceptual hashes of the images as shown at most `max_distance` bits apart (not exact);
- dihedral: the same up to a rotation or flip: the smallest of the eight dihedral perceptual hashes
  (a canonical hash) at most `max_distance` bits apart; exact and most near pairs are also dihedral pairs.

Everything is counted per pair of sides without listing pairs: identical hashes are grouped and counted
(a thousand byte-identical files cost a thousand rows, not a million pairs), and distinct hashes are
compared in chunks (XOR + popcount) multiplying counts, so memory stays linear in the number of images.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
import pandas as pd

from tlrepro.data.images import VIEWS

SIDE_ORDER = ("train", "val", "test")
VIEW_ORDER = list(VIEWS)
MAX_EXAMPLES = 20
CHUNK = 1024
MATCH_KINDS = ("exact", "near", "dihedral")
PAIR_COUNTS = ("exact_duplicate_pairs", "near_duplicate_pairs", "dihedral_copy_pairs")


def as_uint64(hashes: pd.Series | list[str]) -> np.ndarray:
    """16-hex-digit perceptual hashes as uint64."""
    return np.array([int(h, 16) for h in hashes], dtype=np.uint64)


def with_hashes(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` plus `shown_phash` (the phash of the image as its `view` shows it) and `canonical_phash`."""
    views = frame["view"] if "view" in frame else pd.Series("identity", index=frame.index)
    forms = frame["dihedral_phashes"].str.split(" ")
    shown = [f[VIEW_ORDER.index(v)] for f, v in zip(forms, views.replace("", "identity"), strict=True)]
    return frame.assign(view=views.replace("", "identity"), shown_phash=shown, canonical_phash=forms.map(min))


def _unique_counts(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    unique, counts = np.unique(values, return_counts=True)
    return unique, counts.astype(np.int64)


def _within(a: np.ndarray, b: np.ndarray, max_distance: int) -> Iterator[tuple[int, np.ndarray]]:
    """(start, mask chunk) with mask[i, j] = hash a[start + i] is within max_distance bits of b[j]."""
    for start in range(0, len(a), CHUNK):
        yield start, np.bitwise_count(a[start : start + CHUNK, None] ^ b[None, :]) <= max_distance


def count_close_pairs(a: np.ndarray, b: np.ndarray, max_distance: int) -> int:
    """How many (i, j) have hashes a[i], b[j] at most max_distance bits apart, in linear memory."""
    ua, ca = _unique_counts(a)
    ub, cb = _unique_counts(b)
    return int(sum(int(ca[s : s + len(m)] @ (m @ cb)) for s, m in _within(ua, ub, max_distance)))


def has_close(a: np.ndarray, b: np.ndarray, max_distance: int) -> np.ndarray:
    """For each hash of `a`: whether some hash of `b` is at most max_distance bits away."""
    ua, inverse = np.unique(a, return_inverse=True)
    ub = np.unique(b)
    found = np.zeros(len(ua), dtype=bool)
    if len(ub):
        for start, mask in _within(ua, ub, max_distance):
            found[start : start + len(mask)] = mask.any(axis=1)
    return found[inverse]


def _close_examples(fa: pd.DataFrame, fb: pd.DataFrame, column: str, max_distance: int) -> list[list]:
    """Up to MAX_EXAMPLES (path a, path b, distance) whose `column` hashes are close but that are not the same
    exact image; found through distinct hashes, so identical files never multiply the work."""
    groups_a, groups_b = fa.groupby(column).indices, fb.groupby(column).indices
    keys_a, keys_b = list(groups_a), list(groups_b)
    ident_a = list(zip(fa["sha256"], fa["view"], strict=True))
    ident_b = list(zip(fb["sha256"], fb["view"], strict=True))
    ua, ub = as_uint64(keys_a), as_uint64(keys_b)
    out: list[list] = []
    for start, mask in _within(ua, ub, max_distance):
        for i, j in zip(*np.nonzero(mask), strict=True):
            rows_a, rows_b = groups_a[keys_a[start + i]][:MAX_EXAMPLES], groups_b[keys_b[j]][:MAX_EXAMPLES]
            pair = next(((x, y) for x in rows_a for y in rows_b if ident_a[x] != ident_b[y]), None)
            if pair is None:
                continue
            distance = int(np.bitwise_count(ua[start + i] ^ ub[j]))
            out.append([fa["path"].iloc[pair[0]], fb["path"].iloc[pair[1]], distance])
            if len(out) >= MAX_EXAMPLES:
                return out
    return out


def _exact_examples(fa: pd.DataFrame, fb: pd.DataFrame) -> list[list]:
    first_a = fa.groupby(["sha256", "view"])["path"].first()
    first_b = fb.groupby(["sha256", "view"])["path"].first()
    common = first_a.index.intersection(first_b.index)[:MAX_EXAMPLES]
    return [[first_a[k], first_b[k]] for k in common]


def exact_pairs(fa: pd.DataFrame, fb: pd.DataFrame) -> int:
    ka = fa.groupby(["sha256", "view"]).size()
    kb = fb.groupby(["sha256", "view"]).size()
    common = ka.index.intersection(kb.index)
    return int((ka[common] * kb[common]).sum())


def sides_of(frame: pd.DataFrame, column: str = "side") -> list[str]:
    present = [s for s in frame[column].unique() if s != "" and pd.notna(s)]
    return sorted(present, key=lambda s: (SIDE_ORDER.index(s) if s in SIDE_ORDER else 99, s))


def audit(frame: pd.DataFrame, *, side_column: str = "side", group: str | list[str] | None = None,
          max_distance: int = 4) -> dict:
    """Counts of exact, near and dihedral pairs and of shared groups for every pair of sides, plus examples.

    `group` names one or more group columns (e.g. accession and patient): each gets `<column>s_shared` per pair
    of sides, `<column>s_on_several_sides` and `<column>s_straddling` (groups on the test side that also have an
    image on the train or validation side: 22549AB on train and 22549CD, the same accession, on test)."""
    group_columns = [group] if isinstance(group, str) else list(group or [])
    frame = with_hashes(frame)
    sides = sides_of(frame, side_column)
    by_side = {s: frame[frame[side_column] == s] for s in sides}
    pairs, examples = {}, {"exact": [], "near": [], "dihedral": []}
    for a, b in itertools.combinations(sides, 2):
        fa, fb = by_side[a], by_side[b]
        exact = exact_pairs(fa, fb)
        near = count_close_pairs(as_uint64(fa["shown_phash"]), as_uint64(fb["shown_phash"]), max_distance) - exact
        dihedral = count_close_pairs(as_uint64(fa["canonical_phash"]), as_uint64(fb["canonical_phash"]), max_distance)
        counts = {"exact_duplicate_pairs": exact, "near_duplicate_pairs": near, "dihedral_copy_pairs": dihedral}
        if len(examples["exact"]) < MAX_EXAMPLES and exact:
            examples["exact"] += _exact_examples(fa, fb)
        if near and len(examples["near"]) < MAX_EXAMPLES:
            examples["near"] += _close_examples(fa, fb, "shown_phash", max_distance)
        if dihedral > exact and len(examples["dihedral"]) < MAX_EXAMPLES:
            examples["dihedral"] += _close_examples(fa, fb, "canonical_phash", max_distance)
        for column in group_columns:
            counts[f"{column}s_shared"] = len(set(fa[column]) & set(fb[column]))
        pairs[f"{a}-{b}"] = counts
    report = {
        "images": len(frame),
        "images_per_side": {s: len(f) for s, f in by_side.items()},
        "phash_max_distance": max_distance,
        **{k: sum(p[k] for p in pairs.values()) for k in PAIR_COUNTS},
        "by_sides": pairs,
    }
    for column in group_columns:
        on_sides = frame[frame[side_column].isin(sides)].groupby(column)[side_column].unique()
        several = {str(g): sorted(v, key=sides.index) for g, v in on_sides.items() if len(v) > 1}
        report[f"{column}s"] = int(frame[column].nunique())
        report[f"{column}s_on_several_sides"] = len(several)
        # straddling: a group with an image on the test side and another on a training side (train or val)
        tested = set(frame.loc[frame[side_column] == "test", column])
        report[f"{column}s_straddling"] = len(tested & set(frame.loc[frame[side_column].isin(("train", "val")), column]))
        examples[f"{column}s"] = dict(sorted(several.items())[:MAX_EXAMPLES])
    report["examples"] = {k: v[:MAX_EXAMPLES] if isinstance(v, list) else v for k, v in examples.items()}
    return report


def audit_folds(folds: list[pd.DataFrame], *, group: list[str] | None = None, max_distance: int = 4) -> dict:
    """`audit` of one split, or of every fold of a cross-validation summed over folds (counts of pairs and of
    groups across sides add up; each fold's own audit is kept under `by_fold`, and the groups straddling each fold,
    on its test side and a training side, under `<column>s_straddling_by_fold`)."""
    if len(folds) == 1:
        return audit(folds[0], group=group, max_distance=max_distance)
    each = {str(f["fold"].iloc[0]): audit(f, group=group, max_distance=max_distance) for f in folds}
    first = next(iter(each.values()))
    summed = ("_pairs", "_on_several_sides", "_straddling")
    report = {k: (sum(a[k] for a in each.values()) if k.endswith(summed) else v)
              for k, v in first.items() if not isinstance(v, dict)}
    for key in [k for k in first if k.endswith("_straddling")]:  # per fold too: the dataset's folds differ
        report[f"{key}_by_fold"] = {f: a[key] for f, a in each.items()}
    report["images"] = int(pd.concat(folds)["path"].nunique())
    report["images_per_side"] = {s: sum(a["images_per_side"].get(s, 0) for a in each.values())
                                 for s in first["images_per_side"]}
    report["by_sides"] = {pair: {k: sum(a["by_sides"].get(pair, {}).get(k, 0) for a in each.values()) for k in counts}
                          for pair, counts in first["by_sides"].items()}
    report["examples"] = {k: v for a in each.values() for k, v in a["examples"].items() if v} or first["examples"]
    report["by_fold"] = {f: {k: v for k, v in a.items() if k != "examples"} for f, a in each.items()}
    return report


def dihedral_clusters(frame: pd.DataFrame, max_distance: int = 4) -> pd.Series:
    """A cluster id per row: rows whose canonical hashes (smallest over the eight rotations and flips) are at most
    `max_distance` bits apart, directly or through others, share one (union-find over close pairs). Ids are the
    cluster's smallest canonical hash, so they do not depend on row order."""
    canonical = as_uint64(with_hashes(frame)["canonical_phash"])
    unique, inverse = np.unique(canonical, return_inverse=True)
    parent = np.arange(len(unique))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for start, mask in _within(unique, unique, max_distance):
        for i, j in zip(*np.nonzero(mask), strict=True):
            a, b = root(start + i), root(j)
            if a != b:
                parent[max(a, b)] = min(a, b)  # the smaller index (smaller hash) is the root
    roots = np.array([root(i) for i in range(len(unique))])
    return pd.Series([f"{unique[r]:016x}" for r in roots[inverse]], index=frame.index, dtype=object)


def train_matches(frame: pd.DataFrame, *, side_column: str = "side", max_distance: int = 4) -> pd.Series:
    """For every row not on the train side: 'exact', 'near' or 'dihedral' when some training row matches it
    (the strongest kind), else ''. Train rows get ''. Evaluating without the flagged rows removes the leak."""
    frame = with_hashes(frame)
    train = frame[frame[side_column] == "train"]
    out = pd.Series("", index=frame.index, dtype=object)
    rest = frame[frame[side_column] != "train"]
    if train.empty or rest.empty:
        return out
    keys = pd.MultiIndex.from_frame(train[["sha256", "view"]]).unique()
    exact = pd.MultiIndex.from_frame(rest[["sha256", "view"]]).isin(keys)
    near = has_close(as_uint64(rest["shown_phash"]), as_uint64(train["shown_phash"]), max_distance)
    dihedral = has_close(as_uint64(rest["canonical_phash"]), as_uint64(train["canonical_phash"]), max_distance)
    out[rest.index] = np.select([exact, near, dihedral], list(MATCH_KINDS), default="")
    return out


def summary_line(report: dict) -> str:
    """The audit's totals in one line, for the console."""
    parts = [f"{report['exact_duplicate_pairs']} exact",
             f"{report['near_duplicate_pairs']} near (phash <= {report['phash_max_distance']})",
             f"{report['dihedral_copy_pairs']} same up to a rotation or flip"]
    line = "leakage: duplicate pairs across sides: " + ", ".join(parts)
    shared = [f"{v} {k.replace('_', ' ')}" for k, v in report.items() if k.endswith("_on_several_sides")]
    shared += [f"{v} {k.removesuffix('_straddling')} straddling test and training" + (" (summed over folds)" if
               report.get("by_fold") else "") for k, v in report.items() if k.endswith("_straddling") and v]
    return line + (f"; {', '.join(shared)}" if shared else "")


def dataset_overlap(indexes: dict[str, pd.DataFrame], max_distance: int = 4) -> dict:
    """For every ordered pair of datasets: how many images of the first also appear in the second, exactly
    (same bytes) or nearly (phash), e.g. re-encoded copies. The diagonal is each dataset's size."""
    hashes = {k: (set(f["sha256"]), as_uint64(f["phash"])) for k, f in indexes.items()}
    matrix: dict[str, dict[str, dict[str, int]]] = {}
    for a, (sha_a, ph_a) in hashes.items():
        matrix[a] = {}
        for b, (sha_b, ph_b) in hashes.items():
            if a == b:
                matrix[a][b] = {"images": len(indexes[a]), "exact": len(sha_a), "near": len(ph_a)}
                continue
            exact = int(indexes[a]["sha256"].isin(sha_b).sum())
            near = int(has_close(ph_a, ph_b, max_distance).sum())
            matrix[a][b] = {"images": len(indexes[a]), "exact": exact, "near": near}
    return {"phash_max_distance": max_distance, "datasets": {k: len(f) for k, f in indexes.items()},
            "matrix": matrix}
