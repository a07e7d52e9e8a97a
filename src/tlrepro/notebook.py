"""Running a study notebook: papermill executes it, nbconvert renders the code-free HTML report.

Each study is notebooks/<study>.ipynb whose `parameters` cell holds `study = "<id>"` and
`params_file = "params.yaml"`; everything else the notebook reads from params.yaml itself, so DVC's
params tracking sees every setting and papermill only says which study and which file.
"""

from __future__ import annotations

import ast
import logging
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

from tlrepro import io, paths
from tlrepro.errors import UserError

KERNEL = "tlrepro"


def ensure_kernel() -> str:
    """Register this interpreter as the Jupyter kernel `tlrepro` (into sys.prefix) when it is missing.

    Notebooks name that kernel, so `dvc repro`, papermill and Jupyter all run the project's venv.
    """
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(KERNEL)
    except NoSuchKernel:
        cmd = [sys.executable, "-m", "ipykernel", "install", "--sys-prefix", "--name", KERNEL,
               "--display-name", "Python (tlrepro)"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            raise UserError(f"Could not register the Jupyter kernel `{KERNEL}`: {done.stderr.strip()}") from None
        return KERNEL
    python = spec.argv[0] if spec.argv else ""
    if not (Path(python).is_file() or shutil.which(python)):
        raise UserError(f"The Jupyter kernel `{KERNEL}` in {spec.resource_dir} runs {python}, which no longer "
                        f"exists: run `jupyter kernelspec remove {KERNEL}` and run again to re-register it.")
    return KERNEL


def _literal(value: Any) -> Any:
    """'2' -> 2, '1e-3' -> 0.001, 'True' -> True, anything else stays a string (as papermill's -p)."""
    if not isinstance(value, str):
        return value
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def render_html(notebook: Any, title: str) -> str:
    """The executed notebook as HTML with code cells and prompts hidden: a report, not a program."""
    from nbconvert import HTMLExporter

    notebook.metadata["title"] = title
    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    html, _ = exporter.from_notebook_node(notebook, resources={"metadata": {"name": title}})
    return html


def _failure(exc: Exception, source: Path, running: Path, failed: Path) -> UserError:
    """One line naming the failed cell and where the partial notebook is, instead of a long traceback."""
    from papermill.exceptions import PapermillExecutionError

    saved = ""
    if running.exists():
        os.replace(running, failed)
        saved = f" The partly executed notebook is {paths.relative(failed)}: open it for the traceback."
    if isinstance(exc, PapermillExecutionError):
        return UserError(f"{paths.relative(source)} failed in cell In [{exc.exec_count}] "
                         f"({exc.ename}: {exc.evalue}).{saved}")
    return UserError(f"{paths.relative(source)} stopped: {type(exc).__name__} ({exc}).{saved}")


def run_study(study: str, overrides: dict[str, str] | None = None) -> Path:
    """Execute notebooks/<study>.ipynb into reports/notebooks/<study>.ipynb and render reports/<study>.html.

    Both outputs appear only after the whole notebook ran; a failing cell leaves them untouched and saves
    the partial notebook as reports/notebooks/<study>.failed.ipynb. Returns the HTML path.
    """
    import nbformat
    import papermill as pm
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    source = paths.NOTEBOOKS / f"{study}.ipynb"
    if not source.is_file():
        raise UserError(f"{paths.relative(source)} not found: check the study id `{study}` "
                        f"(params.yaml sections) or add its notebook.")
    executed = paths.EXECUTED / f"{study}.ipynb"
    failed = paths.EXECUTED / f"{study}.failed.ipynb"
    html_path = paths.REPORTS / f"{study}.html"
    parameters = {"study": study, "params_file": str(paths.PARAMS_FILE.resolve())}
    parameters.update({k: _literal(v) for k, v in (overrides or {}).items()})
    kernel = ensure_kernel()

    with io.atomic_path(executed) as tmp:
        running = tmp.with_suffix(".ipynb")  # papermill wants an .ipynb name
        try:
            try:
                pm.execute_notebook(source, running, parameters=parameters, kernel_name=kernel,
                                    cwd=str(paths.PROJECT_ROOT), progress_bar=True)
            except (PapermillExecutionError, DeadKernelError, CellTimeoutError) as exc:
                raise _failure(exc, source, running, failed) from None
            html = render_html(nbformat.read(running, as_version=4), title=study)
            os.replace(running, tmp)
        finally:
            running.unlink(missing_ok=True)
    io.write_text(html_path, html)
    failed.unlink(missing_ok=True)
    return html_path


def in_colab() -> bool:
    """True inside Google Colab, where the notebooks may also be opened."""
    return "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ


def setup_notebook(quiet_keras: bool = True) -> Path:
    """The first cell of every study notebook: project root as cwd, readable figures, quiet TF/keras.

    Keras progress bars would fill the executed notebook and its HTML with thousands of lines; with
    `quiet_keras` they are routed to logging instead (model.summary(print_fn=print) still prints).
    Returns the project root.
    """
    os.chdir(paths.PROJECT_ROOT)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # only effective before TensorFlow is imported
    for name in ("tensorflow", "absl", "h5py"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"keras(\.|$)")

    import matplotlib

    shell = sys.modules["IPython"].get_ipython() if "IPython" in sys.modules else None
    if shell is not None:
        shell.run_line_magic("matplotlib", "inline")
    matplotlib.rcParams.update({"figure.dpi": 100, "savefig.dpi": 120, "savefig.bbox": "tight",
                                "figure.figsize": (8, 5), "axes.grid": True})
    if quiet_keras:
        import keras

        keras.config.disable_interactive_logging()
    return paths.PROJECT_ROOT
