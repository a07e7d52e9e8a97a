"""What a run was: the git commit it ran (and whether the code or settings had uncommitted changes), the DVC
experiment, the date, the versions of Python, TensorFlow, Keras and DVC, and the hardware.

Every report's "This run" table, every model card and the index show it (`describe` builds it, `text` writes
it as one line per fact). It varies from run to run, so it goes to details.json, cards and reports, never to
the headline metrics, which stay byte-identical for the same parameters.

DVC tells a stage command which experiment it runs under: `dvc exp run` sets DVC_EXP_NAME and
DVC_EXP_BASELINE_REV (the commit the experiment starts from) in the command's environment
(dvc/repo/experiments/queue/base.py); a plain `dvc repro` sets neither.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import subprocess
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tlrepro.core import paths

# what a run is made of: an uncommitted change here changes what ran (data and outputs are DVC's, not git's,
# and the pipeline's own outputs, rewritten while it runs, must not make every run look "dirty")
INPUTS = ("src", "notebooks", "params.yaml", "dvc.yaml", "pyproject.toml")
PACKAGES = {"TensorFlow": ("tensorflow", "tensorflow-cpu", "tensorflow-macos", "tf-nightly"), "Keras": ("keras",),
            "DVC": ("dvc",)}
SHOWN_CHANGES = 5


def _git(root: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def git_state(root: Path) -> dict[str, Any]:
    """The commit the run started from and the inputs changed since it (tracked and untracked files under
    INPUTS). Under `dvc exp run` that is the experiment's baseline: its `-S` values show as a changed
    params.yaml. Outside a git work tree: DVC's baseline if any, and nothing known about changes."""
    wanted = os.environ.get("DVC_EXP_BASELINE_REV") or "HEAD"
    commit = (_git(root, "rev-parse", "--verify", "--quiet", f"{wanted}^{{commit}}") or "").strip()
    if not commit and wanted != "HEAD":  # a baseline this copy does not hold
        commit = (_git(root, "rev-parse", "--verify", "--quiet", "HEAD^{commit}") or "").strip()
    if not commit:
        return {"commit": os.environ.get("DVC_EXP_BASELINE_REV") or None, "dirty": None, "changed": []}
    changed = (_git(root, "diff", "--name-only", commit, "--", *INPUTS) or "").splitlines()
    changed += (_git(root, "ls-files", "--others", "--exclude-standard", "--", *INPUTS) or "").splitlines()
    changed = sorted({c for c in changed if c})
    return {"commit": commit, "dirty": bool(changed), "changed": changed}


def package_version(names: Sequence[str]) -> str | None:
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def cpu_model() -> str:
    """The CPU's marketing name (Linux /proc/cpuinfo), else what the platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def hardware(gpus: Sequence[str] | None = None) -> dict[str, Any]:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu_model(), "cpu_cores": os.cpu_count(), "cpu_cores_usable": usable, "gpus": list(gpus or [])}


def describe(root: Path | None = None, gpus: Sequence[str] | None = None) -> dict[str, Any]:
    """The run's identity, read now (see `current` for the one a process reports)."""
    return {
        **git_state(root or paths.PROJECT_ROOT),
        "experiment": os.environ.get("DVC_EXP_NAME") or None,
        "baseline": os.environ.get("DVC_EXP_BASELINE_REV") or None,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "versions": {"Python": platform.python_version(),
                     **{what: package_version(names) for what, names in PACKAGES.items()}},
        "hardware": hardware(gpus),
    }


@functools.cache
def _current(gpus: tuple[str, ...]) -> dict[str, Any]:
    return describe(gpus=gpus)


def current(gpus: Sequence[str] | None = None) -> dict[str, Any]:
    """The identity of this process's run, read once (its date is when the run first asked): every report
    section and model card of one run shows the same one."""
    return _current(tuple(gpus or ()))


def commit_text(run: dict[str, Any]) -> str:
    """'1a2b3c4d5e6f + uncommitted changes (params.yaml, src/…)', or 'not a git work tree'."""
    if not run.get("commit"):
        return "not a git work tree"
    text = run["commit"][:12]
    if run.get("dirty"):
        changed = run.get("changed") or []
        more = f", and {len(changed) - SHOWN_CHANGES} more" if len(changed) > SHOWN_CHANGES else ""
        text += f" + uncommitted changes ({', '.join(changed[:SHOWN_CHANGES])}{more})"
    return text


def hardware_text(hw: dict[str, Any]) -> str:
    usable = hw.get("cpu_cores_usable")
    cores = f"{hw.get('cpu_cores')} cores" + (f", {usable} usable" if usable and usable != hw.get("cpu_cores") else "")
    gpus = "; ".join(hw.get("gpus") or []) or "no GPU"
    return f"{hw.get('cpu')} ({cores}); {gpus}"


def text(run: dict[str, Any] | None) -> dict[str, str]:
    """The identity as (fact, value) lines a person reads; {} when there is none (a run before this existed)."""
    if not run:
        return {}
    versions = run.get("versions") or {}
    return {
        "git commit": commit_text(run),
        "DVC experiment": (run["experiment"] + (f" (from {run['baseline'][:12]})" if run.get("baseline") else ""))
        if run.get("experiment") else "none (not run by `dvc exp run`)",
        "date": run.get("date") or "—",
        "versions": ", ".join(f"{k} {versions.get(k) or 'not installed'}" for k in ("Python", *PACKAGES)),
        "hardware": hardware_text(run.get("hardware") or {}),
    }


def quick_pass(provenance: dict[str, Any]) -> str:
    """The banner of a quick pass (a run with any `scale` cap set), saying what was capped; '' for a full run."""
    per_class, epochs, folds = (provenance.get(k) for k in ("max_images_per_class", "max_epochs", "max_folds"))
    caps = [f"at most {per_class} images per class" if per_class else "",
            f"at most {epochs} epochs per training run" if epochs else "",
            f"the first {folds} folds of each cross-validation" if folds else ""]
    caps = [c for c in caps if c]
    if not caps:
        return ""
    capped = " and ".join(caps) if len(caps) < 3 else f"{', '.join(caps[:-1])} and {caps[-1]}"
    return (f"QUICK PASS: {capped} (params.yaml `scale`). These figures show that the pipeline runs; they are not "
            f"the study's results.")


def images_text(provenance: dict[str, Any]) -> str:
    """How many images the run used, against the dataset and the published one: '40 of our 2,776 images (at most
    20 per class: a quick pass); the published set has 13,879' or 'a subset: 2,776 of the published 13,879'."""
    images, published = provenance.get("images"), provenance.get("published_images")
    used, cap = provenance.get("images_in_split"), provenance.get("max_images_per_class")
    if cap and used is not None and images:
        return (f"{used:,} of our {images:,} images used (at most {cap} per class: a quick pass)"
                + (f"; the published set has {published:,}" if published else ""))
    if published and images and images < published:
        return f"a subset: {images:,} of the published {published:,} images"
    return ""
