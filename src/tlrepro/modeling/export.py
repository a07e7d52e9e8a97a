"""Exporting a saved model (models/<study>/<row>.keras + card) to the engines people deploy on.

    tlrepro export sarker2025/MobileNetV2 --format saved_model            # exports/sarker2025/MobileNetV2/1/
    tlrepro export sarker2025/MobileNetV2 --format tflite --quantize dynamic   # ...MobileNetV2.dynamic.tflite

SavedModel (TensorFlow Serving, or anything that loads a SavedModel): a version folder `<out>/1/` with two
signatures, each answering `{"probabilities": (N, classes)}` in the card's class order (a binary model's
P(benign), P(malignant)):

- `serving_default`: `image_bytes`, a batch of encoded image files (JPEG, PNG, GIF, BMP). Decoding, resizing
  and preprocessing happen inside, as our own decode path does them (`tlrepro.data.images.decode_image`):
  RGB, transparency flattened on white, a bilinear resize to the card's image_size that widens its filter
  when shrinking (PIL's BILINEAR; TensorFlow's `antialias=True`), rounded to whole 0..255 values. JPEG is
  decoded with libjpeg's accurate integer DCT, what PIL uses (TensorFlow's default, the fast one, differs
  by up to 17 grey levels). The result is within 1 grey level of ours per pixel (measured on mirror skin
  JPEGs and BreakHis PNGs; the exact JPEGs at their own size are identical). Not decoded inside: TIFF, and
  16-bit images are reduced to 8 bits by truncation rather than our rounding.
- `pixels`: float32 (N, S, S, 3), RGB values 0..255 already decoded and resized: the Keras model's own input,
  so its probabilities equal the Keras model's (preprocessing is inside the model).

TFLite (phones): the `pixels` signature converted, optionally quantized (`dynamic`: int8 weights;
`float16`: float16 weights). TFLite has no image decoding among its built-in operations, so the app decodes
and resizes the image (as described above) and passes float32 RGB 0..255; preprocessing is inside.

The card goes with both: `<out>/1/card.json` in the SavedModel folder, `<name>.card.json` beside the
.tflite file; its `export` section says what was exported, how it takes its input and the file's sha256.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from tlrepro.core import fileio, paths
from tlrepro.core.errors import UserError

FORMATS = ("saved_model", "tflite")
QUANTIZATIONS = ("dynamic", "float16")
SAVED_MODEL_VERSION = "1"  # TensorFlow Serving serves the highest numbered folder under its model base path


def decode_for_model(data: Any, size: int) -> Any:
    """One encoded image (a scalar string tensor) -> float32 (size, size, 3), RGB values 0..255 as whole numbers,
    decoded and resized as `tlrepro.data.images.decode_image` does (see the module docstring)."""
    import tensorflow as tf

    def jpeg() -> Any:
        return tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE")

    def png() -> Any:  # transparency flattened on white, as data.images.to_rgb does
        rgba = tf.cast(tf.io.decode_png(data, channels=4), tf.float32)
        alpha = rgba[..., 3:] / 255.0
        return tf.cast(tf.round(rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)), tf.uint8)

    def other() -> Any:
        return tf.io.decode_image(data, channels=3, expand_animations=False)

    is_png = tf.equal(tf.strings.substr(data, 0, 8), b"\x89PNG\r\n\x1a\n")
    image = tf.cond(tf.io.is_jpeg(data), jpeg, lambda: tf.cond(is_png, png, other))
    image = tf.ensure_shape(image, (None, None, 3))
    resized = tf.image.resize(tf.cast(image, tf.float32), (size, size), method="bilinear", antialias=True)
    return tf.clip_by_value(tf.round(resized), 0.0, 255.0)


def _probabilities(model: Any, pixels: Any) -> dict[str, Any]:
    import tensorflow as tf

    out = model(pixels, training=False)
    return {"probabilities": tf.concat([1.0 - out, out], axis=-1) if out.shape[-1] == 1 else out}


def write_saved_model(model: Any, size: int, target: Path) -> None:
    """The SavedModel folder `target`: signatures `serving_default` (image_bytes) and `pixels`.

    A plain tf.Module that tracks the model's tf.Variables themselves, the ones the traced signatures capture,
    so each is stored once. Keras's ExportArchive (and model.export) stores every variable twice on the
    TensorFlow backend (keras-team/keras#23553): twice the files, twice the memory in TensorFlow Serving."""
    import tensorflow as tf

    module = tf.Module()
    module.model_variables = [variable.value for variable in model.variables]

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def from_bytes(image_bytes: Any) -> dict[str, Any]:
        pixels = tf.map_fn(lambda d: decode_for_model(d, size), image_bytes,
                           fn_output_signature=tf.TensorSpec((size, size, 3), tf.float32))
        return _probabilities(model, pixels)

    @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32, name="pixels")])
    def from_pixels(pixels: Any) -> dict[str, Any]:
        return _probabilities(model, pixels)

    module.serving_default, module.pixels = from_bytes, from_pixels
    tf.saved_model.save(module, str(target), signatures={"serving_default": from_bytes.get_concrete_function(),
                                                         "pixels": from_pixels.get_concrete_function()})


def tflite_bytes(saved_model: Path, quantize: str | None) -> bytes:
    """The `pixels` signature of a SavedModel as a TFLite flat buffer, optionally quantized."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model), signature_keys=["pixels"])
    if quantize is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]  # alone: dynamic-range (int8 weights)
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    return converter.convert()


def export_card(card: dict[str, Any], fmt: str, quantize: str | None, artefact: Path) -> dict[str, Any]:
    size = int(card["image_size"])
    signature = ({"serving_default": {"image_bytes": "string[N]: encoded JPEG/PNG/GIF/BMP files"},
                  "pixels": {"pixels": f"float32[N, {size}, {size}, 3]: RGB 0..255, resized"}}
                 if fmt == "saved_model" else
                 {"pixels": {"pixels": f"float32[1, {size}, {size}, 3]: RGB 0..255, decoded and resized by the app "
                                       f"(bilinear, widening the filter when shrinking)"}})
    return {**card, "export": {
        "format": fmt, "quantize": quantize, "file": artefact.name, "sha256": fileio.file_sha256(artefact),
        "source_model": card.get("model_file"), "source_sha256": card.get("model_sha256"),
        "signatures": signature, "output": {"probabilities": f"float32[N, {len(card['classes'])}] in the order of "
                                                             f"`classes`"},
        "preprocessing": "inside the model (the card's `preprocessing`)"}}


def default_out(card: dict[str, Any], model_path: Path, fmt: str, quantize: str | None) -> Path:
    name = str(card.get("name") or model_path.stem)
    base = paths.PROJECT_ROOT / "exports" / name
    return base if fmt == "saved_model" else base.with_name(f"{base.name}{'.' + quantize if quantize else ''}.tflite")


def export(model: str | Path, fmt: str, *, quantize: str | None = None, out: str | Path | None = None) -> Path:
    """Export a saved model with its card; returns the SavedModel version folder or the .tflite file."""
    from tlrepro.modeling import cards

    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, not `{fmt}`.")
    if quantize is not None and (fmt != "tflite" or quantize not in QUANTIZATIONS):
        raise UserError(f"--quantize {quantize} is for --format tflite, with dynamic or float16: a SavedModel "
                        f"keeps the model's float32 weights.")
    path = cards.resolve(str(model))
    keras_model, card = cards.load(path)
    size = int(card["image_size"])
    target = Path(out) if out is not None else default_out(card, path, fmt, quantize)
    if fmt == "saved_model":
        version = target / SAVED_MODEL_VERSION
        with fileio.atomic_dir(version) as tmp:
            write_saved_model(keras_model, size, tmp)
            (tmp / "card.json").write_text(json.dumps(export_card(card, fmt, None, tmp / "saved_model.pb"),
                                                      indent=2, sort_keys=True) + "\n")
        return version
    if target.suffix != ".tflite":
        raise UserError(f"--out {target} must end with .tflite for --format tflite.")
    with tempfile.TemporaryDirectory(prefix="tlrepro-export-") as scratch:
        write_saved_model(keras_model, size, Path(scratch) / "saved_model")
        fileio.write_bytes(target, tflite_bytes(Path(scratch) / "saved_model", quantize))
    fileio.write_json(paths.card_of(target), export_card(card, fmt, quantize, target))
    return target


def export_cli(model: str, *, fmt: str, quantize: str | None, out: str | None) -> None:
    written = export(model, fmt, quantize=quantize, out=out)
    if fmt == "saved_model":
        print(f"wrote {paths.relative(written)} (SavedModel: signatures serving_default (image_bytes) and pixels; "
              f"card.json inside); serve it with TensorFlow Serving at model base path {paths.relative(written.parent)}")
    else:
        size = written.stat().st_size / 1e6
        print(f"wrote {paths.relative(written)} ({size:.2f} MB, input float32 RGB 0..255 at the card's image_size) "
              f"and {paths.card_of(written).name} beside it")
