"""Models: a backbone registry, heads built from a spec, and freeze policies.

A classifier takes RGB images with values in 0..255 and returns P(malignant):

    image -> [augmentation] -> preprocessing -> backbone -> head

Every part is a real, serializable Keras layer (no Lambda), so a saved model loads with
`keras.saving.load_model(path, safe_mode=True)`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
from keras import layers

from tlrepro.errors import UserError

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


# ---------------------------------------------------------------- backbones


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one Keras application without its top, and where its ImageNet weights live."""

    builder: Callable[..., keras.Model]
    preprocessing: str  # ImageNetPreprocessing mode the weights expect
    weights_file: Callable[[int], str]  # Keras's own file name, given the image size
    extra_kwargs: tuple[tuple[str, Any], ...] = ()


def _mobilenet_v2_file(size: int) -> str:
    rows = size if size in (96, 128, 160, 192, 224) else 224
    return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{rows}_no_top.h5"


BACKBONES: dict[str, BackboneSpec] = {
    "MobileNetV2": BackboneSpec(keras.applications.MobileNetV2, "tf", _mobilenet_v2_file),
    "MobileNetV3Large": BackboneSpec(
        keras.applications.MobileNetV3Large, "raw",
        lambda _: "weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5",
        (("include_preprocessing", True),),
    ),
    "MobileNetV3Small": BackboneSpec(
        keras.applications.MobileNetV3Small, "raw",
        lambda _: "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",
        (("include_preprocessing", True),),
    ),
    "ResNet50V2": BackboneSpec(
        keras.applications.ResNet50V2, "tf", lambda _: "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5"
    ),
    "EfficientNetV2B0": BackboneSpec(
        keras.applications.EfficientNetV2B0, "raw", lambda _: "efficientnetv2-b0_notop.h5",
        (("include_preprocessing", True),),
    ),
    "VGG16": BackboneSpec(
        keras.applications.VGG16, "caffe", lambda _: "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    ),
    "DenseNet121": BackboneSpec(
        keras.applications.DenseNet121, "torch", lambda _: "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5"
    ),
}

WEIGHT_CHOICES = ("imagenet", "random")


def backbone_spec(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise UserError(f"Unknown backbone `{name}`: choose one of {', '.join(BACKBONES)}.")
    return BACKBONES[name]


def resolve_weights(name: str, weights: str, image_size: int) -> str | None:
    """What to pass as `weights=`: a local file, Keras's 'imagenet' download, or None (random).

    IMAGENET_WEIGHTS_DIR, when set, must hold the file under Keras's own name. It is loaded by path,
    never through Keras's cache, whose hash check rejects re-saved copies.
    """
    if weights not in WEIGHT_CHOICES:
        raise UserError(f"weights for {name} must be one of {WEIGHT_CHOICES}, not {weights!r} (params.yaml).")
    if weights == "random":
        return None
    file_name = backbone_spec(name).weights_file(image_size)
    if folder := os.environ.get("IMAGENET_WEIGHTS_DIR"):
        path = Path(folder) / file_name
        if not path.is_file():
            raise UserError(
                f"IMAGENET_WEIGHTS_DIR={folder} has no {file_name} (ImageNet weights for {name}). "
                "Put the file there, or unset IMAGENET_WEIGHTS_DIR so Keras downloads it, "
                f"or set this backbone's weights to `random` in params.yaml (reports then say so)."
            )
        return str(path)
    return "imagenet"


def build_backbone(name: str, image_size: int, weights: str) -> keras.Model:
    """The backbone without its top, with ImageNet weights or (only when asked) random ones."""
    spec = backbone_spec(name)
    source = resolve_weights(name, weights, image_size)
    try:
        return spec.builder(
            include_top=False,
            weights=source,
            input_shape=(image_size, image_size, 3),
            **dict(spec.extra_kwargs),
        )
    except Exception as exc:  # Keras raises plain Exception on a failed download
        if source != "imagenet":
            raise
        raise UserError(
            f"Could not get ImageNet weights for {name} ({type(exc).__name__}: {str(exc)[:200]}). "
            f"Either let Keras download them (needs the internet), or set IMAGENET_WEIGHTS_DIR to a folder "
            f"holding {spec.weights_file(image_size)}, or set this backbone's weights to `random` in params.yaml."
        ) from None


# ---------------------------------------------------------------- heads

HEAD_KEYS = ("pool", "batch_norm", "dropout", "dense")


def build_head(spec: list[dict[str, Any]], name: str = "head") -> keras.Sequential:
    """A head from its params.yaml spec: a list of one-key layers, e.g.

    [{pool: avg}, {batch_norm: true}, {dense: 128, activation: relu}, {dropout: 0.3}, {dense: 1, activation: sigmoid}]
    """
    built: list[layers.Layer] = []
    for i, item in enumerate(spec):
        kind = next((k for k in HEAD_KEYS if k in item), None)
        if kind is None:
            raise UserError(f"head layer {i} ({item}) needs one of {HEAD_KEYS} (params.yaml).")
        if kind == "pool":
            pool = {"avg": layers.GlobalAveragePooling2D, "max": layers.GlobalMaxPooling2D, "flatten": layers.Flatten}
            if item["pool"] not in pool:
                raise UserError(f"head layer {i}: pool must be one of {list(pool)}, not {item['pool']!r}.")
            built.append(pool[item["pool"]]())
        elif kind == "batch_norm":
            built.append(layers.BatchNormalization())
        elif kind == "dropout":
            built.append(layers.Dropout(float(item["dropout"])))
        else:
            built.append(layers.Dense(int(item["dense"]), activation=item.get("activation")))
    return keras.Sequential(built, name=name)


# ---------------------------------------------------------------- augmentation


def build_augmentation(spec: dict[str, Any] | None, seed: int) -> keras.Sequential | None:
    """Keras preprocessing layers (active in training only) from a spec such as
    {flip: horizontal_and_vertical, rotation: 0.5, zoom: 0.2, translation: 0.1, brightness: 0.2, shear: 0.2}.
    """
    if not spec:
        return None
    makers = {
        "flip": lambda v: layers.RandomFlip(v, seed=seed),
        "rotation": lambda v: layers.RandomRotation(v, fill_mode="nearest", seed=seed),
        "zoom": lambda v: layers.RandomZoom(v, fill_mode="nearest", seed=seed),
        "translation": lambda v: layers.RandomTranslation(v, v, fill_mode="nearest", seed=seed),
        "shear": lambda v: layers.RandomShear(v, v, fill_mode="nearest", seed=seed),
        "brightness": lambda v: layers.RandomBrightness(v, value_range=(0, 255), seed=seed),
    }
    unknown = set(spec) - set(makers)
    if unknown:
        raise UserError(f"augmentation has unknown keys {sorted(unknown)}; known: {sorted(makers)}.")
    return keras.Sequential([makers[k](v) for k, v in spec.items()], name="augmentation")


# ---------------------------------------------------------------- classifier


@dataclass
class Classifier:
    """The full model plus handles on its parts (they share layers with `model`)."""

    model: keras.Model
    backbone: keras.Model
    preprocessing: ImageNetPreprocessing
    head: keras.Sequential
    augmentation: keras.Sequential | None
    backbone_name: str
    weights: str


def build_classifier(
    backbone: str,
    *,
    image_size: int,
    weights: str,
    head: list[dict[str, Any]],
    preprocessing: str = "native",
    augmentation: dict[str, Any] | None = None,
    seed: int = 42,
) -> Classifier:
    """image (0..255) -> [augmentation] -> preprocessing -> backbone -> head.

    preprocessing: `native` (what the backbone's weights expect) or any ImageNetPreprocessing mode.
    """
    keras.utils.set_random_seed(seed)  # the head's initial weights depend on the seed alone
    base = build_backbone(backbone, image_size, weights)
    mode = backbone_spec(backbone).preprocessing if preprocessing == "native" else preprocessing
    if mode not in ImageNetPreprocessing.MODES:
        raise UserError(f"preprocessing must be `native` or one of {ImageNetPreprocessing.MODES}, not {mode!r}.")
    prep = ImageNetPreprocessing(mode, name="preprocessing")
    aug = build_augmentation(augmentation, seed)
    top = build_head(head)

    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = aug(inputs) if aug is not None else inputs
    outputs = top(base(prep(x)))
    model = keras.Model(inputs, outputs, name=f"{backbone}_classifier")
    return Classifier(model, base, prep, top, aug, backbone, weights)


# ---------------------------------------------------------------- freeze policies


def set_trainable(classifier: Classifier, trainable_layers: int | str) -> None:
    """Freeze policy for the backbone: 0 (frozen), N (its last N layers trainable) or 'all'.

    Layers in the frozen part get `trainable = False`, which in Keras 3 also keeps BatchNormalization
    there in inference mode. The head stays trainable. Recompile after calling this.
    """
    backbone_layers = classifier.backbone.layers
    if trainable_layers == "all":
        cut = 0
    else:
        try:
            n = int(trainable_layers)
        except (TypeError, ValueError):
            raise UserError(f"trainable_layers must be 0, a number of layers, or 'all', not {trainable_layers!r}.") from None
        if n < 0:
            raise UserError(f"trainable_layers must not be negative ({n}).")
        cut = max(len(backbone_layers) - n, 0)
    classifier.backbone.trainable = True
    for i, layer in enumerate(backbone_layers):
        layer.trainable = i >= cut
    classifier.head.trainable = True


def trainable_count(model: keras.Model) -> int:
    return int(sum(keras.ops.size(w) for w in model.trainable_weights))
