"""kumar2022 and wang2024 end to end at tiny scale with real DVC, papermill and TensorFlow: BreakHis names
parsed, both protocols run, stain normalization as its own stage, LC25000 pretraining as its own stage that a
BreakHis setting does not rerun, the dihedral audit, per-magnification patient accuracy, saved models."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import build_breakhis_tree, build_lc25000_tree

REPO = Path(__file__).resolve().parents[1]
STUDIES = ("kumar2022", "wang2024")


def make_project(root: Path) -> None:
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["datasets"] = {k: params["datasets"][k] for k in ("breakhis", "lc25000")}
    params["studies"] = {s: params["studies"][s] for s in STUDIES}
    params["scale"]["max_epochs"] = 1
    params["evaluation"]["bootstrap_resamples"] = 100
    kumar = params["studies"]["kumar2022"]
    kumar["defaults"].update(image_size=32, weights="random", batch_size=8)
    kumar["rows"] = {k: kumar["rows"][k] for k in ("VGG16",)}
    wang = params["studies"]["wang2024"]
    wang["defaults"].update(image_size=32, weights="random", batch_size=8, learning_rate=1e-3)
    wang["rows"] = {k: wang["rows"][k] for k in ("DenseNet-SE-transfer",)}  # SE blocks and init_from
    pre = params["pretraining"]["densenet_se_lc25000_lung"]
    pre["model"].update(image_size=32, weights="random", batch_size=8, learning_rate=1e-3)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for folder in ("src", "notebooks", "models"):
        shutil.copytree(REPO / folder, root / folder,
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.keras", "*.card.json"))


@pytest.mark.slow
def test_breakhis_studies_run_end_to_end(tmp_path):
    root = tmp_path / "project"
    root.mkdir()
    make_project(root)
    mirror = tmp_path / "mirror"
    build_breakhis_tree(mirror / "ambarish/breakhis", per_patient=5)
    build_lc25000_tree(mirror / "andrewmvd/lung-and-colon-cancer-histopathological-images", per_class=6)
    venv_bin = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAGGLE_", "DVC_", "IMAGENET_", "TLREPRO_"))}
    env.update(PATH=f"{venv_bin}{os.pathsep}{env.get('PATH', '')}", TLREPRO_ROOT=str(root), KAGGLE_MIRROR=str(mirror),
               DVC_NO_ANALYTICS="1", TLREPRO_FEATURE_CACHE=str(tmp_path / "features"))

    def dvc(*args: str, stdout_only: bool = False) -> str:
        result = subprocess.run([str(venv_bin / "dvc"), *args], cwd=root, env=env, capture_output=True, text=True,
                                timeout=1500)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return result.stdout if stdout_only else result.stdout + result.stderr

    dvc("init", "--no-scm")
    dvc("repro", "report")

    kumar = json.loads((root / "reports/metrics/kumar2022.json").read_text())
    assert set(kumar["results"]) == {f"{p}/{r}" for p in ("image", "patient") for r in ("VGG16",)}
    audit = json.loads((root / "data/splits/kumar2022.leakage.json").read_text())
    assert audit["patient"]["patients_on_several_sides"] == 0 and audit["image"]["patients_on_several_sides"] > 0
    wang = json.loads((root / "reports/metrics/wang2024.json").read_text())
    assert {k.split("/")[0] for k in wang["results"]} == {"paper", "honest"}
    assert all("patient_accuracy" in v for v in wang["results"].values())
    dihedral = json.loads((root / "data/splits/wang2024.leakage.json").read_text())
    assert dihedral["paper"]["dihedral_copy_pairs"] > 0 and dihedral["honest"]["dihedral_copy_pairs"] == 0
    for study in STUDIES:
        html = (root / f"reports/{study}.html").read_text()
        assert "patient-level accuracy" in html and "Grad-CAM" in html and "oneDNN" not in html
    assert (root / "data/index/breakhis_stain.stain.csv").is_file()
    wang_html = (root / "reports/wang2024.html").read_text()
    assert "Stain normalization" in wang_html and "images normalized" in wang_html and "SE blocks" in wang_html
    for name in ("kumar2022/patient/VGG16", "wang2024/honest/DenseNet-SE-transfer", "pretrained/densenet_se_lc25000_lung"):
        assert (root / f"models/{name}.keras").is_file() and (root / f"models/{name}.card.json").is_file(), name

    # a BreakHis setting reruns the BreakHis study only: the LC25000 step is reused
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["studies"]["wang2024"]["defaults"]["learning_rate"] = 0.0005
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    stale = json.loads(dvc("status", "--json", stdout_only=True))
    assert set(stale) == {"study@wang2024"}, stale
