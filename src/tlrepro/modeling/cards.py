"""Saved models and their cards: models/<study>/<row>.keras with <row>.card.json beside it.

The card says everything needed to use the model without the pipeline: backbone and weights source (with
the weights file's sha256), head, input size and colour range, preprocessing (inside the model), class
names, decision threshold, training settings, data and split fingerprints, headline metrics, and the
perceptual hashes of the training images (so predictions can say whether an image was seen in training).
It also holds the sha256 of the .keras file: a card that does not match its model is refused.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlrepro.core import fileio, paths
from tlrepro.core.errors import UserError

if TYPE_CHECKING:
    import keras

CARD_FORMAT = "tlrepro.model-card/1"


def save(model: keras.Model, path: Path | str, card: dict[str, Any]) -> tuple[Path, Path]:
    """Write the model (.keras) and its card atomically; the card records the model file's sha256."""
    path = Path(path)
    if path.suffix != ".keras":
        raise ValueError(f"a model path must end with .keras, not {path.name}")
    with fileio.atomic_path(path, suffix=".keras") as tmp:  # Keras insists on the extension
        model.save(tmp, overwrite=True)
        digest = fileio.file_sha256(tmp)
    card_path = paths.card_of(path)
    fileio.write_json(card_path, {**card, "format": CARD_FORMAT, "model_file": path.name, "model_sha256": digest})
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
    return card


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
    return model, card


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
    """The part of a card people and the service show: no training hashes."""
    return {k: v for k, v in card.items() if k != "training_phashes"}
