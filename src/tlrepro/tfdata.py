"""tf.data pipelines from split files: decode (any accepted format, made RGB), resize, batch, prefetch.

Images are decoded by `tlrepro.images.load_rgb`, the one reader the index also uses, so GIF, BMP,
TIFF, CMYK, palette and 16-bit files behave the same everywhere. Labels: 1 = malignant, 0 = benign.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf
from PIL import Image

from tlrepro import paths
from tlrepro.errors import UserError

POSITIVE = "malignant"


def read_split(path: Path | str) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{paths.relative(path)} not found: run `dvc repro` for the split stage first.")
    frame = pd.read_csv(path)
    missing = {"path", "label", "split"} - set(frame.columns)
    if missing:
        raise UserError(f"{paths.relative(path)} lacks columns {sorted(missing)}: re-run its split stage.")
    return frame


def labels_of(frame: pd.DataFrame) -> np.ndarray:
    return (frame["label"].astype(str).str.lower() == POSITIVE).to_numpy(dtype="float32")


def load_resized(path: str | bytes, image_size: int) -> np.ndarray:
    """One image as uint8 RGB of image_size x image_size (bilinear), from a project-relative path."""
    from tlrepro.images import load_rgb

    if isinstance(path, bytes):
        path = path.decode()
    full = Path(path) if Path(path).is_absolute() else paths.PROJECT_ROOT / path
    image = load_rgb(full)
    if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def image_dataset(
    frame: pd.DataFrame,
    image_size: int,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 42,
    with_labels: bool = True,
) -> tf.data.Dataset:
    """(image float32 0..255, label) batches; shuffled (seeded, reshuffled each epoch) only if asked."""
    paths_ = frame["path"].astype(str).to_numpy()
    ds = tf.data.Dataset.from_tensor_slices(paths_)
    if with_labels:
        ds = tf.data.Dataset.zip(ds, tf.data.Dataset.from_tensor_slices(labels_of(frame)))
    else:
        ds = ds.map(lambda p: (p,))
    if shuffle:
        ds = ds.shuffle(len(frame), seed=seed, reshuffle_each_iteration=True)

    def decode(p, *rest):
        image = tf.numpy_function(lambda q: load_resized(q, image_size), [p], tf.uint8)
        image = tf.ensure_shape(tf.cast(image, tf.float32), (image_size, image_size, 3))
        return (image, *rest) if rest else image

    # deterministic=True keeps batch order fixed even with parallel decoding
    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def feature_dataset(
    features: list[np.ndarray], labels: np.ndarray, batch_size: int, *, shuffle: bool = False, seed: int = 42
) -> tf.data.Dataset:
    """Batches of cached frozen outputs (one array per tensor crossing the cut) with their labels."""
    inputs = tuple(features) if len(features) > 1 else features[0]
    ds = tf.data.Dataset.from_tensor_slices((inputs, labels))
    if shuffle:
        ds = ds.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
