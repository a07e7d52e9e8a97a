"""The published figures of each reproduced study (paper_figures.yaml), and their comparison with ours.

Kept as data, not code, so a corrected transcription is a one-line YAML change that DVC tracks.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from tlrepro.errors import UserError

FIGURES_FILE = Path(__file__).with_name("paper_figures.yaml")
COMPARE_COLUMNS = ["row", "metric", "paper", "ours", "ci_low", "ci_high", "difference", "paper_within_ci"]


@functools.cache
def _figures() -> dict[str, Any]:
    return yaml.safe_load(FIGURES_FILE.read_text())


def studies() -> list[str]:
    """Study ids in the order paper_figures.yaml lists them."""
    return list(_figures()["studies"])


def datasets() -> dict[str, dict[str, Any]]:
    """Dataset citations keyed like params.yaml `datasets`."""
    return copy.deepcopy(_figures()["datasets"])


def load(study: str) -> dict[str, Any]:
    """One study's entry (title, authors, year, data, rows, ...), with `id` and its `dataset_info`."""
    entries = _figures()["studies"]
    if study not in entries:
        raise UserError(f"Unknown study `{study}`: {FIGURES_FILE.name} has {', '.join(entries)}.")
    entry = copy.deepcopy(entries[study])
    entry["id"] = study
    entry["dataset_info"] = datasets().get(entry.get("dataset"), {})
    return entry


def reported(study: str) -> pd.DataFrame:
    """The paper's figures as a table: one row per model/configuration, one column per metric."""
    rows = load(study)["rows"]
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("row")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return None if math.isnan(value) else float(value)


def compare(study: str, ours: Mapping[str, Mapping[str, Any]], metrics: Sequence[str] | None = None
            ) -> pd.DataFrame:
    """The paper's figures beside ours, one line per (row, metric) the paper reports as a number.

    `ours` maps row -> the flat keys of tlrepro.evaluation.evaluate (accuracy, accuracy_ci_low, ...).
    `metrics` defaults to the study's headline metrics. Rows or metrics we did not measure keep the paper's
    value with ours empty (NaN); `paper_within_ci` is None where we have no interval.
    """
    entry = load(study)
    metrics = list(metrics or entry.get("headline") or [])
    lines = []
    for row, figures in entry["rows"].items():
        mine = ours.get(row, {})
        for metric in metrics:
            paper = _number(figures.get(metric))
            if paper is None:
                continue
            value, low, high = (_number(mine.get(k)) for k in (metric, f"{metric}_ci_low", f"{metric}_ci_high"))
            within = None if low is None or high is None else bool(low <= paper <= high)
            lines.append({
                "row": row, "metric": metric, "paper": paper,
                "ours": value, "ci_low": low, "ci_high": high,
                "difference": None if value is None else round(value - paper, 6),
                "paper_within_ci": within,
            })
    frame = pd.DataFrame(lines, columns=COMPARE_COLUMNS)
    for column in ("paper", "ours", "ci_low", "ci_high", "difference"):
        frame[column] = frame[column].astype(float)
    frame["paper_within_ci"] = frame["paper_within_ci"].astype(object)
    return frame
