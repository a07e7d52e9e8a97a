"""The models a server offers: found under models/ with their cards, loaded and warmed up, and the default one.

Loading a model means reading it, tracing its forward pass for the batch sizes the batcher forms, measuring
them (the batcher's wait estimates start from these steady-state times) and running one Grad-CAM: all of it
in one loader thread, before the model answers anything. The default model is loaded as the server starts
(/health says "loading" until it is ready); another model is loaded on its first request, and a request
waits for that outside its deadline (at most serve.max_queue requests wait for a load; more get a 503).

The default (the model answering requests that name none) is, unless --default or serve.default_model names
one, the ImageNet-initialised model with the best validation accuracy in its card; a randomly initialised
model never becomes the default by itself. Test-side figures are never used to choose. /v1/models says which
model is the default and why.

Nothing the service answers holds a filesystem path: reasons why a model was skipped or cannot be loaded
are told relative to the models folder (the full reason goes to the server log).
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import functools
import logging
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tlrepro.core.errors import UserError
from tlrepro.modeling import cards
from tlrepro.serve.batching import Batcher, LoadStopped
from tlrepro.serve.schemas import ApiError, busy

log = logging.getLogger("tlrepro.serve")
REPORT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\.html")  # reports/<name>.html: all that /reports/ serves
ABSOLUTE_PATH = re.compile(r"(?<![\w.])(?:[A-Za-z]:)?[/\\](?:[^\s/\\`'\"]+[/\\])+[^\s`'\"]*")


def without_paths(text: str, *folders: Path) -> str:
    """`text` with every mention of a folder (as given, resolved, or relative to the project) removed, and any
    other absolute path replaced by <path>: what a client may be told."""
    from tlrepro.core import paths

    for folder in folders:
        for form in {str(folder.resolve()), str(folder), paths.relative(folder)} - {"", "."}:
            text = text.replace(form.rstrip("/\\") + "/", "").replace(form, "<folder>")
    return ABSOLUTE_PATH.sub("<path>", text)


def validation_accuracy(card: dict[str, Any]) -> tuple[float, str] | None:
    """(validation accuracy, the card field it came from), or None when the card has none."""
    candidates = (("validation", "accuracy"), ("training", "val_accuracy"), ("training", "mean_val_accuracy"))
    for section, key in candidates:
        value = (card.get(section) or {}).get(key) if isinstance(card.get(section), dict) else None
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value), f"{section}.{key}"
    metrics = card.get("metrics")
    if isinstance(metrics, dict) and metrics.get("side") == "val" and isinstance(metrics.get("accuracy"), int | float):
        return float(metrics["accuracy"]), "metrics.accuracy (evaluated on the validation side)"
    return None


def weights_source(card: dict[str, Any]) -> str | None:
    weights = card.get("weights")
    return weights.get("source") if isinstance(weights, dict) else weights


def report_link(card: dict[str, Any], reports_dir: Path) -> str | None:
    """/reports/<file> when the card's report (reports/<file>.html) is a rendered report under reports_dir."""
    rel = str(card.get("report") or "").removeprefix("reports/")
    return f"/reports/{rel}" if REPORT_NAME.fullmatch(rel) and (reports_dir / rel).is_file() else None


def choose_default(cards_by_name: dict[str, dict[str, Any]], explicit: str | None, setting: str | None
                   ) -> tuple[str | None, str]:
    """(default model or None, why), from --default, else serve.default_model, else the validation figures."""
    for name, how in ((explicit, "--default"), (setting, "serve.default_model in params.yaml")):
        if name is None:
            continue
        if name in cards_by_name:
            caution = (" (randomly initialised: its figures are no evidence of transfer learning)"
                       if weights_source(cards_by_name[name]) == "random" else "")
            return name, f"chosen with {how}{caution}"
        if how == "--default":
            raise UserError(f"--default `{name}` is not among the models found: {', '.join(cards_by_name)}.")
        log.warning("serve.default_model `%s` not found; choosing the default by validation accuracy", name)
    pretrained = [n for n, card in cards_by_name.items() if weights_source(card) == "imagenet"]
    if not pretrained:
        return None, ("every model found is randomly initialised, and none becomes the default by itself "
                      "(start the server with --default to choose one)")
    scored = {n: v for n in pretrained if (v := validation_accuracy(cards_by_name[n])) is not None}
    if not scored:
        return pretrained[0], (f"the first by name of the {len(pretrained)} ImageNet-initialised model(s): no card "
                               f"has a validation figure, and test figures are never used to choose")
    best = min(sorted(scored), key=lambda n: -scored[n][0])  # ties: the first by name
    value, source = scored[best]
    return best, (f"the best validation accuracy ({value:.4f}, the card's {source}) of the {len(scored)} "
                  f"ImageNet-initialised model(s) with a validation figure; randomly initialised models and "
                  f"test figures are never used to choose")


@dataclass
class ModelEntry:
    """A discovered model: its card now, its Predictor and batcher once first used."""

    name: str
    path: Path
    card: dict[str, Any]
    predictor: Any = None  # set once loaded and warmed up: the model is ready
    batcher: Batcher | None = None
    failed: str | None = None  # why it cannot be loaded, fit for clients (no paths)
    loading: concurrent.futures.Future | None = None  # the load under way or done (Registry.start_loading)
    waiting: int = 0  # requests waiting for the load
    _load_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @functools.cached_property
    def prepare(self) -> Any:
        """What the card says to do to an image before the model (e.g. its stain normalizer), or None."""
        return cards.input_transform(self.card)

    @property
    def size(self) -> int:
        return int(self.card["image_size"])

    def load(self, settings: Any, models_dir: Path, stopping: threading.Event | None = None) -> Any:
        """The Predictor, loaded and warmed up once (thread-safe); an ApiError 503 if the model cannot be loaded;
        LoadStopped when `stopping` is set before it is ready (it can be loaded again later)."""
        with self._load_lock:
            if self.predictor is None and self.failed is None:
                from tlrepro.modeling.predict import Predictor

                try:
                    predictor = Predictor.load(self.path)
                    batcher = Batcher(predictor, max_batch=settings.max_batch, max_wait_ms=settings.max_wait_ms,
                                      max_queue=settings.max_queue, deadline_s=settings.deadline_s)
                    batcher.warm_up(self.size, stopping)
                    self._explain_with(predictor, np.zeros((self.size, self.size, 3), np.uint8))  # traces Grad-CAM
                except LoadStopped:
                    raise
                except Exception as exc:  # a UserError says why; anything else is in the log with its traceback
                    log.error("model %s cannot be loaded: %s", self.name, exc, exc_info=not isinstance(exc, UserError))
                    self.failed = without_paths(str(exc) if isinstance(exc, UserError)
                                                else f"{type(exc).__name__}: {exc}", models_dir)
                else:
                    self.batcher, self.predictor = batcher, predictor
                    log.info("model %s is ready (seconds per model call by batch size: %s)", self.name,
                             batcher.times.as_dict())
            if self.failed is not None:
                raise ApiError(503, f"model `{self.name}` cannot be loaded ({self.failed}); choose another model, "
                                    f"and see the server log.",
                               reader=f"The model {self.name} cannot be used at the moment: choose another model.")
            return self.predictor

    def predict_one(self, array: np.ndarray) -> np.ndarray:
        """The model's output row for one resized uint8 image, computed in the calling thread (the explain
        lane: an explanation's prediction never waits in the predict queue)."""
        from tlrepro.serve import batching

        return batching.predict_batch(self.predictor, array[None])[0]

    def explain(self, array: np.ndarray, label: str) -> str:
        """Base64 PNG: Grad-CAM overlay of `label` for one resized uint8 image (runs in the explain lane)."""
        return self._explain_with(self.predictor, array, label)

    def _explain_with(self, predictor: Any, array: np.ndarray, label: str | None = None) -> str:
        from tlrepro.modeling.explain import explain_arrays

        return base64.b64encode(explain_arrays(predictor, array[None], None if label is None else [label])[0]
                                ).decode("ascii")


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
                self.skipped[name] = without_paths(str(exc), models_dir)
                log.warning("skipping %s: %s", name, exc)
                continue
            self.entries[name] = ModelEntry(name, path, card)
        if not self.entries:
            from tlrepro.core import paths

            first = f" ({len(self.skipped)} skipped: {next(iter(self.skipped.values()))})" if self.skipped else ""
            raise UserError(f"No saved model with a card under {paths.relative(models_dir)}{first}: run `dvc repro` "
                            f"to train some, or pass --models <folder>.")
        self.default, self.default_reason = choose_default({n: e.card for n, e in self.entries.items()}, default,
                                                           settings.default_model)
        self._lock, self._one_at_a_time, self._stopping = threading.Lock(), threading.Lock(), threading.Event()

    def entry(self, name: str | None) -> ModelEntry:
        if name is None and self.default is None:
            raise ApiError(400, f"this server has no default model ({self.default_reason}): name one with `model` "
                                f"(in the body or as ?model=): {', '.join(self.entries)}.")
        name = name or self.default
        if name not in self.entries:
            raise ApiError(404, f"unknown model `{name[:200]}`: use one of {', '.join(self.entries)} (GET /v1/models "
                                f"lists them), or leave `model` out for the default ({self.default or 'none'}).")
        return self.entries[name]

    def start_loading(self, entry: ModelEntry) -> concurrent.futures.Future:
        """The model's load: started now (in a daemon thread, one model at a time, so that stopping the server
        never waits for it) unless it was before."""
        with self._lock:
            if entry.loading is None:
                entry.loading = future = concurrent.futures.Future()

                def load() -> None:
                    with self._one_at_a_time:
                        future.set_running_or_notify_cancel()
                        try:
                            future.set_result(entry.load(self.settings, self.models_dir, self._stopping))
                        except LoadStopped:
                            with self._lock:
                                entry.loading = None  # loaded again if the app starts again
                            future.set_exception(ApiError(503, "the server is stopping.",
                                                          reader="The server is stopping."))
                        except BaseException as exc:
                            future.set_exception(exc)

                threading.Thread(target=load, name=f"tlrepro-loader {entry.name}", daemon=True).start()
            return entry.loading

    def loading(self) -> list[str]:
        return [n for n, e in self.entries.items() if e.loading is not None and not e.loading.done()]

    async def predictor(self, entry: ModelEntry) -> Any:
        """The ready model; a model not loaded yet is loaded (or its load waited for) first. The caller keeps
        this wait outside the request's deadline; a 503 at once past serve.max_queue requests waiting."""
        if entry.predictor is not None:
            return entry.predictor
        loading = self.start_loading(entry)
        if not loading.done() and entry.waiting >= self.settings.max_queue:
            raise busy(f"{entry.waiting} requests are waiting for model `{entry.name}` to load, the limit of "
                       f"serve.max_queue", 5.0,
                       reader=f"The model {entry.name} is still starting up. Please try again in a few seconds.")
        entry.waiting += 1
        try:
            return await asyncio.shield(asyncio.wrap_future(loading))
        finally:
            entry.waiting -= 1

    def summary(self, entry: ModelEntry) -> dict[str, Any]:
        card = entry.card
        validation = validation_accuracy(card)
        return {"name": entry.name, "study": card.get("study"), "row": card.get("row"),
                "backbone": card.get("backbone"), "weights": weights_source(card),
                "image_size": card.get("image_size"), "classes": card.get("classes"),
                "threshold": card.get("threshold"), "metrics": card.get("metrics"),
                "validation_accuracy": None if validation is None else validation[0],
                "report": report_link(card, self.reports_dir), "default": entry.name == self.default,
                "loaded": entry.predictor is not None}

    def status(self) -> str:
        """`loading` until the default model is ready, `failed` when it cannot be loaded, else `ok`."""
        entry = self.entries.get(self.default or "")
        if entry is None or entry.predictor is not None:
            return "ok"
        return "failed" if entry.failed is not None else "loading"

    def health(self) -> dict[str, Any]:
        return {"status": self.status(), "default": self.default, "models": len(self.entries),
                "loaded": [n for n, e in self.entries.items() if e.predictor is not None],
                "loading": self.loading(),
                "failed": {n: e.failed for n, e in self.entries.items() if e.failed},
                "skipped": self.skipped,
                "batching": {n: {**e.batcher.stats.as_dict(), "queued": e.batcher.queued(),
                                 "call_seconds": e.batcher.times.as_dict(),
                                 "slower_than_idle": round(e.batcher.times.factor, 3)}
                             for n, e in self.entries.items() if e.batcher}}

    def retry_after(self, name: str | None) -> float:
        entry = self.entries.get(name or self.default or "")
        return entry.batcher.expected_wait() if entry is not None and entry.batcher is not None else 1.0

    async def close(self, wait_s: float = 60.0) -> None:
        """Stop the worker tasks; a load under way is given up at its next step and waited for (at most
        `wait_s`), so that no thread is left running TensorFlow as the process exits."""
        self._stopping.set()
        for entry in self.entries.values():
            if entry.loading is not None and not entry.loading.done():
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(entry.loading)), wait_s)
        self._stopping.clear()
        for entry in self.entries.values():
            if entry.batcher is not None:
                await entry.batcher.close()
