"""tf.data pipelines: decode (any accepted format, made RGB), resize, view, batch, prefetch.

Images are decoded by `tlrepro.data.images`, the one reader the index also uses, so GIF, BMP, TIFF, CMYK,
palette and 16-bit files behave the same everywhere. Decoding runs in parallel (PIL releases the GIL) with
a fixed output order, so the model is not starved and results do not depend on thread timing.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf

from tlrepro.core import paths
from tlrepro.data import images


def decoding_fingerprint() -> str:
    """A hash of the code that turns a file into model input: a change to it invalidates cached features."""
    source = "".join(inspect.getsource(f) for f in (images.load_rgb, images.to_rgb, images._to_8bit_gray,
                                                     images.resized_array, load_resized))
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def load_resized(path: str | bytes, image_size: int, view: str | bytes = "identity") -> np.ndarray:
    """One image as uint8 RGB of image_size x image_size (bilinear), from a project-relative or absolute path."""
    path = path.decode() if isinstance(path, bytes) else path
    view = view.decode() if isinstance(view, bytes) else view
    full = Path(path) if Path(path).is_absolute() else paths.PROJECT_ROOT / path
    return images.resized_array(images.load_rgb(full), int(image_size), view or "identity")


def _views(frame: pd.DataFrame) -> np.ndarray:
    if "view" in frame:
        return frame["view"].replace("", "identity").astype(str).to_numpy()
    return np.full(len(frame), "identity")


# Keras 3.15's fit makes two iterators per epoch of a finite dataset (one ends the epoch): a seeded
# reshuffling dataset shows epoch e its iteration 2e - 1. tests/test_compute.py fails if Keras changes this (a
# mirrored run, laid out explicitly, would then no longer match one device's).
FIT_ITERATIONS_PER_EPOCH = 2


def fit_orders(n: int, seed: int, epochs: int, stride: int = FIT_ITERATIONS_PER_EPOCH) -> np.ndarray:
    """(epochs, n): the order in which `fit` on one device sees the rows of a dataset reshuffled with `seed`,
    epoch by epoch (iterations 1, 1 + stride, ... of tf.data's seeded shuffle)."""
    order = tf.data.Dataset.range(n).shuffle(max(n, 1), seed=seed, reshuffle_each_iteration=True)
    drawn = [np.fromiter(order.as_numpy_iterator(), dtype=np.int64, count=n) for _ in range(1 + (epochs - 1) * stride)]
    return np.stack(drawn[::stride])


def image_dataset(frame: pd.DataFrame, image_size: int, batch_size: int, *, labels: np.ndarray | None = None,
                  shuffle: bool = False, seed: int = 42, epochs: int | None = None) -> tf.data.Dataset:
    """Batches of float32 images (0..255) of `frame`'s path/view rows, with `labels` when given.

    Shuffled (seeded, reshuffled every epoch) only when asked; with `epochs`, the orders are laid out explicitly
    for that many epochs, the same as one device's (`fit_orders`), for distributed training.
    """
    slices = (frame["path"].astype(str).to_numpy(), _views(frame))
    slices = slices if labels is None else (*slices, np.asarray(labels))

    def decode(path, view, *label):
        image = tf.numpy_function(lambda p, v: load_resized(p, image_size, v), [path, view], tf.uint8)
        image = tf.ensure_shape(tf.cast(image, tf.float32), (image_size, image_size, 3))
        return (image, *label) if label else image

    if shuffle and epochs:  # explicit orders (distributed training): each epoch batched on its own
        held = tuple(tf.constant(s) for s in slices)
        return tf.data.Dataset.from_tensor_slices(fit_orders(len(frame), seed, epochs)).flat_map(
            lambda o: tf.data.Dataset.from_tensor_slices(tuple(tf.gather(h, o) for h in held))
            .map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(batch_size)
        ).prefetch(tf.data.AUTOTUNE)
    ds = tf.data.Dataset.from_tensor_slices(slices)
    if shuffle:
        ds = ds.shuffle(len(frame), seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def path_dataset(files: Sequence[str | Path], image_size: int, batch_size: int) -> tf.data.Dataset:
    """Batches of images from a list of paths (prediction on a folder)."""
    return image_dataset(pd.DataFrame({"path": [str(f) for f in files]}), image_size, batch_size)


def array_dataset(arrays: list[np.ndarray] | np.ndarray, labels: np.ndarray, batch_size: int, *,
                  shuffle: bool = False, seed: int = 42, orders: np.ndarray | None = None) -> tf.data.Dataset:
    """Batches of in-memory arrays (cached frozen outputs: one array per tensor crossing the cut) and labels.

    Shuffled (seeded, reshuffled every epoch) when asked; with explicit per-epoch `orders`, batched in those."""
    inputs = tuple(arrays) if isinstance(arrays, list) and len(arrays) > 1 else (
        arrays[0] if isinstance(arrays, list) else arrays)
    if orders is not None:
        labels = np.asarray(labels)
        batches = tf.data.Dataset.from_tensor_slices(orders).flat_map(
            lambda o: tf.data.Dataset.from_tensor_slices(o).batch(batch_size))
        held = (tuple(tf.constant(a) for a in inputs) if isinstance(inputs, tuple) else tf.constant(inputs),
                tf.constant(labels))
        pick = ((lambda i: (tuple(tf.gather(a, i) for a in held[0]), tf.gather(held[1], i)))
                if isinstance(inputs, tuple) else (lambda i: (tf.gather(held[0], i), tf.gather(held[1], i))))
        return batches.map(pick).prefetch(tf.data.AUTOTUNE)
    ds = tf.data.Dataset.from_tensor_slices((inputs, labels))
    if shuffle:
        ds = ds.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
