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

What quantization costs is measured, not assumed: with `--quantize`, the exported file (run by the TFLite
interpreter) and the Keras model label the card's validation images (the `val` side of its study's split,
data/splits/<study>.csv, under the card's protocol) or every image of `--images FOLDER`, decoded once and fed to
both. The command prints the largest |ΔP| over every image and class and each label that flips, warns when any
does, and writes the same into the card's `export.quantization`. Where no images can be found it says so and
the card records `measured: false` (tiny test models stay within 1e-2; a real MobileNetV2 flipped labels).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from tlrepro.core import fileio, inputs, paths
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


def validation_images(card: dict[str, Any]) -> tuple[list[Path], str, Path]:
    """(image files, where they come from, the folder their names are relative to): the `val` side of the card's study split under its protocol. A
    UserError saying why when there are none to be had (the caller then asks for --images)."""
    import pandas as pd

    study = card.get("study")
    split = paths.split_csv(str(study)) if study else None
    if split is None or not split.is_file():
        raise UserError(f"the card names no study split here ({paths.relative(split) if split else 'no study'})")
    if card.get("data", {}).get("split_sha256") not in (None, fileio.file_sha256(split)):
        raise UserError(f"{paths.relative(split)} changed since the model was trained")
    frame = pd.read_csv(split, dtype=str, keep_default_na=False)
    chosen = frame[frame["side"] == "val"]
    if card.get("protocol") and "protocol" in frame:
        chosen = chosen[chosen["protocol"] == card["protocol"]]
    files = [paths.PROJECT_ROOT / p for p in dict.fromkeys(chosen["path"])]
    files = [f for f in files if f.is_file()]
    if not files:
        raise UserError(f"{paths.relative(split)} has no validation image on this machine")
    return files, f"the validation side of {paths.relative(split)}", paths.PROJECT_ROOT


def folder_images(folder: str | Path) -> tuple[list[Path], str, Path]:
    from tlrepro.modeling.predict import find_images

    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"--images {folder} is not a folder: give a folder of images to measure the export on.")
    files, _, _ = find_images(folder)
    if not files:
        raise UserError(f"--images {folder} holds no image: give a folder of images to measure the export on.")
    return files, str(folder), folder


def measure_tflite(predictor: Any, tflite: Path, files: list[Path], source: str, base: Path, batch_size: int = 32
                   ) -> dict[str, Any]:
    """The TFLite file against the Keras model on the same decoded images: max and mean |ΔP| over every image
    and class, and the images whose label flips (the card's threshold for a binary model, else the top class)."""
    import warnings

    import numpy as np
    import tensorflow as tf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # tf.lite.Interpreter's note about the LiteRT package
        runner = tf.lite.Interpreter(model_path=str(tflite), num_threads=2).get_signature_runner("pixels")
    deltas, flipped, used = [], [], 0
    for start in range(0, len(files), batch_size):
        decoded = [(f, predictor.decode(inputs.read_regular(f))) for f in files[start:start + batch_size]]
        decoded = [(f, image) for f, (image, _, ok, _) in decoded if ok]
        if not decoded:
            continue
        batch = np.stack([image for _, image in decoded]).astype("float32")
        raw = predictor.forward(batch)
        keras_p = predictor.probabilities(raw)
        lite_p = np.asarray(runner(pixels=batch)["probabilities"], dtype="float64")
        lite_raw = lite_p[:, 1:] if raw.shape[1] == 1 else lite_p
        deltas.append(np.abs(lite_p - keras_p).max(axis=1))
        used += len(decoded)
        for (f, _), k, t, kp, tp in zip(decoded, predictor.labels_of(raw), predictor.labels_of(lite_raw), keras_p,
                                       lite_p, strict=True):
            if k != t:
                flipped.append({"image": os.path.relpath(f, base), "keras": k, "tflite": t,
                                "keras_p": [round(float(v), 6) for v in kp], "tflite_p": [round(float(v), 6) for v in tp]})
    delta = np.concatenate(deltas) if deltas else np.zeros(0)
    return {"measured": True, "images": used, "source": source, "classes": predictor.classes,
            "threshold": predictor.threshold, "max_abs_delta_p": round(float(delta.max(initial=0.0)), 6),
            "mean_abs_delta_p": round(float(delta.mean()) if len(delta) else 0.0, 6), "flipped": flipped}


def quantization_lines(quantize: str, found: dict[str, Any]) -> tuple[list[str], str | None]:
    """(lines for stdout, a warning for stderr or None) saying what the quantization cost."""
    if not found.get("measured"):
        return [], (f"warning: {quantize} quantization was not measured ({found['why']}): pass --images FOLDER to "
                    f"compare the export with the Keras model before using it.")
    flips = found["flipped"]
    out = [f"{quantize} quantization against the Keras model on {found['images']} image(s) ({found['source']}): "
           f"max |ΔP| {found['max_abs_delta_p']:.4f}, mean |ΔP| {found['mean_abs_delta_p']:.4f}, "
           f"{len(flips)} label(s) flipped"]
    classes = found["classes"]
    for flip in flips:
        shown = ", ".join(f"P({c}) {a:.3f} -> {b:.3f}" for c, a, b in zip(classes, flip["keras_p"], flip["tflite_p"],
                                                                         strict=True))
        out.append(f"  flipped: {flip['image']}: {flip['keras']} -> {flip['tflite']} ({shown})")
    warning = None
    if flips:
        warning = (f"warning: {quantize} quantization flips {len(flips)} of {found['images']} label(s) (listed above, "
                   f"and in the card's export.quantization): check them, or try --quantize float16 or none (float32).")
    return out, warning


def export(model: str | Path, fmt: str, *, quantize: str | None = None, out: str | Path | None = None,
           images: str | Path | None = None) -> Path:
    """Export a saved model with its card; returns the SavedModel version folder or the .tflite file. With
    `quantize`, what it costs is measured on `images` (a folder; default the card's validation images), printed
    and written into the card."""
    from tlrepro.modeling import cards

    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, not `{fmt}`.")
    if quantize is not None and (fmt != "tflite" or quantize not in QUANTIZATIONS):
        raise UserError(f"--quantize {quantize} is for --format tflite, with dynamic or float16: a SavedModel "
                        f"keeps the model's float32 weights.")
    if images is not None and quantize is None:
        raise UserError("--images is for --quantize: it measures what quantization changes.")
    path = cards.resolve(str(model))
    measured: tuple[list[Path], str, Path] | str | None = None
    if quantize is not None:  # the images are found (or refused) before TensorFlow starts
        try:
            measured = folder_images(images) if images is not None else validation_images(cards.read_card(path))
        except UserError as exc:
            if images is not None:
                raise
            measured = str(exc)  # said once the file is written: the export itself is still wanted
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
    exported = export_card(card, fmt, quantize, target)
    if quantize is not None:
        from tlrepro.modeling.predict import Predictor

        found = (measure_tflite(Predictor(path, keras_model, card), target, *measured)
                 if isinstance(measured, tuple) else {"measured": False, "why": measured})
        exported["export"]["quantization"] = found
        lines, warning = quantization_lines(quantize, found)
        for line in lines:
            print(line)
        if warning:
            print(warning, file=sys.stderr, flush=True)
    fileio.write_json(paths.card_of(target), exported)
    return target


def export_cli(model: str, *, fmt: str, quantize: str | None, out: str | None, images: str | None = None) -> None:
    written = export(model, fmt, quantize=quantize, out=out, images=images)
    if fmt == "saved_model":
        print(f"wrote {paths.relative(written)} (SavedModel: signatures serving_default (image_bytes) and pixels; "
              f"card.json inside); serve it with TensorFlow Serving at model base path {paths.relative(written.parent)}")
    else:
        size = written.stat().st_size / 1e6
        print(f"wrote {paths.relative(written)} ({size:.2f} MB, input float32 RGB 0..255 at the card's image_size) "
              f"and {paths.card_of(written).name} beside it")
