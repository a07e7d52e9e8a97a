"""The study notebooks end to end at tiny scale: real DVC, papermill, TensorFlow and nbconvert.

Generated mirrors (32x32 images, random weights) feed the real dvc.yaml from download to the index report, as
MONAI's tutorials are smoke-run: every cell executes, every output appears, saved models load with safe_mode
and give the figures their cards state, a second repro runs nothing, and the same parameters give the same
metrics byte for byte.
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
STUDIES = ("lin2024", "mobilenet2025", "sarker2025")
SLUGS = {"skin": ("fanconic/skin-cancer-malignant-vs-benign", ("benign", "malignant")),
         "melanoma": ("bhaveshmittal/melanoma-cancer-dataset", ("Benign", "Malignant"))}


def make_mirror(folder: Path, per_class: int = 14) -> Path:
    """Skin-like archives with train/test folders; benign darker than malignant, so there is signal."""
    rng = np.random.default_rng(0)
    for slug, classes in SLUGS.values():
        for source, count in (("train", per_class), ("test", per_class // 2)):
            for label, scale in zip(classes, (110, 255), strict=True):
                (folder / slug / source / label).mkdir(parents=True)
                for i in range(count):
                    pixels = (rng.random((32, 32, 3)) * scale).astype("uint8")
                    Image.fromarray(pixels).save(folder / slug / source / label / f"{i}.jpg", quality=95)
    return folder


def make_project(root: Path) -> None:
    """The real dvc.yaml and notebooks, with params shrunk to seconds: tiny images, random weights."""
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["datasets"] = {k: params["datasets"][k] for k in SLUGS}
    params["derived"], params["pretraining"] = {}, {}
    params["studies"] = {s: params["studies"][s] for s in STUDIES}
    params["scale"]["max_epochs"] = 2
    params["evaluation"]["bootstrap_resamples"] = 100
    lin = params["studies"]["lin2024"]
    lin.update(repeats=2, grid={"learning_rates": [1e-3, 5e-3], "epochs": [1, 2]})
    lin["defaults"].update(image_size=32, weights="random")
    lin["rows"] = {"MobileNetV2": {"backbone": "MobileNetV2"}, "VGG16": {"backbone": "VGG16"}}
    params["studies"]["mobilenet2025"]["defaults"].update(image_size=32, weights="random", batch_size=8)
    params["studies"]["sarker2025"]["defaults"].update(image_size=32, weights="random")
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for folder in ("src", "notebooks", "models"):
        shutil.copytree(REPO / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.keras",
                                                                                   "*.card.json"))


@pytest.mark.slow
def test_studies_run_end_to_end_and_reproduce(tmp_path):
    root = tmp_path / "project"
    root.mkdir()
    make_project(root)
    venv_bin = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAGGLE_", "DVC_", "IMAGENET_", "TLREPRO_"))}
    env.update(PATH=f"{venv_bin}{os.pathsep}{env.get('PATH', '')}", TLREPRO_ROOT=str(root),
               KAGGLE_MIRROR=str(make_mirror(tmp_path / "mirror")), DVC_NO_ANALYTICS="1",
               TLREPRO_FEATURE_CACHE=str(tmp_path / "features"))

    def dvc(*args: str, stdout_only: bool = False, ok: bool = True) -> str:
        result = subprocess.run([str(venv_bin / "dvc"), *args], cwd=root, env=env, capture_output=True,
                                text=True, timeout=1500)
        assert (result.returncode == 0) == ok, result.stdout[-3000:] + result.stderr[-3000:]
        return result.stdout if stdout_only else result.stdout + result.stderr

    dvc("init", "--no-scm")
    dvc("repro", "report")

    for study, rows in (("mobilenet2025", {"frozen", "finetune", "augmented"}), ("lin2024", {"MobileNetV2", "VGG16"}),
                        ("sarker2025", {"MobileNetV2"})):
        metrics = json.loads((root / f"reports/metrics/{study}.json").read_text())
        assert set(metrics["results"]) - {"prediction_folder"} == rows and metrics["random_init"], "random weights declared"
        for figures in metrics["results"].values():
            assert set(figures) <= {"accuracy", "accuracy_ci_low", "accuracy_ci_high", "f1", "roc_auc",
                                    "accuracy_seed_sd"}  # headline figures only: `dvc metrics show` stays readable
            assert 0 <= figures["accuracy_ci_low"] <= figures["accuracy"] <= figures["accuracy_ci_high"] <= 1
        details = json.loads((root / f"reports/metrics/{study}.details.json").read_text())
        assert details["provenance"]["dataset"] == ("melanoma" if study == "mobilenet2025" else "skin")
        executed = nbformat.read(root / f"reports/notebooks/{study}.ipynb", as_version=4)
        assert not [o for c in executed.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
        html = (root / f"reports/{study}.html").read_text()
        assert "RANDOM INITIALISATION" in html and "<img" in html and "Deviations from the paper" in html
        assert "open_study" not in html, "the report hides the code"
        assert "oneDNN" not in html and "absl::" not in html and "WARNING:tensorflow" not in html
        for row in rows:
            assert (root / f"models/{study}/{row}.keras").is_file() and (root / f"models/{study}/{row}.card.json").is_file()
    assert (root / "reports/plots/lin2024/grid.csv").read_text().count("\n") == 1 + 2 * 2 * 2
    assert {p.name for p in (root / "reports/plots/mobilenet2025/history").iterdir()} == {
        "frozen.csv", "finetune.csv", "augmented.csv"}
    index = (root / "reports/index.html").read_text()
    assert all(f"{s}.html" in index for s in STUDIES) and "Datasets overlap" in index
    sarker = (root / "reports/sarker2025.html").read_text()
    assert "The prediction folder" in sarker and "158" in sarker and "2,264,385" in sarker

    # a saved model, loaded with safe_mode from its card, gives the figures its card states
    check = subprocess.run([sys.executable, "-c", CHECK_MODEL], cwd=root, env=env, capture_output=True, text=True,
                           timeout=600)
    assert check.returncode == 0, check.stdout[-2000:] + check.stderr[-2000:]

    # nothing changed: nothing runs
    assert "didn't change" in dvc("repro", "report") or "up to date" in dvc("status")

    # same parameters, same metrics, byte for byte: lin2024's batched grid, and mobilenet2025 with every other
    # source of randomness (shuffling, augmentation, dropout, a row continued from another; sarker2025 trains
    # the same way, so it is not rerun: the suite stays short)
    before = {s: (root / f"reports/metrics/{s}.json").read_bytes() for s in STUDIES}
    dvc("repro", "--force", "--single-item", "study@lin2024", "study@mobilenet2025")
    for study in ("lin2024", "mobilenet2025"):
        assert (root / f"reports/metrics/{study}.json").read_bytes() == before[study], study

    # a learning rate changes only the lin2024 stage, not the data stages
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["studies"]["lin2024"]["grid"]["learning_rates"] = [1e-3]
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    stale = json.loads(dvc("status", "--json", stdout_only=True))
    assert set(stale) == {"study@lin2024"}, stale

    # a bad value fails at once, naming the setting, and leaves the results as they were
    params["studies"]["lin2024"]["defaults"]["batch_size"] = 0
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = dvc("repro", "study@lin2024", ok=False)
    assert "params.yaml `studies.lin2024.defaults.batch_size` = 0" in out and "Traceback" not in out
    assert (root / "reports/metrics/lin2024.json").read_bytes() == before["lin2024"]


CHECK_MODEL = """
import numpy as np
from tlrepro.data.splits import read_split
from tlrepro.data.tfdata import image_dataset
from tlrepro.modeling import cards
for name in ("mobilenet2025/finetune", "lin2024/VGG16"):
    model, card = cards.load(cards.resolve(name))
    study = name.split("/")[0]
    split = read_split(study)
    test = split[split["side"] == "test"].reset_index(drop=True)
    probs = model.predict(image_dataset(test, card["image_size"], 8), verbose=0).ravel()
    accuracy = float(np.mean((probs >= card["threshold"]) == (test["label"] == "malignant")))
    assert abs(accuracy - card["metrics"]["accuracy"]) < 1e-6, (name, accuracy, card["metrics"])
    assert card["classes"] == ["benign", "malignant"] and len(card["training_phashes"]) > 0
print("models ok")
"""
