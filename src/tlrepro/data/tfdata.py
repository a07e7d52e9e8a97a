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


def image_dataset(frame: pd.DataFrame, image_size: int, batch_size: int, *, labels: np.ndarray | None = None,
                  shuffle: bool = False, seed: int = 42) -> tf.data.Dataset:
    """Batches of float32 images (0..255) of `frame`'s path/view rows, with `labels` when given.

    Shuffled (seeded, reshuffled every epoch) only when asked.
    """
    slices = (frame["path"].astype(str).to_numpy(), _views(frame))
    ds = tf.data.Dataset.from_tensor_slices(slices if labels is None else (*slices, labels))
    if shuffle:
        ds = ds.shuffle(len(frame), seed=seed, reshuffle_each_iteration=True)

    def decode(path, view, *label):
        image = tf.numpy_function(lambda p, v: load_resized(p, image_size, v), [path, view], tf.uint8)
        image = tf.ensure_shape(tf.cast(image, tf.float32), (image_size, image_size, 3))
        return (image, *label) if label else image

    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def path_dataset(files: Sequence[str | Path], image_size: int, batch_size: int) -> tf.data.Dataset:
    """Batches of images from a list of paths (prediction on a folder)."""
    return image_dataset(pd.DataFrame({"path": [str(f) for f in files]}), image_size, batch_size)


def array_dataset(arrays: list[np.ndarray] | np.ndarray, labels: np.ndarray, batch_size: int, *,
                  shuffle: bool = False, seed: int = 42) -> tf.data.Dataset:
    """Batches of in-memory arrays (cached frozen outputs: one array per tensor crossing the cut) and labels."""
    inputs = tuple(arrays) if isinstance(arrays, list) and len(arrays) > 1 else (
        arrays[0] if isinstance(arrays, list) else arrays)
    ds = tf.data.Dataset.from_tensor_slices((inputs, labels))
    if shuffle:
        ds = ds.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
