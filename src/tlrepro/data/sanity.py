"""Data sanity: what is odd about a dataset, named rather than guessed, printed by the stage and kept for the
study reports in data/index/<key>.warnings.json.

Each warning is {dataset, check, count, message, examples}. The checks:
- `magnification`: BreakHis files whose magnification is not 40, 100, 200 or 400 (rejected);
- `class_disagreement`: BreakHis files whose name and folder disagree on the class (rejected, both named);
- `empty_folder`: folders with no image beside folders that hold images (e.g. an empty class folder);
- `magnifications_missing`: which of BreakHis's four magnifications the copy lacks;
- `stain_fallback`: images that stain normalization could not normalize (kept in their original colours).
A derived dataset's file repeats its source's warnings (their `dataset` says whose they are).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import Any

import pandas as pd

from tlrepro.core import fileio, paths
from tlrepro.core.errors import UserError
from tlrepro.data import labels as lab

EXAMPLES = 5  # paths kept per warning: enough to find the files, few enough to read


def warning(dataset: str, check: str, message: str, examples: Sequence[str] = (), count: int = 1) -> dict[str, Any]:
    return {"dataset": dataset, "check": check, "count": int(count), "message": message,
            "examples": list(examples)[:EXAMPLES]}


def rejected_warnings(dataset: str, rejected: pd.DataFrame) -> list[dict[str, Any]]:
    """The rejections that say the data itself is inconsistent (not merely unreadable), counted."""
    out = []
    for check, prefix, what in (
            ("magnification", lab.BAD_MAGNIFICATION,
             f"a magnification outside {lab.magnifications_text(lab.BREAKHIS_MAGNIFICATIONS)}"),
            ("class_disagreement", lab.CLASS_DISAGREEMENT, "a file name and folder that disagree on the class")):
        hits = rejected[rejected["reason"].str.startswith(prefix)]
        if len(hits):
            first = hits.iloc[0]
            out.append(warning(dataset, check, f"{len(hits)} BreakHis file(s) with {what} rejected, e.g. "
                                               f"{first['path']}: {first['reason']}", hits["path"], len(hits)))
    return out


def empty_folders(dataset: str, folders: Sequence[PurePosixPath], images: Sequence[PurePosixPath],
                  scheme: str, prefix: PurePosixPath) -> list[dict[str, Any]]:
    """Folders without a single image under them whose neighbours (same parent) do hold images."""
    holding = {parent for image in images for parent in image.parents}
    beside = {folder.parent for folder in holding if folder != PurePosixPath(".")}
    empty = [f for f in folders if f != PurePosixPath(".") and f not in holding and f.parent in beside]
    if not empty:
        return []
    names = [str(prefix / f) for f in sorted(empty)]
    what = "class folder" if scheme == "folder" else "folder"
    return [warning(dataset, "empty_folder", f"{len(names)} empty {what}(s) with no image, beside folders that hold "
                                             f"images: {', '.join(names[:EXAMPLES])}"
                                             f"{' ...' if len(names) > EXAMPLES else ''}: check the download",
                    names, len(names))]


def magnification_coverage(dataset: str, index: pd.DataFrame) -> list[dict[str, Any]]:
    """Which of BreakHis's magnifications the index lacks (nothing when it has all four)."""
    if "magnification" not in index or index.empty:
        return []
    counts = index["magnification"].astype(int).value_counts().sort_index()
    missing = [m for m in lab.BREAKHIS_MAGNIFICATIONS if m not in counts.index]
    if not missing:
        return []
    present = ", ".join(f"{m}X ({n} images)" for m, n in counts.items())
    return [warning(dataset, "magnifications_missing",
                    f"magnifications present: {present}; missing: {lab.magnifications_text(missing)} (BreakHis has "
                    f"{lab.magnifications_text(lab.BREAKHIS_MAGNIFICATIONS)}): nothing can be measured at those",
                    [f"{m}X" for m in missing], len(missing))]


def stain_fallbacks(dataset: str, report: pd.DataFrame, report_path: str) -> list[dict[str, Any]]:
    """Images stain normalization left in their original colours, counted by reason."""
    fell_back = report[~report["normalized"].astype(bool)]
    if fell_back.empty:
        return []
    reasons = fell_back["reason"].str.split(r"[:(]").str[0].str.strip().value_counts()
    return [warning(dataset, "stain_fallback",
                    f"stain normalization fell back for {len(fell_back)} of {len(report)} images, kept in their "
                    f"original colours ({'; '.join(f'{n} {r}' for r, n in reasons.items())}; see {report_path})",
                    fell_back["source"], len(fell_back))]


def document(key: str, warnings: list[dict[str, Any]]) -> dict[str, Any]:
    """The content of data/index/<key>.warnings.json (written with the index, in one atomic group)."""
    return {"dataset": key, "warnings": warnings}


def print_warnings(key: str, warnings: list[dict[str, Any]]) -> None:
    """One `warning:` line each, in the stage's output."""
    for w in warnings:
        print(f"warning: {w['message']}" if w["dataset"] == key else f"warning ({w['dataset']}): {w['message']}")


def read_warnings(key: str) -> list[dict[str, Any]]:
    """The warnings prepare or derive recorded for a dataset."""
    data = fileio.read_json(paths.warnings_json(key), f"data warnings: run `dvc repro prepare@{key}`")
    if not isinstance(data, dict) or not isinstance(data.get("warnings"), list):
        raise UserError(f"{paths.relative(paths.warnings_json(key))} is not a warnings file: re-run the stage "
                        f"that writes it (prepare or derive of `{key}`).")
    return data["warnings"]
