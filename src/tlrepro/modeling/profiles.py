"""Profiles: the `dvc exp run -S` overrides that move the whole pipeline to other hardware, printed by
`tlrepro profile <name>` in the same style as `tlrepro offline-flags`:

    dvc exp run $(tlrepro profile gpu)

`gpu` lifts every cap params.yaml takes to keep CPU runs practical: no `max_epochs` anywhere (the papers'
epoch counts), every layer trains where a row trains only from `trainable_from` (wang2024's whole DenseNet,
with an SE block in every dense block and behind every transition learning), and no quick-pass scale caps.
`compute: auto` then spreads the work over every local GPU with mixed precision. Nothing here imports
TensorFlow: whether a GPU is visible is read from the NVIDIA driver (`/proc/driver/nvidia/gpus`, else
`nvidia-smi -L`) and CUDA_VISIBLE_DEVICES, and when none is, `tlrepro profile gpu` says so in one line on
stderr (the flags still go to stdout, so `$(tlrepro profile gpu)` works the same).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from tlrepro.core import config
from tlrepro.core.errors import UserError

PROFILES = ("gpu",)
NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")  # one folder per GPU the NVIDIA driver sees


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


def visible_gpus() -> int:
    """How many NVIDIA GPUs this process would see (without importing TensorFlow)."""
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
    if hidden is not None and (not hidden.strip() or hidden.strip().startswith("-1")):
        return 0
    if NVIDIA_GPUS.is_dir():
        return sum(1 for _ in NVIDIA_GPUS.iterdir())
    if smi := shutil.which("nvidia-smi"):
        try:
            listed = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return 0
        return sum(1 for line in listed.splitlines() if line.startswith("GPU "))
    return 0


def profile_flags(name: str) -> str:
    if name not in PROFILES:
        raise UserError(f"Unknown profile `{name}`: choose one of {', '.join(PROFILES)}.")
    if not visible_gpus():  # stderr: stdout stays the flags alone, for $(tlrepro profile gpu)
        print("note: no GPU is visible on this machine (no NVIDIA driver, or CUDA_VISIBLE_DEVICES hides them): "
              "these flags lift every CPU cap, so use them on a GPU machine.", file=sys.stderr)
    # `++` (add or override): a capped setting may sit in a study's defaults and be absent from its rows
    return " ".join(f"-S ++{key}" for key in gpu_overrides(config.load_params()))
