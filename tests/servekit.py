"""What the service tests share: a project folder of saved models and reports, the app, request helpers."""

from __future__ import annotations

import base64
import io
import json
import shutil
import socket
import struct
import threading
import time
import zlib
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import SEEN_SEED, picture
from PIL import Image

from tlrepro.core import fileio, paths
from tlrepro.core.config import Serve
from tlrepro.data.labels import BINARY_CLASSES
from tlrepro.serve.app import create_app

LIMIT_MB = 0.2  # serve.max_upload_mb in these tests
MAX_PIXELS = 1_000_000
SECRET = "TOP-SECRET-CONTENT"


def encoded(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def make_blobs() -> list[bytes]:
    """Eight distinct small images, PNGs and JPEGs of different sizes; blobs[1] is demo/tiny's training image."""
    blobs = [encoded(picture(seed, (40 + 3 * seed, 36)), "PNG" if seed % 2 else "JPEG") for seed in range(8)]
    blobs[1] = encoded(picture(SEEN_SEED))
    return blobs


def png_claiming(width: int, height: int) -> bytes:
    """A few dozen bytes of PNG whose header claims width x height pixels (a decompression bomb's shape)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def make_project(root: Path, saved_models: Path) -> dict[str, Path]:
    """models/: demo/tiny and demo/red (copies of the shared saved models), demo/broken (a card that does not
    match its file: skipped), demo/garbage (a card matching a file that is no Keras model: fails to load);
    reports/: demo.html, a subfolder, an executed notebook, a text file and an .html link to a secret outside."""
    base, reports = root / "models", root / "reports"
    shutil.copytree(saved_models, base)
    tiny = base / "demo" / "tiny.keras"
    (base / "demo" / "broken.keras").write_bytes(tiny.read_bytes() + b"changed")
    shutil.copy(paths.card_of(tiny), base / "demo" / "broken.card.json")
    garbage = base / "demo" / "garbage.keras"
    garbage.write_bytes(b"PK\x03\x04 this is no Keras archive")
    card = json.loads(paths.card_of(tiny).read_text())
    paths.card_of(garbage).write_text(json.dumps({**card, "name": "demo/garbage", "row": "garbage",
                                                  "model_file": garbage.name,
                                                  "model_sha256": fileio.file_sha256(garbage)}))
    (reports / "sub").mkdir(parents=True)
    (reports / "notebooks").mkdir()
    (reports / "demo.html").write_text("<html><body>demo report</body></html>")
    (reports / "sub" / "x.html").write_text("<html>not a report</html>")
    (reports / "notebooks" / "demo.ipynb").write_text(json.dumps({"cells": [f"{root}/data/raw/skin"]}))
    (root / "secret.txt").write_text(SECRET)
    (reports / "notes.txt").write_text(SECRET)  # beside the reports, but not one
    (reports / "leak.html").symlink_to(root / "secret.txt")  # named like a report, pointing outside
    return {"root": root, "models": base, "reports": reports, "tiny": tiny, "red": base / "demo" / "red.keras"}


def make_app(project, *, allow_hosts=(), allow_origins=(), **settings):
    params = Serve(**{"default_model": "demo/tiny", "max_upload_mb": LIMIT_MB, "max_pixels": MAX_PIXELS,
                      "max_batch": 8, "max_wait_ms": 2, **settings})
    return create_app(project["models"], params=params, reports_dir=project["reports"], allow_hosts=allow_hosts,
                      allow_origins=allow_origins)


def as_json(data: bytes, **extra) -> dict:
    return {"image": base64.b64encode(data).decode(), **extra}


def good_request_still_succeeds(client, blobs) -> None:
    response = client.post("/v1/predict", json=as_json(blobs[0]))
    assert response.status_code == 200, response.text
    assert set(response.json()["probabilities"]) == set(BINARY_CLASSES)


def refused(response, status: int, *fragments: str) -> str:
    """The error of a refusal: JSON `error` (for programs; may name settings) holding each fragment, and a
    `message` for the page's reader beside it whenever `error` names a setting (the message never does)."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) <= {"error", "message"} and "Traceback" not in body["error"], body
    for fragment in fragments:
        assert fragment in body["error"], (fragment, body["error"])
    if "serve." in body["error"] or "server log" in body["error"]:
        assert "message" in body, body
    assert "serve." not in body.get("message", "") and "server log" not in body.get("message", ""), body
    return body["error"]


def wait_ready(client, timeout: float = 60.0) -> dict:
    """/health once the default model is loaded and warmed up (it says `loading` until then)."""
    wait_for(lambda: client.get("/health").json()["status"] != "loading", "the default model to load", timeout)
    return client.get("/health").json()


def wait_for(condition, what: str, timeout: float = 20.0) -> None:
    """Poll `condition()` until it is true (a bounded wait: fail after `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


@contextmanager
def live_server(app):
    """The app under uvicorn on a free loopback port, in a thread; stopped on exit. Yields the port."""
    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started or not thread.is_alive(), "uvicorn to start", 60)
        assert thread.is_alive(), "uvicorn did not start"
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def raw_request(port: int, target: str, host: str | None = None) -> tuple[int, str]:
    """(status, whole response text) of `GET target` sent byte for byte over a socket: no client in between
    normalises `..` or percent escapes."""
    host = host or f"127.0.0.1:{port}"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    text = b"".join(chunks).decode("utf-8", "replace")
    return int(text.split(" ", 2)[1]), text


class Held:
    """Wraps a function so that each call announces itself and waits (bounded) until let through: `one()` lets
    one call through, `release.set()` all of them (or, with `seconds`, each call just takes that long)."""

    def __init__(self, real, seconds: float = 0.0) -> None:
        self.real, self.seconds = real, seconds
        self.entered, self.gate = threading.Semaphore(0), threading.Semaphore(0)
        self.release = threading.Event()
        self.calls = 0

    def one(self) -> None:
        self.gate.release()

    def __call__(self, *args, **kwargs):
        self.calls += 1
        self.entered.release()
        if self.seconds:
            time.sleep(self.seconds)
        else:
            deadline = time.monotonic() + 30
            while not self.release.is_set() and not self.gate.acquire(timeout=0.02) and time.monotonic() < deadline:
                pass
        return self.real(*args, **kwargs)

    def wait_entered(self, what: str) -> None:
        if not self.entered.acquire(timeout=30):
            pytest.fail(f"timed out waiting for {what}")
