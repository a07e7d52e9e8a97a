"""Saved models and their cards: models/<study>/<row>.keras with <row>.card.json beside it.

The card says everything needed to use the model without the pipeline: backbone and weights source (with
the weights file's sha256), head, input size and colour range, preprocessing (inside the model), the steps
done to an image before the model (`before_model`: e.g. stain normalization with its fitted reference),
class names, decision threshold, training settings, data and split fingerprints, headline metrics, the run
that trained it (`run`: git commit, DVC experiment, date, versions, hardware; tlrepro.core.identity), and the
perceptual hashes of the images that shaped the model: training, validation (it chose the epoch) and, for
an `init_from` model, pretraining images (so predictions can say whether an image was seen).
It also holds the sha256 of the .keras file: a card that does not match its model is refused, and so is a
card naming a step before the model that this code does not know (its predictions would be wrong).
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from tlrepro.core import fileio, identity, paths
from tlrepro.core.errors import UserError
from tlrepro.modeling import compute

if TYPE_CHECKING:
    import keras

CARD_FORMAT = "tlrepro.model-card/1"
KNOWN_STEPS = ("stain_normalization",)  # what `before_model` may name: tlrepro.data.stain's CARD_STEP
HASH_LISTS = ("training_phashes", "validation_phashes", "pretraining_phashes", "canonical_phashes")


def save(model: keras.Model, path: Path | str, card: dict[str, Any]) -> tuple[Path, Path]:
    """Write the model (.keras) and its card atomically; the card records the model file's sha256."""
    path = Path(path)
    if path.suffix != ".keras":
        raise ValueError(f"a model path must end with .keras, not {path.name}")
    with fileio.atomic_path(path, suffix=".keras") as tmp:  # Keras insists on the extension
        model.save(tmp, overwrite=True)
        digest = fileio.file_sha256(tmp)
    card_path = paths.card_of(path)
    run = card.get("run") or identity.current(compute.current().gpus)  # the run that trained it
    fileio.write_json(card_path, {**card, "run": run, "format": CARD_FORMAT, "model_file": path.name,
                                  "model_sha256": digest})
    return path, card_path


def read_card(model_path: Path | str) -> dict[str, Any]:
    """The card beside a model, checked to be a card for exactly this file."""
    model_path = Path(model_path)
    if model_path.exists() and not model_path.is_file():
        raise UserError(f"{paths.relative(model_path)} is not a regular file: give a saved .keras model.")
    if not model_path.is_file():
        raise UserError(f"{paths.relative(model_path)} not found: give a saved .keras model (models/<study>/...), "
                        f"or run `dvc repro` for its study.")
    card_path = paths.card_of(model_path)
    if not card_path.is_file():
        raise UserError(f"{paths.relative(model_path)} has no model card ({card_path.name} beside it): only models "
                        f"the pipeline saved can be used, since the card says how to feed them.")
    card = fileio.read_json(card_path, "model card")
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        raise UserError(f"{paths.relative(card_path)} is not a {CARD_FORMAT} card: re-run the study that saved it.")
    try:
        digest = fileio.file_sha256(model_path)
    except OSError as exc:
        raise UserError(f"{paths.relative(model_path)} cannot be read ({exc.strerror or exc}): make it readable, "
                        f"then run again.") from None
    if card.get("model_sha256") != digest:
        raise UserError(f"{paths.relative(card_path)} does not match {model_path.name} (the model file changed "
                        f"after its card was written): re-run the study, or restore the matching pair.")
    for step in card.get("before_model") or []:
        name = step.get("step") if isinstance(step, dict) else step
        if name not in KNOWN_STEPS:
            raise UserError(f"{paths.relative(card_path)} says images go through `{name}` before the model, a step "
                            f"this version of tlrepro does not know ({', '.join(KNOWN_STEPS)}): without it the "
                            f"model would be fed the wrong pixels, so it is refused; use the tlrepro that saved it.")
    return card


def input_transform(card: dict[str, Any]) -> Callable[[np.ndarray], np.ndarray] | None:
    """The card's `before_model` steps as one function on full-size uint8 RGB pixels (None when there are none);
    a step whose settings cannot be rebuilt is a UserError."""
    steps = card.get("before_model") or []
    if not steps:
        return None
    from tlrepro.data.stain import StainNormalizer

    try:
        normalizers = [StainNormalizer.from_card(step) for step in steps]
    except ValueError as exc:
        raise UserError(f"model `{card.get('name')}`: its card's stain normalization cannot be rebuilt ({exc}).") from None

    def prepare(image: np.ndarray) -> np.ndarray:
        for normalizer in normalizers:
            image = normalizer.apply(image)
        return image

    return prepare


def seen_fields(train: pd.DataFrame, val: pd.DataFrame, init_from: str | None = None) -> dict[str, list[str]]:
    """The card's hashes beyond `training_phashes`: the validation images' (as shown), the canonical hashes
    (smallest over the eight rotations and flips, as the split audit compares them) of training, validation
    and pretraining images, and for an `init_from` model the pretraining images' (from its card)."""
    from tlrepro.data.leakage import with_hashes

    shown = {side: with_hashes(frame) for side, frame in (("train", train), ("val", val)) if len(frame)}
    canonical = {h for frame in shown.values() for h in frame["canonical_phash"]}
    out: dict[str, list[str]] = {"validation_phashes": sorted(set(shown["val"]["shown_phash"])) if "val" in shown else []}
    if init_from:
        pretrained = read_card(paths.pretrained_model(init_from))
        out["pretraining_phashes"] = sorted({*pretrained.get("training_phashes", []),
                                             *pretrained.get("validation_phashes", [])})
        canonical |= set(pretrained.get("canonical_phashes", []))
    out["canonical_phashes"] = sorted(canonical)
    return out


def load(model_path: Path | str) -> tuple[keras.Model, dict[str, Any]]:
    """(model, card) of a saved model, loaded with safe_mode (no arbitrary code from the file)."""
    card = read_card(model_path)
    import keras

    import tlrepro.modeling.blocks  # noqa: F401  registers SqueezeExcitation for deserialization
    import tlrepro.modeling.models  # noqa: F401  registers ImageNetPreprocessing

    try:
        model = keras.saving.load_model(model_path, safe_mode=True, compile=False)
    except (ValueError, TypeError, OSError, KeyError, zipfile.BadZipFile) as exc:
        raise UserError(f"{paths.relative(model_path)} is not a loadable Keras model ({type(exc).__name__}: "
                        f"{' '.join(str(exc).split())[:160]}).") from None
    check_agrees(model, card, Path(model_path))
    return model, card


def check_agrees(model: keras.Model, card: dict[str, Any], model_path: Path) -> None:
    """The card must describe this very model: its input size, one output unit per class (one for two
    classes, with a threshold) and its preprocessing layer; otherwise one line says which, before any image."""
    where, name = paths.relative(paths.card_of(model_path)), model_path.name
    fix = "re-run the study that saved the model, or restore the card that belongs to it"
    size, classes = card.get("image_size"), card.get("classes")
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise UserError(f"{where} gives no usable image_size ({size!r}): {fix}.")
    if not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) for c in classes):
        raise UserError(f"{where} gives no usable classes ({classes!r}): {fix}.")
    shape = tuple(model.input_shape)
    if shape[1:] != (size, size, 3):
        taken = "x".join("any" if d is None else str(d) for d in shape[1:])
        raise UserError(f"{where} says {name} takes {size}x{size}x3 images, but the model takes {taken}: {fix}.")
    units, needed = model.output_shape[-1], 1 if len(classes) == 2 else len(classes)
    if units != needed:
        raise UserError(f"{where} names {len(classes)} classes ({', '.join(classes)}), which needs {needed} output "
                        f"unit(s), but {name} has {units}: {fix}.")
    threshold = card.get("threshold")
    if needed == 1 and not (isinstance(threshold, int | float) and not isinstance(threshold, bool)
                            and 0 <= threshold <= 1):
        raise UserError(f"{where} gives no decision threshold between 0 and 1 ({threshold!r}) for its two classes: "
                        f"{fix}.")
    declared = card.get("preprocessing")
    if declared is not None:
        layer = next((layer for layer in model.layers if layer.name == "preprocessing"), None)
        actual = getattr(layer, "mode", None)
        if actual != declared:
            has = f"preprocessing `{actual}`" if actual else "no preprocessing layer"
            raise UserError(f"{where} says {name} preprocesses images as `{declared}`, but the model has {has}: {fix}.")


def resolve(name_or_path: str, models_dir: Path | None = None) -> Path:
    """A model given as a path to a .keras file, or as `<study>/<row>` (or `<study>/<protocol>/<row>`)."""
    candidate = Path(name_or_path)
    if candidate.suffix == ".keras" or candidate.is_file():
        return candidate
    base = models_dir or paths.MODELS
    path = base / f"{name_or_path}.keras"
    if not path.is_file():
        known = sorted(str(p.relative_to(base).with_suffix("")) for p in base.rglob("*.keras")) if base.is_dir() else []
        raise UserError(f"No saved model `{name_or_path}` in {paths.relative(base)}: "
                        f"{'known: ' + ', '.join(known) if known else 'run `dvc repro` to train some'}.")
    return path


def card_summary(card: dict[str, Any]) -> dict[str, Any]:
    """The part of a card people and the service show: no image hashes."""
    return {k: v for k, v in card.items() if k not in HASH_LISTS}
