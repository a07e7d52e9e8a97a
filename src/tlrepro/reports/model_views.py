"""What the models see and what they do, shown on images: the augmentation a row trains with, a grid of test
predictions, and Grad-CAM of right and wrong predictions."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from IPython.display import display

from tlrepro.core import paths
from tlrepro.data.labels import predicted_positive
from tlrepro.reports.sections import SIDE_NAMES, note
from tlrepro.results import plots
from tlrepro.studies.base import Study


def _name(study: Study, result: Any) -> str:
    """The row's name, marked when it was trained without ImageNet weights."""
    return result.row.name + (" (random init)" if result.row.name in study.random_init() else "")


def augmentation_preview(study: Study, views: int = 8) -> None:
    """Each distinct augmentation of the study's rows applied `views` times to one training image (training mode),
    once, titled with the rows that use it."""
    from tlrepro.data.tfdata import load_resized
    from tlrepro.modeling.models import build_augmentation

    original_path = study.part("train")["path"].iloc[0]
    distinct: dict[tuple, list] = {}
    for row in study.rows:
        if row.augmentation:
            distinct.setdefault((row.augmentation.model_dump_json(), row.image_size), []).append(row)
    for rows in distinct.values():
        augment = build_augmentation(rows[0].augmentation, seed=study.seed)
        original = load_resized(original_path, rows[0].image_size)
        batch = original[None].astype("float32")
        if len(study.rows) > 1:
            note(f"**{', '.join(r.name for r in rows)}**: "
                 + ", ".join(f"{k} {v}" for k, v in rows[0].augmentation.transforms()))
        display(plots.augmentation_preview(original, [np.asarray(augment(batch, training=True)[0])
                                                      for _ in range(views)]))


def prediction_samples(study: Study, result: Any, n: int = 8) -> None:
    """A grid of evaluation images titled with the prediction: green when right, red with the true class."""
    positive = study.classes[-1]
    predicted = np.where(predicted_positive(result.probs, result.metrics["threshold"]), positive, study.classes[0])
    confidence = np.where(predicted == positive, result.probs, 1 - np.asarray(result.probs))
    display(plots.prediction_grid([paths.PROJECT_ROOT / p for p in result.frame["path"]], list(predicted),
                                  list(confidence), truth=list(result.frame["label"]), n=n, seed=study.seed,
                                  title=f"{_name(study, result)} ({result.protocol}): {SIDE_NAMES[result.side]} predictions"))


def border_share(heat: np.ndarray, margin: float = 0.1) -> float:
    """The share of the heat that lies in the image's outer `margin` on every side (a model looking at the edges
    of a slide photograph, not at tissue)."""
    heat = np.asarray(heat, dtype=float)
    total = heat.sum()
    if total <= 0:
        return 0.0
    h, w = heat.shape[-2:]
    dy, dx = max(1, round(h * margin)), max(1, round(w * margin))
    inner = heat[..., dy:h - dy, dx:w - dx].sum()
    return float((total - inner) / total)


def border_area(shape: tuple[int, int], margin: float = 0.1) -> float:
    h, w = shape
    dy, dx = max(1, round(h * margin)), max(1, round(w * margin))
    return 1 - (h - 2 * dy) * (w - 2 * dx) / (h * w)


def gradcam_panel(study: Study, result: Any, n: int = 4, caveats: list[str] | None = None) -> None:
    """Grad-CAM of the predicted class on the backbone's last conv block for up to `n` correctly and `n`
    wrongly classified evaluation images (seeded pick): where the model looked, right and wrong; `caveats` (why
    the map may not mean what it seems: random weights, a model near chance) are said first, and how much of the
    heat lies on the images' edges after."""
    from tlrepro.data.tfdata import load_resized
    from tlrepro.modeling.explain import gradcam, overlay

    if caveats:
        note(f"**Caveat for {_name(study, result)} ({result.protocol}):** " + "; ".join(caveats) + ".")
    heats = []

    labels = study.labels(result.frame)
    predicted = predicted_positive(result.probs, result.metrics["threshold"]).astype(int)
    rng = np.random.default_rng(study.seed)
    picks = {kind: rng.permutation(np.flatnonzero(mask))[:n]
             for kind, mask in (("right", predicted == labels), ("wrong", predicted != labels))}
    shown = 0
    for kind, index in picks.items():
        if not len(index):
            continue
        frame = result.frame.iloc[index]
        views = frame["view"] if "view" in frame else pd.Series("identity", index=frame.index)
        images = np.stack([load_resized(p, result.row.image_size, v or "identity")
                           for p, v in zip(frame["path"], views, strict=True)])
        heat = gradcam(result.classifier.model, images.astype("float32"), threshold=result.metrics["threshold"])
        heats.append(heat)
        titles = [f"{study.classes[p]} (true {lab})" for p, lab in zip(predicted[index], frame["label"], strict=True)]
        display(plots.image_rows({kind: [overlay(img, h) for img, h in zip(images, heat, strict=True)]},
                                 titles=titles,
                                 title=f"{_name(study, result)} ({result.protocol}): Grad-CAM of the prediction, {kind}"))
        shown += len(index)
    if not shown:
        note("No evaluation images to explain.")
        return
    stacked = np.concatenate(heats)
    share = np.mean([border_share(h) for h in stacked])
    note(f"<small>On average {share:.0%} of the heat lies in the outer tenth of each side, which is "
         f"{border_area(stacked.shape[1:]):.0%} of the image's area.</small>")
