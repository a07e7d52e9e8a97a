"""The pipeline end to end (tests/e2e.py): real DVC, papermill, nbconvert and TensorFlow on every stage of
dvc.yaml, from the Kaggle mirror to the index report, for all five studies at tiny scale.

Data stages index and audit messy archives; each study's notebook runs every cell and writes its metrics, plots,
models and cards; saved models load with safe_mode and reproduce their cards; a second repro runs nothing; the
same parameters give the same metrics byte for byte; a setting reruns exactly the stages that read it; a bad
value fails at once with one line and keeps the results.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
from e2e import Project

pytestmark = pytest.mark.slow  # every test of the shared project lives in this file: one worker builds it

SKIN_ROWS = {"lin2024": {"MobileNetV2", "VGG16"}, "mobilenet2025": {"frozen", "finetune", "augmented"},
             "sarker2025": {"MobileNetV2"}}
HEADLINE_KEYS = {"accuracy", "accuracy_ci_low", "accuracy_ci_high", "accuracy_seed_sd"}  # skin: no patients


def read_json(project, relative: str):
    return json.loads((project.root / relative).read_text())


def test_data_stages_index_split_and_audit_the_archives(e2e):
    root, expected = e2e.root, e2e.expected["skin"]
    assert (root / "data/raw/skin/train/Benign/b0.jpg").is_file() and (root / "data/raw/breakhis/BreaKHis_v1").is_dir()
    index = pd.read_csv(root / "data/index/skin.csv")
    # the messy archive's distinct images, one byte-identical file under another name (kept, reported), clean ones
    assert len(index) == expected["images"] + 1
    assert index["label"].value_counts().to_dict() == {"benign": 30, "malignant": 30}
    assert set(pd.read_csv(root / "data/index/skin.rejected.csv")["path"].str.removeprefix("data/raw/skin/")) == \
        expected["rejected"]
    assert len(pd.read_csv(root / "data/index/skin.duplicates.csv")) == expected["duplicates"]
    breakhis = pd.read_csv(root / "data/index/breakhis.csv")
    assert len(breakhis) == e2e.expected["breakhis"]["images"]
    assert breakhis["patient"].nunique() == e2e.expected["breakhis"]["patients"]

    lin = pd.read_csv(root / "data/splits/lin2024.csv")
    assert len(lin) == len(index) and set(lin["side"]) == {"train", "val", "test"}
    assert (lin["side"] == "test").equals(lin["source_split"] == "test")
    pair = lin[lin["sha256"].duplicated(keep=False)]  # the byte-identical pair leaks exactly when split apart
    assert read_json(e2e, "reports/leakage/lin2024.json")["source"]["exact_duplicate_pairs"] == int(
        pair["side"].nunique() > 1)
    kumar = read_json(e2e, "reports/leakage/kumar2022.json")
    assert kumar["patient"]["patients_on_several_sides"] == 0 and kumar["image"]["patients_on_several_sides"] > 0
    wang = read_json(e2e, "reports/leakage/wang2024.json")
    assert wang["paper"]["dihedral_copy_pairs"] > 0 and wang["honest"]["dihedral_copy_pairs"] == 0
    overlap = read_json(e2e, "data/overlap.json")
    assert overlap["matrix"]["skin"]["breakhis"]["exact"] == 0 and overlap["datasets"]["skin"] == len(index)
    assert (root / "data/index/breakhis_stain.stain.csv").is_file()


def test_every_study_writes_its_report_metrics_plots_and_models(e2e):
    root = e2e.root
    for study, rows in SKIN_ROWS.items():
        metrics = read_json(e2e, f"reports/metrics/{study}.json")
        assert set(metrics["results"]) - {"prediction_folder"} == rows
        assert read_json(e2e, f"reports/metrics/{study}.details.json")["provenance"]["random_init"]
        for figures in metrics["results"].values():
            assert set(figures) <= HEADLINE_KEYS  # headline figures only
            assert 0 <= figures["accuracy_ci_low"] <= figures["accuracy"] <= figures["accuracy_ci_high"] <= 1
        for row in rows:
            assert (root / f"models/{study}/{row}.keras").is_file() and (root / f"models/{study}/{row}.card.json").is_file()
    assert read_json(e2e, "reports/metrics/mobilenet2025.details.json")["provenance"]["dataset"] == "melanoma"
    assert (root / "reports/plots/lin2024/grid.csv").read_text().count("\n") == 1 + 2 * 2 * 2
    # one per-epoch chart per study, a line per row (and fold); DVCLive's folder per fit beside it
    assert set(pd.read_csv(root / "reports/plots/mobilenet2025/epochs.csv")["run"]) == {"frozen", "finetune", "augmented"}
    assert {p.name for p in (root / "reports/plots/mobilenet2025").iterdir()} == {"epochs.csv"}
    assert (root / "reports/training/mobilenet2025/frozen/plots/metrics/eval/accuracy.tsv").is_file()
    kumar_runs = set(pd.read_csv(root / "reports/plots/kumar2022/epochs.csv")["run"])
    assert "image/VGG16" in kumar_runs and len({r for r in kumar_runs if r.startswith("patient/VGG16 · fold")}) == 5

    kumar = read_json(e2e, "reports/metrics/kumar2022.json")
    assert set(kumar["results"]) == {"image/VGG16", "patient/VGG16"}
    wang = read_json(e2e, "reports/metrics/wang2024.json")
    assert {k.split("/")[0] for k in wang["results"]} == {"paper", "honest"}
    # the per-patient figure of a study with several protocols: under its patient-level cross-validation only
    assert {k for k, v in wang["results"].items() if "patient_accuracy" in v} == \
        {k for k in wang["results"] if k.startswith("honest/")}
    for name in ("kumar2022/image/VGG16", "wang2024/paper/DenseNet-SE-transfer", "pretrained/densenet_se_lc25000_lung"):
        assert (root / f"models/{name}.keras").is_file() and (root / f"models/{name}.card.json").is_file(), name
    # a cross-validation trains one model per fold, on part of the patients: none is saved as the study's model
    assert not (root / "models/kumar2022/patient").exists() and not (root / "models/wang2024/honest").exists()
    details = read_json(e2e, "reports/metrics/kumar2022.details.json")["results"]["patient/VGG16"]
    assert len(details["units"]) == 5 and details["folds"]["accuracy"]["folds"] >= 4
    assert details["evaluation"]["n"] == e2e.expected["breakhis"]["images"]  # every image tested exactly once
    assert details["evaluation"]["ci_unit"] == "patient" and details["evaluation"]["patients"] == 6

    for study in (*SKIN_ROWS, "kumar2022", "wang2024"):
        executed = nbformat.read(root / f"reports/notebooks/{study}.ipynb", as_version=4)
        assert not [o for c in executed.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
        html = (root / f"reports/{study}.html").read_text()
        assert "RANDOM INITIALISATION" in html and "<img" in html and "Deviations from the paper" in html
        assert "open_study" not in html, "the report hides the code"
        assert "oneDNN" not in html and "absl::" not in html and "WARNING:tensorflow" not in html
    for study in ("kumar2022", "wang2024"):
        html = (root / f"reports/{study}.html").read_text()
        assert "patient-level accuracy" in html and "Grad-CAM" in html
    wang_html = (root / "reports/wang2024.html").read_text()
    assert "Stain normalization" in wang_html and "images normalized" in wang_html and "SE blocks" in wang_html
    index = (root / "reports/index.html").read_text()
    assert all(f"{s}.html" in index for s in (*SKIN_ROWS, "kumar2022", "wang2024")) and "Datasets overlap" in index


def test_sarker_report_prints_our_counts_and_the_prediction_folder(e2e):
    from tlrepro.modeling import cards, models

    model, _ = cards.load(e2e.root / "models/sarker2025/MobileNetV2.keras")
    backbone, _, head, _ = models.parts_of(model)
    html = (e2e.root / "reports/sarker2025.html").read_text()
    assert "The prediction folder" in html
    # ours, not the paper's 158 layers and 2,264,385 parameters (always printed beside them)
    assert f"{models.parameter_count(model):,}" in html
    assert f">{len(backbone.layers) + len(head.layers)}<" in html


def test_saved_models_load_safely_and_reproduce_their_cards(e2e):
    from tlrepro.data.tfdata import image_dataset
    from tlrepro.modeling import cards

    for name, study in (("mobilenet2025/finetune", "mobilenet2025"), ("lin2024/VGG16", "lin2024")):
        model, card = cards.load(e2e.root / f"models/{name}.keras")
        split = pd.read_csv(e2e.root / f"data/splits/{study}.csv", dtype=str, keep_default_na=False)
        test = split[split["side"] == "test"].reset_index(drop=True)
        test["path"] = [str(e2e.root / p) for p in test["path"]]
        probs = model.predict(image_dataset(test, card["image_size"], 8), verbose=0).ravel()
        accuracy = float(np.mean((probs >= card["threshold"]) == (test["label"] == "malignant")))
        assert abs(accuracy - card["metrics"]["accuracy"]) < 1e-6, (name, accuracy, card["metrics"])
        assert card["classes"] == ["benign", "malignant"] and len(card["training_phashes"]) > 0


def test_nothing_changed_nothing_runs(e2e):
    assert "didn't change" in e2e.dvc("repro") or "up to date" in e2e.dvc("status")


def test_a_notebook_run_by_hand_leaves_dvcs_outputs_alone_and_gives_the_same_metrics(e2e, tmp_path):
    """JupyterLab's Run All, as `jupyter nbconvert --execute`: outputs go to reports/interactive/, DVC sees no change,
    and the same params give the same metrics file, byte for byte, as the stage's papermill run. mobilenet2025 holds
    every source of randomness: shuffling, augmentation, dropout, a row continued from another (the grid's own
    determinism is tests/test_grid.py's)."""
    study = "mobilenet2025"
    tracked = {p: p.read_bytes() for p in (e2e.root / "models" / study).rglob("*") if p.is_file()}
    e2e.run(str(Path(sys.executable).parent / "jupyter"), "nbconvert", "--to", "notebook", "--execute",
            f"notebooks/{study}.ipynb", "--output-dir", str(tmp_path))
    assert json.loads(e2e.dvc("status", "--json", stdout_only=True)) == {}
    assert {p: p.read_bytes() for p in tracked} == tracked
    hand = e2e.root / "reports/interactive" / study
    assert sorted(p.name for p in (hand / "models" / study).glob("*.keras")) == sorted(
        p.name for p in tracked if p.suffix == ".keras") != []
    assert (hand / f"reports/metrics/{study}.json").read_bytes() == (e2e.root / f"reports/metrics/{study}.json").read_bytes()
    assert "run by hand" in (tmp_path / f"{study}.ipynb").read_text()


def test_a_setting_reruns_exactly_its_stages_and_a_bad_value_keeps_the_results(e2e):
    original = e2e.params()
    try:
        for change, stale in (
            (lambda p: p["studies"]["lin2024"]["grid"].update(learning_rates=[1e-3]), {"study@lin2024"}),
            # a BreakHis setting reruns the BreakHis study only: the LC25000 step is reused
            (lambda p: p["studies"]["wang2024"]["defaults"].update(learning_rate=5e-4), {"study@wang2024"}),
            # how patients are grouped changes every split (and so every study) that reads the dataset
            (lambda p: p["datasets"]["breakhis"].update(group="subtype"),
             {"prepare@breakhis", "split@kumar2022", "split@wang2024", "overlap"}),
        ):
            params = json.loads(json.dumps(original))
            change(params)
            e2e.write_params(params)
            assert stale <= set(json.loads(e2e.dvc("status", "--json", stdout_only=True))), stale
        e2e.write_params(original)
        assert json.loads(e2e.dvc("status", "--json", stdout_only=True)) == {}

        before = (e2e.root / "reports/metrics/lin2024.json").read_bytes()
        params = json.loads(json.dumps(original))
        params["studies"]["lin2024"]["defaults"]["batch_size"] = 0
        e2e.write_params(params)
        out = e2e.dvc("repro", "study@lin2024", ok=False)
        assert "params.yaml `studies.lin2024.defaults.batch_size` = 0" in out and "Traceback" not in out
        assert (e2e.root / "reports/metrics/lin2024.json").read_bytes() == before
    finally:
        e2e.write_params(original)


# The command-line entry only dispatches to the stage's function, so no stage declares it.
ENTRY_MODULES = {"src/tlrepro/__init__.py", "src/tlrepro/__main__.py", "src/tlrepro/cli.py"}


def declared(project) -> dict[str, tuple[list[str], list[str]]]:
    """Every stage of the project's dvc.yaml (foreach expanded by DVC itself): (params keys, code deps)."""
    from dvc.repo import Repo

    out = {}
    with Repo(str(project.root)) as repo:
        for stage in repo.index.stages:
            keys = [k for dep in stage.deps if hasattr(dep, "params") for k in (dep.params or [])]
            code = [str(d.def_path) for d in stage.deps if str(d.def_path).startswith("src/")]
            out[stage.name] = (keys, code)
    return out


def test_every_stage_declares_the_settings_and_code_it_reads(e2e):
    """What each stage's processes read during the session's `dvc repro` (tlrepro.core.stage_reads) must be
    declared in dvc.yaml: a setting under one of the stage's params keys, a module under one of its code deps."""
    stages = declared(e2e)
    seen = set()
    for line in e2e.stage_reads.read_text().splitlines():
        record = json.loads(line)
        stage = record["stage"]
        if stage not in stages:
            continue  # processes outside a stage (tests' own calls)
        seen.add(stage)
        keys, code = stages[stage]
        undeclared = [r for r in record["reads"] if not any(r == k or r.startswith(f"{k}.") for k in keys)]
        assert not undeclared, f"{stage} reads {undeclared} but dvc.yaml declares only {keys}"
        unlisted = [m for m in record["modules"] if m not in ENTRY_MODULES
                    and not any(m == c or m.startswith(f"{c.rstrip('/')}/") for c in code)]
        assert not unlisted, f"{stage} runs {unlisted} but dvc.yaml's deps list only {code}"
    assert seen == set(stages), f"no record of {set(stages) - seen}"


def test_tlrepro_metrics_prints_one_line_per_row_and_figure(e2e):
    out = e2e.run(str(Path(sys.executable)), "-m", "tlrepro", "metrics").stdout
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["study", "row", "figure"] and max(len(line) for line in lines) < 120
    for study in (*SKIN_ROWS, "kumar2022", "wang2024"):
        assert any(line.startswith(study) and " accuracy " in line for line in lines), study
    assert any("patient/VGG16" in line and "patient accuracy" in line for line in lines)


# What git carries of a run: the pipeline, its lock, the settings, the code, and the outputs kept out of the cache.
IN_GIT = ("dvc.yaml", "dvc.lock", "params.yaml", "src", "notebooks", "reports/metrics", "reports/leakage",
          "reports/plots", "reports/training", "data/overlap.json", "models/.gitignore", "models/README.md",
          "models/pretrained/.gitignore", "models/pretrained/README.md")


def test_what_the_second_machine_gets_from_git_is_not_ignored_by_git():
    """The second-machine test copies IN_GIT by hand; git must really carry those paths. data/overlap.json (a
    cache: false output) sat under an ignored data/, so a real clone lacked it and re-ran the overlap stage."""
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        pytest.skip("not a git checkout")
    ignored = subprocess.run(["git", "check-ignore", "--no-index", *IN_GIT], cwd=root, capture_output=True, text=True)
    assert ignored.stdout.split() == [], ignored.stdout


def test_a_second_machine_pulls_the_runs_and_recomputes_nothing(e2e, tmp_path):
    """Results shared through a DVC remote (a local folder here; S3, GCS or SSH alike): one machine pushes its
    outputs and run cache, a fresh clone pulls them, and `dvc repro` finds every stage up to date."""
    remote = tmp_path / "remote"
    e2e.dvc("remote", "add", "--local", "-d", "shared", str(remote))
    try:
        e2e.dvc("push", "--run-cache")
        clone = tmp_path / "clone"
        clone.mkdir()
        for name in IN_GIT:
            source = e2e.root / name
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if source.is_dir() else shutil.copy2)(source, clone / name)
        second = Project(clone, {**e2e.env, "TLREPRO_ROOT": str(clone)}, e2e.expected)
        second.dvc("init", "--no-scm")
        second.dvc("remote", "add", "-d", "shared", str(remote))
        pulled = second.dvc("pull", "--run-cache")
        assert "failed" not in pulled.lower(), pulled
        assert (clone / "models/kumar2022/image/VGG16.keras").is_file() and (clone / "reports/wang2024.html").is_file()
        assert "up to date" in second.dvc("status")
        again = second.dvc("repro")
        assert "Running stage" not in again, again
    finally:
        e2e.dvc("remote", "remove", "--local", "shared")
