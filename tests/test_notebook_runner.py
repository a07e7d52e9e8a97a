"""run_study with real papermill and nbconvert on tiny generated notebooks in a temp project."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from tlrepro import notebook, paths
from tlrepro.errors import UserError


@pytest.fixture
def project(tmp_project, monkeypatch):
    monkeypatch.setattr(paths, "NOTEBOOKS", tmp_project / "notebooks")
    monkeypatch.setattr(paths, "EXECUTED", tmp_project / "reports" / "notebooks")
    return tmp_project


def write_notebook(project, study: str, *bodies: str) -> None:
    params = new_code_cell('study = "<id>"\nparams_file = "params.yaml"\nepochs = 1')
    params.metadata["tags"] = ["parameters"]
    nb = new_notebook(cells=[new_markdown_cell(f"# {study}"), params, *map(new_code_cell, bodies)])
    nb.metadata["kernelspec"] = {"name": "tlrepro", "display_name": "Python (tlrepro)", "language": "python"}
    (project / "notebooks").mkdir(exist_ok=True)
    nbformat.write(nb, project / "notebooks" / f"{study}.ipynb")


def test_run_study_writes_notebook_and_code_free_html(project):
    body = ("import os, pathlib\n"
            "SECRET_CODE_MARKER = 1\n"
            "print(f'ran {study} epochs={epochs!r} params_ok={pathlib.Path(params_file).is_file()} '\n"
            "      f'cwd_ok={pathlib.Path(os.getcwd()).samefile(pathlib.Path(params_file).parent)}')")
    figure = 'from tlrepro import plots\nplots.confusion_matrices({"a": [[3, 1], [0, 4]]})'
    write_notebook(project, "demo", body, figure)
    html_path = notebook.run_study("demo", overrides={"epochs": "3"})
    executed = project / "reports" / "notebooks" / "demo.ipynb"
    assert html_path == project / "reports" / "demo.html" and executed.is_file()
    nb = nbformat.read(executed, as_version=4)
    out = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "ran demo epochs=3 params_ok=True cwd_ok=True" in out
    assert "image/png" in nb.cells[-1].outputs[0].data  # a returned Figure shows as a picture
    html = html_path.read_text()
    assert "ran demo epochs=3" in html
    assert "SECRET_CODE_MARKER" not in html and "params_file =" not in html
    assert "<title>demo</title>" in html and "In&nbsp;[" not in html
    assert not [p for p in (project / "reports").rglob("*") if p.name.startswith(".")]  # no temp leftovers


def test_failing_notebook_raises_user_error_and_writes_nothing(project):
    write_notebook(project, "broken", "print('before')\nraise ValueError('bad parameter value')")
    with pytest.raises(UserError) as err:
        notebook.run_study("broken")
    message = str(err.value)
    assert "notebooks/broken.ipynb" in message and "ValueError: bad parameter value" in message
    assert "reports/notebooks/broken.failed.ipynb" in message and "Traceback" not in message
    assert (project / "reports" / "notebooks" / "broken.failed.ipynb").is_file()
    assert not (project / "reports" / "notebooks" / "broken.ipynb").exists()
    assert not (project / "reports" / "broken.html").exists()


def test_missing_notebook(project):
    with pytest.raises(UserError, match="notebooks/nope.ipynb not found"):
        notebook.run_study("nope")


def test_setup_notebook_moves_to_project_root(project, tmp_path, monkeypatch):
    import matplotlib

    monkeypatch.chdir(tmp_path)
    with matplotlib.rc_context():
        assert notebook.setup_notebook(quiet_keras=False) == project
        assert Path.cwd() == project and matplotlib.rcParams["savefig.bbox"] == "tight"


def test_literal_overrides_and_colab():
    assert notebook._literal("3") == 3 and notebook._literal("1e-3") == 0.001
    assert notebook._literal("True") is True and notebook._literal("skin") == "skin"
    assert notebook.in_colab() is False
