"""Figures for the study notebooks and reports: plain data in, a matplotlib Figure out.

Figures are built with `matplotlib.figure.Figure`, not pyplot: nothing accumulates in pyplot's global
state across a long notebook, and a notebook cell that returns one shows it once. No training logic
lives here, so every figure can be redrawn from saved CSV/JSON outputs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.ticker
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from sklearn.metrics import roc_auc_score

from tlrepro.core import fileio
from tlrepro.results.figure_style import CLASS_NAMES, PALETTE, SPLIT_ORDER, new_figure, styled
from tlrepro.results.metrics import roc_curve_points


def _thumbnails(paths: Sequence[str | Path], picks: Sequence[int], cols: int, height: float) -> tuple[Figure, Any]:
    """A grid of 256-pixel thumbnails of the picked images, axes off; the caller titles them."""
    from PIL import Image

    fig, axes = new_figure(max(1, math.ceil(len(picks) / cols)), cols, size=(2.5, height))
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, picks, strict=False):
        with Image.open(paths[i]) as img:
            img = img.convert("RGB")
            img.thumbnail((256, 256))
            ax.imshow(np.asarray(img))
    return fig, axes


def _label_name(label: Any) -> str:
    try:
        return CLASS_NAMES.get(int(label), str(label))
    except (TypeError, ValueError):
        return str(label)


@styled
def class_balance(split_frame: pd.DataFrame, split_col: str = "split", label_col: str = "label",
                  title: str = "Class balance per split") -> Figure:
    """Images per split and class: a skewed split changes what accuracy means."""
    counts = (split_frame.assign(_label=split_frame[label_col].map(_label_name))
              .groupby([split_col, "_label"]).size().rename("images").reset_index())
    splits = [s for s in SPLIT_ORDER if s in set(counts[split_col])]
    splits += sorted(set(counts[split_col]) - set(splits))
    fig, axes = new_figure(size=(max(5, 1.8 * len(splits)), 4))
    ax = axes[0, 0]
    sns.barplot(counts, x=split_col, y="images", hue="_label", order=splits, palette=PALETTE,
                hue_order=[h for h in PALETTE if h in set(counts["_label"])], ax=ax)
    for bars in ax.containers:
        ax.bar_label(bars, fmt="%d", fontsize=9)
    ax.set(title=title, xlabel="", ylabel="images")
    ax.legend(title="")
    return fig


@styled
def sample_grid(paths: Sequence[str | Path], labels: Sequence[Any], n: int = 16, seed: int = 42,
                title: str | None = None) -> Figure:
    """A seeded random sample of images titled with their labels: a look at what the model sees."""

    rng = np.random.default_rng(seed)
    picks = rng.choice(len(paths), size=min(n, len(paths)), replace=False) if len(paths) else []
    fig, axes = _thumbnails(paths, picks, min(4, max(1, len(picks))), height=2.7)
    for ax, i in zip(axes.flat, picks, strict=False):
        name = _label_name(labels[i])
        ax.set_title(name, color=PALETTE.get(name, "black"), fontsize=10)
    if title:
        fig.suptitle(title, fontweight="bold")
    return fig


def _as_uint8(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image
    scale = 255.0 if image.max(initial=0) <= 1.0 else 1.0  # [0, 1] floats or keras's float [0, 255]
    return np.clip(image * scale, 0, 255).astype(np.uint8)


@styled
def augmentation_preview(original: np.ndarray, augmented: Sequence[np.ndarray]) -> Figure:
    """The original image first, then its augmented versions (the caller runs the keras layers)."""
    tiles = [("original", original)] + [(f"augmented {i + 1}", a) for i, a in enumerate(augmented)]
    cols = 3 if len(tiles) <= 9 else 4
    rows = math.ceil(len(tiles) / cols)
    fig, axes = new_figure(rows, cols, size=(2.6, 2.8))
    for ax in axes.flat:
        ax.axis("off")
    for ax, (name, image) in zip(axes.flat, tiles, strict=False):
        ax.imshow(_as_uint8(image))
        ax.set_title(name, fontsize=10, fontweight="bold" if name == "original" else "normal")
    return fig


@styled
def training_curves(histories: Mapping[str, pd.DataFrame], marks: Mapping[str, int] | None = None,
                    mark_label: str = "weights evaluated") -> Figure:
    """Per model a row: loss and accuracy by epoch, train vs validation; absent columns are skipped.

    `marks` (1-based epochs) draws a line where the evaluated weights come from (restored best weights);
    epochs after it are shaded.
    """
    fig, axes = new_figure(len(histories) or 1, 2, size=(5, 3.5))
    for row, (name, history) in zip(axes, histories.items(), strict=False):
        epochs = history["epoch"] if "epoch" in history else pd.Series(range(1, len(history) + 1))
        mark = (marks or {}).get(name)
        for ax, metric in zip(row, ("loss", "accuracy"), strict=True):
            for column, label, style in ((metric, "train", "-"), (f"val_{metric}", "validation", "--")):
                if column in history:
                    ax.plot(epochs, history[column], style, marker="o", markersize=3, label=label)
            if mark is not None and len(history):
                ax.axvline(mark, color="#C44E52", linestyle=":", linewidth=1.5, label=f"{mark_label} ({mark})")
                if mark < epochs.max():
                    ax.axvspan(mark, epochs.max(), color="grey", alpha=0.12)
            if ax.lines:
                ax.legend(fontsize=8)
            else:
                ax.text(0.5, 0.5, f"no {metric} recorded", ha="center", va="center", transform=ax.transAxes)
            ax.set(title=f"{name}: {metric}", xlabel="epoch", ylabel=metric)
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    return fig


@styled
def confusion_matrices(cms: Mapping[str, Any], normalize: bool = True,
                       labels: Sequence[str] = ("benign", "malignant")) -> Figure:
    """One annotated heatmap per model; rows are the true class, normalized per row when asked."""
    fig, axes = new_figure(1, len(cms) or 1, size=(4, 3.6))
    for ax, (name, cm) in zip(axes.flat, cms.items(), strict=False):
        cm = np.asarray(cm, dtype=float)
        if normalize:
            rows = cm.sum(axis=1, keepdims=True)
            cm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
        sns.heatmap(cm, annot=True, fmt=".2f" if normalize else ".0f", cmap="Blues", cbar=False,
                    vmin=0, vmax=1 if normalize else None, xticklabels=labels, yticklabels=labels,
                    square=True, ax=ax)
        ax.set(title=name, xlabel="predicted", ylabel="true")
    return fig


@styled
def roc_curves(curves: Mapping[str, tuple[Any, Any]]) -> Figure:
    """All models' ROC curves on one axes, AUC in the legend, against the chance diagonal."""
    fig, axes = new_figure(size=(5.5, 5))
    ax = axes[0, 0]
    for name, (y_true, y_prob) in curves.items():
        points = roc_curve_points(y_true, y_prob)
        ax.plot(points["fpr"], points["tpr"], label=f"{name} (AUC {roc_auc_score(y_true, y_prob):.3f})")
    ax.plot([0, 1], [0, 1], ":", color="grey", label="chance")
    ax.set(title="ROC curves (malignant = positive)", xlabel="false positive rate",
           ylabel="true positive rate (recall)", xlim=(0, 1), ylim=(0, 1.01), aspect="equal")
    ax.legend(loc="lower right", fontsize=9)
    return fig


def _lr_label(lr: float) -> str:
    return f"{lr:g}"


@styled
def grid_lines(grid: pd.DataFrame, best: pd.DataFrame) -> Figure:
    """Validation accuracy vs epochs, a line per learning rate, a panel per backbone, best cell starred.

    The layout of lin2024's Figure 1, so the two can be read side by side.
    """
    backbones = list(dict.fromkeys(grid["backbone"]))
    cols = min(2, len(backbones)) or 1
    rows = math.ceil(len(backbones) / cols) or 1
    fig, axes = new_figure(rows, cols, size=(5, 3.8), sharey=True)
    rates = sorted(grid["learning_rate"].unique())
    colors = dict(zip(rates, sns.color_palette("viridis", len(rates)), strict=True))
    for ax in axes.flat[len(backbones):]:
        ax.axis("off")
    for ax, backbone in zip(axes.flat, backbones, strict=False):
        cells = grid[grid["backbone"] == backbone]
        for lr in rates:
            line = cells[cells["learning_rate"] == lr].sort_values("epochs")
            ax.plot(line["epochs"], line["val_accuracy"], marker="o", markersize=4, color=colors[lr],
                    label=f"lr {_lr_label(lr)}")
        top = best[best["backbone"] == backbone]
        for _, cell in top.iterrows():
            ax.scatter(cell["epochs"], cell["val_accuracy"], marker="*", s=260, color="gold",
                       edgecolor="black", zorder=5, label="best")
            ax.annotate(f"{cell['val_accuracy']:.3f}\nlr {_lr_label(cell['learning_rate'])}, "
                        f"{int(cell['epochs'])} ep", (cell["epochs"], cell["val_accuracy"]),
                        textcoords="offset points", xytext=(6, -26), fontsize=8)
        ax.set(title=backbone, xlabel="epochs", ylabel="validation accuracy")
        ax.set_xticks(sorted(grid["epochs"].unique()))
    axes.flat[0].legend(fontsize=8, loc="lower right")
    return fig


@styled
def grid_heatmap(grid: pd.DataFrame) -> Figure:
    """Validation accuracy per learning rate x epochs, a panel per backbone, one shared colour scale."""
    backbones = list(dict.fromkeys(grid["backbone"]))
    fig, axes = new_figure(1, len(backbones) or 1, size=(4.8, 3.6))
    vmin, vmax = grid["val_accuracy"].min(), grid["val_accuracy"].max()
    for ax, backbone in zip(axes.flat, backbones, strict=False):
        table = grid[grid["backbone"] == backbone].pivot_table(
            index="learning_rate", columns="epochs", values="val_accuracy")
        table.index = [_lr_label(lr) for lr in table.index]
        sns.heatmap(table, annot=True, fmt=".3f", cmap="viridis", vmin=vmin, vmax=vmax, cbar=False,
                    annot_kws={"fontsize": 8}, ax=ax)
        ax.set(title=backbone, xlabel="epochs", ylabel="learning rate")
        ax.tick_params(axis="y", rotation=0)  # upright learning rates do not run into each other
    return fig


def save(fig: Figure, path: str | Path, dpi: int = 120) -> Path:
    """Write a figure as PNG atomically (a crash never leaves half a PNG for DVC to cache)."""
    path = Path(path)
    with fileio.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, metadata={"Software": None})
    return path


@styled
def prediction_grid(paths: Sequence[str | Path], predicted: Sequence[str], probability: Sequence[float],
                    truth: Sequence[str] | None = None, *, n: int = 16, cols: int = 4, seed: int = 42,
                    title: str | None = None) -> Figure:
    """Thumbnails titled with the predicted class and its probability: black when the truth is not shown,
    green when right, red with the true class when wrong (kumar2022's figure)."""

    rng = np.random.default_rng(seed)
    picks = sorted(rng.choice(len(paths), size=min(n, len(paths)), replace=False)) if len(paths) else []
    fig, axes = _thumbnails(paths, picks, cols, height=2.8)
    for ax, i in zip(axes.flat, picks, strict=False):
        text = f"{predicted[i]} ({probability[i]:.2f})"
        color = "black"
        if truth is not None:
            right = truth[i] == predicted[i]
            color = "#2e7d32" if right else "#c62828"
            text += "" if right else f"\ntrue: {truth[i]}"
        ax.set_title(text, color=color, fontsize=9)
    if title:
        fig.suptitle(title, fontweight="bold")
    return fig



@styled
def validation_curves(histories: Mapping[str, pd.DataFrame], title: str | None = None) -> Figure:
    """Validation accuracy and loss against epochs, every model on the same pair of axes (kumar2022's Fig. 6)."""
    fig, axes = new_figure(1, 2, size=(5.5, 3.8))
    for ax, metric in zip(axes.flat, ("val_accuracy", "val_loss"), strict=True):
        for name, history in histories.items():
            if metric in history:
                ax.plot(history["epoch"], history[metric], marker="o", markersize=3, label=name)
        ax.set(title=metric.replace("_", " "), xlabel="epoch", ylabel=metric.removeprefix("val_"))
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontweight="bold")
    return fig


@styled
def accuracy_by_group(table: pd.DataFrame, group: str = "patient", title: str | None = None,
                      random_init: Sequence[str] = ()) -> Figure:
    """Image-level and group-level accuracy with their intervals per subset (e.g. magnification), one bar pair
    per row; `table` has columns model, subset, image_accuracy, image_ci_low/high, <group>_accuracy, ...; the
    panels of the rows in `random_init` say so in their titles."""
    models_ = list(dict.fromkeys(table["model"]))
    subsets = list(dict.fromkeys(table["subset"]))
    fig, axes = new_figure(1, len(models_) or 1, size=(4.2, 3.6), sharey=True)
    width = 0.38
    for ax, model in zip(axes.flat, models_, strict=False):
        part = table[table["model"] == model].set_index("subset").reindex(subsets)
        x = np.arange(len(subsets))
        for offset, kind, color in ((-width / 2, "image", "#4C72B0"), (width / 2, group, "#DD8452")):
            value = part[f"{kind}_accuracy"].astype(float)
            low, high = part[f"{kind}_ci_low"].astype(float), part[f"{kind}_ci_high"].astype(float)
            ax.bar(x + offset, value, width, color=color, label=f"{kind}-level")
            has = (low.notna() & high.notna()).to_numpy()  # no whisker where there is no interval
            if has.any():
                ax.errorbar(x[has] + offset, value[has], yerr=[np.clip(value - low, 0, None)[has],
                            np.clip(high - value, 0, None)[has]], fmt="none", ecolor="black", capsize=3)
        ax.set_xticks(x, [str(s) for s in subsets])
        ax.set(title=model + (" (random init)" if model in random_init else ""), ylim=(0, 1.05), ylabel="accuracy",
               xlabel="")
    axes.flat[0].legend(fontsize=8, loc="lower left")
    if title:
        fig.suptitle(title, fontweight="bold")
    return fig


@styled
def image_rows(rows: Mapping[str, Sequence[np.ndarray]], titles: Sequence[str] | None = None,
               reference: np.ndarray | None = None, title: str | None = None) -> Figure:
    """Images in rows (e.g. original / normalized by method A / by method B), one column per image; the
    reference image, when given, in a first column of its own."""
    n = max((len(v) for v in rows.values()), default=0)
    extra = 1 if reference is not None else 0
    fig, axes = new_figure(len(rows) or 1, n + extra, size=(2.6, 2.2))
    for ax in axes.flat:
        ax.axis("off")
    for r, (name, images_) in enumerate(rows.items()):
        if reference is not None and r == 0:
            axes[r, 0].imshow(_as_uint8(reference))
            axes[r, 0].set_title("reference", fontsize=9, fontweight="bold")
        for c, image in enumerate(images_):
            ax = axes[r, c + extra]
            ax.imshow(_as_uint8(image))
            label = f"{name}" + (f" · {titles[c]}" if titles else "")
            ax.set_title(label, fontsize=9)
    if title:
        fig.suptitle(title, fontweight="bold")
    return fig
