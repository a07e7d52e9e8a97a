"""Cached frozen computation: run the frozen part of a network once per image set, never once per epoch.

A classifier is cut where its frozen part ends:

- backbone frozen: the cut lies after the backbone, past any weightless deterministic head layers
  (pooling, flatten), so the cache holds pooled features;
- last N backbone layers trainable: the cut lies inside the backbone, before its first trainable
  layer; every tensor that crosses the cut (skip connections included) is cached.

`extractor` maps images to the crossing tensors and `trainer` maps those to the output. Both share
their layers with the classifier, so training `trainer` trains the classifier itself.

Random augmentation before the cut forbids caching plain features (`split_frozen` returns None), except
when the row asks for `augmentation_views: K`: then the frozen part runs once on K augmented views of
each training image and training cycles through them (`extract_views`).

The cache is keyed by content: the images (bytes and view), the decoding code, and the values of every
weight of the frozen part as it is when the features are computed. Weights changed in place, or a backbone
trained by one row and frozen by the next, miss the cache; a damaged cache file is recomputed.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from tqdm import tqdm

from tlrepro.core import fileio, paths
from tlrepro.data.tfdata import decoding_fingerprint, image_dataset
from tlrepro.modeling.models import Classifier, build_augmentation

# Bump when the way frozen outputs are computed changes, so older cache entries are never reused.
CACHE_VERSION = "3"

# Layers that hold no weights and act the same in training and inference: safe to fold into the cache.
_FOLDABLE = (keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D, keras.layers.Flatten)


@dataclass
class FrozenSplit:
    extractor: keras.Model  # image -> crossing tensors (never trained)
    trainer: keras.Model  # crossing tensors -> output (holds every trainable layer)
    cut: str  # where the cut lies, for cache keys and reports
    crossing_shapes: list[tuple] = field(default_factory=list)


def trainer_inputs(arrays: list[np.ndarray]) -> np.ndarray | tuple[np.ndarray, ...]:
    """Frozen outputs as the trainer takes them: one array, or a tuple when several tensors cross the cut."""
    return tuple(arrays) if len(arrays) > 1 else arrays[0]


def _first_trainable(backbone: keras.Model) -> int | None:
    for i, layer in enumerate(backbone.layers):
        if layer.trainable and layer.trainable_weights:
            return i
    return None


def _crossing_tensors(backbone: keras.Model, cut: int) -> list:
    """Outputs of layers before the cut that layers after it consume (skip tensors included)."""
    before = {id(layer) for layer in backbone.layers[:cut]}
    crossing: list = []
    for layer in backbone.layers[cut:]:
        for node in layer._inbound_nodes:
            for tensor in node.input_tensors:
                producer = tensor._keras_history.operation
                if id(producer) in before and not any(tensor is t for t in crossing):
                    crossing.append(tensor)
    return crossing


def split_frozen(classifier: Classifier, *, inference: bool = False) -> FrozenSplit | None:
    """Cut the classifier where its frozen part ends, or None if caching would change the results.

    With `inference`, augmentation is ignored (it is inactive outside training), so the split also
    serves validation and prediction of a model that augments while it trains; so does a row with
    `augmentation_views` (its training views are computed by `extract_views`).
    """
    if classifier.augmentation is not None and not inference and not classifier.row.augmentation_views:
        return None
    inputs = keras.Input((classifier.image_size, classifier.image_size, 3), name="image")
    cut = _first_trainable(classifier.backbone)

    if cut is None:  # whole backbone frozen: fold leading weightless head layers into the cache
        head_layers = list(classifier.head.layers)
        folded = 0
        while folded < len(head_layers) and isinstance(head_layers[folded], _FOLDABLE):
            folded += 1
        x = classifier.backbone(classifier.preprocessing(inputs))
        for layer in head_layers[:folded]:
            x = layer(x)
        extractor = keras.Model(inputs, x, name="frozen_extractor")
        feature_in = keras.Input(tuple(x.shape[1:]), name="features")
        y = feature_in
        for layer in head_layers[folded:]:
            y = layer(y)
        trainer = keras.Model(feature_in, y, name="trainable_part")
        return FrozenSplit(extractor, trainer, f"after the backbone and {folded} head layer(s)", [tuple(x.shape[1:])])

    if all(isinstance(layer, keras.layers.InputLayer) for layer in classifier.backbone.layers[:cut]):
        return None  # nothing frozen: nothing to cache
    backbone = classifier.backbone
    crossing = _crossing_tensors(backbone, cut)
    prefix = keras.Model(backbone.input, crossing, name="backbone_prefix")
    suffix = keras.Model(crossing, backbone.output, name="backbone_suffix")
    extractor = keras.Model(inputs, prefix(classifier.preprocessing(inputs)), name="frozen_extractor")
    shapes = [tuple(t.shape[1:]) for t in crossing]
    feature_ins = [keras.Input(s, name=f"crossing_{i}") for i, s in enumerate(shapes)]
    out = classifier.head(suffix(feature_ins if len(feature_ins) > 1 else feature_ins[0]))
    trainer = keras.Model(feature_ins, out, name="trainable_part")
    return FrozenSplit(extractor, trainer, f"before backbone layer {cut} ({backbone.layers[cut].name})", shapes)


# ---------------------------------------------------------------- the cache


def weights_digest(model: keras.Model) -> str:
    """sha256 over the values (and shapes) of every weight of `model`, trainable or not."""
    h = hashlib.sha256()
    for w in model.weights:
        value = np.ascontiguousarray(keras.ops.convert_to_numpy(w))
        h.update(f"{w.path}:{value.shape}:{value.dtype}".encode())
        h.update(value.tobytes())
    return h.hexdigest()


def cache_key(frame: pd.DataFrame, classifier: Classifier, frozen: FrozenSplit, extra: str = "") -> str:
    """Content key: images (bytes' hash and view, in order), decoding code, architecture, cut, weight values."""
    h = hashlib.sha256()
    ids = frame["sha256"] if "sha256" in frame else frame["path"]
    views = (frame["view"] if "view" in frame else pd.Series("identity", index=frame.index)).replace("", "identity")
    h.update("\n".join(f"{i}:{v}" for i, v in zip(ids.astype(str), views.astype(str), strict=True)).encode())
    row = classifier.row
    parts = [CACHE_VERSION, decoding_fingerprint(), row.backbone, json.dumps(row.se.model_dump() if row.se else None),
             classifier.preprocessing.mode, str(classifier.image_size), frozen.cut,
             json.dumps([list(s) for s in frozen.crossing_shapes]), keras.__version__, tf.__version__, extra,
             weights_digest(frozen.extractor)]
    h.update("|".join(parts).encode())
    return h.hexdigest()[:32]


def _load(target: Path) -> list[np.ndarray] | None:
    """The cached arrays, or None when the file is missing or damaged (it is then recomputed)."""
    if not target.is_file():
        return None
    try:
        with np.load(target) as stored:
            return [stored[f"x{i}"] for i in range(len(stored.files))]
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
        target.unlink(missing_ok=True)
        return None


def _store(target: Path, arrays: list[np.ndarray]) -> None:
    with fileio.atomic_path(target) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **{f"x{i}": a for i, a in enumerate(arrays)})


def _run(model_fn, dataset: tf.data.Dataset, steps: int, description: str) -> list[np.ndarray]:
    chunks: list[list[np.ndarray]] = []
    for batch in tqdm(dataset, total=steps, desc=description, unit="batch", leave=False, disable=None):
        out = model_fn(batch)
        out = out if isinstance(out, list | tuple) else [out]
        chunks.append([keras.ops.convert_to_numpy(o) for o in out])
    return [np.concatenate([c[i] for c in chunks]) for i in range(len(chunks[0]))] if chunks else []


def extract(frozen: FrozenSplit, frame: pd.DataFrame, *, classifier: Classifier, batch_size: int,
            description: str = "features", cache_dir: Path | None = None) -> tuple[list[np.ndarray], bool]:
    """The frozen outputs for every row of `frame`, from the cache or computed once and cached.

    Returns (arrays, from_cache).
    """
    key = cache_key(frame, classifier, frozen)
    target = Path(cache_dir or paths.feature_cache_dir()) / f"{classifier.row.backbone}-{key}.npz"
    if (arrays := _load(target)) is not None:
        return arrays, True
    dataset = image_dataset(frame, classifier.image_size, batch_size)
    # a compiled function: calling the model eagerly batch by batch would be about twice as slow
    forward = tf.function(lambda x: frozen.extractor(x, training=False), reduce_retracing=True)
    arrays = _run(forward, dataset, int(np.ceil(len(frame) / batch_size)), description)
    _store(target, arrays)
    return arrays, False


def extract_views(frozen: FrozenSplit, frame: pd.DataFrame, *, classifier: Classifier, views: int, seed: int,
                  batch_size: int, cache_dir: Path | None = None) -> tuple[list[list[np.ndarray]], bool]:
    """Frozen outputs of `views` augmented versions of every row: view k applies the row's augmentation with
    seed stream k, in a fixed order, so the same settings give the same views. Returns (per view, from_cache)."""
    spec = classifier.row.augmentation
    out, all_cached = [], True
    for k in range(views):
        extra = f"views:{json.dumps(spec.model_dump())}:{seed}:{k}"
        key = cache_key(frame, classifier, frozen, extra)
        target = Path(cache_dir or paths.feature_cache_dir()) / f"{classifier.row.backbone}-{key}.npz"
        if (arrays := _load(target)) is None:
            augment = build_augmentation(spec, seed * 100 + k)
            forward = tf.function(lambda x, a=augment: frozen.extractor(a(x, training=True), training=False),
                                  reduce_retracing=True)
            arrays = _run(forward, image_dataset(frame, classifier.image_size, batch_size),
                          int(np.ceil(len(frame) / batch_size)), f"augmented view {k + 1}/{views}")
            _store(target, arrays)
            all_cached = False
        out.append(arrays)
    return out, all_cached
