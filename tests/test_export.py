"""`tlrepro export` (tlrepro.modeling.export) on the shared tiny saved models: the SavedModel, loaded with
tf.saved_model.load, gives the Keras model's probabilities on the same decoded input (to 1e-5) and, from
encoded files, decodes within 1 grey level of our decode path; the TFLite files, run by the TFLite
interpreter, give the Keras probabilities to 1e-5 (float32), 1e-3 (float16 weights) and 1e-2 (dynamic-range
int8 weights); the card goes with both; misuse is one line. `--quantize` measures what it costs (max |ΔP|, the
labels that flip) on the card's validation images or a folder, prints it, warns on a flip and writes it into the
card."""

from __future__ import annotations

import io
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from conftest import picture, write_image
from PIL import Image

from tlrepro.core import fileio, paths
from tlrepro.data.images import decode_image
from tlrepro.modeling.export import decode_for_model, export
from tlrepro.modeling.predict import Predictor

# What these hold for: the tiny 32-px test models here (a TinyCNN and a red detector), nothing larger. A real
# MobileNetV2 at 224 px moved by up to 0.030 with float16 weights and 0.18 with dynamic-range int8 weights, flipping
# 2 and 8 of 220 skin test labels (benchmarks/export_tflite.py measures real models; `tlrepro export --quantize`
# measures each export).
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


def lite_and_keras(target, model_path, files) -> tuple[np.ndarray, np.ndarray]:
    """P(malignant) of the TFLite file and of the Keras model on the same decoded files."""
    predictor = Predictor.load(model_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        runner = tf.lite.Interpreter(model_path=str(target)).get_signature_runner("pixels")
    arrays = np.stack([predictor.decode(f.read_bytes())[0] for f in files]).astype("float32")
    return runner(pixels=arrays)["probabilities"][:, 1], predictor.model(arrays, training=False).numpy()[:, 0]


def test_quantized_export_measures_max_delta_and_flipped_labels_and_warns(saved_models, tmp_path, capsys):
    """The threshold is moved between the Keras and the TFLite probability of one image, so quantization flips
    exactly the labels it moves across it: those are printed, warned about and written into the card."""
    from tlrepro.cli import main

    folder = tmp_path / "images"
    files = [write_image(folder / f"{i}.png", seed=40 + i, size=(40, 40)) for i in range(12)]
    models = tmp_path / "models"
    shutil.copytree(saved_models / "demo", models / "demo")
    model = models / "demo" / "tiny.keras"
    target = export(model, "tflite", quantize="dynamic", out=tmp_path / "first.tflite", images=folder)
    lite, keras_p = lite_and_keras(target, model, files)
    delta = np.abs(lite - keras_p)
    card = json.loads(paths.card_of(target).read_text())["export"]["quantization"]
    assert card["measured"] and card["images"] == 12 and card["flipped"] == []
    assert card["max_abs_delta_p"] == pytest.approx(delta.max(), abs=1e-6) and 0 < delta.max() < 1e-2
    assert "0 label(s) flipped" in capsys.readouterr().out

    moved = int(np.argmax(delta))  # the threshold goes between its two probabilities
    threshold = float((lite[moved] + keras_p[moved]) / 2)
    card_path = paths.card_of(model)
    fileio.write_json(card_path, {**json.loads(card_path.read_text()), "threshold": threshold})
    threshold = json.loads(card_path.read_text())["threshold"]  # as the card stores it (6 decimals)
    out = tmp_path / "t.tflite"
    assert main(["export", str(model), "--format", "tflite", "--quantize", "dynamic", "--out", str(out),
                 "--images", str(folder)]) == 0
    expected = sorted(f.name for f, a, b in zip(files, keras_p, lite, strict=True) if (a >= threshold) != (b >= threshold))
    assert files[moved].name in expected
    shown = capsys.readouterr()
    flipped_lines = [line for line in shown.out.splitlines() if line.strip().startswith("flipped:")]
    assert sorted(line.split()[1].rstrip(":") for line in flipped_lines) == expected
    assert f"{len(expected)} label(s) flipped" in shown.out and "max |ΔP|" in shown.out
    warning = [line for line in shown.err.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and f"flips {len(expected)} of 12" in warning[0]
    card = json.loads(paths.card_of(out).read_text())["export"]["quantization"]
    assert sorted(f["image"] for f in card["flipped"]) == expected and card["threshold"] == threshold


def test_quantized_export_uses_the_cards_validation_images_or_says_it_could_not(saved_models, tmp_project, capsys):
    import pandas as pd

    model = tmp_project / "models" / "demo" / "tiny.keras"
    shutil.copytree(saved_models / "demo", model.parent)
    first = export(model, "tflite", quantize="float16", out=tmp_project / "a.tflite")
    card = json.loads(paths.card_of(first).read_text())["export"]["quantization"]
    assert card["measured"] is False and "demo.csv" in card["why"]
    assert "not measured" in capsys.readouterr().err

    rows = [{"protocol": "main", "fold": "", "side": side, "view": "", "path": f"data/raw/x/{i}.png", "label": "benign"}
            for i, side in enumerate(["train", "val", "val", "test", "val"])]
    for row in rows:
        write_image(tmp_project / row["path"], seed=70 + int(Path(row["path"]).stem), size=(32, 32))
    fileio.write_csv(paths.split_csv("demo"), pd.DataFrame(rows))
    second = export(model, "tflite", quantize="float16", out=tmp_project / "b.tflite")
    card = json.loads(paths.card_of(second).read_text())["export"]["quantization"]
    assert card["measured"] and card["images"] == 3 and "validation side of data/splits/demo.csv" in card["source"]
    assert card["max_abs_delta_p"] < TFLITE_TOLERANCE["float16"]


def test_images_without_quantize_and_an_empty_folder_are_one_line(saved_models, tmp_path, capsys):
    from tlrepro.cli import main

    model = str(saved_models / "demo" / "tiny.keras")
    (tmp_path / "empty").mkdir()
    for args, expected in ((["--images", str(tmp_path)], "--images is for --quantize"),
                           (["--quantize", "dynamic", "--images", str(tmp_path / "empty")], "holds no image")):
        assert main(["export", model, "--format", "tflite", "--out", str(tmp_path / "x.tflite"), *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], err
