"""One end-to-end project for the whole suite: the real dvc.yaml, notebooks and package, every study at tiny scale.

Generated Kaggle-like mirrors (a messy skin archive, the melanoma layout, BreakHis's folders and names, LC25000)
feed `dvc repro` from download to the index report once per test session (tests/conftest.py `e2e`); the tests
that read its outputs share it (all in tests/test_pipeline_e2e.py, which `--dist loadfile` keeps on one worker).
Smoke-test backbones (TinyCNN, TinyDenseNet, random weights) at 32x32 keep every stage to seconds while each study
mechanism runs for real: the lin2024 grid, `start_from` and augmentation (mobilenet2025), the prediction folder
(sarker2025), two BreakHis protocols (kumar2022), stain normalization, LC25000 pretraining, SE blocks and
`init_from` (wang2024).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from conftest import build_breakhis_tree, build_lc25000_tree, build_skin_tree
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
STUDIES = ("lin2024", "mobilenet2025", "sarker2025", "kumar2022", "wang2024")
SLUGS = {"skin": "fanconic/skin-cancer-malignant-vs-benign", "melanoma": "bhaveshmittal/melanoma-cancer-dataset",
         "breakhis": "ambarish/breakhis", "lc25000": "andrewmvd/lung-and-colon-cancer-histopathological-images"}
CLEAN_PER_CLASS = 14  # clean skin images per class in train/ (half as many in test/), beside the messy ones


def add_clean_images(folder: Path, classes: tuple[str, str], per_class: int, seed: int) -> None:
    """train/ and test/ class folders of 32x32 JPEGs, benign darker than malignant, so training finds a signal."""
    rng = np.random.default_rng(seed)
    for source, count in (("train", per_class), ("test", per_class // 2)):
        for label, scale in zip(classes, (110, 255), strict=True):
            (folder / source / label).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = (rng.random((32, 32, 3)) * scale).astype("uint8")
                Image.fromarray(pixels).save(folder / source / label / f"clean{i}.jpg", quality=95)


def make_mirror(folder: Path) -> dict:
    """Every dataset's archive as the Kaggle download unpacks it; returns what the skin index must find."""
    skin = build_skin_tree(folder / SLUGS["skin"])
    add_clean_images(folder / SLUGS["skin"], ("benign", "malignant"), CLEAN_PER_CLASS, seed=0)
    add_clean_images(folder / SLUGS["melanoma"], ("Benign", "Malignant"), CLEAN_PER_CLASS, seed=1)
    breakhis = build_breakhis_tree(folder / SLUGS["breakhis"], per_patient=5)
    build_lc25000_tree(folder / SLUGS["lc25000"], per_class=6)
    clean = 2 * (CLEAN_PER_CLASS + CLEAN_PER_CLASS // 2)
    return {"skin": {**skin, "images": skin["images"] + clean}, "breakhis": breakhis}


def tiny_params() -> dict:
    """The real params.yaml with every study shrunk to seconds: tiny backbones, 32 px, two epochs."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["scale"]["max_epochs"] = 2
    params["evaluation"]["bootstrap_resamples"] = 100
    tiny = {"image_size": 32, "weights": "random", "batch_size": 8}
    lin = params["studies"]["lin2024"]
    lin.update(repeats=2, grid={"learning_rates": [1e-3, 5e-3], "epochs": [1, 2]})
    lin["defaults"].update(tiny)
    lin["rows"] = {"MobileNetV2": {"backbone": "TinyCNN"}, "VGG16": {"backbone": "TinyDenseNet"}}
    for study in ("mobilenet2025", "sarker2025"):
        params["studies"][study]["defaults"].update(tiny, backbone="TinyCNN")
    for study in ("kumar2022", "wang2024"):  # the dataset's own folds run in tests/test_official_folds.py, not here
        params["studies"][study]["protocols"].pop("official", None)
    kumar = params["studies"]["kumar2022"]
    kumar["defaults"].update(tiny)
    kumar["rows"] = {"VGG16": {**kumar["rows"]["VGG16"], "backbone": "TinyCNN"}}
    kumar["repeats"] = 2  # params.yaml's 5 head seeds: two keep the seed spread in the report, in seconds
    wang = params["studies"]["wang2024"]
    wang["defaults"].update(tiny, backbone="TinyDenseNet", learning_rate=1e-3)
    wang["rows"] = {k: wang["rows"][k] for k in ("DenseNet-SE-transfer",)}  # SE blocks and init_from
    params["pretraining"]["densenet_se_lc25000_lung"]["model"].update(tiny, backbone="TinyDenseNet", learning_rate=1e-3)
    return params


@dataclass
class Project:
    root: Path
    env: dict[str, str]
    expected: dict

    @property
    def stage_reads(self) -> Path:
        """What every stage process read: settings and our modules (tlrepro.core.stage_reads)."""
        return Path(self.env["TLREPRO_READS_LOG"])

    def run(self, *args: str, ok: bool | None = True, timeout: int = 900) -> subprocess.CompletedProcess:
        """A command in the project; `ok` True/False asserts its success or failure, None checks nothing."""
        result = subprocess.run(list(args), cwd=self.root, env=self.env, capture_output=True, text=True, timeout=timeout)
        assert ok is None or (result.returncode == 0) == ok, result.stdout[-3000:] + result.stderr[-3000:]
        return result

    def dvc(self, *args: str, ok: bool | None = True, stdout_only: bool = False) -> str:
        result = self.run(str(Path(sys.executable).parent / "dvc"), *args, ok=ok)
        return result.stdout if stdout_only else result.stdout + result.stderr

    def params(self) -> dict:
        return yaml.safe_load((self.root / "params.yaml").read_text())

    def write_params(self, params: dict) -> None:
        (self.root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def only(params: dict, studies: tuple[str, ...]) -> dict:
    """The params of some studies only, with the datasets they read (no derived dataset, no pretraining)."""
    params["studies"] = {s: params["studies"][s] for s in studies}
    params["datasets"] = {k: v for k, v in params["datasets"].items()
                          if k in {s["dataset"] for s in params["studies"].values()}}
    params["derived"], params["pretraining"] = {}, {}
    return params


def make_project(base: Path, studies: tuple[str, ...] = STUDIES) -> Project:
    """Write the project (real dvc.yaml, notebooks, package; tiny params) and its mirror under `base`."""
    root = base / "project"
    root.mkdir(parents=True)
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    for folder in ("src", "notebooks", "models"):  # models/ as git holds it: its README and pretrained/ folder
        shutil.copytree(REPO / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.keras",
                                                                                   "*.card.json", "*.tmp"))
    expected = make_mirror(base / "mirror")
    venv_bin = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAGGLE_", "DVC_", "IMAGENET_", "TLREPRO_"))}
    env.update(PATH=f"{venv_bin}{os.pathsep}{env.get('PATH', '')}", TLREPRO_ROOT=str(root),
               KAGGLE_MIRROR=str(base / "mirror"), DVC_NO_ANALYTICS="1", TLREPRO_FEATURE_CACHE=str(base / "features"),
               TLREPRO_READS_LOG=str(base / "stage_reads.jsonl"))
    project = Project(root, env, expected)
    project.write_params(tiny_params() if studies == STUDIES else only(tiny_params(), studies))
    return project
