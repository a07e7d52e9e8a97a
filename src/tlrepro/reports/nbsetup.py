"""The first cell of every study notebook: the same setup in JupyterLab, under papermill and in Colab."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path

from tlrepro.core import paths


def in_colab() -> bool:
    """True inside Google Colab, where the notebooks may also be opened."""
    return "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ


def setup_notebook(quiet_keras: bool = True) -> Path:
    """Project root as cwd, readable figures, quiet TensorFlow/Keras. Returns the project root.

    Keras progress bars would fill the executed notebook and its HTML with thousands of lines; with
    `quiet_keras` they are routed to logging instead (model.summary(print_fn=print) still prints).
    """
    os.chdir(paths.PROJECT_ROOT)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # only effective before TensorFlow is imported
    for name in ("tensorflow", "absl", "h5py"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"keras(\.|$)")
    warnings.filterwarnings("ignore", category=FutureWarning)

    import matplotlib

    shell = sys.modules["IPython"].get_ipython() if "IPython" in sys.modules else None
    if shell is not None:
        shell.run_line_magic("matplotlib", "inline")
    matplotlib.rcParams.update({"figure.dpi": 100, "savefig.dpi": 120, "savefig.bbox": "tight",
                                "figure.figsize": (8, 5), "axes.grid": True})
    if quiet_keras:
        import keras
        import tensorflow as tf

        keras.config.disable_interactive_logging()
        tf.get_logger().setLevel(logging.ERROR)  # TF resets its logger on import: retracing notes etc.
    return paths.PROJECT_ROOT


def open_study(study: str, params_file: str = "params.yaml"):
    """The opening of every study notebook: setup, then the study's settings, its data and its leakage audit.

    Outside `tlrepro run` (the DVC stage), the study's outputs (models, metrics, plots) go to
    reports/interactive/<study>/, which neither git nor DVC tracks, so a hand run never changes what DVC recorded.
    """
    if paths.staging_dir() is None:
        os.environ[paths.STAGING_ENV] = str(paths.interactive_dir(study))
    setup_notebook()
    from tlrepro.reports import sections
    from tlrepro.studies import base

    run = base.load_study(study, params_file)
    sections.header(run)
    sections.data(run)
    sections.leakage(run)
    return run


def finish(study: str) -> None:
    """The last cell: where this run's outputs went, and how DVC makes its own."""
    from IPython.display import Markdown, display

    staged = paths.staging_dir()
    if staged is not None and paths.by_hand():
        display(Markdown(
            f"**This notebook was run by hand:** its models, metrics and plots are in "
            f"`{paths.relative(staged)}/`, apart from DVC's outputs, which it left as they were. For the "
            f"tracked results, run the DVC stage from the project root: `dvc repro study@{study}` "
            f"(or `dvc exp run` for an experiment)."))
