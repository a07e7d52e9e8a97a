"""Grad-CAM heatmaps of a classifier's decision, and overlays of them on the image.

Grad-CAM (Selvaraju et al., 2017) weighs each channel of a convolutional feature map by the mean gradient of
the class score with respect to it, sums the weighted channels and keeps the positive part: where the
network saw evidence for the class. Here the feature map is the output of the backbone's last convolutional
block (the last layer of the nested backbone whose output is 4-D), and the class is the predicted one: for a
binary sigmoid model the malignant score when the model says malignant, else 1 - score.

Works for every model `build_classifier` builds (or a saved one), through `parts_of`:

    image (0..255) -> preprocessing -> backbone (sub-model: last conv output, backbone output) -> head

Augmentation is skipped (it is inactive at inference anyway). The API is plain numpy in, numpy out:

    heat = gradcam(model, images)                   # (N, H, W) in [0, 1]
    png = overlay_png(rgb_uint8, heat[0])           # bytes of a PNG: jet colours over the image
    write_overlays(predictor, paths, out_dir)       # <name>_gradcam.png per image (`tlrepro predict --explain`)

Note: the last block's map is small (7x7 at 224 px; 1x1 at 32 px, where the heatmap is uniform); pass
`layer=` to use an earlier layer of the backbone.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tlrepro.core import fileio, inputs
from tlrepro.data.labels import predicted_positive

DEFAULT_ALPHA = 0.4
DEFAULT_COLORMAP = "jet"
_BUILDING = threading.Lock()  # the service explains from several threads: build each explainer once


def last_conv_layer(backbone: Any) -> Any:
    """The last layer of `backbone` whose output is 4-D (N, h, w, C): its last convolutional block."""
    import keras

    for layer in reversed(backbone.layers):
        if isinstance(layer, keras.layers.InputLayer):
            continue
        try:
            shape = layer.output.shape
        except (AttributeError, ValueError):  # a layer used several times has no single output
            continue
        if len(shape) == 4:
            return layer
    raise ValueError(f"backbone {backbone.name!r} has no layer with a 4-D output: Grad-CAM needs a conv feature map")


def _explainer(model: Any, layer: str | None) -> tuple[Any, Any, Any]:
    """(preprocessing, sub-model image -> (feature map, backbone output), head); cached on the model."""
    import keras

    from tlrepro.modeling.models import parts_of

    with _BUILDING:
        cache = model.__dict__.setdefault("_tlrepro_gradcam", {})
        if layer not in cache:
            backbone, prep, head, _ = parts_of(model)
            target = backbone.get_layer(layer) if layer is not None else last_conv_layer(backbone)
            sub = keras.Model(backbone.inputs, [target.output, backbone.output], name=f"{backbone.name}_gradcam")
            cache[layer] = (prep, sub, head)
        return cache[layer]


def _class_scores(probs: Any, class_index: int | None, threshold: float) -> tuple[Any, np.ndarray]:
    """(score to explain per image, explained class index per image) from the model's outputs."""
    import tensorflow as tf

    if probs.shape[-1] == 1:  # binary sigmoid: P(malignant)
        p = probs[:, 0]
        if class_index is None:
            chosen = predicted_positive(p.numpy(), threshold).astype(int)
        else:
            if class_index not in (0, 1):
                raise ValueError(f"class_index must be 0 or 1 for a binary model, not {class_index}")
            chosen = np.full(p.shape[0], class_index, dtype=int)
        return tf.where(tf.constant(chosen == 1), p, 1.0 - p), chosen
    chosen = probs.numpy().argmax(axis=1) if class_index is None else np.full(probs.shape[0], class_index, dtype=int)
    if chosen.size and not 0 <= int(chosen.max()) < probs.shape[-1]:
        raise ValueError(f"class_index {class_index} is out of range for {probs.shape[-1]} classes")
    return tf.gather(probs, tf.constant(chosen), axis=1, batch_dims=1), chosen


def gradcam(model: Any, images: np.ndarray, class_index: int | None = None, *, threshold: float = 0.5,
            layer: str | None = None) -> np.ndarray:
    """Grad-CAM heatmaps (N, H, W) in [0, 1] for images (N, H, W, 3) with values 0..255.

    class_index: the class to explain (None: the predicted one; a binary model predicts malignant when its
    score is >= `threshold`). Each heatmap is divided by its own maximum (an image with no positive
    evidence gets zeros) and resized (bilinear) to the image's size.
    """
    import tensorflow as tf

    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be (N, H, W, 3), not {images.shape}")
    if not len(images):
        return np.zeros(images.shape[:3], dtype=np.float32)
    prep, sub, head = _explainer(model, layer)
    x = tf.convert_to_tensor(images, dtype=tf.float32)
    with tf.GradientTape() as tape:
        features, pooled = sub(prep(x), training=False)
        tape.watch(features)
        probs = head(pooled, training=False)
        score, _ = _class_scores(probs, class_index, threshold)
    grads = tape.gradient(score, features)
    if grads is None:  # the head does not depend on this layer
        grads = tf.zeros_like(features)
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)  # (N, 1, 1, C)
    cam = tf.nn.relu(tf.reduce_sum(weights * features, axis=-1))  # (N, h, w)
    peak = tf.reduce_max(cam, axis=(1, 2), keepdims=True)
    cam = tf.math.divide_no_nan(cam, peak)
    cam = tf.image.resize(cam[..., None], images.shape[1:3], method="bilinear")[..., 0]
    return np.clip(cam.numpy(), 0.0, 1.0).astype(np.float32)


def _resize_heatmap(heatmap: np.ndarray, width: int, height: int) -> np.ndarray:
    heat = np.nan_to_num(np.asarray(heatmap, dtype=np.float32), nan=0.0)
    if heat.shape != (height, width):
        heat = np.asarray(Image.fromarray(heat, mode="F").resize((width, height), Image.Resampling.BILINEAR))
    return np.clip(heat, 0.0, 1.0)


def overlay(rgb: np.ndarray | Image.Image, heatmap: np.ndarray, *, alpha: float = DEFAULT_ALPHA,
            colormap: str = DEFAULT_COLORMAP) -> np.ndarray:
    """The image (H, W, 3) uint8 with the heatmap (any size, in [0, 1]) in colour over it: uint8 RGB (H, W, 3)."""
    import matplotlib

    image = np.asarray(rgb.convert("RGB") if isinstance(rgb, Image.Image) else rgb)
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"rgb must be an (H, W, 3) image, not {image.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], not {alpha}")
    height, width = image.shape[:2]
    heat = _resize_heatmap(heatmap, width, height)
    colours = matplotlib.colormaps[colormap](heat)[..., :3] * 255.0
    mixed = (1.0 - alpha) * image.astype(np.float32) + alpha * colours
    return np.clip(np.round(mixed), 0, 255).astype(np.uint8)


def overlay_png(rgb: np.ndarray | Image.Image, heatmap: np.ndarray, *, alpha: float = DEFAULT_ALPHA,
                colormap: str = DEFAULT_COLORMAP) -> bytes:
    """`overlay` encoded as PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(overlay(rgb, heatmap, alpha=alpha, colormap=colormap)).save(buffer, "PNG")
    return buffer.getvalue()


def explain_arrays(predictor: Any, arrays: np.ndarray, labels: Sequence[str] | None = None) -> list[bytes]:
    """Overlay PNGs for images already resized for the predictor's model ((N, S, S, 3) uint8), each
    explaining its label in `labels` (default: the predicted class at the card's threshold)."""
    arrays = np.asarray(arrays, dtype=np.uint8)
    threshold = 0.5 if predictor.threshold is None else float(predictor.threshold)
    if labels is None:
        heat = gradcam(predictor.model, arrays.astype(np.float32), threshold=threshold)
    else:
        heat = np.empty(arrays.shape[:3], dtype=np.float32)
        for label in set(labels):
            rows = [i for i, name in enumerate(labels) if name == label]
            heat[rows] = gradcam(predictor.model, arrays[rows].astype(np.float32),
                                 class_index=predictor.classes.index(label), threshold=threshold)
    return [overlay_png(a, h) for a, h in zip(arrays, heat, strict=True)]


def _out_names(paths: Sequence[Path]) -> list[str]:
    """<stem>_gradcam.png per image; a stem seen before gets its extension (then a counter) added."""
    used: set[str] = set()
    names = []
    for path in paths:
        base = path.stem
        if base in used:
            base = f"{path.stem}_{path.suffix.lstrip('.').lower()}" if path.suffix else base
        candidate, n = base, 1
        while candidate in used:
            n += 1
            candidate = f"{base}_{n}"
        used.add(candidate)
        names.append(f"{candidate}_gradcam.png")
    return names


def write_overlays(predictor: Any, paths: Sequence[Path | str], out_dir: Path | str, *,
                   batch_size: int = 32) -> list[Path]:
    """Write <name>_gradcam.png into `out_dir` for each image (atomically: a temporary file, then a rename).

    Each image is decoded and resized exactly as `predict` does, and the overlay shows Grad-CAM of the
    predicted class over the image at the model's input size. Unreadable images are skipped (predict
    lists them with their reasons). Returns the files written, in order."""
    paths = [Path(p) for p in paths]
    out_dir = Path(out_dir)
    names = _out_names(paths)
    written: list[Path] = []
    for start in range(0, len(paths), batch_size):
        chunk, chunk_names = paths[start : start + batch_size], names[start : start + batch_size]
        arrays, keep = [], []
        for path, name in zip(chunk, chunk_names, strict=True):
            try:
                data = inputs.read_regular(path)
            except OSError:
                continue
            array, _, ok, _ = predictor.decode(data)
            if ok:
                arrays.append(array)
                keep.append(name)
        if not arrays:
            continue
        for name, png in zip(keep, explain_arrays(predictor, np.stack(arrays)), strict=True):
            written.append(fileio.write_bytes(out_dir / name, png))
    if written:
        print(f"wrote {len(written)} Grad-CAM overlay(s) to {out_dir}")
    return written
