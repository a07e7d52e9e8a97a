"""Every path of the project, anchored to the project root (never to the current directory)."""

from __future__ import annotations

import os
from pathlib import Path


def _find_root() -> Path:
    """The folder holding params.yaml: $TLREPRO_ROOT, else the nearest one above the cwd, else the source tree's."""
    if env := os.environ.get("TLREPRO_ROOT"):
        return Path(env).resolve()
    for start in (Path.cwd(), Path(__file__).resolve()):
        for folder in (start, *start.parents):
            if (folder / "params.yaml").is_file() and (folder / "dvc.yaml").is_file():
                return folder
    return Path(__file__).resolve().parents[2]


PROJECT_ROOT = _find_root()
DATA = PROJECT_ROOT / "data"
RAW = DATA / "raw"
INDEX = DATA / "index"
SPLITS = DATA / "splits"
REPORTS = PROJECT_ROOT / "reports"
METRICS = REPORTS / "metrics"
PLOTS = REPORTS / "plots"
NOTEBOOKS = PROJECT_ROOT / "notebooks"
EXECUTED = REPORTS / "notebooks"
PARAMS_FILE = PROJECT_ROOT / "params.yaml"


def feature_cache_dir() -> Path:
    """Where frozen-backbone features are cached, keyed by content (see tlrepro.features).

    Queued DVC experiments run in copies under .dvc/tmp/exps; they share the main workspace's cache.
    """
    if env := os.environ.get("TLREPRO_FEATURE_CACHE"):
        return Path(env)
    root = PROJECT_ROOT
    parts = root.parts
    for i in range(len(parts) - 2):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            root = Path(*parts[:i])
            break
    return root / "data" / "features"


def raw_dir(key: str) -> Path:
    return RAW / key


def index_csv(key: str) -> Path:
    return INDEX / f"{key}.csv"


def rejected_csv(key: str) -> Path:
    return INDEX / f"{key}.rejected.csv"


def duplicates_csv(key: str) -> Path:
    return INDEX / f"{key}.duplicates.csv"


def split_csv(study: str) -> Path:
    return SPLITS / f"{study}.csv"


def leakage_json(study: str) -> Path:
    return SPLITS / f"{study}.leakage.json"


def metrics_json(study: str) -> Path:
    return METRICS / f"{study}.json"


def relative(path: Path) -> str:
    """A path as people should read it: relative to the project root where possible."""
    try:
        return str(Path(path).resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path)
