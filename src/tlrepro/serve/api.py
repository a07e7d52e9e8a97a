"""`tlrepro serve`: a REST API and a web page over the saved models (models/<study>/<row>.keras + card).

    POST /v1/predict   {"image": "<base64>", "model": "<study>/<row>"} (JSON; model optional), or a
                       multipart upload (field `file`, optional field `model`) -> the label, the class
                       probabilities, the threshold and whether the image nearly matches a training image
    POST /v1/explain   the same input -> the prediction plus `overlay_png`: Grad-CAM of the predicted class
                       (last convolutional block) over the image at the model's input size, base64 PNG
    GET  /v1/models    every model's card summary (study, backbone, weights, metrics, report link)
    GET  /health       liveness, the models found and loaded, batching counts
    GET  /docs         FastAPI's OpenAPI page (/openapi.json)
    GET  /             the web page; /reports/... the project's reports (read-only, no listings)

Models are discovered (their cards read and checked against the model files) when the app is created; a
model is loaded on its first request and then kept (`serve` loads the default one before it starts
listening). Images are decoded exactly as `tlrepro predict` decodes them (`Predictor.decode`), so a
probability here equals the one `predict` writes; requests arriving together share one model call
(`tlrepro.serve.batching`).

Every bad request gets a 4xx answer `{"error": "<what is wrong and what to do>"}`: the size limit
(`serve.max_upload_mb`) is checked on Content-Length and on the body as it is read, before any base64 or
image decoding, and the pixel limit (`serve.max_pixels`) on the image header, before any pixel is decoded.
No endpoint reads or writes a path the client gives: a model is named, and looked up among those found.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import io
import ipaddress
import json
import logging
import math
import socket
import threading
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import BaseModel, Field
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from tlrepro.core import paths
from tlrepro.core.errors import UserError
from tlrepro.data import images
from tlrepro.modeling import cards
from tlrepro.serve.batching import Batcher

log = logging.getLogger("tlrepro.serve")

STATIC = Path(__file__).resolve().parent / "static"
JSON_EXAMPLE = '{"image": "<base64 of the image file>", "model": "<study>/<row>"}'
MULTIPART_OVERHEAD = 64 * 1024  # boundaries, part headers and the `model` field around the file
JSON_OVERHEAD = 8 * 1024  # the JSON around the base64 string
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
            "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


class ApiError(Exception):
    """A request the service refuses: HTTP status and a message saying what is wrong and what to do."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# ---------------------------------------------------------------- response schemas (for /docs)


class ErrorOut(BaseModel):
    error: str = Field(description="what is wrong with the request and what to do")


class PredictionOut(BaseModel):
    predicted_label: str
    probabilities: dict[str, float] = Field(description="one probability per class, in the card's class order")
    model: str = Field(description="<study>/<row> of the model that answered")
    threshold: float | None = Field(description="P(positive class) at or above which a binary model says positive")
    seen_in_training: bool = Field(description="the image nearly matches (perceptual hash) a training image")
    nearest_training_distance: int = Field(description="bits from the nearest training image's hash (65: none known)")


class ExplanationOut(PredictionOut):
    overlay_png: str = Field(description="base64 PNG: Grad-CAM of the predicted class over the resized image")


IMAGE_REQUEST = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {
        "type": "object", "required": ["image"],
        "properties": {"image": {"type": "string", "format": "byte",
                                 "description": "the image file's bytes (PNG, JPEG, GIF, BMP, TIFF), base64; "
                                                "a data: URL is accepted too"},
                       "model": {"type": "string", "description": "<study>/<row> (default: the server's)"}}}},
    "multipart/form-data": {"schema": {
        "type": "object", "required": ["file"],
        "properties": {"file": {"type": "string", "format": "binary"},
                       "model": {"type": "string", "description": "<study>/<row> (default: the server's)"}}}},
}}}
ERRORS = {code: {"model": ErrorOut, "description": text} for code, text in (
    (400, "not base64, not an image, empty, or malformed JSON"), (404, "unknown model"),
    (413, "larger than serve.max_upload_mb, or more pixels than serve.max_pixels"),
    (415, "content type other than application/json or multipart/form-data, or an unsupported image format"),
    (422, "well-formed JSON or form without the expected fields"), (503, "the model cannot be loaded"))}


# ---------------------------------------------------------------- models


@dataclass
class ModelEntry:
    """A discovered model: its card now, its Predictor and batcher once first used."""

    name: str
    path: Path
    card: dict[str, Any]
    predictor: Any = None
    batcher: Batcher | None = None
    failed: str | None = None
    _load_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _explain_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def load(self, max_batch: int, max_wait_ms: float) -> Any:
        """The Predictor (loaded once, thread-safe); an ApiError 503 if the model cannot be loaded."""
        with self._load_lock:
            if self.predictor is None and self.failed is None:
                from tlrepro.modeling.predict import Predictor

                try:
                    predictor = Predictor.load(self.path)
                except UserError as exc:
                    self.failed = str(exc)
                else:
                    self.batcher = Batcher(predictor, max_batch=max_batch, max_wait_ms=max_wait_ms)
                    self.predictor = predictor
            if self.failed is not None:
                raise ApiError(503, f"model `{self.name}` cannot be loaded: {self.failed}")
            return self.predictor

    def explain(self, array: np.ndarray, label: str) -> bytes:
        """Grad-CAM overlay PNG of `label` for one resized uint8 image (one explanation at a time per model)."""
        from tlrepro.modeling.explain import explain_arrays

        with self._explain_lock:
            return explain_arrays(self.predictor, array[None], [label])[0]


def report_link(card: dict[str, Any], reports_dir: Path) -> str | None:
    """/reports/<file> when the card's report (reports/<file>) exists under reports_dir, else None."""
    report = str(card.get("report") or "")
    rel = report.removeprefix("reports/")
    if not report.startswith("reports/") or not rel or rel.startswith("/") or ".." in Path(rel).parts:
        return None
    return f"/reports/{rel}" if (reports_dir / rel).is_file() else None


class Registry:
    """The models found under models_dir (models/pretrained excluded), by <study>/<row> name."""

    def __init__(self, models_dir: Path, default: str | None, settings: Any, reports_dir: Path) -> None:
        from tlrepro.modeling.predict import model_names

        self.models_dir, self.settings, self.reports_dir = models_dir, settings, reports_dir
        self.entries: dict[str, ModelEntry] = {}
        self.skipped: dict[str, str] = {}
        for name in model_names(models_dir):
            path = models_dir / f"{name}.keras"
            try:
                card = cards.read_card(path)
            except UserError as exc:
                self.skipped[name] = str(exc)
                log.warning("skipping %s: %s", name, exc)
                continue
            self.entries[name] = ModelEntry(name, path, card)
        if not self.entries:
            raise UserError(f"No saved model with a card under {paths.relative(models_dir)}"
                            f"{f' ({len(self.skipped)} skipped: ' + next(iter(self.skipped.values())) + ')' if self.skipped else ''}"
                            f": run `dvc repro` to train some, or pass --models <folder>.")
        if default is not None:
            if default not in self.entries:
                raise UserError(f"--default `{default}` is not among the models found under "
                                f"{paths.relative(models_dir)}: {', '.join(self.entries)}.")
            self.default = default
        elif settings.default_model in self.entries:
            self.default = settings.default_model
        else:
            self.default = next(iter(self.entries))
            if settings.default_model:
                log.warning("serve.default_model `%s` not found; the default is %s", settings.default_model,
                            self.default)

    def entry(self, name: str | None) -> ModelEntry:
        name = name or self.default
        if name not in self.entries:
            known = ", ".join(self.entries)
            raise ApiError(404, f"unknown model `{name[:200]}`: use one of {known} (GET /v1/models lists them), "
                                f"or leave `model` out for the default ({self.default}).")
        return self.entries[name]

    async def predictor(self, entry: ModelEntry) -> Any:
        if entry.predictor is not None:
            return entry.predictor
        return await asyncio.to_thread(entry.load, self.settings.max_batch, self.settings.max_wait_ms)

    def summary(self, entry: ModelEntry) -> dict[str, Any]:
        card = entry.card
        weights = card.get("weights") or {}
        return {"name": entry.name, "study": card.get("study"), "row": card.get("row"),
                "backbone": card.get("backbone"),
                "weights": weights.get("source") if isinstance(weights, dict) else weights,
                "image_size": card.get("image_size"), "classes": card.get("classes"),
                "threshold": card.get("threshold"), "metrics": card.get("metrics"),
                "report": report_link(card, self.reports_dir), "default": entry.name == self.default,
                "loaded": entry.predictor is not None}

    async def close(self) -> None:
        for entry in self.entries.values():
            if entry.batcher is not None:
                await entry.batcher.close()


# ---------------------------------------------------------------- reading a request


def _too_large(size: int, limit: int, what: str = "upload") -> ApiError:
    return ApiError(413, f"{what} too large: {size / 1e6:.1f} MB, the limit is {limit / 1e6:g} MB "
                         f"(serve.max_upload_mb): send a smaller image, e.g. a JPEG of the region of interest.")


async def _read_body(request: Request, cap: int, limit: int) -> bytes:
    """The raw body, refused (413) as soon as it is known to exceed `cap` bytes: first on Content-Length,
    then while it streams in (a missing or lying Content-Length changes nothing)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            raise ApiError(400, f"Content-Length `{declared[:40]}` is not a number: send a valid request.") from None
        if length > cap:
            raise _too_large(length, limit)
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > cap:
            raise _too_large(total, limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _base64_image(value: str, limit: int) -> bytes:
    text = value.strip()
    if text.startswith("data:") and "," in text:  # a data: URL, as browsers make them
        text = text.split(",", 1)[1]
    text = "".join(text.split())
    if not text:
        raise ApiError(400, "`image` is empty: put the image file's bytes, base64-encoded, in `image`.")
    estimate = len(text) * 3 // 4 - text[-2:].count("=")
    if estimate > limit:  # refused before decoding
        raise _too_large(estimate, limit, "image")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(400, f"`image` is not valid base64 ({exc}): encode the image file's bytes with standard "
                            f"base64 (RFC 4648), e.g. `base64 -w0 image.jpg`.") from None


def _json_input(body: bytes, limit: int) -> tuple[bytes, str | None]:
    if not body.strip():
        raise ApiError(400, f"the request body is empty: send {JSON_EXAMPLE}.")
    try:
        payload = json.loads(body)
    except UnicodeDecodeError:
        raise ApiError(400, f"the request body is not UTF-8 text, so not JSON: send {JSON_EXAMPLE}, or upload "
                            f"the file as multipart/form-data (field `file`).") from None
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"the request body is not valid JSON ({exc.msg} at line {exc.lineno}, column "
                            f"{exc.colno}): send {JSON_EXAMPLE}.") from None
    if not isinstance(payload, dict):
        raise ApiError(422, f"the JSON body must be an object, not {type(payload).__name__}: send {JSON_EXAMPLE}.")
    if "image" not in payload:
        raise ApiError(422, f"the JSON body has no `image` field: send {JSON_EXAMPLE}.")
    image, model = payload["image"], payload.get("model")
    if not isinstance(image, str):
        raise ApiError(422, f"`image` must be a base64 string, not {type(image).__name__}: send {JSON_EXAMPLE}.")
    if model is not None and not isinstance(model, str):
        raise ApiError(422, f"`model` must be a string naming <study>/<row>, not {type(model).__name__}.")
    return _base64_image(image, limit), model or None


async def _multipart_input(request: Request, body: bytes, limit: int) -> tuple[bytes, str | None]:
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, receive).form(max_files=2, max_fields=8)
    except Exception as exc:  # starlette's MultiPartException / HTTPException(400) on a malformed body
        detail = getattr(exc, "detail", None) or getattr(exc, "message", None) or str(exc) or type(exc).__name__
        raise ApiError(400, f"malformed multipart/form-data body ({detail}): upload the image as form field "
                            f"`file`, e.g. `curl -F file=@image.jpg ...`.") from None
    try:
        upload, model = form.get("file"), form.get("model")
        if upload is None:
            raise ApiError(422, "the upload has no field `file`: send the image as form field `file`, "
                                "e.g. `curl -F file=@image.jpg -F model=<study>/<row> ...`.")
        if not isinstance(upload, UploadFile):
            raise ApiError(422, "field `file` must be a file upload, not a text field: "
                                "e.g. `curl -F file=@image.jpg ...` (mind the @).")
        if model is not None and not isinstance(model, str):
            raise ApiError(422, "field `model` must be text naming <study>/<row>, not a file.")
        if upload.size is not None and upload.size > limit:
            raise _too_large(upload.size, limit, "image")
        data = await upload.read()
    finally:
        await form.close()
    return data, (model or None)


async def read_image_request(request: Request, limit: int) -> tuple[bytes, str | None]:
    """(encoded image bytes, model name or None) from a JSON or multipart request; ApiError otherwise."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media == "application/json" or media.endswith("+json"):
        body = await _read_body(request, math.ceil(limit * 4 / 3) + JSON_OVERHEAD, limit)
        data, model = _json_input(body, limit)
    elif media == "multipart/form-data":
        body = await _read_body(request, limit + MULTIPART_OVERHEAD, limit)
        data, model = await _multipart_input(request, body, limit)
    else:
        raise ApiError(415, f"unsupported content type `{media or 'none'}`: send {JSON_EXAMPLE} as "
                            f"application/json, or upload the image as multipart/form-data in field `file`.")
    if not data:
        raise ApiError(400, "the image is empty (0 bytes): send the image file's bytes.")
    if len(data) > limit:
        raise _too_large(len(data), limit, "image")
    return data, model


def check_header(data: bytes, max_pixels: int) -> None:
    """Format and pixel count from the image header alone (no pixel decoded): a decompression bomb (a small
    file claiming a huge size) is refused here."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:  # lazy: reads the header only
                fmt, width, height = image.format, image.width, image.height
    except Image.DecompressionBombError as exc:
        raise ApiError(413, f"image too large ({exc}): limit {max_pixels:,} pixels (serve.max_pixels); "
                            f"resize it first.") from None
    except Image.UnidentifiedImageError:
        raise ApiError(400, "not an image (no known image format in its bytes): send a PNG or JPEG file.") from None
    except Exception as exc:
        raise ApiError(400, f"cannot read the image header ({' '.join(str(exc).split())[:160] or type(exc).__name__})"
                            f": send a valid PNG or JPEG file.") from None
    if fmt not in images.DECODED_FORMATS:
        raise ApiError(415, f"unsupported image format {fmt}: convert it to PNG or JPEG.")
    if width * height > max_pixels:
        raise ApiError(413, f"image too large: {width}x{height} = {width * height:,} pixels, more than the limit of "
                            f"{max_pixels:,} (serve.max_pixels); resize it first (a file this small claiming this "
                            f"many pixels is a decompression bomb).")


def decode_for(predictor: Any, data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 image resized for the model, perceptual hashes) decoded exactly as `tlrepro predict` does, with
    the card's steps before the model (`Predictor.decode`)."""
    array, bits, ok, reason = predictor.decode(data)
    if not ok:
        text = reason.decode()
        status = 413 if text.startswith("too large") else 415 if text.startswith("unsupported") else 400
        raise ApiError(status, f"the image cannot be used: {text}; send a valid PNG or JPEG file.")
    return array, bits


# ---------------------------------------------------------------- the app


class SecurityHeaders:
    """nosniff everywhere; a strict Content-Security-Policy on the page and its static files."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        page = scope.get("path", "") == "/" or scope.get("path", "").startswith("/static/")

        async def with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]
                if page:
                    headers += [(b"content-security-policy", PAGE_CSP.encode()), (b"x-frame-options", b"DENY")]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


def _serve_settings(params: Any) -> Any:
    from tlrepro.core.config import Serve, load_params

    if params is None:
        return load_params().serve
    if isinstance(params, Serve):
        return params
    if isinstance(params, dict):
        return Serve(**params)
    return params.serve


def create_app(models_dir: Path | str | None = None, default: str | None = None, params: Any = None, *,
               reports_dir: Path | str | None = None) -> FastAPI:
    """The FastAPI app serving every saved model with a card under models_dir (default models/).

    params: the project's Params (default: params.yaml), or just its `serve` section (a config.Serve or a dict).
    default: the model answering requests that name none (else serve.default_model if found, else the first).
    """
    settings = _serve_settings(params)
    models_dir = Path(models_dir) if models_dir is not None else paths.MODELS
    reports_dir = Path(reports_dir) if reports_dir is not None else paths.REPORTS
    registry = Registry(models_dir, default, settings, reports_dir)
    limit = int(settings.max_upload_mb * 1_000_000)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await registry.close()

    app = FastAPI(title="tlrepro", version=_version(), lifespan=lifespan,
                  description="Benign/malignant predictions, with Grad-CAM explanations, from the saved models of "
                              "re-run transfer-learning studies. Send an image as JSON (base64) or as a multipart "
                              "upload; every error is `{\"error\": \"...\"}` with a 4xx status.")
    app.state.registry = registry
    app.state.settings = settings

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(UserError)
    async def _user_error(_: Request, exc: UserError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = f"no such page or endpoint: {request.method} {request.url.path[:200]} (the API is listed at /docs)."
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path[:200]}: see /docs for the methods."
        else:
            message = str(exc.detail)
        return JSONResponse({"error": message}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = ["; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors())]
        return JSONResponse({"error": f"invalid request ({parts[0][:300]}): see /docs."}, status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"error": f"unexpected server error ({type(exc).__name__}): the request was not "
                                      f"processed; the server keeps running. Try again, and report it with the "
                                      f"server log if it persists."}, status_code=500)

    async def prediction(request: Request) -> tuple[dict[str, Any], ModelEntry, np.ndarray]:
        data, name = await read_image_request(request, limit)
        entry = registry.entry(name)  # 404 before any decoding
        check_header(data, settings.max_pixels)
        predictor = await registry.predictor(entry)
        array, bits = await asyncio.to_thread(decode_for, predictor, data)
        row = await entry.batcher.submit(array)
        probs = np.asarray(row, dtype="float64")[None, :]
        label = predictor.labels_of(probs)[0]
        per_class = predictor.probabilities(probs)[0]
        distance = int(predictor.nearest_training(np.array([bits], dtype=np.int64).view(np.uint64))[0])
        answer = {"predicted_label": label,
                  "probabilities": {c: round(float(p), 6) for c, p in zip(predictor.classes, per_class, strict=True)},
                  "model": entry.name,
                  "threshold": None if predictor.threshold is None else float(predictor.threshold),
                  "seen_in_training": bool(distance <= predictor.seen_distance),
                  "nearest_training_distance": distance}
        return answer, entry, array

    @app.post("/v1/predict", response_model=PredictionOut, responses=ERRORS, openapi_extra=IMAGE_REQUEST,
              summary="Label one image (benign or malignant)")
    async def predict(request: Request) -> dict[str, Any]:
        answer, _, _ = await prediction(request)
        return answer

    @app.post("/v1/explain", response_model=ExplanationOut, responses=ERRORS, openapi_extra=IMAGE_REQUEST,
              summary="Label one image and show where the model looked (Grad-CAM)")
    async def explain(request: Request) -> dict[str, Any]:
        answer, entry, array = await prediction(request)
        png = await asyncio.to_thread(entry.explain, array, answer["predicted_label"])
        return {**answer, "overlay_png": base64.b64encode(png).decode("ascii")}

    @app.get("/v1/models", summary="The models served, with their card summaries")
    async def list_models() -> dict[str, Any]:
        return {"default": registry.default, "models": [registry.summary(e) for e in registry.entries.values()]}

    @app.get("/v1/models/{name:path}", responses={404: {"model": ErrorOut}}, summary="One model's full card")
    async def model_card(name: str) -> dict[str, Any]:
        entry = registry.entry(name)
        return {**registry.summary(entry), "card": cards.card_summary(entry.card)}

    @app.get("/health", summary="Liveness, models found and loaded, batching counts")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "default": registry.default, "models": len(registry.entries),
                "loaded": [n for n, e in registry.entries.items() if e.predictor is not None],
                "skipped": registry.skipped,
                "batching": {"max_batch": settings.max_batch, "max_wait_ms": settings.max_wait_ms,
                             **{n: e.batcher.stats.as_dict() for n, e in registry.entries.items() if e.batcher}}}

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    if reports_dir.is_dir():
        app.mount("/reports", StaticFiles(directory=reports_dir, html=False), name="reports")
    app.add_middleware(SecurityHeaders)
    return app


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("tlrepro")
    except Exception:
        return "0"


def _check_port(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise UserError(f"cannot listen on {host}:{port} ({exc.strerror or exc}): pass another --port, "
                            f"or stop what uses it.") from None


def serve(models_dir: Path | str | None = None, host: str = "127.0.0.1", port: int = 8000,
          default: str | None = None) -> None:
    """Run the service with uvicorn (loopback only unless `host` says otherwise) until interrupted."""
    import uvicorn

    if not 0 < int(port) < 65536:
        raise UserError(f"--port must be 1..65535, not {port}.")
    app = create_app(models_dir, default)
    registry: Registry = app.state.registry
    _check_port(host, port)
    print(f"loading the default model {registry.default} ...", flush=True)
    try:
        registry.entry(None).load(app.state.settings.max_batch, app.state.settings.max_wait_ms)
    except ApiError as exc:
        raise UserError(exc.message) from None
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        print(f"warning: listening on {host}, reachable from other machines: the API has no authentication.")
    shown = f"[{host}]" if ":" in host else host
    print(f"serving {len(registry.entries)} model(s) (default {registry.default}) at http://{shown}:{port}/ "
          f"(API docs at /docs); Ctrl-C stops", flush=True)
    uvicorn.run(app, host=host, port=int(port), log_level="info")
