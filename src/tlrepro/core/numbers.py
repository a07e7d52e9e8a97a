"""Small numeric helpers shared by the schema, the splits and every report: the one number formatter.

Reports (study notebooks, the index page, the notes on every difference) format numbers only through
`number` and `interval`, so a count is never printed as `158.0000` and a time never as `1.9000`.
"""

from __future__ import annotations

import numbers as _abc
import re
from typing import Any

import numpy as np
import pandas as pd

# A table column whose name has the word `s` or `min` holds times in that unit ("training s", "s per epoch").
_TIME_UNIT = re.compile(r"(?:^|[\s(])(s|min)(?:[\s),]|$)")


def allocate(n: int, fractions: list[float]) -> list[int]:
    """Split n items into counts proportional to `fractions` that sum to n (largest remainder)."""
    exact = np.asarray(fractions, dtype=float) * n
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    return counts.tolist()


def missing(value: Any) -> bool:
    """None, NaN or pandas' NA: a figure that was not measured."""
    return value is None or (np.ndim(value) == 0 and not isinstance(value, str) and bool(pd.isna(value)))


def is_count(value: Any) -> bool:
    """A whole number read as a count (layers, parameters, images): an int, or a whole float of 2 or more."""
    if isinstance(value, bool) or not isinstance(value, _abc.Real) or missing(value):
        return False
    return float(value).is_integer() and (isinstance(value, _abc.Integral) or abs(value) >= 2)


def time_unit(column: str) -> str | None:
    """`s` or `min` when a column's name says it holds times in that unit, else None."""
    found = _TIME_UNIT.search(str(column))
    return found.group(1) if found else None


def number(value: Any, digits: int = 4, *, unit: str | None = None, signed: bool = False) -> str:
    """One number as people read it: counts with separators (`158`, `2,264,385`), rates to `digits` places,
    tiny values (learning rates) as `1e-05`, other values above 2 to 0.1; with a time `unit`, two significant
    digits below 10 (`1.9 s`, `0.10 s`) and whole units above (`666 s`); `signed` adds a `+` to positives.
    Missing values are a dash; text is returned as it is."""
    if missing(value):
        return "—"
    if isinstance(value, bool) or not isinstance(value, _abc.Real):
        return str(value)
    sign = "+" if signed and value >= 0 else ""
    if unit is not None:
        text = f"{value:,.0f}" if abs(value) >= 10 else f"{value:#.2g}".rstrip(".")
        return f"{sign}{text} {unit}"
    if is_count(value):
        return f"{sign}{int(value):,}"
    if abs(value) >= 100:
        return f"{sign}{value:,.0f}"
    if abs(value) >= 2:
        return f"{sign}{value:.1f}"
    if 0 < abs(value) < 1e-3:
        return f"{sign}{value:.0e}"
    return f"{sign}{value:.{digits}f}"


def non_number(figures: Any, where: str = "results") -> tuple[str, Any] | None:
    """The first entry of a metrics file's `results` (row -> figure -> value) that is not a number or missing, as
    (`results.<row>.<figure>`, value); None when every value is one. What readers check before formatting."""
    if not isinstance(figures, dict):
        return where, figures
    for key, value in figures.items():
        if isinstance(value, dict):
            found = non_number(value, f"{where}.{key}")
            if found:
                return found
        elif isinstance(value, bool) or not (missing(value) or isinstance(value, _abc.Real)):
            return f"{where}.{key}", value
    return None


def interval(value: Any, low: Any, high: Any, digits: int = 3) -> str:
    """'0.861 [0.832, 0.889]', or the value alone when there is no interval, or a dash."""
    if missing(value):
        return "—"
    if missing(low) or missing(high):
        return number(value, digits)
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"
