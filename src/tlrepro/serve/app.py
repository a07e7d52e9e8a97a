"""`tlrepro serve`: a REST API and a web page over the saved models (models/<study>/<row>.keras + card).

    POST /v1/predict   {"image": "<base64>", "model": "<study>/<row>"} (JSON; model optional), or a
                       multipart upload (field `file`, optional field `model`); `model` may also be given as
                       ?model= -> the label, the class probabilities, the threshold and whether the image
                       nearly matches a training image
    POST /v1/explain   the same input -> the prediction plus `overlay_png`: Grad-CAM of the predicted class
                       (last convolutional block) over the image at the model's input size, base64 PNG
    GET  /v1/models    every model's card summary, and which one is the default and why
    GET  /health       liveness (`loading` until the default model is ready), the models found and loaded,
                       batching and queue counts
    GET  /docs         FastAPI's OpenAPI page (/openapi.json)
    GET  /             the web page (tlrepro.serve.page); /reports/<name>.html the rendered reports

How a request flows, and where it can be refused (every refusal is `{"error": "..."}`):
- the guard (tlrepro.serve.guard): a foreign Host is a 421, a POST from another web page a 403;
- the body is read on the event loop, refused (413) past serve.max_upload_mb;
- a request its model's queue would refuse anyway (below) is refused there and then, when the body's bytes
  name its model plainly;
- parsing and decoding run in the decoding threads (tlrepro.serve.inputs; a 503 when serve.max_queue jobs
  are already in hand there), the image decoded once, as `tlrepro predict` decodes it, so a probability here
  equals the one `predict` writes (an image under serve.min_image_side pixels a side is a 422);
- a model not loaded yet is loaded and warmed up first (tlrepro.serve.registry): that wait is not counted
  in the request's deadline;
- /v1/predict: the model call is batched with its neighbours in the model's own thread
  (tlrepro.serve.batching; a 503 at once when serve.max_queue requests wait, or when the work ahead and its
  own call would end past its deadline: checked before the image is decoded and again on arrival);
- /v1/explain: the prediction and Grad-CAM run together in the explain threads (serve.explain_workers; a
  503 past serve.max_explain_queue), never in the predict queue, which never waits for them either;
- a request not answered within serve.deadline_s is a 503. Every 503 for load carries Retry-After.
Every error is `{"error": ...}` (for programs: it may name settings), with `message` beside it when a person
at the web page needs other words. /health does no work beyond reading counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tlrepro.core import paths
from tlrepro.modeling import cards
from tlrepro.serve import inputs
from tlrepro.serve.batching import Lane
from tlrepro.serve.guard import Guard
from tlrepro.serve.page import add_page
from tlrepro.serve.registry import ModelEntry, Registry
from tlrepro.serve.schemas import (
    ERRORS,
    IMAGE_REQUEST,
    ApiError,
    ErrorOut,
    ExplanationOut,
    PredictionOut,
    busy,
)

log = logging.getLogger("tlrepro.serve")


def serve_settings(params: Any) -> Any:
    """The `serve` section: from params.yaml (None), a config.Params, a config.Serve or a dict of its fields."""
    from tlrepro.core.config import Serve, load_params

    if params is None:
        return load_params().serve
    if isinstance(params, Serve):
        return params
    if isinstance(params, dict):
        return Serve(**params)
    return params.serve


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

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
        parts = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors())
        return JSONResponse({"error": f"invalid request ({parts[:300]}): see /docs."}, status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"error": f"unexpected server error ({type(exc).__name__}): the request was not "
                                      f"processed; the server keeps running. Try again, and report it with the "
                                      f"server log if it persists.",
                             "message": "Something went wrong on the server and the image was not labelled. "
                                        "Please try again."}, status_code=500)


class Deadline:
    """A request's deadline (asyncio.timeout_at), which a wait that is not the request's own can pause."""

    def __init__(self, timeout: asyncio.Timeout) -> None:
        self.timeout = timeout

    def monotonic(self) -> float:
        """The deadline on time.monotonic's clock (what the batcher compares with, from any thread)."""
        when = self.timeout.when()
        return float("inf") if when is None else time.monotonic() + when - asyncio.get_running_loop().time()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        left = (self.timeout.when() or loop.time()) - loop.time()
        self.timeout.reschedule(None)
        try:
            yield
        finally:
            self.timeout.reschedule(loop.time() + left)


def create_app(models_dir: Path | str | None = None, default: str | None = None, params: Any = None, *,
               reports_dir: Path | str | None = None, allow_hosts: tuple[str, ...] = (),
               allow_origins: tuple[str, ...] = ()) -> FastAPI:
    """The FastAPI app serving every saved model with a card under models_dir (default models/).

    params: the project's Params (default: params.yaml), or just its `serve` section (a config.Serve or a dict).
    default: the model answering requests that name none (else serve.default_model, else the best
    ImageNet-initialised model by validation accuracy). allow_hosts / allow_origins add to the settings'.
    """
    from tlrepro.core.config import Serve

    settings = serve_settings(params)
    settings = Serve(**{**settings.model_dump(), "allow_hosts": [*settings.allow_hosts, *allow_hosts],
                        "allow_origins": [*settings.allow_origins, *allow_origins]})
    models_dir = Path(models_dir) if models_dir is not None else paths.MODELS
    reports_dir = Path(reports_dir) if reports_dir is not None else paths.REPORTS
    registry = Registry(models_dir, default, settings, reports_dir)
    limit = int(settings.max_upload_mb * 1_000_000)
    decoding = Lane("decoding", settings.decode_workers, settings.max_queue, "serve.max_queue")
    explaining = Lane("explaining", settings.explain_workers, settings.max_explain_queue, "serve.max_explain_queue")

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if registry.default is not None:  # loaded and warmed up while /health says `loading`
            registry.start_loading(registry.entry(None))
        yield
        await registry.close()
        decoding.close()
        explaining.close()

    app = FastAPI(title="tlrepro", version=_version(), lifespan=lifespan,
                  description="Benign/malignant predictions, with Grad-CAM explanations, from the saved models of "
                              "re-run transfer-learning studies. Send an image as JSON (base64) or as a multipart "
                              "upload; every error is `{\"error\": \"...\"}` with a 4xx or 5xx status.")
    app.state.registry, app.state.settings = registry, settings
    app.state.lanes = {"decoding": decoding, "explaining": explaining}
    _install_error_handlers(app)

    def admit(name: str | None, deadline: float, lane: Lane | None) -> tuple[int, Any]:
        """The model's input size and its card's steps before the model; refused (from a decoding thread) before
        the image is decoded when the request would be refused anyway: its model's queue is full or would keep
        it past its deadline, or (an explanation, `lane`) the explain lane is full."""
        entry = registry.entry(name)
        if lane is not None:
            lane.check_room()
        elif entry.batcher is not None:
            entry.batcher.check_room(deadline)
        return entry.size, entry.prepare

    async def decoded(request: Request, deadline: Deadline, lane: Lane | None = None
                      ) -> tuple[inputs.Upload, ModelEntry, Any]:
        """The request's image decoded for its model, and the model, ready (a load not counted in the deadline)."""
        query = inputs.check_query(request, ("model",))
        kind = inputs.media_kind(request)
        body = await inputs.read_body(request, inputs.body_cap(kind, limit), limit)
        known, hint = inputs.model_hint(kind, body, query.get("model") or None)
        if known and (hint or registry.default) in registry.entries:  # refused here costs no decoding thread
            admit(hint, deadline.monotonic(), lane)
        checked = functools.partial(admit, deadline=deadline.monotonic(), lane=lane)
        upload = await decoding.run(inputs.read_image, kind, request.headers.get("content-type", ""), body,
                                    query.get("model") or None, checked, limit, settings.max_pixels,
                                    settings.min_image_side)
        entry = registry.entry(upload.model)
        if entry.predictor is not None:
            return upload, entry, entry.predictor
        with deadline.paused():
            return upload, entry, await registry.predictor(entry)

    def answer(entry: ModelEntry, predictor: Any, row: np.ndarray, upload: inputs.Upload) -> dict[str, Any]:
        probs = np.asarray(row, dtype="float64")[None, :]
        per_class = predictor.probabilities(probs)[0]
        distance = int(predictor.nearest_training(np.asarray(upload.bits, dtype=np.int64)[None, :].view(np.uint64))[0])
        return {"predicted_label": predictor.labels_of(probs)[0],
                "probabilities": {c: round(float(p), 6) for c, p in zip(predictor.classes, per_class, strict=True)},
                "model": entry.name,
                "threshold": None if predictor.threshold is None else float(predictor.threshold),
                "seen_in_training": bool(distance <= predictor.seen_distance),
                "nearest_training_distance": distance}

    def explained(entry: ModelEntry, predictor: Any, upload: inputs.Upload) -> dict[str, Any]:
        """The answer and its Grad-CAM overlay, both computed in an explain thread."""
        found = answer(entry, predictor, entry.predict_one(upload.array), upload)
        return {**found, "overlay_png": entry.explain(upload.array, found["predicted_label"])}

    @contextlib.asynccontextmanager
    async def within_deadline(request: Request) -> AsyncIterator[Deadline]:
        """The request's deadline; a 503 with Retry-After when it passes before the answer."""
        try:
            async with asyncio.timeout(settings.deadline_s) as timeout:
                yield Deadline(timeout)
        except TimeoutError:
            log.warning("%s not answered within serve.deadline_s (%g s): the server is overloaded",
                        request.url.path, settings.deadline_s)
            raise busy(f"not answered within serve.deadline_s ({settings.deadline_s:g} s): the server is "
                       f"overloaded", registry.retry_after(request.query_params.get("model"))) from None

    @app.post("/v1/predict", response_model=PredictionOut, responses=ERRORS, openapi_extra=IMAGE_REQUEST,
              summary="Label one image (benign or malignant)")
    async def predict(request: Request) -> dict[str, Any]:
        async with within_deadline(request) as deadline:
            upload, entry, predictor = await decoded(request, deadline)
            row = await entry.batcher.submit(upload.array, deadline.monotonic())
        return answer(entry, predictor, row, upload)

    @app.post("/v1/explain", response_model=ExplanationOut, responses=ERRORS, openapi_extra=IMAGE_REQUEST,
              summary="Label one image and show where the model looked (Grad-CAM)")
    async def explain(request: Request) -> dict[str, Any]:
        async with within_deadline(request) as deadline:
            upload, entry, predictor = await decoded(request, deadline, explaining)
            return await explaining.run(explained, entry, predictor, upload)

    @app.get("/v1/models", summary="The models served, with their card summaries, and the default and why")
    async def list_models(request: Request) -> dict[str, Any]:
        inputs.check_query(request)
        return {"default": registry.default, "default_reason": registry.default_reason,
                "models": [registry.summary(e) for e in registry.entries.values()]}

    @app.get("/v1/models/{name:path}", responses={404: {"model": ErrorOut}}, summary="One model's full card")
    async def model_card(name: str, request: Request) -> dict[str, Any]:
        inputs.check_query(request)
        entry = registry.entry(name)
        return {**registry.summary(entry), "card": cards.card_summary(entry.card)}

    @app.get("/health", summary="Liveness (`loading` until the default model is ready), models found and "
                                "loaded, batching and queue counts")
    async def health(request: Request) -> dict[str, Any]:
        inputs.check_query(request)
        return {**registry.health(),
                "limits": {k: getattr(settings, k) for k in ("max_batch", "max_wait_ms", "max_queue", "deadline_s",
                                                              "decode_workers", "explain_workers", "max_explain_queue")},
                "lanes": {name: lane.stats() for name, lane in app.state.lanes.items()}}

    add_page(app, reports_dir, inputs.check_query)
    if settings.allow_origins:  # CORS only when asked, and only for those origins
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.allow_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Content-Type"], max_age=600)
    app.add_middleware(Guard, hosts=settings.allow_hosts, origins=settings.allow_origins)  # outermost
    return app


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("tlrepro")
    except Exception:
        return "0"
