"""The study notebooks end to end at tiny scale: real DVC, papermill, TensorFlow and nbconvert.

A generated skin mirror (32x32 images, random weights) feeds the real dvc.yaml stages from download
to the index report, as MONAI's tutorials are smoke-run: every cell executes, every output appears.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
STAGES = ("download", "prepare", "split_lin2024", "split_mobilenet2025", "mobilenet2025", "lin2024", "report")


def make_mirror(folder: Path, per_class: int = 14) -> Path:
    """A skin-like archive: train/test folders, benign darker than malignant, so there is signal."""
    rng = np.random.default_rng(0)
    root = folder / "fanconic" / "skin-cancer-malignant-vs-benign"
    for source, count in (("train", per_class), ("test", per_class // 2)):
        for label, scale in (("benign", 110), ("malignant", 255)):
            (root / source / label).mkdir(parents=True)
            for i in range(count):
                pixels = (rng.random((32, 32, 3)) * scale).astype("uint8")
                Image.fromarray(pixels).save(root / source / label / f"{i}.jpg", quality=95)
    return folder


def make_project(root: Path) -> None:
    """The real stages and notebooks, with params shrunk to seconds: tiny images, random weights."""
    dvc_yaml = yaml.safe_load((REPO / "dvc.yaml").read_text())
    dvc_yaml["stages"] = {k: v for k, v in dvc_yaml["stages"].items() if k in STAGES}
    (root / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml, sort_keys=False))

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["datasets"] = {"skin": params["datasets"]["skin"]}
    params["scale"]["max_epochs"] = 2
    params["evaluation"]["bootstrap_resamples"] = 50
    for study in ("sarker2025", "kumar2022", "wang2024"):
        params.pop(study)
    params["mobilenet2025"].update(dataset="skin", image_size=32, weights="random", batch_size=8)
    params["lin2024"].update(image_size=32, backbones=["MobileNetV2", "VGG16"], learning_rates=[1e-3, 5e-3],
                             epochs=[1, 2], weights={b: "random" for b in params["lin2024"]["weights"]})
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for folder in ("src", "notebooks"):
        shutil.copytree(REPO / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))


@pytest.mark.slow
def test_studies_run_end_to_end_and_reproduce(tmp_path):
    root = tmp_path / "project"
    root.mkdir()
    make_project(root)
    venv_bin = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAGGLE_", "DVC_", "IMAGENET_"))}
    env.update(PATH=f"{venv_bin}{os.pathsep}{env.get('PATH', '')}", TLREPRO_ROOT=str(root),
               KAGGLE_MIRROR=str(make_mirror(tmp_path / "mirror")), DVC_NO_ANALYTICS="1",
               TLREPRO_FEATURE_CACHE=str(tmp_path / "features"))

    def dvc(*args: str, stdout_only: bool = False) -> str:
        result = subprocess.run([str(venv_bin / "dvc"), *args], cwd=root, env=env, capture_output=True,
                                text=True, timeout=900)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return result.stdout if stdout_only else result.stdout + result.stderr

    dvc("init", "--no-scm")
    dvc("repro", "report")

    for study, rows in (("mobilenet2025", {"frozen", "finetune", "augmented"}), ("lin2024", {"MobileNetV2", "VGG16"})):
        metrics = json.loads((root / f"reports/metrics/{study}.json").read_text())
        assert set(metrics["results"]) == rows and metrics["dataset"] == "skin"
        assert metrics["random_init"], "random weights must be declared in the metrics"
        for figures in metrics["results"].values():
            assert 0 <= figures["accuracy"] <= 1 and figures["accuracy_ci_low"] <= figures["accuracy"]
        executed = nbformat.read(root / f"reports/notebooks/{study}.ipynb", as_version=4)
        assert not [o for c in executed.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
        html = (root / f"reports/{study}.html").read_text()
        assert "RANDOM INITIALISATION" in html and "<img" in html
        assert "experiment.load_study" not in html, "the report hides the code"
    grid = (root / "reports/plots/lin2024/grid.csv").read_text().splitlines()
    assert len(grid) == 1 + 2 * 2 * 2  # header + backbones x learning rates x budgets
    assert {p.name for p in (root / "reports/plots/mobilenet2025/history").iterdir()} == {
        "frozen.csv", "finetune.csv", "augmented.csv"}
    index = (root / "reports/index.html").read_text()
    assert "lin2024.html" in index and "mobilenet2025.html" in index

    # nothing changed: nothing runs
    assert "didn't change" in dvc("repro", "report") or "up to date" in dvc("status")

    # same parameters, same metrics, byte for byte
    before = {s: (root / f"reports/metrics/{s}.json").read_bytes() for s in ("lin2024", "mobilenet2025")}
    dvc("repro", "--force", "--single-item", "lin2024", "mobilenet2025")
    for study, content in before.items():
        assert (root / f"reports/metrics/{study}.json").read_bytes() == content, study

    # a learning rate changes only the lin2024 stage, not the data stages
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["lin2024"]["learning_rates"] = [1e-3]
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    stale = json.loads(dvc("status", "--json", stdout_only=True))
    assert set(stale) == {"lin2024"}, stale
