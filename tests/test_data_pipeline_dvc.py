"""End to end: the real data stages of dvc.yaml under `dvc repro`, fed by a generated Kaggle mirror."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
STUDIES = ("lin2024", "kumar2022")
DATA_STAGES = ("download", "prepare", "derive", "overlap", "split")


def make_project(root: Path) -> None:
    """The real data stages of dvc.yaml and the real params of two studies (skin and BreakHis)."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {k: stages[k] for k in DATA_STAGES}}, sort_keys=False))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["datasets"] = {k: params["datasets"][k] for k in ("skin", "breakhis")}
    params["derived"], params["pretraining"] = {}, {}
    params["studies"] = {s: params["studies"][s] for s in STUDIES}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copytree(REPO / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))


@pytest.mark.slow
def test_dvc_repro_data_stages(tmp_path, kaggle_mirror):
    root = tmp_path / "project"
    root.mkdir()
    make_project(root)
    venv_bin = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAGGLE_", "DVC_"))}
    env.update(
        PATH=f"{venv_bin}{os.pathsep}{env.get('PATH', '')}",
        TLREPRO_ROOT=str(root),
        KAGGLE_MIRROR=str(kaggle_mirror),
        DVC_NO_ANALYTICS="1",
    )

    def dvc(*args: str) -> str:
        result = subprocess.run(
            [str(venv_bin / "dvc"), *args], cwd=root, env=env, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout + result.stderr

    dvc("init", "--no-scm")
    targets = ["split@lin2024", "split@kumar2022", "overlap"]
    dvc("repro", *targets)

    assert (root / "data/raw/skin/train/Benign/b0.jpg").is_file()
    assert (root / "data/raw/breakhis/BreaKHis_v1").is_dir()
    index = pd.read_csv(root / "data/index/skin.csv")
    # 17 distinct images plus one byte-identical file under another name (kept, reported)
    assert len(index) == 18 and index["label"].value_counts().to_dict() == {"benign": 9, "malignant": 9}
    assert len(pd.read_csv(root / "data/index/skin.rejected.csv")) == 5  # 4 bad images and a README.txt
    assert len(pd.read_csv(root / "data/index/skin.duplicates.csv")) == 18

    lin = pd.read_csv(root / "data/splits/lin2024.csv")
    assert len(lin) == 18 and set(lin["side"]) == {"train", "val", "test"}
    assert (lin["side"] == "test").equals(lin["source_split"] == "test")
    kumar = json.loads((root / "data/splits/kumar2022.leakage.json").read_text())
    assert kumar["patient"]["patients_on_several_sides"] == 0
    # the byte-identical pair is leakage exactly when the split puts its two files on different sides
    pair = lin[lin["sha256"].duplicated(keep=False)]
    leaked = int(pair["side"].nunique() > 1)
    audit = json.loads((root / "data/splits/lin2024.leakage.json").read_text())
    assert audit["source"]["exact_duplicate_pairs"] == leaked
    overlap = json.loads((root / "data/overlap.json").read_text())
    assert overlap["matrix"]["skin"]["breakhis"]["exact"] == 0 and overlap["datasets"]["skin"] == 18

    again = dvc("repro", *targets)
    assert "didn't change" in again or "is cached" in again, again
    assert "Running stage" not in again
    assert "up to date" in dvc("status")
    assert "exact_duplicate_pairs" in dvc("metrics", "show")
