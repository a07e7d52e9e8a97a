"""The service (tlrepro.serve.api) through FastAPI's TestClient, on tiny saved models: JSON and multipart
predictions equal Predictor.predict_bytes's, explain returns a PNG, the listing and docs endpoints answer,
every kind of bad input gets its 4xx and a clear JSON error (and the next good request still succeeds), and
requests arriving together are answered by fewer model calls than requests, each with its own answer."""

from __future__ import annotations

import base64
import io
import json
import socket
import struct
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import keras
import numpy as np
import pytest
from fastapi.testclient import TestClient
from keras import layers
from PIL import Image

from tlrepro.core.config import RowSettings, Serve, resolve_row
from tlrepro.core.errors import UserError
from tlrepro.data.images import inspect_bytes
from tlrepro.data.labels import BINARY_CLASSES
from tlrepro.modeling import cards, models
from tlrepro.modeling.predict import Predictor
from tlrepro.serve import api, batching

SIZE = 32
LIMIT_MB = 0.2  # serve.max_upload_mb in these tests
MAX_PIXELS = 1_000_000
METRICS = {"side": "test", "accuracy": 0.84, "accuracy_ci_low": 0.8, "accuracy_ci_high": 0.88, "f1": 0.83,
           "roc_auc": 0.9, "n": 660}


def picture(seed: int, size: tuple[int, int]) -> Image.Image:
    """A smooth random picture (an upscaled 6x6 noise grid): distinct seeds, distinct perceptual hashes."""
    grid = np.random.default_rng(seed).integers(0, 256, (6, 6, 3), dtype=np.uint8)
    return Image.fromarray(grid).resize(size, Image.Resampling.BICUBIC)


def encoded(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A few dozen bytes of PNG whose header claims width x height pixels (a decompression bomb's shape)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def colour_model() -> keras.Model:
    """A tiny model shaped like build_classifier's (preprocessing -> backbone -> head) with a fast load."""
    image = keras.Input((SIZE, SIZE, 3), name="image")
    inner = keras.Input((SIZE, SIZE, 3))
    backbone = keras.Model(inner, layers.AveragePooling2D(4)(layers.Conv2D(2, 1, activation="relu")(inner)),
                           name="colournet")
    head = keras.Sequential([layers.GlobalAveragePooling2D(), layers.Dense(1, activation="sigmoid")], name="head")
    return keras.Model(image, head(backbone(models.ImageNetPreprocessing("unit", name="preprocessing")(image))))


@pytest.fixture(scope="module")
def blobs() -> list[bytes]:
    """Eight distinct small images: PNGs and JPEGs of different sizes."""
    return [encoded(picture(seed, (40 + 3 * seed, 36)), "PNG" if seed % 2 else "JPEG") for seed in range(8)]


@pytest.fixture(scope="module")
def project(tmp_path_factory, blobs) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve")
    base, reports = root / "models", root / "reports"
    row = resolve_row("tiny", RowSettings(), RowSettings(
        backbone="MobileNetV2", weights="random", image_size=SIZE, batch_size=4, learning_rate=1e-3, epochs=1,
        head=[{"pool": "avg"}, {"dense": 1, "activation": "sigmoid"}]))
    clf = models.build_classifier(row, classes=BINARY_CLASSES, seed=0)
    seen = inspect_bytes(blobs[1]).phash  # blobs[1] plays a training image
    common = {"classes": list(BINARY_CLASSES), "image_size": SIZE, "threshold": 0.5, "metrics": METRICS,
              "weights": {"source": "random"}, "phash_max_distance": 4}
    cards.save(clf.model, base / "demo" / "tiny.keras", {
        **common, "name": "demo/tiny", "study": "demo", "row": "tiny", "backbone": "MobileNetV2",
        "report": "reports/demo.html", "training_phashes": [seen]})
    keras.utils.set_random_seed(1)
    cards.save(colour_model(), base / "other" / "colour.keras", {
        **common, "name": "other/colour", "study": "other", "row": "colour", "backbone": "colournet",
        "report": "reports/other.html", "training_phashes": []})
    broken = base / "demo" / "broken.keras"
    broken.write_bytes((base / "demo" / "tiny.keras").read_bytes() + b"changed")
    (base / "demo" / "broken.card.json").write_text((base / "demo" / "tiny.card.json").read_text())
    (reports / "sub").mkdir(parents=True)
    (reports / "demo.html").write_text("<html><body>demo report</body></html>")
    (reports / "sub" / "x.txt").write_text("x")
    (root / "secret.txt").write_text("TOP-SECRET-CONTENT")
    return {"models": base, "reports": reports, "tiny": base / "demo" / "tiny.keras",
            "colour": base / "other" / "colour.keras"}


def make_app(project, **settings):
    params = Serve(**{"default_model": "demo/tiny", "max_upload_mb": LIMIT_MB, "max_pixels": MAX_PIXELS,
                      "max_batch": 8, "max_wait_ms": 2, **settings})
    return api.create_app(project["models"], params=params, reports_dir=project["reports"])


@pytest.fixture(scope="module")
def client(project):
    with TestClient(make_app(project), raise_server_exceptions=False) as test_client:
        yield test_client


def as_json(data: bytes, **extra) -> dict:
    return {"image": base64.b64encode(data).decode(), **extra}


def good_request_still_succeeds(client, blobs) -> None:
    response = client.post("/v1/predict", json=as_json(blobs[0]))
    assert response.status_code == 200, response.text
    assert set(response.json()["probabilities"]) == set(BINARY_CLASSES)


def refused(response, status: int, *fragments: str) -> str:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and "Traceback" not in body["error"], body
    for fragment in fragments:
        assert fragment in body["error"], (fragment, body["error"])
    return body["error"]


def test_json_and_multipart_predictions_equal_predict_bytes(client, project, blobs):
    expected, _ = Predictor.load(project["tiny"]).predict_bytes(blobs)
    for i, blob in enumerate(blobs):
        by_json = client.post("/v1/predict", json=as_json(blob))
        by_upload = client.post("/v1/predict", files={"file": (f"img{i}.png", blob, "application/octet-stream")})
        named = client.post("/v1/predict", files={"file": ("x", blob)}, data={"model": "demo/tiny"})
        for response in (by_json, by_upload, named):
            assert response.status_code == 200, response.text
            body = response.json()
            assert set(body) == {"predicted_label", "probabilities", "model", "threshold", "seen_in_training",
                                 "nearest_training_distance"}
            assert body["model"] == "demo/tiny" and body["threshold"] == 0.5
            assert body["predicted_label"] == expected["predicted_label"][i]
            for name in BINARY_CLASSES:
                assert body["probabilities"][name] == pytest.approx(expected[f"p_{name}"][i], abs=1e-6)
            assert body["seen_in_training"] == bool(expected["seen_in_training"][i])
            assert body["nearest_training_distance"] == int(expected["nearest_training_distance"][i])
    assert client.post("/v1/predict", json=as_json(blobs[1])).json()["seen_in_training"] is True
    data_url = "data:image/png;base64," + base64.b64encode(blobs[3]).decode()
    other = client.post("/v1/predict", json={"image": data_url, "model": "other/colour"})
    assert other.status_code == 200 and other.json()["model"] == "other/colour"
    want, _ = Predictor.load(project["colour"]).predict_bytes([blobs[3]])
    assert other.json()["probabilities"]["malignant"] == pytest.approx(want["p_malignant"][0], abs=1e-6)


def test_explain_returns_the_prediction_and_a_png_overlay(client, blobs):
    for model in ("demo/tiny", "other/colour"):
        response = client.post("/v1/explain", json=as_json(blobs[2], model=model))
        assert response.status_code == 200, response.text
        body = response.json()
        plain = client.post("/v1/predict", json=as_json(blobs[2], model=model)).json()
        assert {k: v for k, v in body.items() if k != "overlay_png"} == plain
        image = Image.open(io.BytesIO(base64.b64decode(body["overlay_png"])))
        assert image.format == "PNG" and image.mode == "RGB" and image.size == (SIZE, SIZE)
    upload = client.post("/v1/explain", files={"file": ("a.jpg", blobs[2])})
    assert upload.status_code == 200 and upload.json()["overlay_png"]


def test_models_health_docs_page_and_reports(client):
    listing = client.get("/v1/models").json()
    assert listing["default"] == "demo/tiny"
    by_name = {m["name"]: m for m in listing["models"]}
    assert set(by_name) == {"demo/tiny", "other/colour"}  # the mismatched card is skipped
    tiny = by_name["demo/tiny"]
    assert tiny["study"] == "demo" and tiny["row"] == "tiny" and tiny["backbone"] == "MobileNetV2"
    assert tiny["weights"] == "random" and tiny["image_size"] == SIZE and tiny["classes"] == list(BINARY_CLASSES)
    assert tiny["threshold"] == 0.5 and tiny["metrics"] == METRICS and tiny["report"] == "/reports/demo.html"
    assert by_name["other/colour"]["report"] is None  # reports/other.html was never built
    card = client.get("/v1/models/demo/tiny").json()
    assert card["card"]["name"] == "demo/tiny" and "training_phashes" not in card["card"]
    refused(client.get("/v1/models/demo/nothing"), 404, "unknown model", "demo/tiny")

    health = client.get("/health").json()
    assert health["status"] == "ok" and health["default"] == "demo/tiny" and health["models"] == 2
    assert "demo/broken" in health["skipped"] and "does not match" in health["skipped"]["demo/broken"]
    assert health["batching"]["max_batch"] == 8

    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "multipart/form-data"}
    assert {"/v1/explain", "/v1/models", "/health"} <= set(spec["paths"])

    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert 'id="drop"' in page.text and "aria-live" in page.text and "https://" not in page.text
    for name in ("app.js", "style.css"):
        static = client.get(f"/static/{name}")
        assert static.status_code == 200 and "http://" not in static.text and "https://" not in static.text

    assert client.get("/reports/demo.html").text.startswith("<html>")
    refused(client.get("/reports/"), 404)  # no directory listing
    refused(client.get("/reports/sub"), 404)
    for sneaky in ("/reports/../secret.txt", "/reports/%2e%2e/secret.txt", "/static/../api.py"):
        assert "TOP-SECRET-CONTENT" not in client.get(sneaky).text
    refused(client.get("/nowhere"), 404, "no such page")
    refused(client.get("/v1/predict"), 405, "not allowed")


BAD_JSON = [
    # (what, body, content type, status, fragments)
    ("malformed JSON", b'{"image": ', "application/json", 400, ["not valid JSON", "line 1"]),
    ("empty body", b"", "application/json", 400, ["empty"]),
    ("not UTF-8", b"\xff\xfe\x00junk", "application/json", 400, ["not UTF-8"]),
    ("a JSON array", b"[1, 2]", "application/json", 422, ["must be an object"]),
    ("no image field", b'{"picture": "abc"}', "application/json", 422, ["no `image` field"]),
    ("image not a string", b'{"image": 12}', "application/json", 422, ["base64 string"]),
    ("model not a string", json.dumps({"image": "aGk=", "model": 3}).encode(), "application/json", 422,
     ["`model` must be a string"]),
    ("not base64", b'{"image": "this is not base64!!"}', "application/json", 400, ["not valid base64"]),
    ("empty image", b'{"image": ""}', "application/json", 400, ["empty"]),
    ("not an image", json.dumps(as_json(b"hello, I am text, not a picture")).encode(), "application/json", 400,
     ["not an image"]),
    ("plain text", b"hello", "text/plain", 415, ["unsupported content type `text/plain`", "multipart"]),
    ("raw PNG", png_claiming(8, 8), "image/png", 415, ["unsupported content type"]),
    ("no content type", b'{"image": "aGk="}', "", 415, ["unsupported content type `none`"]),
    ("bad Content-Length", None, "application/json", 400, ["Content-Length"]),
]


@pytest.mark.parametrize(("what", "body", "ctype", "status", "fragments"), BAD_JSON, ids=[b[0] for b in BAD_JSON])
def test_bad_requests_get_a_clear_4xx_and_the_service_keeps_serving(client, blobs, what, body, ctype, status,
                                                                    fragments):
    headers = {"content-type": ctype} if ctype else {}
    if body is None:
        body, headers["content-length"] = b'{"image": "aGk="}', "many"
    response = client.post("/v1/predict", content=body, headers=headers)
    refused(response, status, *fragments)
    good_request_still_succeeds(client, blobs)


def test_bad_images_are_refused_by_their_header_before_any_decoding(client, blobs, monkeypatch):
    webp = encoded(Image.new("RGB", (8, 8)), "WEBP")
    whole = encoded(picture(9, (256, 256)), "JPEG", quality=95)
    truncated = whole[: len(whole) * 2 // 3]  # the header is intact, the pixels are not
    bomb, big = png_claiming(100_000, 100_000), encoded(Image.new("1", (2000, 2000)), "PNG")
    assert len(bomb) < 200 and len(big) < 20_000
    for endpoint in ("/v1/predict", "/v1/explain"):
        refused(client.post(endpoint, json=as_json(webp)), 415, "unsupported image format WEBP", "PNG or JPEG")
        refused(client.post(endpoint, files={"file": ("t.jpg", truncated)}), 400, "cannot be used")
        refused(client.post(endpoint, files={"file": ("x.png", b"")}), 400, "empty")
        refused(client.post(endpoint, json=as_json(blobs[0], model="nostudy/norow")), 404, "unknown model",
                "demo/tiny", "other/colour")
        with monkeypatch.context() as patched:  # the pixel limit is checked on the header alone
            patched.setattr(api, "decode_for", lambda *a: pytest.fail("decoded a bomb"))
            refused(client.post(endpoint, json=as_json(bomb)), 413, "too large", "pixels")
            refused(client.post(endpoint, files={"file": ("big.png", big)}), 413, "2000x2000", "serve.max_pixels")
        good_request_still_succeeds(client, blobs)


def test_uploads_over_the_size_limit_are_refused_before_decoding(client, blobs, monkeypatch):
    limit = int(LIMIT_MB * 1e6)
    large = np.random.default_rng(0).bytes(limit + 50_000)
    just_over = np.random.default_rng(1).bytes(limit + 3)  # its JSON fits the body cap; its base64 does not
    with monkeypatch.context() as patched:
        patched.setattr(api.base64, "b64decode", lambda *a, **k: pytest.fail("decoded base64 of a large upload"))
        patched.setattr(api, "check_header", lambda *a: pytest.fail("read the header of a large upload"))
        for response in (client.post("/v1/predict", json=as_json(large)),
                         client.post("/v1/predict", json=as_json(just_over)),
                         client.post("/v1/explain", files={"file": ("big.jpg", large)}),
                         client.post("/v1/predict", files={"file": ("big.jpg", just_over)}),
                         # no Content-Length (chunked): the body is counted as it streams in
                         client.post("/v1/predict", content=iter([large, large]),
                                     headers={"content-type": "multipart/form-data; boundary=x"})):
            refused(response, 413, "too large", "serve.max_upload_mb")
    good_request_still_succeeds(client, blobs)


def test_malformed_multipart_uploads_are_refused(client, blobs):
    refused(client.post("/v1/predict", data={"model": "demo/tiny"}, files={"other": ("a.png", blobs[0])}), 422,
            "no field `file`")
    refused(client.post("/v1/predict", data={"file": "not a file"},
                        headers={"content-type": "application/x-www-form-urlencoded"}), 415)
    boundary = "----b"
    text_field = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\njust text\r\n"
                  f"--{boundary}--\r\n").encode()
    refused(client.post("/v1/predict", content=text_field,
                        headers={"content-type": f"multipart/form-data; boundary={boundary}"}), 422, "file upload")
    refused(client.post("/v1/predict", content=b"garbage without boundaries",
                        headers={"content-type": "multipart/form-data"}), 400, "malformed multipart")
    refused(client.post("/v1/predict", files={"file": ("a.png", blobs[0])}, data={"model": "x/y"}), 404,
            "unknown model")
    good_request_still_succeeds(client, blobs)


def test_an_unexpected_error_is_a_json_500_without_traceback(client, blobs, monkeypatch):
    def explode(*_):
        raise RuntimeError("internal detail /secret/path")

    with monkeypatch.context() as patched:
        patched.setattr(api, "decode_for", explode)
        response = client.post("/v1/predict", json=as_json(blobs[0]))
    message = refused(response, 500, "unexpected server error (RuntimeError)", "keeps running")
    assert "/secret/path" not in message
    good_request_still_succeeds(client, blobs)


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(project, blobs, monkeypatch):
    calls: list[int] = []
    real = batching.predict_batch

    def counting(predictor, images):
        calls.append(len(images))
        return real(predictor, images)

    monkeypatch.setattr(batching, "predict_batch", counting)
    expected, _ = Predictor.load(project["colour"]).predict_bytes(blobs)
    start = threading.Barrier(len(blobs))
    with TestClient(make_app(project, max_wait_ms=400, max_batch=8, default_model="other/colour")) as client:
        good_request_still_succeeds(client, blobs)  # loads the model, outside the count
        calls.clear()

        def ask(i: int):
            start.wait()
            return client.post("/v1/predict", json=as_json(blobs[i]))

        with ThreadPoolExecutor(len(blobs)) as pool:
            answers = list(pool.map(ask, range(len(blobs))))
        stats = client.get("/health").json()["batching"]["other/colour"]
    assert sum(calls) == len(blobs) and len(calls) < len(blobs), calls
    assert stats["largest_batch"] >= 2
    for i, response in enumerate(answers):
        assert response.status_code == 200, response.text
        assert response.json()["probabilities"]["malignant"] == pytest.approx(expected["p_malignant"][i], abs=1e-6)
    assert len({r.json()["probabilities"]["malignant"] for r in answers}) > 1  # distinct images, distinct answers


def test_a_failed_model_call_fails_only_its_batch(project, blobs, monkeypatch):
    with TestClient(make_app(project, default_model="other/colour"), raise_server_exceptions=False) as client:
        with monkeypatch.context() as patched:
            patched.setattr(batching, "predict_batch", lambda *a: (_ for _ in ()).throw(MemoryError("oom")))
            refused(client.post("/v1/predict", json=as_json(blobs[0])), 500, "MemoryError")
        good_request_still_succeeds(client, blobs)


def test_default_model_choice_and_startup_errors(project, tmp_path):
    assert make_app(project, default_model=None).state.registry.default == "demo/tiny"  # the first found
    assert make_app(project, default_model="gone/model").state.registry.default == "demo/tiny"
    chosen = api.create_app(project["models"], default="other/colour", params={"max_upload_mb": 1})
    assert chosen.state.registry.default == "other/colour"
    with pytest.raises(UserError, match="--default `x/y` is not among"):
        api.create_app(project["models"], default="x/y", params={})
    with pytest.raises(UserError, match="No saved model with a card"):
        api.create_app(tmp_path, params={})
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(UserError, match="cannot listen on 127.0.0.1"):
            api._check_port("127.0.0.1", taken.getsockname()[1])


def test_cli_serve_reports_a_missing_model_folder_in_one_line(tmp_path, capsys):
    from tlrepro.cli import main

    assert main(["serve", "--models", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: No saved model with a card") and "Traceback" not in err
