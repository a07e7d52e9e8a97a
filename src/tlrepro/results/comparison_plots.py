"""Figures that set our figures beside the papers' and beside each other: paper vs ours per study, every study's
headline figures in one forest plot, and the paper's protocol against an honest one."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from tlrepro.results.figure_style import new_figure, styled


@styled
def paper_vs_ours(compare_frame: pd.DataFrame, metric: str | None = None) -> Figure:
    """The paper's figure (diamond) beside ours (dot, with our bootstrap CI) per row, a panel per metric.

    `compare_frame` is tlrepro.results.compare.compare's output; rows without our value show the paper's alone.
    """
    frame = compare_frame if metric is None else compare_frame[compare_frame["metric"] == metric]
    metrics = list(dict.fromkeys(frame["metric"]))
    rows = list(dict.fromkeys(frame["row"]))
    where = {row: i for i, row in enumerate(rows)}
    cols = min(4, len(metrics)) or 1
    fig, axes = new_figure(math.ceil(len(metrics) / cols) or 1, cols, size=(4.2, 0.6 * max(3, len(rows)) + 1),
                        sharey=True)
    for ax in axes.flat[len(metrics):]:
        ax.axis("off")
    for ax, name in zip(axes.flat, metrics, strict=False):
        part = frame[frame["metric"] == name]
        ypos = part["row"].map(where).to_numpy(dtype=float)
        ours = part["ours"].astype(float)
        low = (ours - part["ci_low"].astype(float)).clip(lower=0).fillna(0)
        high = (part["ci_high"].astype(float) - ours).clip(lower=0).fillna(0)
        ax.errorbar(ours, ypos + 0.12, xerr=[low, high], fmt="o", color="#C44E52", capsize=3, label="ours")
        ax.scatter(part["paper"].astype(float), ypos - 0.12, marker="D", color="#4C72B0", label="paper",
                   zorder=3)
        ax.set(title=name, xlabel=name)
    axes.flat[0].set_yticks(range(len(rows)), rows)
    axes.flat[0].set_ylim(len(rows) - 0.5, -0.5)  # first row on top
    axes.flat[0].legend(fontsize=8)
    return fig


@styled
def forest(frame: pd.DataFrame) -> Figure:
    """Every headline rate (0-1) of every study: the paper's figure (diamond) beside ours (dot) with our
    interval (thin bar) and the spread over repeated seeds (thick bar, mean ± sd), one line per figure.

    `frame` is tlrepro.results.compare.compare output with a `study` column (and `random_init`, flagging rows
    trained without ImageNet weights, whose labels then say so).
    """
    rates = frame[(frame["paper"] <= 1) & ~frame["metric"].str.contains("loss")].reset_index(drop=True)
    randoms = rates["random_init"] if "random_init" in rates else pd.Series(False, index=rates.index)
    labels = [f"{s} · {r}{' (random init)' if rnd else ''} · {m.replace('_', ' ')}"
              for s, r, m, rnd in zip(rates["study"], rates["row"], rates["metric"], randoms, strict=True)]
    fig, axes = new_figure(size=(9, 0.28 * max(len(rates), 4) + 1.2))
    ax = axes[0, 0]
    y = np.arange(len(rates))
    ours = rates["ours"].astype(float)
    low = (ours - rates["ci_low"].astype(float)).clip(lower=0).fillna(0)
    high = (rates["ci_high"].astype(float) - ours).clip(lower=0).fillna(0)
    ax.errorbar(ours, y + 0.15, xerr=[low, high], fmt="o", color="#C44E52", markersize=4, capsize=2,
                elinewidth=1, label="ours, with its interval")
    spread = rates["seed_std"].astype(float)
    has = spread.notna()
    if has.any():
        ax.errorbar(rates["seed_mean"][has], y[has] + 0.15, xerr=spread[has], fmt="none", ecolor="#8B1A1A",
                    elinewidth=4, alpha=0.5, label="ours over seeds (mean ± sd)")
    ax.scatter(rates["paper"], y - 0.15, marker="D", s=22, color="#4C72B0", label="paper", zorder=3)
    for boundary in np.flatnonzero(rates["study"].ne(rates["study"].shift()).to_numpy())[1:]:
        ax.axhline(boundary - 0.5, color="#bbb", linewidth=0.8)
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_ylim(len(rates) - 0.5, -0.5)
    ax.set_xlim(max(0.0, float(np.nanmin([rates["paper"].min(), rates["ci_low"].min()])) - 0.05), 1.0)
    ax.set(xlabel="rate (0-1)", title="Every headline figure: paper beside ours")
    ax.legend(fontsize=8, loc="lower left")
    return fig


@styled
def protocol_gap(frame: pd.DataFrame, paper_label: str = "first protocol", honest_label: str = "second protocol",
                 paper_figures: pd.Series | None = None) -> Figure:
    """Per row (a `label` column, else `row`): accuracy under the paper's protocol (square) and under the honest
    one (dot), joined by a line and labelled with their difference; the paper's own published figure, where
    given, as a diamond. A row with a `one_class` note is labelled "left out (one class)" instead of a difference,
    in grey; a `random_init` row's label says so."""
    labels = list(frame["label"] if "label" in frame else frame["row"])
    randoms = frame["random_init"].fillna(False).astype(bool) if "random_init" in frame else pd.Series(False, index=frame.index)
    labels = [label if not rnd or "random init" in label else f"{label} (random init)"
              for label, rnd in zip(labels, randoms, strict=True)]
    single = (frame["one_class"].notna() & frame["one_class"].astype(str).ne("")) if "one_class" in frame else (
        pd.Series(False, index=frame.index))
    fig, axes = new_figure(size=(7, 0.5 * max(len(labels), 2) + 1.2))
    ax = axes[0, 0]
    y = np.arange(len(labels))
    paper, honest = frame["paper_protocol"].astype(float).to_numpy(), frame["honest"].astype(float).to_numpy()
    ax.hlines(y, np.minimum(paper, honest), np.maximum(paper, honest), color="#999", linewidth=2, zorder=1)
    ax.scatter(paper, y, marker="s", s=40, color="#DD8452", label=f"ours, {paper_label}", zorder=3)
    ax.scatter(honest, y, marker="o", s=40, color="#55A868", label=f"ours, {honest_label}", zorder=3)
    if paper_figures is not None and paper_figures.notna().any():
        ax.scatter(paper_figures.astype(float), y, marker="D", s=30, color="#4C72B0", label="the paper's figure",
                   zorder=4)
    for yi, p, h, one in zip(y, paper, honest, single, strict=True):
        ax.annotate("left out (one class)" if one else f"{p - h:+.2f}", (max(p, h), yi), xytext=(6, 0),
                    textcoords="offset points", va="center", fontsize=8, color="#888" if one else "black")
    ax.set_yticks(y, labels, fontsize=9)
    ax.set_ylim(len(labels) - 0.5, -0.5)
    ax.set_xlim(0, 1.08)
    ax.set(xlabel="image-level accuracy", title="What sharing patients (or accession numbers) across sides is worth")
    ax.legend(fontsize=8, loc="lower left")
    return fig
