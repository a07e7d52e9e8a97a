"""Runs say what they were: the run identity (git commit and uncommitted changes, DVC experiment, date, versions,
hardware) in the report's "This run" table, the model cards and the index; a quick pass's banner on every report
and on the index, its figures marked by `tlrepro metrics`, and capped epochs shown as run."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from IPython.display import HTML, Markdown

from tlrepro.core import config, fileio, identity, paths
from tlrepro.core.errors import UserError
from tlrepro.reports import console, sections
from tlrepro.reports import index as report
from tlrepro.studies import crossval
from tlrepro.studies.base import Study

RUN = {"commit": "0123456789abcdef" * 2 + "01234567", "dirty": True, "changed": ["params.yaml"],
       "experiment": "ruddy-quag", "baseline": "fedcba9876543210" * 2 + "fedcba98", "date": "2026-12-06 15:00 UTC",
       "versions": {"Python": "3.11.7", "TensorFlow": "2.21.0", "Keras": "3.15.1", "DVC": "3.67.1"},
       "hardware": {"cpu": "AMD EPYC", "cpu_cores": 2, "cpu_cores_usable": 2, "gpus": []}}
QUICK = {"max_images_per_class": 20, "max_epochs": 2}


def git(root: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", *args], cwd=root, env=env, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path, monkeypatch) -> Path:
    """A git work tree with one commit of params.yaml and a module, outside any DVC experiment."""
    for name in ("DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
        monkeypatch.delenv(name, raising=False)
    git(tmp_path, "init", "-q")
    (tmp_path / "params.yaml").write_text("seed: 1\n")
    (tmp_path / "src").mkdir()
    (tmp_path / "src/m.py").write_text("x = 1\n")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-qm", "first")
    return tmp_path


def test_the_commit_and_its_uncommitted_changes(repo, monkeypatch):
    first = git(repo, "rev-parse", "HEAD")
    clean = identity.describe(repo)
    assert clean["commit"] == first and clean["dirty"] is False and clean["changed"] == []
    assert identity.commit_text(clean) == first[:12]
    (repo / "reports").mkdir()
    (repo / "reports/x.json").write_text("{}")  # a pipeline output: not what the run was made of
    assert identity.describe(repo)["dirty"] is False
    (repo / "params.yaml").write_text("seed: 2\n")
    (repo / "src/new.py").write_text("")  # untracked code counts too
    dirty = identity.describe(repo)
    assert dirty["dirty"] is True and dirty["changed"] == ["params.yaml", "src/new.py"]
    assert identity.commit_text(dirty) == f"{first[:12]} + uncommitted changes (params.yaml, src/new.py)"
    # under `dvc exp run` the commit is the experiment's baseline, and the experiment is named
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "second")
    monkeypatch.setenv("DVC_EXP_NAME", "ruddy-quag")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", first)
    exp = identity.describe(repo)
    assert exp["commit"] == first and exp["changed"] == ["params.yaml", "src/new.py"] and exp["experiment"] == "ruddy-quag"
    assert identity.text(exp)["DVC experiment"] == f"ruddy-quag (from {first[:12]})"
    assert identity.describe(repo.parent)["commit"] in (None, first)  # no work tree: DVC's baseline or nothing


def test_versions_date_and_hardware_are_the_running_ones():
    import platform

    import dvc
    import keras
    import tensorflow as tf

    run = identity.describe(gpus=["NVIDIA H100 (cc 9.0)"])
    assert run["versions"] == {"Python": platform.python_version(), "TensorFlow": tf.__version__,
                               "Keras": keras.__version__, "DVC": dvc.__version__}
    assert run["hardware"]["cpu_cores"] == os.cpu_count() and run["hardware"]["cpu"]
    assert run["date"].endswith(" UTC") and run["date"][:4].isdigit()
    shown = identity.text(run)
    assert f"TensorFlow {tf.__version__}" in shown["versions"] and f"DVC {dvc.__version__}" in shown["versions"]
    assert "NVIDIA H100 (cc 9.0)" in shown["hardware"] and f"{os.cpu_count()} cores" in shown["hardware"]
    assert "no GPU" in identity.text(identity.describe())["hardware"]
    assert identity.text({**run, "experiment": None})["DVC experiment"].startswith("none")
    assert identity.package_version(["no-such-package-here"]) is None
    assert importlib.metadata.version("dvc") == dvc.__version__


# ---------------------------------------------------------------- the study report


def fake_study(**provenance) -> SimpleNamespace:
    prov = {"study": "lin2024", "dataset": "skin", "source_dataset": "skin", "paper_dataset": "skin",
            "random_init": [], "random_init_via": {}, "capped_epochs": {}, "max_images_per_class": None,
            "max_epochs": None, "images": 2776, "images_in_split": 2776, "published_images": 13879, "seed": 42,
            "weights": {"VGG16": {"source": "random"}}, "sides": {"source": {"train": 20, "val": 10, "test": 10}},
            "compute": None, "run": RUN, **provenance}
    return SimpleNamespace(id="lin2024", dataset="skin", protocols=["source"], seed=42, rows=[], provenance=lambda: prov,
                           random_init=lambda: [], random_init_via=lambda: {},
                           settings=SimpleNamespace(evaluate_on="test", repeats=1))


def shown_text(monkeypatch, section, study) -> str:
    out: list = []
    monkeypatch.setattr(sections, "display", out.append)
    section(study)
    return "\n".join(o.data if isinstance(o, HTML | Markdown) else o.to_html() for o in out)


def test_a_quick_pass_report_opens_with_its_banner_and_says_how_many_images_it_used(monkeypatch):
    capped = {"VGG16": {"ours": 2, "paper": "the grid's 10, 20"}}
    quick = shown_text(monkeypatch, sections.header, fake_study(**QUICK, images_in_split=40, capped_epochs=capped))
    assert quick.index("QUICK PASS") < quick.index("Dataset:")
    assert "at most 20 images per class and at most 2 epochs per training run" in quick
    assert "40 of our 2,776 images used (at most 20 per class: a quick pass); the published set has 13,879" in quick
    assert "a subset: 2,776" not in quick
    full = shown_text(monkeypatch, sections.header, fake_study())
    assert "QUICK PASS" not in full and "a subset: 2,776 of the published 13,879 images" in full


def test_the_this_run_table_gives_the_run_identity_and_the_epochs_run(monkeypatch):
    capped = {"VGG16": {"ours": 2, "paper": "the grid's 10, 20"}}
    html = shown_text(monkeypatch, sections.provenance, fake_study(**QUICK, images_in_split=40, capped_epochs=capped))
    for text in ("0123456789ab + uncommitted changes (params.yaml)", "ruddy-quag (from fedcba987654)",
                 "2026-12-06 15:00 UTC", "Python 3.11.7, TensorFlow 2.21.0, Keras 3.15.1, DVC 3.67.1",
                 "AMD EPYC (2 cores); no GPU", "VGG16: 2 of the grid's 10, 20", ">40<"):
        assert text in html, text
        assert text in html, text


def test_capped_grid_epochs_are_the_epochs_run(tmp_project):
    params = config.load_params()
    lin = params.study("lin2024")
    assert [params.capped_epochs(r, lin.grid) for r in lin.all_rows()] == [None] * 4  # 10 to 100 epochs, uncapped
    quick = params.model_copy(update={"scale": config.Scale(max_epochs=2)})
    grid = ", ".join(map(str, lin.grid.epochs))
    for row in lin.all_rows():
        assert quick.capped_epochs(row, lin.grid) == {"ours": 2, "paper": f"the grid's {grid}"}
    capped = quick.capped_epochs(lin.row("VGG16"), lin.grid)
    assert sections._epochs(lin.row("VGG16"), capped) == f"grid, 2 per cell (capped; the grid's {grid})"
    assert sections._epochs(lin.row("VGG16"), None) == "grid"
    mobile = quick.study("mobilenet2025")
    assert all(quick.capped_epochs(r)["ours"] == 2 for r in mobile.all_rows())
    assert quick.model_copy(update={"scale": config.Scale(max_epochs=15)}).capped_epochs(lin.row("VGG16"), lin.grid) \
        == {"ours": "10, 15", "paper": f"the grid's {grid}"}


# ---------------------------------------------------------------- the index, `tlrepro metrics`, model cards


def write_run(study: str, **provenance) -> None:
    fileio.write_json(paths.metrics_json(study), {"study": study, "dataset": "skin", "random_init": [],
                                                  "results": {"VGG16": {"accuracy": 0.8, "accuracy_ci_low": 0.7,
                                                                        "accuracy_ci_high": 0.9}}})
    prov = {**fake_study().provenance(), "primary_protocol": "source", **provenance}
    fileio.write_json(paths.details_json(study), {"study": study, "provenance": prov, "results": {}})


def test_the_index_carries_the_banner_the_identity_and_the_epochs_run(tmp_project):
    write_run("lin2024", **QUICK, images_in_split=40, capped_epochs={"VGG16": {"ours": 2, "paper": "the grid's 10, 20"}})
    html = report.write_index().read_text()
    banner = html.index('class="quick"')
    assert html[html.index("</h1>") + 5:banner].strip() == "<p"  # the page's first line under its title
    assert "QUICK PASS" in html[banner:html.index("</p>", banner)] and "Studies: lin2024." in html[banner:html.index("</p>", banner)]
    for text in ("40 of our 2,776 images used", "VGG16 2 of the grid&#39;s 10, 20", "epochs per training run: 2",
                 "ruddy-quag (from fedcba987654)",
                 "0123456789ab + uncommitted changes (params.yaml)", "TensorFlow 2.21.0", "AMD EPYC (2 cores)",
                 "2026-12-06 15:00 UTC"):
        assert text in html, text
    assert "none capped" not in html and "(subset: 2,776 of 13,879)" not in html
    write_run("lin2024")
    full = report.write_index().read_text()
    assert 'class="quick"' not in full and "QUICK PASS" not in full and "DVC experiment" in full


def test_tlrepro_metrics_marks_quick_pass_figures(tmp_project):
    write_run("lin2024", **QUICK)
    write_run("mobilenet2025")
    text = console.metrics_text(["lin2024", "mobilenet2025"])
    lin = [line for line in text.splitlines() if line.startswith("lin2024")]
    mobile = [line for line in text.splitlines() if line.startswith("mobilenet2025")]
    assert lin and all("(quick pass)" in line for line in lin)
    assert mobile and not any("quick pass" in line for line in mobile)
    assert "(quick pass): lin2024 ran with params.yaml `scale` caps" in text


def test_a_saved_models_card_names_the_run_that_trained_it(tmp_path):
    import keras

    from tlrepro.modeling import cards

    model = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Flatten(), keras.layers.Dense(1)])
    _, card_path = cards.save(model, tmp_path / "m.keras", {"study": "x"})
    card = json.loads(card_path.read_text())
    assert card["run"] == identity.current(card["run"]["hardware"]["gpus"])
    assert set(card["run"]) >= {"commit", "dirty", "experiment", "date", "versions", "hardware"}
    assert card["run"]["versions"]["Keras"] == keras.__version__


def test_a_quick_pass_trains_the_first_folds_of_a_cross_validation_only(tmp_project):
    rows = pd.DataFrame({"fold": [str(f) for f in range(1, 6) for _ in range(2)], "magnification": ["40", "100"] * 5})
    assert [u.fold for u in crossval.units_of(rows, False)] == ["1", "2", "3", "4", "5"]
    assert [u.fold for u in crossval.units_of(rows, False, 2)] == ["1", "2"]
    assert [(u.fold, u.magnification) for u in crossval.units_of(rows, True, 2)] == [
        ("1", "40"), ("1", "100"), ("2", "40"), ("2", "100")]
    assert crossval.units_of(rows.assign(fold=""), False, 2) == [crossval.WHOLE]  # one split: one unit, capped or not
    params = config.load_params()
    quick = params.model_copy(update={"scale": config.Scale(max_folds=2)})
    split = rows.assign(protocol="patient")
    for settings, folds in ((params, 5), (quick, 2)):
        study = Study("kumar2022", settings, settings.study("kumar2022"), split, ("benign", "malignant"))
        assert len(study.units("patient")) == folds
    assert "the first 2 folds of each cross-validation" in identity.quick_pass({"max_folds": 2})
    assert identity.quick_pass({"max_images_per_class": 20, "max_epochs": 2, "max_folds": 2}).startswith(
        "QUICK PASS: at most 20 images per class, at most 2 epochs per training run and the first 2 folds")
    text = paths.PARAMS_FILE.read_text()
    paths.PARAMS_FILE.write_text(text.replace("\n  max_folds:", "\n  max_folds: 1", 1))
    with pytest.raises(UserError, match="scale.max_folds"):
        config.load_params()
