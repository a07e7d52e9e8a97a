"""The service under load and under hostile pages (tlrepro.serve.batching, .guard): each way a request is
refused with a 503 and Retry-After at once (a full model queue, a full decoding lane, a full explain lane;
a queue that would pass the deadline is in test_serve_strain.py) or after its deadline; a slow explanation
in flight never keeps predictions waiting; /health answers meanwhile; a foreign Host is a 421 and a POST from a foreign web page a
403, no CORS unless asked; traversal URLs sent raw to a real uvicorn on loopback reach nothing.

Work is held in flight by patching our own functions (batching.predict_batch, inputs.read_image,
ModelEntry.explain) to wait on an event, always released, every wait bounded."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient
from servekit import (
    SECRET,
    Held,
    as_json,
    good_request_still_succeeds,
    live_server,
    make_app,
    make_blobs,
    make_project,
    raw_request,
    refused,
    wait_for,
    wait_ready,
)

from tlrepro.serve import batching, inputs
from tlrepro.serve.registry import ModelEntry

URL = "http://127.0.0.1"


@pytest.fixture(scope="module")
def blobs() -> list[bytes]:
    return make_blobs()


@pytest.fixture(scope="module")
def project(tmp_path_factory, saved_models):
    return make_project(tmp_path_factory.mktemp("serve-limits"), saved_models)


def a_503_at_once(client, path: str, body: dict, *fragments: str, within: float = 2.0) -> str:
    start = time.monotonic()
    response = client.post(path, json=body)
    elapsed = time.monotonic() - start
    message = refused(response, 503, *fragments)
    assert int(response.headers["retry-after"]) >= 1
    assert elapsed < within, f"the 503 took {elapsed:.2f} s"
    return message


def test_a_full_model_queue_is_a_503_at_once(project, blobs, monkeypatch):
    held, real_decode = Held(batching.predict_batch), inputs.decode_upload
    with TestClient(make_app(project, max_batch=1, max_queue=1, max_wait_ms=0), base_url=URL) as client, \
            ThreadPoolExecutor(2) as pool:
        good_request_still_succeeds(client, blobs)  # loads the model, measures its speed
        monkeypatch.setattr(batching, "predict_batch", held)
        try:
            running = pool.submit(client.post, "/v1/predict", json=as_json(blobs[0]))
            held.wait_entered("the first model call")
            waiting = pool.submit(client.post, "/v1/predict", json=as_json(blobs[1]))
            wait_for(lambda: client.get("/health").json()["batching"]["demo/tiny"]["queued"] == 1, "a queued request")
            decoded = []
            monkeypatch.setattr(inputs, "decode_upload", lambda *a: decoded.append(1) or real_decode(*a))
            a_503_at_once(client, "/v1/predict", as_json(blobs[2]), "1 requests are waiting for model `demo/tiny`",
                          "serve.max_queue", "Retry-After")
            assert not decoded  # refused before its image was decoded: under overload that work would be wasted
        finally:
            held.release.set()
        assert running.result(timeout=30).status_code == 200 and waiting.result(timeout=30).status_code == 200
        assert client.get("/health").json()["batching"]["demo/tiny"]["refused"] == 1


def test_a_request_not_answered_by_its_deadline_is_a_503(project, blobs, monkeypatch):
    held = Held(batching.predict_batch)
    with TestClient(make_app(project, deadline_s=0.5), base_url=URL) as client:
        wait_ready(client)
        monkeypatch.setattr(batching, "predict_batch", held)
        start = time.monotonic()
        try:
            response = client.post("/v1/predict", json=as_json(blobs[0]))
        finally:
            held.release.set()
        refused(response, 503, "not answered within serve.deadline_s (0.5 s)", "Retry-After")
        assert "retry-after" in response.headers and 0.4 < time.monotonic() - start < 10
        monkeypatch.undo()
        wait_for(lambda: client.get("/health").json()["batching"].get("demo/tiny", {}).get("batches") == 1,
                 "the abandoned batch to finish")
        good_request_still_succeeds(client, blobs)


def test_a_full_decoding_lane_is_a_503_at_once(project, blobs, monkeypatch):
    held = Held(inputs.read_image)
    with TestClient(make_app(project, decode_workers=1, max_queue=1), base_url=URL) as client, \
            ThreadPoolExecutor(2) as pool:
        good_request_still_succeeds(client, blobs)
        monkeypatch.setattr(inputs, "read_image", held)
        try:
            in_hand = [pool.submit(client.post, "/v1/predict", json=as_json(b)) for b in blobs[:2]]
            held.wait_entered("the first decode")
            wait_for(lambda: client.get("/health").json()["lanes"]["decoding"]["in_hand"] == 2, "two decodes in hand")
            a_503_at_once(client, "/v1/explain", as_json(blobs[2]), "busy decoding", "serve.max_queue")
            for _ in in_hand:  # one at a time: the model queue (also serve.max_queue = 1) takes each in turn
                done = sum(f.done() for f in in_hand)
                held.one()
                wait_for(lambda done=done: sum(f.done() for f in in_hand) > done, "a decoded request's answer")
        finally:
            held.release.set()
        assert [f.result(timeout=30).status_code for f in in_hand] == [200, 200]


def test_a_slow_explanation_never_keeps_predictions_waiting(project, blobs, monkeypatch):
    held = Held(ModelEntry.explain)
    app = make_app(project, explain_workers=1, max_explain_queue=0, max_batch=4)
    with TestClient(app, base_url=URL) as client, ThreadPoolExecutor(16) as pool:
        good_request_still_succeeds(client, blobs)
        monkeypatch.setattr(ModelEntry, "explain", lambda entry, *args: held(entry, *args))
        try:
            slow = pool.submit(client.post, "/v1/explain", json=as_json(blobs[0]))
            held.wait_entered("the explanation")
            # More explanations than the event loop's default thread pool has threads (6 on 2 cores): each is
            # refused at once, and none takes a thread that predictions need.
            extra = [pool.submit(client.post, "/v1/explain", json=as_json(blobs[1])) for _ in range(7)]
            for future in extra:
                refused(future.result(timeout=10), 503, "busy explaining", "serve.max_explain_queue")
            start = time.monotonic()
            predictions = [pool.submit(client.post, "/v1/predict", json=as_json(b)) for b in blobs]
            answers = [f.result(timeout=20) for f in predictions]
            assert all(r.status_code == 200 for r in answers), [r.text for r in answers]
            assert time.monotonic() - start < 10 and not slow.done()  # the explanation is still in flight
            health = client.get("/health").json()
            assert health["lanes"]["explaining"]["in_hand"] == 1 and health["lanes"]["explaining"]["refused"] == 7
        finally:
            held.release.set()
        body = slow.result(timeout=30).json()
        assert body["overlay_png"] and body["model"] == "demo/tiny"


def test_a_foreign_host_is_421_and_a_foreign_page_is_403(project, blobs):
    with TestClient(make_app(project), base_url=URL) as client:
        for host in ("localhost:8000", "[::1]:8000", "127.0.0.1"):
            assert client.get("/health", headers={"host": host}).status_code == 200
        for path in ("/health", "/", "/reports/demo.html", "/v1/models"):  # DNS rebinding reads nothing
            refused(client.get(path, headers={"host": "attacker.example"}), 421, "Host `attacker.example`",
                    "--allow-host attacker.example")
        refused(client.post("/v1/predict", json=as_json(blobs[0]), headers={"host": "attacker.example:8000"}), 421)
        refused(client.post("/v1/predict", json=as_json(blobs[0]), headers={"origin": "http://attacker.example"}),
                403, "`http://attacker.example` is refused", "--allow-origin http://attacker.example")
        refused(client.post("/v1/explain", json=as_json(blobs[0]), headers={"origin": "null"}), 403)
        same = client.post("/v1/predict", json=as_json(blobs[0]), headers={"origin": URL})  # the page itself
        assert same.status_code == 200 and "access-control-allow-origin" not in same.headers
        preflight = client.options("/v1/predict", headers={"origin": "http://attacker.example",
                                                           "access-control-request-method": "POST"})
        assert "access-control-allow-origin" not in preflight.headers  # no CORS unless asked
    app = make_app(project, allow_hosts=("tlrepro.lab.example",), allow_origins=("https://app.example",))
    with TestClient(app, base_url=URL) as client:
        assert client.get("/health", headers={"host": "TLREPRO.lab.example:8000"}).status_code == 200
        allowed = client.post("/v1/predict", json=as_json(blobs[0]), headers={"origin": "https://app.example"})
        assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == "https://app.example"
        refused(client.post("/v1/predict", json=as_json(blobs[0]), headers={"origin": "https://other.example"}), 403)


def test_traversal_urls_sent_raw_reach_nothing_and_health_answers(project):
    with live_server(make_app(project)) as port:
        assert raw_request(port, "/reports/demo.html")[0] == 200
        assert raw_request(port, "/health", host="attacker.example")[0] == 421
        for target in ("/reports/../secret.txt", "/reports/%2e%2e/secret.txt", "/reports/..%2fsecret.txt",
                       "/reports/../../secret.txt", "/static/../app.py", "/static/%2e%2e/app.py",
                       "/reports/notebooks/demo.ipynb", "/static/../../../secret.txt", "/reports/notes.txt",
                       "/reports/leak.html"):
            status, text = raw_request(port, target)
            assert status in (400, 404), (target, text[:300])
            assert SECRET not in text and "def create_app" not in text and "cells" not in text, target
