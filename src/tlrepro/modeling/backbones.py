"""The backbone registry: how to build each Keras application without its top, which ImageNet weights file it
uses and what preprocessing those weights expect, and where the weights come from (Keras's download or
$IMAGENET_WEIGHTS_DIR).

Importing this module does not import TensorFlow (builders are resolved when a backbone is built), so commands
that only need the registry, such as `tlrepro offline-flags`, start in a second.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tlrepro.core import fileio
from tlrepro.core.errors import UserError


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one Keras application without its top, and where its ImageNet weights live."""

    builder: str | Callable[..., Any]  # "keras.applications.X", or a function of this module
    preprocessing: str  # ImageNetPreprocessing mode the weights expect
    weights_file: Callable[[int], str] | None  # Keras's own file name, given the image size; None: no ImageNet weights
    extra_kwargs: tuple[tuple[str, Any], ...] = ()


def _mobilenet_v2_file(size: int) -> str:
    rows = size if size in (96, 128, 160, 192, 224) else 224
    return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{rows}_no_top.h5"


def tiny_cnn(*, include_top: bool = False, weights: str | None = None, input_shape: tuple = (32, 32, 3)) -> Any:
    """Three strided conv + batch-norm blocks (about 6,000 parameters): a smoke-test backbone, seconds to train."""
    import keras
    from keras import layers

    inputs = keras.Input(input_shape, name="input_layer")
    x = inputs
    for i, filters in enumerate((8, 16, 32), start=1):
        x = layers.Conv2D(filters, 3, strides=2, padding="same", use_bias=False, name=f"block{i}_conv")(x)
        x = layers.BatchNormalization(name=f"block{i}_bn")(x)
        x = layers.ReLU(name=f"block{i}_relu")(x)
    return keras.Model(inputs, x, name="tiny_cnn")


def tiny_densenet(*, include_top: bool = False, weights: str | None = None,
                  input_shape: tuple = (32, 32, 3)) -> Any:
    """Keras's own DenseNet with one dense layer per block (about 200,000 parameters, 49 layers): the layer names
    of DenseNet121 (conv2_block1_2_conv, pool2_pool, conv5_block1_0_bn, ...), so squeeze-and-excitation
    insertion and `trainable_from` work on it as on the real one, in seconds. Smoke tests only."""
    from keras.src.applications.densenet import DenseNet  # the builder behind DenseNet121/169/201

    return DenseNet([1, 1, 1, 1], include_top=False, weights=None, input_shape=input_shape, name="tiny_densenet")


BACKBONES: dict[str, BackboneSpec] = {
    "MobileNetV2": BackboneSpec("keras.applications.MobileNetV2", "tf", _mobilenet_v2_file),
    "MobileNetV3Large": BackboneSpec(
        "keras.applications.MobileNetV3Large", "raw",
        lambda _: "weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5", (("include_preprocessing", True),),
    ),
    "MobileNetV3Small": BackboneSpec(
        "keras.applications.MobileNetV3Small", "raw",
        lambda _: "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5", (("include_preprocessing", True),),
    ),
    "ResNet50V2": BackboneSpec(
        "keras.applications.ResNet50V2", "tf", lambda _: "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5"
    ),
    "EfficientNetV2B0": BackboneSpec(
        "keras.applications.EfficientNetV2B0", "raw", lambda _: "efficientnetv2-b0_notop.h5",
        (("include_preprocessing", True),),
    ),
    "VGG16": BackboneSpec(
        "keras.applications.VGG16", "caffe", lambda _: "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    ),
    "DenseNet121": BackboneSpec(
        "keras.applications.DenseNet121", "torch", lambda _: "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5"
    ),
    # smoke-test backbones: random weights only, seconds per run (tests, and quick checks of a new setting)
    "TinyCNN": BackboneSpec(tiny_cnn, "unit", None),
    "TinyDenseNet": BackboneSpec(tiny_densenet, "torch", None),
}


def backbone_spec(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise UserError(f"Unknown backbone `{name}`: choose one of {', '.join(BACKBONES)}.")
    return BACKBONES[name]


def weights_location(name: str, image_size: int) -> str:
    """What to pass as `weights=` for ImageNet weights: a local file, or Keras's 'imagenet' download.

    IMAGENET_WEIGHTS_DIR, when set, must hold the file under Keras's own name. It is loaded by path,
    never through Keras's cache, whose hash check rejects re-saved copies.
    """
    spec = backbone_spec(name)
    if spec.weights_file is None:
        raise UserError(f"{name} is a smoke-test backbone with no ImageNet weights: set the row's `weights: random`.")
    file_name = spec.weights_file(image_size)
    if folder := os.environ.get("IMAGENET_WEIGHTS_DIR"):
        path = Path(folder) / file_name
        if not path.is_file():
            raise UserError(
                f"IMAGENET_WEIGHTS_DIR={folder} has no {file_name} (ImageNet weights for {name}). "
                "Put the file there, or unset IMAGENET_WEIGHTS_DIR so Keras downloads it, "
                "or set this row's `weights: random` in params.yaml (reports then say so)."
            )
        return str(path)
    return "imagenet"


def weights_provenance(name: str, weights: str, image_size: int) -> dict[str, str]:
    """Where a backbone's initial weights came from, with the file's sha256 when there is a file."""
    if weights == "random":
        return {"source": "random", "note": "random initialisation (Keras defaults, seeded)"}
    location = weights_location(name, image_size)
    file_name = backbone_spec(name).weights_file(image_size)
    keras_cache = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"
    path = Path(location) if location != "imagenet" else keras_cache / file_name
    digest = fileio.file_sha256(path) if path.is_file() else "unknown"
    return {"source": "imagenet", "file": file_name, "sha256": digest,
            "from": "IMAGENET_WEIGHTS_DIR" if location != "imagenet" else "Keras download"}


def build_backbone(name: str, image_size: int, weights: str) -> Any:
    """The backbone (a keras.Model) without its top, with ImageNet weights or (only when asked) random ones."""
    spec = backbone_spec(name)
    source = None if weights == "random" else weights_location(name, image_size)
    builder = spec.builder
    if isinstance(builder, str):
        module, _, attr = builder.rpartition(".")
        builder = getattr(importlib.import_module(module), attr)
    try:
        return builder(include_top=False, weights=source, input_shape=(image_size, image_size, 3),
                            **dict(spec.extra_kwargs))
    except Exception as exc:  # Keras raises plain Exception on a failed download, h5py OSError on a bad file
        detail = " ".join(str(exc).split())[:160]
        if source not in (None, "imagenet"):
            raise UserError(f"Cannot load ImageNet weights for {name} from {source} ({type(exc).__name__}: "
                            f"{detail}): the file is damaged or not {name}'s; replace it, or set the row's "
                            f"`weights: random`.") from None
        if source is None:
            raise
        raise UserError(
            f"Could not get ImageNet weights for {name} ({type(exc).__name__}: {detail}). Either let Keras "
            f"download them (needs the internet), or set IMAGENET_WEIGHTS_DIR to a folder holding "
            f"{spec.weights_file(image_size)}, or set this row's `weights: random` in params.yaml."
        ) from None
