"""The service (tlrepro.serve) through FastAPI's TestClient, on the shared tiny saved models: JSON and multipart
predictions equal Predictor.predict_bytes's, explain returns a PNG from one decode of the image, the listing
and docs endpoints answer, every kind of bad input (unknown fields included) gets its 4xx and a clear JSON
error without a filesystem path (and the next good request still succeeds), requests arriving together are
answered by fewer model calls than requests, and the default model is never a random one by itself.
Overload, Host/Origin and raw-URL tests are in test_serve_limits.py."""

from __future__ import annotations

import base64
import io
import json
import re
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import TINY_METRICS, TINY_SIZE, picture
from fastapi.testclient import TestClient
from PIL import Image
from servekit import (
    LIMIT_MB,
    as_json,
    encoded,
    good_request_still_succeeds,
    make_app,
    make_blobs,
    make_project,
    png_claiming,
    refused,
    wait_ready,
)

from tlrepro.core import paths
from tlrepro.core.errors import UserError
from tlrepro.data import images
from tlrepro.data.labels import BINARY_CLASSES
from tlrepro.modeling.predict import Predictor
from tlrepro.serve import batching, inputs, server
from tlrepro.serve.app import create_app
from tlrepro.serve.registry import choose_default


@pytest.fixture(scope="module")
def blobs() -> list[bytes]:
    return make_blobs()


@pytest.fixture(scope="module")
def project(tmp_path_factory, saved_models):
    return make_project(tmp_path_factory.mktemp("serve"), saved_models)


@pytest.fixture(scope="module")
def client(project):
    with TestClient(make_app(project), base_url="http://127.0.0.1", raise_server_exceptions=False) as test_client:
        yield test_client


def test_json_and_multipart_predictions_equal_predict_bytes(client, project, blobs):
    expected, _ = Predictor.load(project["tiny"]).predict_bytes(blobs)
    for i, blob in enumerate(blobs):
        by_json = client.post("/v1/predict", json=as_json(blob))
        by_upload = client.post("/v1/predict", files={"file": (f"img{i}.png", blob, "application/octet-stream")})
        named = client.post("/v1/predict", files={"file": ("x", blob)}, data={"model": "demo/tiny"})
        in_query = client.post("/v1/predict?model=demo/tiny", files={"file": ("x", blob)})
        for response in (by_json, by_upload, named, in_query):
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
    want, _ = Predictor.load(project["red"]).predict_bytes([blobs[3]])
    for other in (client.post("/v1/predict", json={"image": data_url, "model": "demo/red"}),
                  client.post("/v1/predict?model=demo/red", json={"image": data_url}),  # the query string counts
                  client.post("/v1/predict?model=demo/red", files={"file": ("x", blobs[3])})):
        assert other.status_code == 200 and other.json()["model"] == "demo/red", other.text
        assert other.json()["probabilities"]["malignant"] == pytest.approx(want["p_malignant"][0], abs=1e-6)


def test_explain_returns_the_prediction_and_a_png_overlay_from_one_decode(client, blobs, monkeypatch):
    decodes = []
    real = images.to_rgb

    def counting(image):
        decodes.append(image.size)
        return real(image)

    monkeypatch.setattr(images, "to_rgb", counting)  # our own function: every decode of pixels goes through it
    for model in ("demo/tiny", "demo/red"):
        decodes.clear()
        response = client.post("/v1/explain", json=as_json(blobs[2], model=model))
        assert response.status_code == 200, response.text
        assert len(decodes) == 1, decodes  # prediction and Grad-CAM share one decode of the image
        body = response.json()
        plain = client.post("/v1/predict", json=as_json(blobs[2], model=model)).json()
        assert {k: v for k, v in body.items() if k != "overlay_png"} == plain
        image = Image.open(io.BytesIO(base64.b64decode(body["overlay_png"])))
        assert image.format == "PNG" and image.mode == "RGB" and image.size == (TINY_SIZE, TINY_SIZE)
    upload = client.post("/v1/explain", files={"file": ("a.jpg", blobs[2])})
    assert upload.status_code == 200 and upload.json()["overlay_png"]


def test_models_health_docs_page_and_reports(client):
    listing = client.get("/v1/models").json()
    assert listing["default"] == "demo/tiny" and "serve.default_model" in listing["default_reason"]
    assert "randomly initialised" in listing["default_reason"]
    by_name = {m["name"]: m for m in listing["models"]}
    assert set(by_name) == {"demo/tiny", "demo/red", "demo/garbage"}  # the mismatched card is skipped
    tiny = by_name["demo/tiny"]
    assert tiny["study"] == "demo" and tiny["row"] == "tiny" and tiny["backbone"] == "TinyCNN"
    assert tiny["weights"] == "random" and tiny["image_size"] == TINY_SIZE and tiny["classes"] == list(BINARY_CLASSES)
    assert tiny["threshold"] == 0.5 and tiny["metrics"] == TINY_METRICS and tiny["report"] == "/reports/demo.html"
    assert tiny["validation_accuracy"] is None
    assert by_name["demo/red"]["report"] is None  # reports/red.html was never built
    card = client.get("/v1/models/demo/tiny").json()
    assert card["card"]["name"] == "demo/tiny" and "training_phashes" not in card["card"]
    refused(client.get("/v1/models/demo/nothing"), 404, "unknown model", "demo/tiny")

    health = client.get("/health").json()
    assert health["status"] == "ok" and health["default"] == "demo/tiny" and health["models"] == 3
    assert "demo/broken" in health["skipped"] and "does not match" in health["skipped"]["demo/broken"]
    assert health["limits"]["max_batch"] == 8 and health["limits"]["deadline_s"] == 10

    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "multipart/form-data"}
    assert [p["name"] for p in spec["paths"]["/v1/predict"]["post"]["parameters"]] == ["model"]
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
    refused(client.get("/reports/sub/x.html"), 404)  # only the rendered reports at the top of reports/
    refused(client.get("/reports/notebooks/demo.ipynb"), 404)  # executed notebooks hold absolute paths
    refused(client.get("/reports/notebooks"), 404)
    refused(client.get("/nowhere"), 404, "no such page")
    refused(client.get("/v1/predict"), 405, "not allowed")


BAD_JSON = [
    # (what, body, content type, status, fragments)
    ("malformed JSON", b'{"image": ', "application/json", 400, ["not valid JSON", "line 1"]),
    ("empty body", b"", "application/json", 400, ["empty"]),
    ("not UTF-8", b"\xff\xfe\x00junk", "application/json", 400, ["not UTF-8"]),
    ("a JSON array", b"[1, 2]", "application/json", 422, ["must be an object"]),
    ("no image field", b'{"model": "demo/tiny"}', "application/json", 422, ["no `image` field"]),
    ("an unknown field", b'{"picture": "abc", "image": "aGk="}', "application/json", 400,
     ["unknown JSON body field(s) `picture`", "`image` and `model`"]),
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
    refused(client.post("/v1/predict", content=body, headers=headers), status, *fragments)
    good_request_still_succeeds(client, blobs)


def test_unknown_query_and_form_fields_are_refused_by_name(client, blobs):
    refused(client.post("/v1/predict?modle=demo/red", json=as_json(blobs[0])), 400,
            "unknown query field(s) `modle`", "takes only `model`")
    refused(client.post("/v1/explain?model=demo/red&model=demo/tiny", json=as_json(blobs[0])), 400, "more than once")
    refused(client.post("/v1/predict?model=demo/red", json=as_json(blobs[0], model="demo/tiny")), 400,
            "given twice, differently")
    refused(client.post("/v1/predict", files={"file": ("a.png", blobs[0])}, data={"model": "demo/tiny", "size": "9"}),
            400, "unknown form field(s) `size`", "`file` and `model`")
    for path in ("/health?verbose=1", "/v1/models?all=1", "/v1/models/demo/tiny?x=1"):
        refused(client.get(path), 400, "unknown query field(s)", "takes none")
    good_request_still_succeeds(client, blobs)


def test_bad_images_are_refused_by_their_header_before_any_decoding(client, blobs):
    webp = encoded(Image.new("RGB", (8, 8)), "WEBP")
    whole = encoded(picture(9, (256, 256)), "JPEG", quality=95)
    truncated = whole[: len(whole) * 2 // 3]  # the header is intact, the pixels are not
    # Decoding either bomb would not give a 413: the first has no pixels to decode (a 400 "cannot decode"),
    # the second decodes fine (a 200). A 413 naming the pixels shows the header alone refused them.
    bomb, big = png_claiming(100_000, 100_000), encoded(Image.new("1", (2000, 2000)), "PNG")
    assert len(bomb) < 200 and len(big) < 20_000
    for endpoint in ("/v1/predict", "/v1/explain"):
        refused(client.post(endpoint, json=as_json(webp)), 415, "unsupported image format WEBP", "PNG or JPEG")
        refused(client.post(endpoint, files={"file": ("t.jpg", truncated)}), 400, "cannot be used")
        refused(client.post(endpoint, files={"file": ("x.png", b"")}), 400, "empty")
        refused(client.post(endpoint, json=as_json(blobs[0], model="nostudy/norow")), 404, "unknown model",
                "demo/tiny", "demo/red")
        refused(client.post(endpoint, json=as_json(bomb)), 413, "too large", "pixels")
        refused(client.post(endpoint, files={"file": ("big.png", big)}), 413, "2000x2000", "serve.max_pixels")
        good_request_still_succeeds(client, blobs)


def test_uploads_over_the_size_limit_are_refused_before_decoding(client, blobs):
    limit = int(LIMIT_MB * 1e6)
    # Not base64 (`@`), not an image: decoding base64 first would be a 400 "not valid base64", reading the
    # image first a 400 "not an image". A 413 shows the size was checked before either.
    not_base64 = {"image": "@" * (limit * 4 // 3 + 8)}
    garbage = b"\x00not an image" * (limit // 13 + 1000)
    for response in (client.post("/v1/predict", json=not_base64),
                     client.post("/v1/explain", files={"file": ("big.jpg", garbage)}),
                     client.post("/v1/predict", files={"file": ("big.jpg", garbage[: limit + 3])}),
                     # no Content-Length (chunked): the body is counted as it streams in
                     client.post("/v1/predict", content=iter([garbage, garbage]),
                                 headers={"content-type": "multipart/form-data; boundary=x"})):
        refused(response, 413, "too large", "serve.max_upload_mb")
    good_request_still_succeeds(client, blobs)


def test_malformed_multipart_uploads_are_refused(client, blobs):
    refused(client.post("/v1/predict", files={"model": (None, "demo/tiny")}), 422, "no field `file`")
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


ABSOLUTE = re.compile(r"(?<![\w.])/(?:[\w.-]+/){2,}")  # /an/absolute/folder/ (not a URL such as /reports/x.html)


def test_errors_and_health_carry_no_filesystem_paths(client, project, blobs, monkeypatch):
    root = str(project["root"])
    texts = [refused(client.post("/v1/predict", json=as_json(blobs[0], model="demo/garbage")), 503,
                     "`demo/garbage` cannot be loaded", "not a loadable Keras model"),
             client.get("/health").text, client.get("/v1/models").text,
             refused(client.get("/reports/nothing.html"), 404, "no report")]

    def explode(*_):
        raise RuntimeError(f"internal detail {root}/secret/path")

    monkeypatch.setattr(inputs, "read_image", explode)
    texts.append(refused(client.post("/v1/predict", json=as_json(blobs[0])), 500,
                         "unexpected server error (RuntimeError)", "keeps running"))
    monkeypatch.undo()
    for text in texts:
        assert root not in text and str(paths.PROJECT_ROOT) not in text and not ABSOLUTE.search(text), text
    assert "does not match" in client.get("/health").json()["skipped"]["demo/broken"]  # the reason, told without paths
    good_request_still_succeeds(client, blobs)


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(project, blobs, monkeypatch):
    calls: list[int] = []
    real = batching.predict_batch

    def counting(predictor, images):
        calls.append(len(images))
        return real(predictor, images)

    monkeypatch.setattr(batching, "predict_batch", counting)
    expected, _ = Predictor.load(project["red"]).predict_bytes(blobs)
    start = threading.Barrier(len(blobs))
    with TestClient(make_app(project, max_wait_ms=400, max_batch=8, default_model="demo/red"),
                    base_url="http://127.0.0.1") as client:
        good_request_still_succeeds(client, blobs)  # loads the model, outside the count
        calls.clear()

        def ask(i: int):
            start.wait(timeout=30)
            return client.post("/v1/predict", json=as_json(blobs[i]))

        with ThreadPoolExecutor(len(blobs)) as pool:
            answers = list(pool.map(ask, range(len(blobs))))
        stats = client.get("/health").json()["batching"]["demo/red"]
    assert sum(calls) == len(blobs) and len(calls) < len(blobs), calls
    assert stats["largest_batch"] >= 2 and sum(stats["batch_sizes"].values()) == stats["batches"]
    assert sum(int(size) * calls for size, calls in stats["batch_sizes"].items()) == stats["requests"]
    for i, response in enumerate(answers):
        assert response.status_code == 200, response.text
        assert response.json()["probabilities"]["malignant"] == pytest.approx(expected["p_malignant"][i], abs=1e-6)
    assert len({r.json()["probabilities"]["malignant"] for r in answers}) > 1  # distinct images, distinct answers


def test_a_failed_model_call_fails_only_its_batch(project, blobs, monkeypatch):
    with TestClient(make_app(project, default_model="demo/red"), base_url="http://127.0.0.1",
                    raise_server_exceptions=False) as client:
        wait_ready(client)
        with monkeypatch.context() as patched:
            patched.setattr(batching, "predict_batch", lambda *a: (_ for _ in ()).throw(MemoryError("oom")))
            refused(client.post("/v1/predict", json=as_json(blobs[0])), 500, "MemoryError")
        good_request_still_succeeds(client, blobs)


def card(source: str, **extra) -> dict:
    return {"weights": {"source": source}, **extra}


def test_the_default_is_the_best_imagenet_model_by_validation_never_a_random_one():
    found = {"a/random": card("random", validation={"accuracy": 0.99}),
             "b/low": card("imagenet", validation={"accuracy": 0.70}, metrics={"side": "test", "accuracy": 0.95}),
             "c/high": card("imagenet", training={"val_accuracy": 0.81}, metrics={"side": "test", "accuracy": 0.6}),
             "d/none": card("imagenet", metrics={"side": "test", "accuracy": 0.99}),
             "e/val": card("imagenet", metrics={"side": "val", "accuracy": 0.80})}
    name, why = choose_default(found, None, None)
    assert name == "c/high" and "0.8100" in why and "training.val_accuracy" in why and "never" in why
    name, why = choose_default({k: found[k] for k in ("a/random", "d/none")}, None, None)
    assert name == "d/none" and "no card has a validation figure" in why  # test figures are never used
    assert choose_default({"a/random": found["a/random"]}, None, None)[0] is None
    assert choose_default(found, "a/random", None) == ("a/random", "chosen with --default (randomly initialised: "
                                                                   "its figures are no evidence of transfer learning)")
    assert choose_default(found, None, "b/low")[0] == "b/low"
    assert choose_default(found, None, "gone/model")[0] == "c/high"
    with pytest.raises(UserError, match="--default `x/y` is not among"):
        choose_default(found, "x/y", None)


def test_study_cards_carry_the_validation_accuracy_of_the_weights_they_hold():
    import pandas as pd

    from tlrepro.modeling.training import TrainResult
    from tlrepro.studies.base import validation_figure

    history = pd.DataFrame({"epoch": [1, 2, 3], "val_accuracy": [0.6, 0.8, 0.7]})
    assert validation_figure(TrainResult(history, 1.0, "images", best_epoch=2)) == {"accuracy": 0.8, "epoch": 2}
    assert validation_figure(TrainResult(history, 1.0, "images")) == {"accuracy": 0.7, "epoch": 3}  # the last
    assert validation_figure(TrainResult(history.drop(columns="val_accuracy"), 1.0, "images")) is None
    assert validation_figure(TrainResult(history.assign(val_accuracy=float("nan")), 1.0, "images")) is None
    assert validation_figure(None) is None


def test_a_server_without_a_default_asks_for_a_model(project, blobs):
    app = make_app(project, default_model=None)  # every model there is randomly initialised
    assert app.state.registry.default is None
    with TestClient(app, base_url="http://127.0.0.1") as client:
        assert "every model found is randomly initialised" in client.get("/v1/models").json()["default_reason"]
        refused(client.post("/v1/predict", json=as_json(blobs[0])), 400, "no default model", "?model=")
        assert client.post("/v1/predict?model=demo/tiny", json=as_json(blobs[0])).status_code == 200


def test_startup_errors(project, tmp_path):
    chosen = create_app(project["models"], default="demo/red", params={"max_upload_mb": 1})
    assert chosen.state.registry.default == "demo/red"
    with pytest.raises(UserError, match="--default `x/y` is not among"):
        create_app(project["models"], default="x/y", params={})
    with pytest.raises(UserError, match="No saved model with a card"):
        create_app(tmp_path, params={})
    with pytest.raises(Exception, match="is not a web origin"):
        create_app(project["models"], params={}, allow_origins=("*",))
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(UserError, match="cannot listen on 127.0.0.1"):
            server.check_port("127.0.0.1", taken.getsockname()[1])
    assert server.bound_names("0.0.0.0") == () and server.bound_names("127.0.0.1") == ()
    assert server.bound_names("192.168.1.20") == ("192.168.1.20",)


def test_cli_serve_reports_a_missing_model_folder_in_one_line(tmp_path, capsys):
    from tlrepro.cli import main

    assert main(["serve", "--models", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: No saved model with a card") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
