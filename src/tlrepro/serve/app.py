"""`tlrepro serve`: a REST API and a web page over the saved models (models/<study>/<row>.keras + card).

    POST /v1/predict   {"image": "<base64>", "model": "<study>/<row>"} (JSON; model optional), or a
                       multipart upload (field `file`, optional field `model`); `model` may also be given as
                       ?model= -> the label, the class probabilities, the threshold and whether the image
                       nearly matches a training image
    POST /v1/explain   the same input -> the prediction plus `overlay_png`: Grad-CAM of the predicted class
                       (last convolutional block) over the image at the model's input size, base64 PNG
    GET  /v1/models    every model's card summary, and which one is the default and why
    GET  /health       liveness, the models found and loaded, batching and queue counts
    GET  /docs         FastAPI's OpenAPI page (/openapi.json)
    GET  /             the web page (tlrepro.serve.page); /reports/<name>.html the rendered reports

How a request flows, and where it can be refused (every refusal is `{"error": "..."}`):
- the guard (tlrepro.serve.guard): a foreign Host is a 421, a POST from another web page a 403;
- the body is read on the event loop, refused (413) past serve.max_upload_mb;
- parsing and decoding run in the decoding threads (tlrepro.serve.inputs; a 503 when serve.max_queue jobs
  are already in hand there), the image decoded once, as `tlrepro predict` decodes it, so a probability here
  equals the one `predict` writes;
- the model call is batched with its neighbours in the model's own thread (tlrepro.serve.batching; a 503 at
  once when serve.max_queue requests wait, checked before the image is decoded and again on arrival, or
  when the queue would keep this one past its deadline);
- /v1/explain then computes Grad-CAM in the explain threads (serve.explain_workers; a 503 past
  serve.max_explain_queue), which predictions never wait for;
- a request not answered within serve.deadline_s is a 503. Every 503 for load carries Retry-After.
/health does no work beyond reading counters, so it answers at once under any load.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
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
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)

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
                                      f"server log if it persists."}, status_code=500)


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

    def admit(name: str | None) -> tuple[int, Any]:
        """The model's input size and its card's steps before the model; refused (from a decoding thread) before
        the image is decoded when its queue is already full: under overload the decoding would be wasted."""
        entry = registry.entry(name)
        if entry.batcher is not None:
            entry.batcher.check_room()
        return entry.size, entry.prepare

    async def prediction(request: Request, deadline: float) -> tuple[dict[str, Any], ModelEntry, np.ndarray]:
        query = inputs.check_query(request, ("model",))
        kind = inputs.media_kind(request)
        body = await inputs.read_body(request, inputs.body_cap(kind, limit), limit)
        upload = await decoding.run(inputs.read_image, kind, request.headers.get("content-type", ""), body,
                                    query.get("model") or None, admit, limit, settings.max_pixels)
        entry = registry.entry(upload.model)
        predictor = await registry.predictor(entry)
        row = await entry.batcher.submit(upload.array, deadline)
        probs = np.asarray(row, dtype="float64")[None, :]
        label = predictor.labels_of(probs)[0]
        per_class = predictor.probabilities(probs)[0]
        distance = int(predictor.nearest_training(np.asarray(upload.bits, dtype=np.int64)[None, :].view(np.uint64))[0])
        answer = {"predicted_label": label,
                  "probabilities": {c: round(float(p), 6) for c, p in zip(predictor.classes, per_class, strict=True)},
                  "model": entry.name,
                  "threshold": None if predictor.threshold is None else float(predictor.threshold),
                  "seen_in_training": bool(distance <= predictor.seen_distance),
                  "nearest_training_distance": distance}
        return answer, entry, upload.array

    @contextlib.asynccontextmanager
    async def within_deadline(request: Request) -> AsyncIterator[float]:
        """The request's deadline (loop time); a 503 with Retry-After when it passes before the answer."""
        deadline = asyncio.get_running_loop().time() + settings.deadline_s
        try:
            async with asyncio.timeout_at(deadline):
                yield deadline
        except TimeoutError:
            raise busy(f"not answered within serve.deadline_s ({settings.deadline_s:g} s): the server is "
                       f"overloaded", registry.retry_after(request.query_params.get("model"))) from None

    @app.post("/v1/predict", response_model=PredictionOut, responses=ERRORS, openapi_extra=IMAGE_REQUEST,
              summary="Label one image (benign or malignant)")
    async def predict(request: Request) -> dict[str, Any]:
        async with within_deadline(request) as deadline:
            answer, _, _ = await prediction(request, deadline)
        return answer

    @app.post("/v1/explain", response_model=ExplanationOut, responses=ERRORS, openapi_extra=IMAGE_REQUEST,
              summary="Label one image and show where the model looked (Grad-CAM)")
    async def explain(request: Request) -> dict[str, Any]:
        async with within_deadline(request) as deadline:
            answer, entry, array = await prediction(request, deadline)
            overlay = await explaining.run(entry.explain, array, answer["predicted_label"])
        return {**answer, "overlay_png": overlay}

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

    @app.get("/health", summary="Liveness, models found and loaded, batching and queue counts")
    async def health(request: Request) -> dict[str, Any]:
        inputs.check_query(request)
        return {"status": "ok", **registry.health(),
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
