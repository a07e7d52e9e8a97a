"""Cached frozen computation: run the frozen part of a network once per split, never once per epoch.

A classifier is cut where its frozen part ends:

- backbone frozen: the cut lies after the backbone, past any weightless deterministic head layers
  (pooling, flatten), so the cache holds pooled features;
- last N backbone layers trainable: the cut lies inside the backbone, before its first trainable
  layer; every tensor that crosses the cut (skip connections included) is cached.

`extractor` maps images to the crossing tensors and `trainer` maps those to the output. Both share
their layers with the classifier, so training `trainer` trains the classifier itself.

Caching is only valid when nothing random comes before the cut: with augmentation in the model,
`split_frozen` returns None and training runs the plain path.
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
from tqdm import tqdm

from tlrepro import io, paths
from tlrepro.models import Classifier
from tlrepro.tfdata import image_dataset

# Bump when the way frozen outputs are computed changes, so older cache entries are never reused.
CACHE_VERSION = "2"

# Layers that hold no weights and act the same in training and inference: safe to fold into the cache.
_FOLDABLE = (keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D, keras.layers.Flatten)


@dataclass
class FrozenSplit:
    extractor: keras.Model  # image -> crossing tensors (never trained)
    trainer: keras.Model  # crossing tensors -> P(malignant) (holds every trainable layer)
    cut: str  # where the cut lies, for cache keys and reports
    crossing_shapes: list[tuple] = field(default_factory=list)


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
    serves validation and prediction of a model that augments while it trains.
    """
    if classifier.augmentation is not None and not inference:
        return None
    image_size = classifier.model.input_shape[1]
    inputs = keras.Input((image_size, image_size, 3), name="image")
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
        where = f"after backbone + {folded} head layer(s)"
        return FrozenSplit(extractor, trainer, where, [tuple(x.shape[1:])])

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
    where = f"before backbone layer {cut} ({backbone.layers[cut].name})"
    return FrozenSplit(extractor, trainer, where, shapes)


# ---------------------------------------------------------------- the cache


def cache_key(frame: pd.DataFrame, classifier: Classifier, frozen: FrozenSplit, image_size: int) -> str:
    """Content key: which images (their bytes' hashes, in order), backbone, weights, preprocessing, size, cut."""
    h = hashlib.sha256()
    column = "sha256" if "sha256" in frame.columns else "path"
    h.update("\n".join(frame[column].astype(str)).encode())
    weights = classifier.weights
    if weights == "imagenet":
        from tlrepro.models import resolve_weights

        weights = f"imagenet:{resolve_weights(classifier.backbone_name, 'imagenet', image_size)}"
    parts = [
        CACHE_VERSION, classifier.backbone_name, weights, classifier.preprocessing.mode, str(image_size), frozen.cut,
        json.dumps([list(s) for s in frozen.crossing_shapes]), keras.__version__, tf.__version__,
    ]
    if classifier.weights == "random":  # random weights are a function of the seed that built them
        parts.append(_weights_digest(classifier.backbone))
    h.update("|".join(parts).encode())
    return h.hexdigest()[:24]


def _weights_digest(model: keras.Model) -> str:
    h = hashlib.sha256()
    for w in model.weights[:4]:
        h.update(np.ascontiguousarray(keras.ops.convert_to_numpy(w)).tobytes())
    return h.hexdigest()[:16]


def extract(
    frozen: FrozenSplit,
    frame: pd.DataFrame,
    *,
    classifier: Classifier,
    batch_size: int,
    description: str = "features",
    cache_dir: Path | None = None,
) -> tuple[list[np.ndarray], bool]:
    """The frozen outputs for every image of `frame`, from the cache or computed once and cached.

    Returns (arrays, from_cache).
    """
    image_size = classifier.model.input_shape[1]
    key = cache_key(frame, classifier, frozen, image_size)
    cache_dir = Path(cache_dir or paths.feature_cache_dir())
    target = cache_dir / f"{classifier.backbone_name}-{key}.npz"
    if target.is_file():
        with np.load(target) as stored:
            return [stored[f"x{i}"] for i in range(len(stored.files))], True

    dataset = image_dataset(frame, image_size, batch_size, with_labels=False)
    steps = int(np.ceil(len(frame) / batch_size))
    # a compiled function: calling the model eagerly batch by batch would be about twice as slow
    forward = tf.function(lambda x: frozen.extractor(x, training=False), reduce_retracing=True)
    chunks: list[list[np.ndarray]] = []
    for batch in tqdm(dataset, total=steps, desc=description, unit="batch", leave=False, disable=None):
        out = forward(batch)
        out = out if isinstance(out, list | tuple) else [out]
        chunks.append([keras.ops.convert_to_numpy(o) for o in out])
    arrays = [np.concatenate([c[i] for c in chunks]) for i in range(len(chunks[0]))] if chunks else []
    with io.atomic_path(target) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **{f"x{i}": a for i, a in enumerate(arrays)})
    return arrays, False
