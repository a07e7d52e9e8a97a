"""The models a server offers: found under models/ with their cards, loaded on first use, and the default one.

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
from tlrepro.serve.batching import Batcher
from tlrepro.serve.schemas import ApiError

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
    predictor: Any = None
    batcher: Batcher | None = None
    failed: str | None = None  # why it cannot be loaded, fit for clients (no paths)
    _load_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @functools.cached_property
    def prepare(self) -> Any:
        """What the card says to do to an image before the model (e.g. its stain normalizer), or None."""
        return cards.input_transform(self.card)

    @property
    def size(self) -> int:
        return int(self.card["image_size"])

    def load(self, settings: Any, models_dir: Path) -> Any:
        """The Predictor (loaded once, thread-safe); an ApiError 503 if the model cannot be loaded."""
        with self._load_lock:
            if self.predictor is None and self.failed is None:
                from tlrepro.modeling.predict import Predictor

                try:
                    predictor = Predictor.load(self.path)
                except UserError as exc:
                    log.error("model %s cannot be loaded: %s", self.name, exc)
                    self.failed = without_paths(str(exc), models_dir)
                else:
                    self.batcher = Batcher(predictor, max_batch=settings.max_batch, max_wait_ms=settings.max_wait_ms,
                                           max_queue=settings.max_queue)
                    self.predictor = predictor
            if self.failed is not None:
                raise ApiError(503, f"model `{self.name}` cannot be loaded ({self.failed}); choose another model, "
                                    f"and see the server log.")
            return self.predictor

    def explain(self, array: np.ndarray, label: str) -> str:
        """Base64 PNG: Grad-CAM overlay of `label` for one resized uint8 image (runs in the explain lane)."""
        from tlrepro.modeling.explain import explain_arrays

        return base64.b64encode(explain_arrays(self.predictor, array[None], [label])[0]).decode("ascii")


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

    def entry(self, name: str | None) -> ModelEntry:
        if name is None and self.default is None:
            raise ApiError(400, f"this server has no default model ({self.default_reason}): name one with `model` "
                                f"(in the body or as ?model=): {', '.join(self.entries)}.")
        name = name or self.default
        if name not in self.entries:
            raise ApiError(404, f"unknown model `{name[:200]}`: use one of {', '.join(self.entries)} (GET /v1/models "
                                f"lists them), or leave `model` out for the default ({self.default or 'none'}).")
        return self.entries[name]

    async def predictor(self, entry: ModelEntry) -> Any:
        if entry.predictor is not None:
            return entry.predictor
        return await asyncio.to_thread(entry.load, self.settings, self.models_dir)

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

    def health(self) -> dict[str, Any]:
        return {"default": self.default, "models": len(self.entries),
                "loaded": [n for n, e in self.entries.items() if e.predictor is not None],
                "failed": {n: e.failed for n, e in self.entries.items() if e.failed},
                "skipped": self.skipped,
                "batching": {n: {**e.batcher.stats.as_dict(), "queued": e.batcher.queued()}
                             for n, e in self.entries.items() if e.batcher}}

    def retry_after(self, name: str | None) -> float:
        entry = self.entries.get(name or self.default or "")
        return entry.batcher.expected_wait() if entry is not None and entry.batcher is not None else 1.0

    async def close(self) -> None:
        for entry in self.entries.values():
            if entry.batcher is not None:
                await entry.batcher.close()
