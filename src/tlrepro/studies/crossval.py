"""Cross-validation and per-magnification runs: the units a protocol trains on, the spread across folds, and the
gap between a paper's protocol and an honest one.

A protocol's unit is one fold of a cross-validation (the split file's `fold` column), or, with a study's
`per_magnification: true`, one magnification within it; a protocol without folds is one unit. A row trains one
model per unit and its evaluation rows are pooled (tlrepro.studies.base.pooled): under a grouped k-fold every
patient is tested exactly once, by a model that never saw them. The dataset's own folds (`method: folds`,
BreakHis's Folds.csv) are repeated splits instead: the pooled rows hold an image once per fold that tests it (some
images never), patient intervals resample patients with all their tests, and each fold's own figure (fold_spread)
is the unit Spanhol et al. report; tlrepro.data.splits.describe_protocol counts what the split file shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tlrepro.results import metrics

SPREAD_METRICS = ("accuracy", "recall", "specificity", "roc_auc")


@dataclass(frozen=True)
class Unit:
    fold: str = ""  # '' outside cross-validation
    magnification: str = ""  # '' for one model over every magnification

    def select(self, frame: pd.DataFrame) -> pd.Series:
        keep = pd.Series(True, index=frame.index)
        if self.fold:
            keep &= frame["fold"] == self.fold
        if self.magnification:
            keep &= frame["magnification"].astype(str) == self.magnification
        return keep

    def describe(self, units: list[Unit]) -> str:
        """'fold 2/5, 100X' (only what distinguishes this unit from the others)."""
        folds = sorted({u.fold for u in units if u.fold}, key=int)
        parts = [f"fold {self.fold}/{len(folds)}"] if self.fold else []
        return ", ".join(parts + ([f"{self.magnification}X"] if self.magnification else []))


WHOLE = Unit()  # the whole split: one model


def units_of(rows: pd.DataFrame, per_magnification: bool, max_folds: int | None = None) -> list[Unit]:
    """The units of one protocol's split rows, in fold then magnification order; with `max_folds` (a quick pass's
    `scale.max_folds`), only the first folds."""
    folds = (sorted({f for f in rows["fold"] if f}, key=int) or [""])[:max_folds]
    mags = sorted({str(m) for m in rows["magnification"]}, key=int) if (
        per_magnification and "magnification" in rows) else [""]
    return [Unit(f, m) for f in folds for m in mags]


def fold_spread(frame: pd.DataFrame, probs: np.ndarray, labels: np.ndarray, threshold: float = 0.5
                ) -> dict[str, dict[str, Any]]:
    """Per metric, the mean, sd, min and max over the folds of a pooled result (each fold's own figure); empty
    without folds. A fold whose test side holds one class has no ROC AUC and is left out of that metric."""
    if "fold" not in frame or frame["fold"].nunique() < 2:
        return {}
    per_fold = []
    for _, rows in frame.groupby("fold", sort=True):
        index = rows.index.to_numpy()
        per_fold.append(metrics.binary_metrics(labels[index], np.asarray(probs)[index], threshold))
    out = {}
    for name in SPREAD_METRICS:
        values = [m[name] for m in per_fold if m.get(name) is not None]
        if values:
            out[name] = {**metrics.seed_spread(values), "folds": len(values)}
            out[name].pop("seeds", None)
    return out


def protocol_gap(paper: pd.DataFrame, paper_correct: np.ndarray, honest: pd.DataFrame, honest_correct: np.ndarray,
                 *, seed: int, resamples: int, confidence: float, unit: str = "patient") -> dict[str, Any]:
    """Accuracy under the paper's protocol, under the honest one, and their difference (paper minus honest), with
    an interval from resampling groups jointly: one draw of patients weights both protocols' images of those
    patients. Under MIN_GROUPS groups no interval is given."""
    groups = sorted(set(paper["group"]) | set(honest["group"]))
    position = {g: i for i, g in enumerate(groups)}
    a = np.array([position[g] for g in paper["group"]])
    b = np.array([position[g] for g in honest["group"]])
    pa = np.bincount(a, weights=np.asarray(paper_correct, float), minlength=len(groups))
    na = np.bincount(a, minlength=len(groups)).astype(float)
    pb = np.bincount(b, weights=np.asarray(honest_correct, float), minlength=len(groups))
    nb = np.bincount(b, minlength=len(groups)).astype(float)
    out = {"paper_protocol": float(pa.sum() / na.sum()), "honest": float(pb.sum() / nb.sum()), f"{unit}s": len(groups),
           "unit": unit}
    out["difference"] = out["paper_protocol"] - out["honest"]
    if len(groups) < metrics.MIN_GROUPS:
        return {**out, "ci_low": None, "ci_high": None,
                "ci_note": f"too few {unit}s for an interval ({len(groups)}; at least {metrics.MIN_GROUPS} needed)"}
    # within their class where each group holds one (tlrepro.results.metrics' stratified patient bootstrap)
    labelled = [f[["group", "label"]] for f in (paper, honest) if "label" in f]
    strata = metrics.column_strata(pd.concat(labelled), "group", "label") if len(labelled) == 2 else None
    weights = metrics.draw_group_weights(np.random.default_rng(seed), resamples, strata, len(groups))
    with np.errstate(divide="ignore", invalid="ignore"):
        diff = (weights @ pa) / (weights @ na) - (weights @ pb) / (weights @ nb)
    low, high, _ = metrics.percentiles(diff, confidence)
    return {**out, "ci_low": low, "ci_high": high}
