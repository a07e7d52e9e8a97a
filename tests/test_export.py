"""`tlrepro export` (tlrepro.modeling.export) on the shared tiny saved models: the SavedModel, loaded with
tf.saved_model.load, gives the Keras model's probabilities on the same decoded input (to 1e-5) and, from
encoded files, decodes within 1 grey level of our decode path; the TFLite files, run by the TFLite
interpreter, give the Keras probabilities to 1e-5 (float32), 1e-3 (float16 weights) and 1e-2 (dynamic-range
int8 weights); the card goes with both; misuse is one line."""

from __future__ import annotations

import io
import json
import warnings

import numpy as np
import pytest
import tensorflow as tf
from conftest import picture
from PIL import Image

from tlrepro.core import fileio, paths
from tlrepro.data.images import decode_image
from tlrepro.modeling.export import decode_for_model, export
from tlrepro.modeling.predict import Predictor

TFLITE_TOLERANCE = {None: 1e-5, "float16": 1e-3, "dynamic": 1e-2}


def encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def blobs() -> list[bytes]:
    """JPEGs and PNGs smaller and larger than the model's input, a transparent PNG, a GIF, a grey BMP."""
    rgba = picture(5, (40, 30)).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize((40, 30)))
    return [encoded(picture(1, (64, 48)), "JPEG", quality=90), encoded(picture(2, (20, 24)), "JPEG"),
            encoded(picture(3, (70, 33)), "PNG"), encoded(picture(4, (32, 32)), "PNG"), encoded(rgba, "PNG"),
            encoded(picture(6, (50, 40)), "GIF"), encoded(picture(7, (45, 45)).convert("L"), "BMP")]


@pytest.fixture(scope="module", params=["tiny", "red"])
def model_path(request, saved_models):
    return saved_models / "demo" / f"{request.param}.keras"


def test_the_saved_model_gives_the_keras_probabilities(model_path, blobs, tmp_path):
    version = export(model_path, "saved_model", out=tmp_path / "served")
    assert version == tmp_path / "served" / "1" and (version / "saved_model.pb").is_file()
    loaded = tf.saved_model.load(str(version))
    assert set(loaded.signatures) == {"serving_default", "pixels"}
    predictor = Predictor.load(model_path)
    arrays = np.stack([decode_image(b, predictor.size)[0] for b in blobs]).astype("float32")
    keras_probs = predictor.model(arrays, training=False).numpy()[:, 0]
    same_input = loaded.signatures["pixels"](pixels=tf.constant(arrays))["probabilities"].numpy()
    np.testing.assert_allclose(same_input[:, 1], keras_probs, atol=1e-5)
    np.testing.assert_allclose(same_input.sum(axis=1), 1.0, atol=1e-6)

    from_files = loaded.signatures["serving_default"](image_bytes=tf.constant(blobs))["probabilities"].numpy()
    ours, _ = predictor.predict_bytes(blobs)
    np.testing.assert_allclose(from_files[:, 1], ours["p_malignant"], atol=1e-3)  # decoded inside: see below
    for blob, array in zip(blobs, arrays, strict=True):
        inside = decode_for_model(tf.constant(blob), predictor.size).numpy()
        assert np.abs(inside - array).max() <= 1.0  # within 1 grey level of our decode path

    stored = sum(int(np.prod(shape)) for name, shape in tf.train.list_variables(str(version / "variables" / "variables"))
                 if name != "_CHECKPOINTABLE_OBJECT_GRAPH")
    assert stored == sum(int(np.prod(v.shape)) for v in predictor.model.variables)  # each variable stored once

    card = json.loads((version / "card.json").read_text())
    original = json.loads(paths.card_of(model_path).read_text())
    assert card["name"] == original["name"] and card["classes"] == original["classes"]
    assert card["export"]["format"] == "saved_model" and card["export"]["source_sha256"] == original["model_sha256"]
    assert card["export"]["sha256"] == fileio.file_sha256(version / "saved_model.pb")


def agrees_with_keras(target, model_path, blobs, quantize) -> None:
    """The TFLite file's probabilities, run by the TFLite interpreter, within its tolerance of the Keras model's."""
    predictor = Predictor.load(model_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # tf.lite.Interpreter's note about the LiteRT package
        runner = tf.lite.Interpreter(model_path=str(target)).get_signature_runner("pixels")
    arrays = np.stack([decode_image(blob, predictor.size)[0] for blob in blobs]).astype("float32")
    lite = runner(pixels=arrays)["probabilities"]  # the runner resizes its batch dimension
    np.testing.assert_allclose(lite[:, 1], predictor.model(arrays, training=False).numpy()[:, 0],
                               atol=TFLITE_TOLERANCE[quantize], err_msg=str(quantize))
    card = json.loads(paths.card_of(target).read_text())
    assert card["export"]["quantize"] == quantize and card["export"]["sha256"] == fileio.file_sha256(target)


@pytest.mark.parametrize("quantize", [None, "dynamic"])
def test_tflite_gives_the_keras_probabilities_within_its_tolerance(saved_models, blobs, tmp_path, quantize):
    model_path = saved_models / "demo" / "tiny.keras"
    agrees_with_keras(export(model_path, "tflite", quantize=quantize, out=tmp_path / "tiny.tflite"), model_path,
                      blobs, quantize)


def test_cli_export_and_its_one_line_errors(saved_models, blobs, tmp_path, capsys):
    from tlrepro.cli import main

    model = str(saved_models / "demo" / "tiny.keras")
    out = tmp_path / "t.tflite"
    assert main(["export", model, "--format", "tflite", "--quantize", "float16", "--out", str(out)]) == 0
    assert (tmp_path / "t.card.json").is_file() and "wrote" in capsys.readouterr().out
    agrees_with_keras(out, saved_models / "demo" / "tiny.keras", blobs, "float16")
    for args, expected in (([model, "--format", "saved_model", "--quantize", "dynamic"], "is for --format tflite"),
                           ([model, "--format", "tflite", "--out", str(tmp_path / "x.bin")], "must end with .tflite"),
                           ([str(tmp_path / "missing.keras"), "--format", "tflite"], "not found")):
        assert main(["export", *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:") and expected in err[0], err
