"""Helpers the benchmark scripts share: one-line errors, in-memory image caps, aligned tables.

Nothing here imports TensorFlow or tlrepro at import time, so a script can still set environment variables
(TF_CPP_MIN_LOG_LEVEL, TLREPRO_FEATURE_CACHE) after importing this and before importing the package.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# TensorFlow's Python warnings (tf.function retracing notes) would split the tables; errors still show
logging.getLogger("tensorflow").setLevel(logging.ERROR)


def make_parser(doc: str, rows_help: str | None = None, study_options: bool = True) -> argparse.ArgumentParser:
    """The script's parser: its docstring as help, and the options every study benchmark takes (`--params`,
    `--max-images`, and `--rows` where `rows_help` is given)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(doc.splitlines()[2:]))
    if study_options:
        parser.add_argument("--params", type=Path, default=None, help="params file (default: the project's params.yaml)")
        parser.add_argument("--max-images", type=int, default=None, metavar="N",
                            help="at most N images of each class on each side, drawn with the seed (in memory)")
    if rows_help:
        parser.add_argument("--rows", nargs="+", metavar="ROW", default=None, help=rows_help)
    return parser


def run_main(run: Callable[[], None]) -> int:
    """Call `run`; a tlrepro UserError becomes one `error:` line on stderr and exit status 2."""
    from tlrepro.core.errors import UserError

    try:
        run()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def cap_sides(frame: Any, max_images: int | None, seed: int) -> Any:
    """At most `max_images` rows per (protocol, side, label) of a long-format split frame, drawn at random
    with `seed`; the rows kept stay in their original order. In memory only: no file is rewritten."""
    import numpy as np

    if not max_images:
        return frame
    rng = np.random.default_rng(seed)
    keys = [c for c in ("protocol", "side", "label") if c in frame.columns]
    keep: list[int] = []
    for _, group in frame.groupby(keys, sort=True):
        size = min(int(max_images), len(group))
        keep.extend(rng.choice(group.index.to_numpy(), size=size, replace=False).tolist())
    return frame.loc[sorted(keep)].reset_index(drop=True)


def side_counts(study: Any, protocol: str | None = None) -> str:
    """`train 1942, val 416, test 418` for one protocol of a tlrepro Study."""
    frame = study.protocol(protocol)
    counts = frame.groupby("side").size().to_dict()
    return ", ".join(f"{side} {counts[side]}" for side in ("train", "val", "test") if side in counts)


class Table:
    """A small aligned text table printed row by row (long runs show each figure as soon as it exists).

    columns: (title, width, align) with align "<" (text) or ">" (numbers); the first column is usually text.
    """

    def __init__(self, columns: Sequence[tuple[str, int, str]]) -> None:
        self.columns = [(title, max(width, len(title)), align) for title, width, align in columns]

    def _line(self, cells: Sequence[str]) -> str:
        return "  ".join(f"{cell:{align}{width}}" for cell, (_, width, align) in zip(cells, self.columns, strict=True))

    def header(self) -> None:
        print(self._line([title for title, _, _ in self.columns]).rstrip())
        print(self._line(["-" * width for _, width, _ in self.columns]), flush=True)

    def row(self, *cells: Any) -> None:
        print(self._line([fmt(c) for c in cells]).rstrip(), flush=True)

    def rule(self) -> None:
        print(self._line(["-" * width for _, width, _ in self.columns]))


def fmt(value: Any) -> str:
    """A table cell: floats with two decimals (none from 10,000 on), None and NaN as `-`, the rest as str."""
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        return f"{value:.2f}" if abs(value) < 10_000 else f"{value:.0f}"
    return str(value)


def duration(seconds: float) -> str:
    """Seconds as people read them: `42.0 s`, `12.5 min`, `3.20 h`."""
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def ratio(numerator: float, denominator: float) -> str:
    return f"{numerator / denominator:.2f}x" if denominator > 0 else "-"
