"""run_study with real papermill and nbconvert on tiny generated notebooks in a temp project: outputs staged and
committed only on success, a failed run keeps the previous results, log noise stripped, --set parsed."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from tlrepro.core import paths
from tlrepro.core.errors import UserError
from tlrepro.reports import nbsetup, runner

STUDY = "sarker2025"  # any study of params.yaml: its notebook is replaced by the generated one


def write_notebook(project: Path, *bodies: str) -> None:
    params = new_code_cell('study = "<id>"\nparams_file = "params.yaml"\nepochs = 1')
    params.metadata["tags"] = ["parameters"]
    nb = new_notebook(cells=[new_markdown_cell(f"# {STUDY}"), params, *map(new_code_cell, bodies)])
    nb.metadata["kernelspec"] = {"name": "tlrepro", "display_name": "Python (tlrepro)", "language": "python"}
    (project / "notebooks").mkdir(exist_ok=True)
    nbformat.write(nb, project / "notebooks" / f"{STUDY}.ipynb")


WRITE_OUTPUTS = ("from tlrepro.core import fileio, paths\n"
                 "fileio.write_json(paths.study_output(f'reports/metrics/{study}.json'), {'results': {'r': {'accuracy': VALUE}}})\n"
                 "fileio.write_text(paths.study_output(f'models/{study}/r.card.json'), 'card')\n")


def test_run_study_writes_notebook_html_and_commits_outputs(tmp_project):
    body = ("import os, pathlib, sys\n"
            "SECRET_CODE_MARKER = 1\n"
            "print(f'ran {study} epochs={epochs!r} params_ok={pathlib.Path(params_file).is_file()} '\n"
            "      f'cwd_ok={pathlib.Path(os.getcwd()).samefile(pathlib.Path(params_file).parent)}')\n"
            "print('I0000 00:00:1796161745.032998 7271 port.cc:153] oneDNN custom operations are on.', file=sys.stderr)")
    figure = 'from tlrepro.results import plots\nplots.confusion_matrices({"a": [[3, 1], [0, 4]]})'
    write_notebook(tmp_project, body, figure, WRITE_OUTPUTS.replace("VALUE", "0.9"))
    html_path = runner.run_study(STUDY, overrides=runner.parse_overrides(["epochs=3"]))
    executed = paths.EXECUTED / f"{STUDY}.ipynb"
    assert html_path == tmp_project / "reports" / f"{STUDY}.html" and executed.is_file()
    nb = nbformat.read(executed, as_version=4)
    out = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "ran sarker2025 epochs=3 params_ok=True cwd_ok=True" in out
    assert "oneDNN" not in out, "TensorFlow log lines are stripped"
    assert "image/png" in nb.cells[-2].outputs[0].data  # a returned Figure shows as a picture
    html = html_path.read_text()
    assert "ran sarker2025 epochs=3" in html and "oneDNN" not in html
    assert "SECRET_CODE_MARKER" not in html and "params_file =" not in html
    assert f"<title>{STUDY}</title>" in html and "In&nbsp;[" not in html
    assert (paths.METRICS / f"{STUDY}.json").read_text().count("0.9") == 1
    assert (paths.MODELS / STUDY / "r.card.json").read_text() == "card"
    assert not [p for p in (tmp_project / "reports").rglob("*") if p.name.startswith(".")]  # no staging leftovers


def test_failing_notebook_keeps_the_previous_results(tmp_project):
    write_notebook(tmp_project, WRITE_OUTPUTS.replace("VALUE", "0.9"))
    runner.run_study(STUDY)
    good = (paths.METRICS / f"{STUDY}.json").read_bytes(), (paths.REPORTS / f"{STUDY}.html").read_bytes()
    # a run that writes degenerate figures, then fails: nothing of it may replace the good results
    write_notebook(tmp_project, WRITE_OUTPUTS.replace("VALUE", "0.0"), "raise ValueError('bad parameter value')")
    with pytest.raises(UserError) as err:
        runner.run_study(STUDY)
    message = str(err.value)
    assert f"notebooks/{STUDY}.ipynb" in message and "ValueError: bad parameter value" in message
    assert "Previous results were kept" in message and "Traceback" not in message
    assert (paths.EXECUTED / f"{STUDY}.failed.ipynb").is_file()
    assert ((paths.METRICS / f"{STUDY}.json").read_bytes(), (paths.REPORTS / f"{STUDY}.html").read_bytes()) == good
    assert not [p for p in (tmp_project / "reports").rglob("*") if p.name.startswith(".")]


def test_missing_notebook_and_unknown_study(tmp_project):
    with pytest.raises(UserError, match=f"notebooks/{STUDY}.ipynb not found"):
        runner.run_study(STUDY)
    with pytest.raises(UserError, match="Unknown study `nope`"):
        runner.run_study("nope")


def test_overrides_are_parsed_or_refused():
    assert runner.parse_overrides(["a=3", "b=1e-3", "c=True", "d=skin"]) == {"a": 3, "b": 0.001, "c": True, "d": "skin"}
    for bad in ("quick", "=3", "two words=1"):
        with pytest.raises(UserError, match="NAME=VALUE"):
            runner.parse_overrides([bad])


def test_setup_notebook_moves_to_project_root(tmp_project, tmp_path, monkeypatch):
    import matplotlib

    monkeypatch.chdir(tmp_path)
    with matplotlib.rc_context():
        assert nbsetup.setup_notebook(quiet_keras=False) == tmp_project
        assert Path.cwd() == tmp_project and matplotlib.rcParams["savefig.bbox"] == "tight"
    assert nbsetup.in_colab() is False


def test_progress_bars_meant_for_the_terminal_leave_the_notebook_and_the_report(monkeypatch):
    """ipykernel copies the process's stderr into the notebook too: the bars progress.bar writes there (seen in
    mobilenet2025's report) are dropped, the cell's own lines are kept."""
    import io
    import sys

    from nbformat.v4 import new_output

    from tlrepro.core import progress

    terminal = io.StringIO()
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    monkeypatch.setattr(sys, "__stderr__", terminal)
    for _ in progress.bar(range(4), total=4, desc="MobileNetV2 frozen outputs, train", unit="batch"):
        pass
    bars = terminal.getvalue().replace("\r", "\n")
    assert bars.strip()
    cell = new_code_cell("")
    cell.outputs = [new_output("stream", name="stderr", text=bars),
                    new_output("stream", name="stdout", text="frozen: 10 epochs in 4.2 s (cached features)\n")]
    notebook = new_notebook(cells=[cell])
    assert runner.strip_noise(notebook) >= 2
    assert [o["text"] for o in notebook.cells[0].outputs] == ["frozen: 10 epochs in 4.2 s (cached features)\n"]
    assert "frozen outputs" not in runner.render_html(notebook, title="t")
