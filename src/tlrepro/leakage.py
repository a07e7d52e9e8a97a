"""Leakage audit of a split: the same image, a near-identical image, or the same patient on two sides.

Any of these inflates test scores. Near duplicates are pairs whose 64-bit perceptual hashes differ in at
most `phash_max_distance` bits; comparing all pairs is vectorised (XOR + popcount, in chunks) so a
14,000-image dataset takes seconds. Counts are per pair of sides; examples are capped to keep the JSON
(a DVC metrics file) small.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

SIDE_ORDER = ("train", "val", "test")
MAX_EXAMPLES = 20
CHUNK = 512


def _sides(frame: pd.DataFrame, column: str) -> list[str]:
    present = [s for s in frame[column].unique() if s != "" and pd.notna(s)]
    return sorted(present, key=lambda s: (SIDE_ORDER.index(s) if s in SIDE_ORDER else 99, s))


def phash_array(hashes: pd.Series) -> np.ndarray:
    """16-hex-digit perceptual hashes as uint64."""
    return np.array([int(h, 16) for h in hashes], dtype=np.uint64)


def near_pairs(a: np.ndarray, b: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index pairs (i into a, j into b) and distances of hashes at most `max_distance` bits apart."""
    found_i, found_j, found_d = [], [], []
    for start in range(0, len(a), CHUNK):
        dist = np.bitwise_count(a[start : start + CHUNK, None] ^ b[None, :])
        i, j = np.nonzero(dist <= max_distance)
        found_i.append(i + start)
        found_j.append(j)
        found_d.append(dist[i, j])
    if not found_i:
        return np.empty(0, int), np.empty(0, int), np.empty(0, int)
    return np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_d).astype(int)


def audit(
    split_frame: pd.DataFrame,
    split_column: str = "split",
    group_column: str | None = None,
    phash_max_distance: int = 4,
) -> dict:
    """Exact duplicates (sha256), near duplicates (phash) and shared groups across the sides of a split."""
    sides = _sides(split_frame, split_column)
    by_side = {s: split_frame[split_frame[split_column] == s] for s in sides}
    hashes = {s: phash_array(f["phash"]) for s, f in by_side.items()} if "phash" in split_frame else {}
    pairs, examples = {}, {"exact": [], "near": [], "groups": {}}
    for a, b in itertools.combinations(sides, 2):
        fa, fb = by_side[a], by_side[b]
        exact = fa[["path", "sha256"]].merge(fb[["path", "sha256"]], on="sha256", suffixes=("_a", "_b"))
        counts = {"exact_duplicate_pairs": len(exact)}
        examples["exact"] += [[p, q] for p, q in zip(exact["path_a"], exact["path_b"], strict=True)]
        if hashes:
            i, j, d = near_pairs(hashes[a], hashes[b], phash_max_distance)
            not_exact = fa["sha256"].to_numpy()[i] != fb["sha256"].to_numpy()[j]
            i, j, d = i[not_exact], j[not_exact], d[not_exact]
            counts["near_duplicate_pairs"] = len(i)
            pa, pb = fa["path"].to_numpy(), fb["path"].to_numpy()
            examples["near"] += [[pa[x], pb[y], int(z)] for x, y, z in zip(i, j, d, strict=True)]
        if group_column:
            shared = set(fa[group_column]) & set(fb[group_column])
            counts[f"{group_column}s_shared"] = len(shared)
        pairs[f"{a}-{b}"] = counts
    report = {
        "images": len(split_frame),
        "images_per_side": {s: len(f) for s, f in by_side.items()},
        "exact_duplicate_pairs": sum(p["exact_duplicate_pairs"] for p in pairs.values()),
        "by_sides": pairs,
    }
    if hashes:
        report["near_duplicate_pairs"] = sum(p["near_duplicate_pairs"] for p in pairs.values())
        report["phash_max_distance"] = phash_max_distance
    if group_column:
        side_sets = (
            split_frame[split_frame[split_column].isin(sides)].groupby(group_column)[split_column].unique()
        )
        several = {str(g): sorted(v, key=sides.index) for g, v in side_sets.items() if len(v) > 1}
        report[f"{group_column}s_on_several_sides"] = len(several)
        examples["groups"] = dict(sorted(several.items())[:MAX_EXAMPLES])
    else:
        del examples["groups"]
    report["examples"] = {
        k: (sorted(v)[:MAX_EXAMPLES] if isinstance(v, list) else v) for k, v in examples.items()
    }
    return report


def summary_line(report: dict) -> str:
    """The audit's totals in one line, for the console."""
    parts = [f"{report['exact_duplicate_pairs']} exact duplicate pairs across sides"]
    if "near_duplicate_pairs" in report:
        parts.append(
            f"{report['near_duplicate_pairs']} near duplicate pairs (phash <= {report['phash_max_distance']})"
        )
    parts += [f"{v} {k.replace('_', ' ')}" for k, v in report.items() if k.endswith("_on_several_sides")]
    return "leakage: " + ", ".join(parts)
