"""Models: a backbone registry, heads and augmentation built from params, and freeze policies.

A classifier takes RGB images with values in 0..255 and returns class probabilities (P(malignant) for a
binary model):

    image -> [augmentation] -> preprocessing -> backbone [with SE blocks] -> head

Every part is a real, serializable Keras layer (no Lambda), so a saved model loads with
`keras.saving.load_model(path, safe_mode=True)`. All settings arrive as validated `config.Row`s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import keras
from keras import layers

from tlrepro.core import config
from tlrepro.core.config import Augmentation, HeadLayer, Row
from tlrepro.core.errors import UserError
from tlrepro.modeling.backbones import BACKBONES, backbone_spec, build_backbone

# ---------------------------------------------------------------- preprocessing


@keras.saving.register_keras_serializable(package="tlrepro")
class ImageNetPreprocessing(layers.Layer):
    """Maps 0..255 RGB to what a backbone was trained on.

    mode: `tf` (-1..1), `caffe` (BGR minus the ImageNet mean), `torch` (0..1, ImageNet mean/std),
    `unit` (0..1, the "rescale 1/255" several papers use) or `raw` (unchanged: the backbone
    preprocesses inside itself, as EfficientNetV2 and MobileNetV3 do).
    """

    MODES = ("tf", "caffe", "torch", "unit", "raw")
    _MEAN_RGB = (123.68, 116.779, 103.939)
    _TORCH_MEAN_RGB = (0.485, 0.456, 0.406)
    _TORCH_STD_RGB = (0.229, 0.224, 0.225)

    def __init__(self, mode: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, not {mode!r}")
        self.mode = mode

    def call(self, x):
        x = keras.ops.cast(x, "float32")
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "unit":
            return x / 255.0
        if self.mode == "caffe":
            bgr = keras.ops.flip(x, axis=-1)
            return bgr - keras.ops.convert_to_tensor(self._MEAN_RGB[::-1], dtype="float32")
        if self.mode == "torch":
            mean = keras.ops.convert_to_tensor(self._TORCH_MEAN_RGB, dtype="float32")
            std = keras.ops.convert_to_tensor(self._TORCH_STD_RGB, dtype="float32")
            return (x / 255.0 - mean) / std
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package="tlrepro")
class RandomShear(layers.RandomShear):
    """Keras's RandomShear, saved so that it loads again: Keras 3.15 writes the expanded range (-f, f) into its
    config, which its own constructor then rejects; this keeps the factors as given."""

    def __init__(self, x_factor: float = 0.0, y_factor: float = 0.0, **kwargs: Any) -> None:
        super().__init__(x_factor=x_factor, y_factor=y_factor, **kwargs)
        self._given = (x_factor, y_factor)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "x_factor": self._given[0], "y_factor": self._given[1]}


# ---------------------------------------------------------------- heads and augmentation

_POOLS = {"avg": layers.GlobalAveragePooling2D, "max": layers.GlobalMaxPooling2D, "flatten": layers.Flatten}


def build_head(spec: Sequence[HeadLayer], name: str = "head") -> keras.Sequential:
    """A head from its params spec: a list of one-key layers, e.g.
    [{pool: avg}, {batch_norm: true}, {dropout: 0.4}, {dense: 1, activation: sigmoid}]."""
    built: list[layers.Layer] = []
    for item in spec:
        if item.pool is not None:
            built.append(_POOLS[item.pool]())
        elif item.batch_norm:
            built.append(layers.BatchNormalization())
        elif item.dropout is not None:
            built.append(layers.Dropout(item.dropout))
        else:
            built.append(layers.Dense(item.dense, activation=item.activation))
    if isinstance(built[-1], layers.Dense) and keras.mixed_precision.global_policy().compute_dtype != "float32":
        # under mixed precision the probabilities stay float32, as Keras advises for the output layer
        last = spec[-1]
        built[-1] = layers.Dense(last.dense, activation=last.activation, dtype="float32")
    return keras.Sequential(built, name=name)


def build_augmentation(spec: Augmentation | None, seed: int) -> keras.Sequential | None:
    """Keras random layers (active in training only), each with its own seed stream: layers seeded alike
    would draw the same numbers (a rotation and a zoom moving together)."""
    if spec is None:
        return None
    fill = spec.fill_mode
    makers = {
        "brightness": lambda v, s: layers.RandomBrightness(v, value_range=(0, 255), seed=s),
        "flip": lambda v, s: layers.RandomFlip(v, seed=s),
        "rotation": lambda v, s: layers.RandomRotation(v, fill_mode=fill, seed=s),
        "shear": lambda v, s: RandomShear(v, v, fill_mode=fill, seed=s),
        "zoom": lambda v, s: layers.RandomZoom(v, fill_mode=fill, seed=s),
        "translation": lambda v, s: layers.RandomTranslation(v, v, fill_mode=fill, seed=s),
    }
    built = [makers[name](value, seed_stream(seed, i)) for i, (name, value) in enumerate(spec.transforms())]
    return keras.Sequential(built, name="augmentation")


def seed_stream(seed: int, i: int) -> int:
    """The seed of the i-th random layer: far apart, so streams never coincide."""
    return int(seed) * 1000 + 7919 * (i + 1)


# ---------------------------------------------------------------- classifier


@dataclass
class Classifier:
    """The full model plus handles on its parts (they share layers with `model`)."""

    model: keras.Model
    backbone: keras.Model
    preprocessing: ImageNetPreprocessing
    head: keras.Sequential
    augmentation: keras.Sequential | None
    row: Row
    classes: tuple[str, ...]
    # frozen_cache.split_frozen's splits by cut: the same trainer (and its traced functions) for every fit
    splits: dict[int | None, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def image_size(self) -> int:
        return int(self.model.input_shape[1])


def build_classifier(row: Row, *, classes: Sequence[str], seed: int,
                     backbone: keras.Model | None = None) -> Classifier:
    """image (0..255) -> [augmentation] -> preprocessing -> backbone -> head, from a resolved row.

    `backbone` overrides the row's (e.g. one trained on another dataset: `init_from`).
    """
    if row.output_units != (1 if len(classes) == 2 else len(classes)):
        raise UserError(f"row `{row.name}`: the head's last dense layer has {row.output_units} units, but the "
                        f"model has {len(classes)} classes ({', '.join(classes)}): use 1 (sigmoid) for two "
                        f"classes, else one unit per class (softmax).")
    keras.utils.set_random_seed(seed)  # the head's initial weights depend on the seed alone
    if backbone is None:
        backbone = build_backbone(row.backbone, row.image_size, row.weights)
        if row.se is not None:
            from tlrepro.modeling.blocks import insert_squeeze_excitation

            backbone = insert_squeeze_excitation(backbone, reduction=row.se.reduction,
                                                 dense_layers=row.se.dense_layers, transitions=row.se.transitions)
    mode = backbone_spec(row.backbone).preprocessing if row.preprocessing == "native" else row.preprocessing
    prep = ImageNetPreprocessing(mode, name="preprocessing")
    aug = build_augmentation(row.augmentation, seed)
    top = build_head(row.head)
    inputs = keras.Input((row.image_size, row.image_size, 3), name="image")
    x = aug(inputs) if aug is not None else inputs
    outputs = top(backbone(prep(x)))
    model = keras.Model(inputs, outputs, name=f"{row.backbone}_classifier")
    return Classifier(model, backbone, prep, top, aug, row, tuple(classes))


def parts_of(model: keras.Model) -> tuple[keras.Model, ImageNetPreprocessing, keras.Sequential, keras.Sequential | None]:
    """(backbone, preprocessing, head, augmentation) of a model built by build_classifier (or loaded)."""
    by_name = {layer.name: layer for layer in model.layers}
    backbone = next(layer for layer in model.layers if isinstance(layer, keras.Model)
                    and layer.name not in ("head", "augmentation"))
    return backbone, by_name["preprocessing"], by_name["head"], by_name.get("augmentation")


def classifier_from_model(model: keras.Model, row: Row, classes: Sequence[str]) -> Classifier:
    backbone, prep, head, aug = parts_of(model)
    return Classifier(model, backbone, prep, head, aug, row, tuple(classes))


# ---------------------------------------------------------------- freeze policies


def set_trainable(classifier: Classifier, trainable_layers: int | str, trainable_from: str | None = None) -> None:
    """Freeze policy for the backbone: 0 (frozen), N (its last N layers trainable), 'all', or every layer from
    the one named `trainable_from` on (a block boundary, whatever blocks were inserted before it).

    Layers in the frozen part get `trainable = False`, which in Keras 3 also keeps BatchNormalization
    there in inference mode. The head stays trainable. Recompile after calling this.
    """
    backbone_layers = classifier.backbone.layers
    if trainable_from is not None:
        names = [layer.name for layer in backbone_layers]
        if trainable_from not in names:
            close = [n for n in names if n.startswith(trainable_from.split("_")[0])][:5] or names[-5:]
            raise UserError(f"row `{classifier.row.name}`: trainable_from `{trainable_from}` is not a layer of "
                            f"{classifier.backbone.name} (e.g. {', '.join(close)}).")
        cut = names.index(trainable_from)
    else:
        cut = 0 if trainable_layers == "all" else max(len(backbone_layers) - int(trainable_layers), 0)
    classifier.backbone.trainable = True
    for i, layer in enumerate(backbone_layers):
        layer.trainable = i >= cut
    classifier.head.trainable = True


def trainable_count(model: keras.Model) -> int:
    return int(sum(keras.ops.size(w) for w in model.trainable_weights))


def parameter_count(model: keras.Model) -> int:
    return int(sum(keras.ops.size(w) for w in model.weights))


def layer_table(model: keras.Model, names: Sequence[str] | None = None) -> Any:
    """Name, type, output shape, trainable and parameter count of a model's layers (or only the named ones)."""
    import pandas as pd

    rows = []
    for layer in model.layers:
        if names is not None and layer.name not in names:
            continue
        rows.append({"layer": layer.name, "type": type(layer).__name__,
                     "output shape": str(tuple(layer.output.shape)) if hasattr(layer, "output") else "—",
                     "trainable": bool(layer.trainable), "parameters": parameter_count(layer)})
    return pd.DataFrame(rows)


def check_registry() -> None:
    """The schema's backbone names and this registry agree (called by the tests)."""
    names = set(config.BackboneName.__args__)
    assert names == set(BACKBONES), (names ^ set(BACKBONES))
