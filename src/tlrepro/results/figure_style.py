"""The look every figure of the project shares, and how a bare Figure shows in a notebook.

Figures are built with `matplotlib.figure.Figure`, not pyplot: nothing accumulates in pyplot's global state
across a long notebook, and a notebook cell that returns one shows it once.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from io import BytesIO
from typing import Any

import matplotlib

if "ipykernel" not in sys.modules and not os.environ.get("DISPLAY") and not os.environ.get("MPLBACKEND"):
    matplotlib.use("Agg")  # headless (DVC stages, CI): never try to open a window

import seaborn as sns
from matplotlib.figure import Figure

from tlrepro.data.labels import BINARY_CLASSES

CLASS_NAMES = dict(enumerate(BINARY_CLASSES))
PALETTE = {"benign": "#4C72B0", "malignant": "#C44E52"}
SPLIT_ORDER = ("train", "val", "validation", "test")
_RC = {**sns.axes_style("whitegrid"), **sns.plotting_context("notebook"),
       "axes.titleweight": "bold", "figure.dpi": 100}


def show_in_ipython() -> None:
    """Let IPython display a bare Figure returned by a cell as a PNG (once: it is not in pyplot's list)."""
    shell = sys.modules["IPython"].get_ipython() if "IPython" in sys.modules else None
    if shell is None:
        return
    png = shell.display_formatter.formatters["image/png"]
    try:
        png.lookup_by_type(Figure)
    except KeyError:
        png.for_type(Figure, png_bytes)


def png_bytes(fig: Figure, dpi: int = 100) -> bytes:
    buffer = BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


def styled(func: Callable[..., Figure]) -> Callable[..., Figure]:
    """Draw inside one rc context: the same look everywhere, without changing the caller's settings."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Figure:
        show_in_ipython()
        with matplotlib.rc_context(_RC):
            return func(*args, **kwargs)

    return wrapper


def new_figure(nrows: int = 1, ncols: int = 1, size: tuple[float, float] = (5, 4), **kw: Any):
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False, **kw)
