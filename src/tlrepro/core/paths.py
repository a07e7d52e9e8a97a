"""Every path of the project, anchored to the project root (never to the current directory).

Study outputs (metrics, plots, timings, models) go through `study_output`: while `tlrepro run` executes a
notebook it points them at a staging folder and moves them into place only when the whole notebook
succeeded, so a failed run never replaces a previous run's results.
"""

from __future__ import annotations

import os
from pathlib import Path

STAGING_ENV = "TLREPRO_STAGING"


def _find_root() -> Path:
    """The folder holding params.yaml: $TLREPRO_ROOT, else the nearest one above the cwd, else the source tree's."""
    if env := os.environ.get("TLREPRO_ROOT"):
        return Path(env).resolve()
    for start in (Path.cwd(), Path(__file__).resolve()):
        for folder in (start, *start.parents):
            if (folder / "params.yaml").is_file() and (folder / "dvc.yaml").is_file():
                return folder
    return Path(__file__).resolve().parents[3]


PROJECT_ROOT: Path
DATA = RAW = DERIVED = INDEX = SPLITS = REPORTS = METRICS = PLOTS = MODELS = PRETRAINED = NOTEBOOKS = EXECUTED = Path()
PARAMS_FILE: Path


def set_root(root: Path | str) -> None:
    """Anchor every path at `root` (tests point the package at a throwaway project this way)."""
    global PROJECT_ROOT, DATA, RAW, DERIVED, INDEX, SPLITS, REPORTS, METRICS, PLOTS, MODELS, PRETRAINED
    global NOTEBOOKS, EXECUTED, PARAMS_FILE
    PROJECT_ROOT = Path(root)
    DATA = PROJECT_ROOT / "data"
    RAW, DERIVED, INDEX, SPLITS = DATA / "raw", DATA / "derived", DATA / "index", DATA / "splits"
    REPORTS = PROJECT_ROOT / "reports"
    METRICS, PLOTS, EXECUTED = REPORTS / "metrics", REPORTS / "plots", REPORTS / "notebooks"
    MODELS = PROJECT_ROOT / "models"
    PRETRAINED = MODELS / "pretrained"
    NOTEBOOKS = PROJECT_ROOT / "notebooks"
    PARAMS_FILE = PROJECT_ROOT / "params.yaml"


set_root(_find_root())


def _main_workspace(root: Path) -> Path:
    """Queued DVC experiments run in copies under .dvc/tmp/exps; caches belong to the main workspace."""
    parts = root.parts
    for i in range(len(parts) - 2):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return root


def feature_cache_dir() -> Path:
    """Where frozen-network outputs are cached, keyed by content (see tlrepro.modeling.frozen_cache)."""
    if env := os.environ.get("TLREPRO_FEATURE_CACHE"):
        return Path(env)
    return _main_workspace(PROJECT_ROOT) / "data" / "features"


def raw_dir(key: str) -> Path:
    return RAW / key


def derived_dir(key: str) -> Path:
    return DERIVED / key


def index_csv(key: str) -> Path:
    return INDEX / f"{key}.csv"


def rejected_csv(key: str) -> Path:
    return INDEX / f"{key}.rejected.csv"


def duplicates_csv(key: str) -> Path:
    return INDEX / f"{key}.duplicates.csv"


def derived_json(key: str) -> Path:
    """What a derived dataset was made from and how (written by its derive stage)."""
    return INDEX / f"{key}.derived.json"


def warnings_json(key: str) -> Path:
    """What prepare / derive found odd about a dataset (tlrepro.data.sanity), for the stage output and reports."""
    return INDEX / f"{key}.warnings.json"


def overlap_json() -> Path:
    return DATA / "overlap.json"


def split_csv(study: str) -> Path:
    return SPLITS / f"{study}.csv"


def leakage_json(study: str) -> Path:
    """The split's leakage counts, a DVC metric kept in git beside the studies' metrics (not under data/, which
    a fresh clone lacks until the data stages run)."""
    return REPORTS / "leakage" / f"{study}.json"


def leakage_details_json(study: str) -> Path:
    return SPLITS / f"{study}.leakage.details.json"


def pretrained_model(key: str) -> Path:
    return PRETRAINED / f"{key}.keras"


def card_of(model_path: Path | str) -> Path:
    """The model card beside a saved model: models/<study>/<row>.keras -> <row>.card.json."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.stem + ".card.json")


def staging_dir() -> Path | None:
    env = os.environ.get(STAGING_ENV)
    return Path(env) if env else None


def interactive_dir(study: str) -> Path:
    """Where a notebook run by hand (JupyterLab's Run All, Colab) stages its outputs: never over DVC's own."""
    return REPORTS / "interactive" / study


def by_hand() -> bool:
    """True while a notebook run by hand writes its outputs to reports/interactive/ (tlrepro.reports.nbsetup)."""
    stage = staging_dir()
    return stage is not None and stage.resolve().parent == (REPORTS / "interactive").resolve()


def study_output(relative_path: str | Path) -> Path:
    """Where a study writes one of its outputs (relative to the project root): staged while `tlrepro run` runs."""
    stage = staging_dir()
    return (stage if stage is not None else PROJECT_ROOT) / relative_path


def study_outputs(study: str) -> dict[str, str]:
    """Every output a study stage owns, relative to the project root: what `tlrepro run` stages and commits."""
    return {
        "metrics": f"reports/metrics/{study}.json",
        "details": f"reports/metrics/{study}.details.json",
        "timings": f"reports/timings/{study}.json",
        "plots": f"reports/plots/{study}",
        "training": f"reports/training/{study}",  # DVCLive: one folder per fit (tlrepro.modeling.training.StageLive)
        "models": f"models/{study}",
    }


def metrics_json(study: str) -> Path:
    return METRICS / f"{study}.json"


def details_json(study: str) -> Path:
    return METRICS / f"{study}.details.json"


def relative(path: Path | str) -> str:
    """A path as people should read it: relative to the project root where possible."""
    try:
        return str(Path(path).resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path)
