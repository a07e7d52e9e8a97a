"""Profiles: the `dvc exp run -S` overrides that move the whole pipeline to other hardware, printed by
`tlrepro profile <name>` in the same style as `tlrepro offline-flags`:

    dvc exp run $(tlrepro profile gpu)

`gpu` lifts every cap params.yaml takes to keep CPU runs practical: no `max_epochs` anywhere (the papers'
epoch counts), every layer trains where a row trains only from `trainable_from` (wang2024's whole DenseNet,
with an SE block in every dense block and behind every transition learning), and no quick-pass scale caps.
`compute: auto` then spreads the work over every local GPU with mixed precision. Nothing here imports
TensorFlow.
"""

from __future__ import annotations

from typing import Any

from tlrepro.core import config
from tlrepro.core.errors import UserError

PROFILES = ("gpu",)


def _lift(where: str, settings: Any) -> list[str]:
    """The overrides that lift one `defaults`, row or pretraining `model` section's CPU caps."""
    out = []
    if settings.max_epochs is not None:
        out.append(f"{where}.max_epochs=null")
    if settings.trainable_from is not None:
        out += [f"{where}.trainable_from=null", f"{where}.trainable_layers=all"]
    return out


def gpu_overrides(params: config.Params) -> list[str]:
    keys = [f"scale.{k}=null" for k in ("max_images_per_class", "max_epochs") if getattr(params.scale, k) is not None]
    for study_id, study in params.studies.items():
        keys += _lift(f"studies.{study_id}.defaults", study.defaults)
        for name, row in study.rows.items():
            keys += _lift(f"studies.{study_id}.rows.{name}", row)
    for key, entry in params.pretraining.items():
        keys += _lift(f"pretraining.{key}.model", entry.model)
    return keys


def profile_flags(name: str) -> str:
    if name not in PROFILES:
        raise UserError(f"Unknown profile `{name}`: choose one of {', '.join(PROFILES)}.")
    # `++` (add or override): a capped setting may sit in a study's defaults and be absent from its rows
    return " ".join(f"-S ++{key}" for key in gpu_overrides(config.load_params()))
