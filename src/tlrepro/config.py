"""Reading params.yaml, with errors that name the missing key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tlrepro import paths
from tlrepro.errors import UserError


def load_params(path: Path | None = None) -> dict[str, Any]:
    path = Path(path or paths.PARAMS_FILE)
    if not path.is_file():
        raise UserError(f"{path} not found: run from the project folder, or set TLREPRO_ROOT to it.")
    try:
        params = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(params, dict):
        raise UserError(f"{path} must hold a mapping of sections, e.g. `seed: 42`.")
    return params


def require(params: dict[str, Any], dotted_key: str) -> Any:
    """params['a']['b'] for 'a.b', or a UserError naming the key that is missing."""
    node: Any = params
    for part in dotted_key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise UserError(f"params.yaml has no `{dotted_key}`: add it (see README.md, 'Parameters').")
        node = node[part]
    return node


def study(study_id: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    params = params if params is not None else load_params()
    section = require(params, study_id)
    if not isinstance(section, dict):
        raise UserError(f"params.yaml `{study_id}` must be a section (a mapping).")
    return section


def dataset(key: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    params = params if params is not None else load_params()
    datasets = require(params, "datasets")
    if key not in datasets:
        known = ", ".join(sorted(datasets))
        raise UserError(f"Unknown dataset `{key}`: params.yaml `datasets` has {known}.")
    return datasets[key]


def capped_epochs(epochs: int, params: dict[str, Any]) -> int:
    """An epoch count after the quick-pass cap `scale.max_epochs`."""
    cap = (params.get("scale") or {}).get("max_epochs")
    return int(min(epochs, cap)) if cap else int(epochs)
