"""Every plot returns a Figure from plain data and saves as a PNG."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from PIL import Image

from tlrepro.results import compare as papers
from tlrepro.results import comparison_plots, plots


def check(fig: Figure, tmp_path, name: str) -> None:
    assert isinstance(fig, Figure)
    out = plots.save(fig, tmp_path / "plots" / f"{name}.png")
    with Image.open(out) as img:
        assert img.format == "PNG" and img.width > 100
    assert not list(out.parent.glob(".*.tmp"))  # the atomic temp file is gone


@pytest.fixture
def grid() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    cells = itertools.product(["MobileNetV2", "VGG16"], [1e-5, 5e-4, 1e-3], [10, 20, 30])
    frame = pd.DataFrame(cells, columns=["backbone", "learning_rate", "epochs"])
    return frame.assign(val_accuracy=rng.uniform(0.6, 0.9, len(frame)).round(4))


def test_class_balance_and_samples(tmp_path, make_image):
    frame = pd.DataFrame({"split": ["train"] * 5 + ["val"] * 2 + ["test"] * 3,
                          "label": ["benign", "malignant"] * 5})
    fig = plots.class_balance(frame)
    heights = sorted(int(p.get_height()) for p in fig.axes[0].patches if p.get_height() > 0)
    assert sum(heights) == 10
    check(fig, tmp_path, "balance")
    images = [make_image(tmp_path / f"img{i}.png", seed=i, mode="L" if i % 2 else "RGB") for i in range(6)]
    fig = plots.sample_grid(images, [0, 1, 0, 1, 0, 1], n=4, seed=1, title="samples")
    titles = [ax.get_title() for ax in fig.axes if ax.images]
    assert len(titles) == 4 and set(titles) <= {"benign", "malignant"}
    assert titles == [ax.get_title() for ax in plots.sample_grid(images, [0, 1] * 3, n=4, seed=1).axes if ax.images]
    check(fig, tmp_path, "samples")


def test_augmentation_preview(tmp_path):
    original = np.zeros((32, 32, 3), np.uint8)
    augmented = [np.full((32, 32, 3), 40.0 * i, np.float32) for i in range(8)]  # keras gives float 0-255
    fig = plots.augmentation_preview(original, augmented)
    assert len([ax for ax in fig.axes if ax.images]) == 9
    check(fig, tmp_path, "augment")


def test_training_curves_tolerate_missing_columns(tmp_path):
    full = pd.DataFrame({"epoch": [1, 2, 3], "loss": [0.9, 0.6, 0.5], "accuracy": [0.6, 0.7, 0.8],
                         "val_loss": [1.0, 0.8, 0.7], "val_accuracy": [0.5, 0.6, 0.7]})
    fig = plots.training_curves({"frozen": full, "finetune": full[["loss"]]})
    assert len(fig.axes) == 4
    assert len(fig.axes[0].lines) == 2 and len(fig.axes[3].lines) == 0
    check(fig, tmp_path, "curves")
    marked = plots.training_curves({"frozen": full}, marks={"frozen": 2})
    assert len(marked.axes[0].lines) == 3 and "(2)" in marked.axes[0].get_legend().get_texts()[-1].get_text()


def test_confusion_and_roc(tmp_path):
    fig = plots.confusion_matrices({"a": [[3, 1], [1, 3]], "b": [[4, 0], [0, 0]]})
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts == ["0.75", "0.25", "0.25", "0.75"]
    check(fig, tmp_path, "cm")
    counts = plots.confusion_matrices({"a": [[3, 1], [1, 3]]}, normalize=False)
    assert [t.get_text() for t in counts.axes[0].texts] == ["3", "1", "1", "3"]
    y = [0, 0, 0, 0, 1, 1, 1, 1]
    fig = plots.roc_curves({"m": (y, [0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9])})
    assert "AUC 0.938" in fig.axes[0].get_legend().get_texts()[0].get_text()
    check(fig, tmp_path, "roc")


def test_grid_plots(tmp_path, grid):
    best = grid.loc[grid.groupby("backbone")["val_accuracy"].idxmax()]
    fig = plots.grid_lines(grid, best)
    assert [ax.get_title() for ax in fig.axes] == ["MobileNetV2", "VGG16"]
    assert len(fig.axes[0].lines) == 3 and len(fig.axes[0].collections) == 1  # 3 rates + the star
    check(fig, tmp_path, "grid_lines")
    fig = plots.grid_heatmap(grid)
    assert len(fig.axes[0].texts) == 9
    check(fig, tmp_path, "grid_heatmap")


def test_paper_vs_ours(tmp_path):
    ours = {"MobileNetV2": {"accuracy": 0.85, "accuracy_ci_low": 0.82, "accuracy_ci_high": 0.88, "f1": 0.8}}
    frame = papers.compare("lin2024", ours, metrics=["accuracy", "f1"])
    fig = comparison_plots.paper_vs_ours(frame)
    assert [ax.get_title() for ax in fig.axes] == ["accuracy", "f1"]
    check(fig, tmp_path, "paper_vs_ours")
    assert [ax.get_title() for ax in comparison_plots.paper_vs_ours(frame, metric="f1").axes] == ["f1"]


def test_forest_plot_lists_every_rate(tmp_path):
    ours = {"MobileNetV2": {"accuracy": 0.85, "accuracy_ci_low": 0.82, "accuracy_ci_high": 0.88, "f1": 0.8}}
    frame = papers.compare("lin2024", ours, metrics=["accuracy", "f1"],
                           spread={"MobileNetV2": {"accuracy": {"mean": 0.84, "std": 0.01, "seeds": 5}}})
    fig = comparison_plots.forest(frame.assign(study="lin2024"))
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert len(labels) == 8 and labels[0] == "lin2024 · MobileNetV2 · accuracy"
    check(fig, tmp_path, "forest")


def test_accuracy_by_magnification_marks_random_init_rows(tmp_path):
    table = pd.DataFrame([{"model": m, "subset": s, "image_accuracy": 0.7, "image_ci_low": 0.6, "image_ci_high": 0.8,
                           "patient_accuracy": 0.6, "patient_ci_low": None, "patient_ci_high": None}
                          for m in ("VGG16", "ResNet50V2") for s in ("40", "100", "all")])
    fig = plots.accuracy_by_group(table, title="protocol: image", random_init=["ResNet50V2"])
    assert [ax.get_title() for ax in fig.axes] == ["VGG16", "ResNet50V2 (random init)"]
    check(fig, tmp_path, "by_magnification")
