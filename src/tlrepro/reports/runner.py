"""Running a study notebook: papermill executes it, nbconvert renders the code-free HTML report.

Each study is notebooks/<study>.ipynb whose `parameters` cell holds `study = "<id>"` and
`params_file = "params.yaml"`; everything else the notebook reads from params.yaml itself, so DVC's
params tracking sees every setting and papermill only says which study and which file.

The study's outputs (metrics, details, plots, timings, models) are written to a staging folder while the
notebook runs and moved into place only when every cell succeeded, together with the executed notebook and
the HTML report: a failed run leaves the previous results exactly as they were.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from tlrepro.core import config, fileio, paths, progress
from tlrepro.core.errors import UserError

KERNEL = "tlrepro"
# TensorFlow's C++ logging writes these to the kernel's stderr before Python can silence it
_NOISE = re.compile(r"(absl::InitializeLog|oneDNN custom operations|cpu_feature_guard|TF_ENABLE_ONEDNN_OPTS|"
                    r"rebuild TensorFlow with the appropriate compiler flags|This TensorFlow binary is optimized|"
                    r"computation_placer|cuda_dnn|cuda_fft|cuda_blas|Unable to register cu|port\.cc:|"
                    r"^WARNING:tensorflow|^WARNING:absl|triggered tf\.function retracing)")


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


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """`--set name=value` pairs as papermill parameters: '2' -> 2, '1e-3' -> 0.001, 'True' -> True."""
    out: dict[str, Any] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip().isidentifier():
            raise UserError(f"--set {item!r} is not NAME=VALUE (e.g. --set quick=True).")
        try:
            out[name.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[name.strip()] = value
    return out


def _drop_stream_lines(notebook: Any, drop: Any) -> int:
    """Remove the stream-output lines for which `drop(line)` holds (and outputs left empty); returns how many."""
    removed = 0
    for cell in notebook.cells:
        outputs = []
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                lines = out.get("text", "").splitlines(keepends=True)
                kept = [line for line in lines if not drop(line)]
                removed += len(lines) - len(kept)
                if not "".join(kept).strip():
                    continue
                out["text"] = "".join(kept)
            outputs.append(out)
        if "outputs" in cell:
            cell["outputs"] = outputs
    return removed


def strip_noise(notebook: Any) -> int:
    """Remove TensorFlow/absl log lines and progress bars (meant for the terminal) from stream outputs: a reader
    should never see them."""
    return _drop_stream_lines(notebook, lambda line: bool(_NOISE.search(line) or progress.BAR_LINE.search(line)))


def without_epoch_log(notebook: Any) -> Any:
    """A copy without the per-epoch training log: the executed notebook keeps it, the report shows curves."""
    import copy

    report = copy.deepcopy(notebook)
    _drop_stream_lines(report, progress.EPOCH_LINE.match)
    return report


def render_html(notebook: Any, title: str) -> str:
    """The executed notebook as HTML with code cells and prompts hidden: a report, not a program."""
    from nbconvert import HTMLExporter

    notebook = without_epoch_log(notebook)
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
        value = " ".join(str(exc.evalue).split())
        return UserError(f"{paths.relative(source)} failed in cell In [{exc.exec_count}] ({exc.ename}: {value}). "
                         f"Previous results were kept.{saved}")
    return UserError(f"{paths.relative(source)} stopped: {type(exc).__name__} ({exc}). Previous results were kept.{saved}")


def commit_outputs(study: str, staging: Path) -> list[str]:
    """Move what the notebook wrote under `staging` into place (files renamed, folders swapped whole)."""
    moved = []
    for relative in paths.study_outputs(study).values():
        source = staging / relative
        if not source.exists():
            continue
        target = paths.PROJECT_ROOT / relative
        if source.is_dir():
            fileio.replace_dir(source, target)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, target)
        moved.append(relative)
    return moved


def run_study(study: str, overrides: dict[str, Any] | None = None) -> Path:
    """Execute notebooks/<study>.ipynb into reports/notebooks/<study>.ipynb and render reports/<study>.html.

    Every output appears only after the whole notebook ran; a failing cell leaves them untouched and saves
    the partial notebook as reports/notebooks/<study>.failed.ipynb. Returns the HTML path.
    """
    params = config.load_params()
    params.study(study)  # every setting validated, and the study known, before any work
    if params.compute.strategy == "multi_worker":  # before any kernel: a missing worker would hang it for ever
        from tlrepro.modeling.compute import check_cluster

        check_cluster(params.compute.worker_timeout_s)
    import nbformat
    import papermill as pm
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    source = paths.NOTEBOOKS / f"{study}.ipynb"
    if not source.is_file():
        raise UserError(f"{paths.relative(source)} not found: add the study's notebook (see notebooks/).")
    executed = paths.EXECUTED / f"{study}.ipynb"
    failed = paths.EXECUTED / f"{study}.failed.ipynb"
    html_path = paths.REPORTS / f"{study}.html"
    parameters = {"study": study, "params_file": str(paths.PARAMS_FILE.resolve()), **(overrides or {})}
    kernel = ensure_kernel()

    paths.REPORTS.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{study}.staging.", dir=paths.REPORTS))
    previous = os.environ.get(paths.STAGING_ENV)
    os.environ[paths.STAGING_ENV] = str(staging)  # the kernel inherits it: study outputs land in staging
    try:
        with fileio.atomic_path(executed) as tmp:
            running = tmp.with_suffix(".ipynb")  # papermill wants an .ipynb name
            try:
                try:
                    pm.execute_notebook(source, running, parameters=parameters, kernel_name=kernel,
                                        cwd=str(paths.PROJECT_ROOT), progress_bar=True)
                except (PapermillExecutionError, DeadKernelError, CellTimeoutError) as exc:
                    raise _failure(exc, source, running, failed) from None
                notebook = nbformat.read(running, as_version=4)
                strip_noise(notebook)
                nbformat.write(notebook, tmp)
                html = render_html(notebook, title=study)
            finally:
                running.unlink(missing_ok=True)
            commit_outputs(study, staging)
        fileio.write_text(html_path, html)
    finally:
        if previous is None:
            os.environ.pop(paths.STAGING_ENV, None)
        else:
            os.environ[paths.STAGING_ENV] = previous
        shutil.rmtree(staging, ignore_errors=True)
    failed.unlink(missing_ok=True)
    return html_path
