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

The cache (tlrepro.modeling.feature_store) holds one entry per image and view, keyed by the image's content and
filed under a fingerprint of the decoding code and of the frozen part: its architecture and the value of every
weight it holds when the features are computed. So folds, protocols and rows that run the same frozen part share
one extraction; weights changed in place, or a backbone trained by one row and frozen by the next, miss the
cache; a damaged entry is recomputed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from tlrepro.core import paths, progress
from tlrepro.data.tfdata import decoding_fingerprint, image_dataset
from tlrepro.modeling import compute
from tlrepro.modeling.feature_store import FeatureStore
from tlrepro.modeling.models import Classifier, build_augmentation

# Bump when the way frozen outputs are computed changes, so older cache entries are never reused.
CACHE_VERSION = "4"  # 4: one entry per image and view (feature_store)

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
    cut = _first_trainable(classifier.backbone)
    if cut not in classifier.splits:  # once per classifier and cut: a recycled classifier keeps its traced trainer
        classifier.splits[cut] = _split(classifier, cut)
    return classifier.splits[cut]


def _split(classifier: Classifier, cut: int | None) -> FrozenSplit | None:
    inputs = keras.Input((classifier.image_size, classifier.image_size, 3), name="image")

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


def fingerprint(classifier: Classifier, frozen: FrozenSplit, extra: str = "") -> str:
    """What the frozen outputs depend on besides the image: decoding code, architecture, cut, weight values and
    the numeric precision. Nothing about the device or the number of replicas: a store filled by one GPU serves
    two, or a CPU run of the same precision."""
    row = classifier.row
    parts = [CACHE_VERSION, decoding_fingerprint(), row.backbone, json.dumps(row.se.model_dump() if row.se else None),
             classifier.preprocessing.mode, str(classifier.image_size), frozen.cut,
             json.dumps([list(s) for s in frozen.crossing_shapes]), keras.__version__, tf.__version__, extra,
             keras.mixed_precision.global_policy().name,
             weights_digest(frozen.extractor)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


def image_keys(frame: pd.DataFrame, suffix: str = "") -> list[str]:
    """One key per row: the image's content hash (its path where there is none) and view."""
    ids = frame["sha256"] if "sha256" in frame else frame["path"]
    views = (frame["view"] if "view" in frame else pd.Series("identity", index=frame.index)).replace("", "identity")
    return [f"{i}:{v}{suffix}" for i, v in zip(ids.astype(str), views.astype(str), strict=True)]


def store_for(classifier: Classifier, frozen: FrozenSplit, extra: str = "", cache_dir: Path | None = None
              ) -> FeatureStore:
    folder = Path(cache_dir or paths.feature_cache_dir()) / f"{classifier.row.backbone}-{fingerprint(classifier, frozen, extra)}"
    return FeatureStore(folder)


def _run(model_fn, dataset: tf.data.Dataset, steps: int, description: str) -> list[np.ndarray]:
    """model_fn over every batch, in order; under a distribution strategy each global batch is sharded over the
    replicas and gathered back in order."""
    plan = compute.current()
    if plan.distributed:
        dataset = plan.strategy.experimental_distribute_dataset(dataset)
    chunks: list[list[np.ndarray]] = []
    for batch in progress.bar(dataset, total=steps, desc=description, unit="batch", leave=False):
        if plan.distributed:
            out = plan.strategy.run(model_fn, args=(batch,))
            out = [plan.strategy.gather(o, axis=0) for o in (out if isinstance(out, list | tuple) else [out])]
        else:
            out = model_fn(batch)
        out = out if isinstance(out, list | tuple) else [out]
        chunks.append([keras.ops.convert_to_numpy(o) for o in out])
    return [np.concatenate([c[i] for c in chunks]) for i in range(len(chunks[0]))] if chunks else []


Unstored = dict[str, tuple[int, list[np.ndarray]]]  # key -> (row, arrays) computed but not stored


def _fill(store: FeatureStore, keys: list[str], frame: pd.DataFrame, compute) -> tuple[bool, Unstored]:
    """Compute the entries `store` lacks (each distinct image once) with `compute(frame) -> arrays`. Returns
    (True when nothing had to be computed, what was computed but could not be stored: the cache is skipped)."""
    missing = set(store.missing(keys))
    if not missing:
        return True, {}
    first = pd.Series(keys, index=frame.index).drop_duplicates()
    rows = first[first.isin(missing)]
    arrays = compute(frame.loc[rows.index])
    if store.write(rows.tolist(), arrays):
        return False, {}
    return False, {key: (i, arrays) for i, key in enumerate(rows.tolist())}


def _assemble(store: FeatureStore, keys: list[str], unstored: Unstored) -> list[np.ndarray] | None:
    """The entries of `keys` in order, from what was just computed where the store could not keep it."""
    stored_keys = [k for k in dict.fromkeys(keys) if k not in unstored]
    stored = store.read(stored_keys) if stored_keys else []
    if stored is None:
        return None
    _, sample = next(iter(unstored.values()))
    out = [np.empty((len(keys), *a.shape[1:]), dtype=a.dtype) for a in sample]
    position = {k: i for i, k in enumerate(stored_keys)}
    for i, key in enumerate(keys):
        row, arrays = unstored[key] if key in unstored else (position[key], stored)
        for target, array in zip(out, arrays, strict=True):
            target[i] = array[row]
    return out


def _read(store: FeatureStore, keys: list[str], frame: pd.DataFrame, compute) -> tuple[list[np.ndarray], bool]:
    hit, unstored = _fill(store, keys, frame, compute)
    arrays = _assemble(store, keys, unstored) if unstored else store.read(keys)
    if arrays is None:  # a damaged chunk was dropped: recompute what it held
        again, more = _fill(store, keys, frame, compute)
        hit, unstored = again and hit, {**unstored, **more}
        arrays = _assemble(store, keys, unstored) if unstored else store.read(keys)
    return arrays, hit


def extract(frozen: FrozenSplit, frame: pd.DataFrame, *, classifier: Classifier, batch_size: int,
            description: str = "features", cache_dir: Path | None = None) -> tuple[list[np.ndarray], bool]:
    """The frozen outputs for every row of `frame`, read from the store or computed once per image and view.

    Returns (arrays, from_cache): from_cache is True when no entry had to be computed.
    """
    forward = tf.function(lambda x: frozen.extractor(x, training=False), reduce_retracing=True)

    def compute(rows: pd.DataFrame) -> list[np.ndarray]:
        # a compiled function: calling the model eagerly batch by batch would be about twice as slow
        return _run(forward, image_dataset(rows, classifier.image_size, batch_size),
                    int(np.ceil(len(rows) / batch_size)), f"{classifier.row.backbone} {description}")

    return _read(store_for(classifier, frozen, cache_dir=cache_dir), image_keys(frame), frame, compute)


def augment_each(augment: keras.Sequential, images: np.ndarray, seeds: list[int]) -> np.ndarray:
    """Each image augmented with its own seed: the result depends on the image and its seed only, never on the
    batch it came in, so an image's augmented views can be stored and shared like its plain features."""
    out = []
    for image, seed in zip(images, seeds, strict=True):
        for i, layer in enumerate(augment.layers):
            layer.generator.state.assign(np.array([seed, i], dtype="int64"))
        out.append(keras.ops.convert_to_numpy(augment(image[None], training=True))[0])
    return np.stack(out) if out else images


def view_seed(key: str, seed: int, k: int) -> int:
    """The augmentation seed of view k of one image (from its key), far from the other views' and images'."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{k}:{key}".encode()).digest()[:6], "big")


def extract_views(frozen: FrozenSplit, frame: pd.DataFrame, *, classifier: Classifier, views: int, seed: int,
                  batch_size: int, cache_dir: Path | None = None) -> tuple[list[list[np.ndarray]], bool]:
    """Frozen outputs of `views` augmented versions of every row: view k of an image applies the row's
    augmentation with a seed of its own (the image's key, the seed, k), so the same settings give the same views,
    whichever split, fold or row asks. Returns (per view, from_cache)."""
    spec = classifier.row.augmentation
    store = store_for(classifier, frozen, f"views:{json.dumps(spec.model_dump())}", cache_dir)
    augment = build_augmentation(spec, seed)
    forward = tf.function(lambda x: frozen.extractor(x, training=False), reduce_retracing=True)
    out, all_cached = [], True
    for k in range(views):
        keys = image_keys(frame, f":view{k}:seed{seed}")

        def compute(rows: pd.DataFrame, k: int = k) -> list[np.ndarray]:
            seeds = [view_seed(key, seed, k) for key in image_keys(rows)]
            batches = [augment_each(augment, images.numpy(), seeds[i * batch_size:(i + 1) * batch_size])
                       for i, images in enumerate(image_dataset(rows, classifier.image_size, batch_size))]
            data = tf.data.Dataset.from_tensor_slices(np.concatenate(batches)).batch(batch_size)
            return _run(forward, data, len(batches), f"{classifier.row.backbone} augmented view {k + 1}/{views}")

        arrays, hit = _read(store, keys, frame, compute)
        all_cached &= hit
        out.append(arrays)
    return out, all_cached
