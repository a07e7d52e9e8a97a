"""A study notebook run as Colab runs it: a fresh kernel in an empty working folder outside the project, with
`google.colab` imported at start (a stub with `userdata` and `files`), executed by nbclient from its first cell.
The first cell's form field points at a fork (a git clone of a tiny project); the setup clones it, finds the
project installed, takes the datasets from `KAGGLE_MIRROR`, runs the study's data stages and moves into the clone;
the notebook then runs to its results and its outputs land in the clone's reports/interactive/."""

from __future__ import annotations

import json
import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from e2e import make_project
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

REPO = Path(__file__).resolve().parents[1]
STUDY = "sarker2025"
STUB = '''
class SecretNotFoundError(Exception):
    pass


def get(name):
    import os

    value = os.environ.get("STUB_COLAB_SECRET_" + name)
    if value is None:
        raise SecretNotFoundError(name)
    return value
'''


def colab_stub(folder: Path) -> Path:
    package = folder / "google" / "colab"
    package.mkdir(parents=True)
    # no google/__init__.py: `google` stays a namespace package, shared with protobuf's google.protobuf
    (package / "__init__.py").write_text("from . import files, userdata\n")
    (package / "userdata.py").write_text(STUB)
    (package / "files.py").write_text("def upload():\n    raise RuntimeError('no browser here')\n")
    return folder


def fork(tmp_path: Path) -> Path:
    """A fork of the project: the real notebooks, package, dvc.yaml and setup script, with tiny params, in git."""
    project = make_project(tmp_path / "fork", studies=(STUDY,))
    for name in ("pyproject.toml", "README.md", ".gitignore"):
        shutil.copy(REPO / name, project.root / name)
    shutil.copytree(REPO / "scripts", project.root / "scripts", ignore=shutil.ignore_patterns("__pycache__"))
    env = {**project.env, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    for command in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"], ["git", "add", "-A"],
                    ["git", "commit", "-qm", "fork"]):
        subprocess.run(command, cwd=project.root, env=env, check=True, capture_output=True)
    return project


def colab_notebook(repo_url: str, max_epochs: int = 0) -> nbformat.NotebookNode:
    notebook = nbformat.read(REPO / "notebooks" / f"{STUDY}.ipynb", as_version=4)
    form = next(c for c in notebook.cells if "REPO_URL = " in c.source)
    form.source = form.source.replace('REPO_URL = ""', f"REPO_URL = {repo_url!r}").replace(
        "MAX_EPOCHS = 0", f"MAX_EPOCHS = {max_epochs}")  # what the user types into the form
    return notebook


def run_like_colab(notebook: nbformat.NotebookNode, workdir: Path, env: dict[str, str], stub: Path) -> None:
    """nbclient in a fresh kernel whose start imports google.colab, as Colab's runtime has it imported."""
    client = NotebookClient(notebook, kernel_name="tlrepro", timeout=600, resources={"metadata": {"path": str(workdir)}},
                            extra_arguments=["--IPKernelApp.exec_lines=import google.colab"])
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env, PYTHONPATH=str(stub))
    try:
        client.execute()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def texts(notebook: nbformat.NotebookNode) -> str:
    parts = []
    for cell in notebook.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", "") + json.dumps(out.get("data", {})) + out.get("evalue", ""))
    return "\n".join(parts)


@pytest.mark.slow
def test_a_study_notebook_runs_in_a_fresh_colab_runtime(tmp_path):
    project = fork(tmp_path)
    workdir = tmp_path / "content"  # Colab's working folder: empty, outside any project
    workdir.mkdir()
    stub = colab_stub(tmp_path / "stub")
    env = {k: v for k, v in project.env.items() if not k.startswith("TLREPRO_")}
    notebook = colab_notebook(str(project.root), max_epochs=1)
    run_like_colab(notebook, workdir, env, stub)

    shown = texts(notebook)
    clone = workdir / "tlrepro"
    assert "already installed" in shown and "KAGGLE_MIRROR is set" in shown
    assert "quick pass: scale.max_epochs = 1" in shown and "running the data stages of sarker2025" in shown
    assert "Validation figures" in shown  # the results table
    assert "run by hand" in shown and "dvc repro study@sarker2025" in shown
    interactive = clone / "reports/interactive" / STUDY
    metrics = json.loads((interactive / f"reports/metrics/{STUDY}.json").read_text())
    assert metrics["results"]["MobileNetV2"]["accuracy"] is not None
    assert (interactive / f"models/{STUDY}/MobileNetV2.keras").is_file()
    assert not (clone / f"reports/metrics/{STUDY}.json").exists() and not (clone / "models" / STUDY).exists()
    assert (clone / "data/splits" / f"{STUDY}.csv").is_file()


def test_the_form_asks_for_the_repository_url_before_anything_else(tmp_path):
    stub = colab_stub(tmp_path / "stub")
    notebook = colab_notebook("")
    notebook.cells = notebook.cells[:3]  # the title, the parameters and the setup form
    env = {k: v for k, v in os.environ.items() if not k.startswith("TLREPRO_")}
    with pytest.raises(CellExecutionError, match="Set REPO_URL in this cell's form"):
        run_like_colab(notebook, tmp_path, env, stub)
    assert not any(tmp_path.glob("tlrepro*"))


def test_the_install_keeps_colabs_packages_and_adds_what_is_missing_or_older():
    setup = runpy.run_path(str(REPO / "scripts" / "colab_setup.py"))
    pins = [("numpy", "2.4.6"), ("pandas", "3.1.1"), ("dvc", "3.67.1"), ("ipython", "9.18.1"), ("torchstain", "1.4.1")]
    installed = {"numpy": "2.5.0", "pandas": "2.2.2", "ipython": "7.34.0"}  # what a Colab runtime might ship
    install, kept = setup["to_install"](pins, installed)
    assert install == ["pandas==3.1.1", "dvc==3.67.1", "torchstain==1.4.1"]  # older or missing
    assert kept == ["numpy 2.5.0", "ipython 7.34.0"]  # newer, and the running kernel's own
    pinned = dict(setup["pinned_requirements"](REPO / "pyproject.toml"))
    assert pinned["keras"] and "tensorflow" not in pinned and "tensorflow-cpu" not in pinned


def test_secrets_then_an_uploaded_kaggle_json_and_the_key_is_never_printed(tmp_path, monkeypatch, capsys, request):
    setup = runpy.run_path(str(REPO / "scripts" / "colab_setup.py"))
    stub = colab_stub(tmp_path / "stub")
    monkeypatch.syspath_prepend(str(stub))
    for name in ("KAGGLE_MIRROR", "KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("STUB_COLAB_SECRET_KAGGLE_USERNAME", "ada")
    monkeypatch.setenv("STUB_COLAB_SECRET_KAGGLE_KEY", "s3cr3t-key")
    for module in [m for m in sys.modules if m.startswith("google")]:
        monkeypatch.delitem(sys.modules, module)
    # the stub's modules go with the test: a later test on this worker must not find itself "in Colab"
    request.addfinalizer(lambda: [sys.modules.pop(m) for m in list(sys.modules) if m.startswith("google.colab")])
    setup["kaggle_credentials"]()
    assert os.environ["KAGGLE_KEY"] == "s3cr3t-key" and "s3cr3t" not in capsys.readouterr().out
    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")
    monkeypatch.delenv("STUB_COLAB_SECRET_KAGGLE_KEY")
    with pytest.raises(setup["SetupError"], match="no kaggle.json could be uploaded"):
        setup["kaggle_credentials"]()  # the stub's upload cannot open a browser
    import google.colab.files

    monkeypatch.setattr(google.colab.files, "upload", lambda: {"kaggle.json": b'{"username": "ada", "key": "k3y"}'})
    setup["kaggle_credentials"]()
    saved = tmp_path / ".kaggle/kaggle.json"
    assert json.loads(saved.read_text())["key"] == "k3y" and saved.stat().st_mode & 0o777 == 0o600
    assert "k3y" not in capsys.readouterr().out
