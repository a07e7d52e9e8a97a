"""Where a quick pass's time goes: per study and per step, from the run's own records, and the fixed costs that
do not shrink with the `scale` caps, each measured on its own.

    python benchmarks/quick_pass.py                 # the last run's breakdown, per study and step
    python benchmarks/quick_pass.py --steps         # fixed costs measured one at a time (a few minutes on 2 cores)
    python benchmarks/quick_pass.py --smoke         # both, on a tiny generated project, in seconds

The breakdown reads what every study stage leaves: the executed notebook (reports/notebooks/<study>.ipynb, where
papermill records each cell's start and duration: the kernel's start is the time before the first cell), the
study's timings (reports/timings/<study>.json: feature extraction, fitting and prediction seconds per row, summed
over folds), and a pretraining model's card (its training seconds). Each cell is named by the step it runs
(start-up, training, Grad-CAM, report sections, ...); the training cell is split into extraction, fitting,
prediction and the rest (building the models, tracing, bootstrap intervals, saving). Rendering the HTML report
happens after the notebook: it is timed here by rendering each executed notebook again.

`--steps` measures, each in a fresh process or on a fresh model: Python with TensorFlow and the package imported,
a Jupyter kernel's start, and for each backbone at its image size (random weights: no download) building the
classifier, the first `predict` (tracing and running) against a second one, the first frozen-part call through a
new `tf.function` (what each feature extraction pays), the first `fit` step, Grad-CAM on 4 images, and the
bootstrap of one evaluation (`evaluation.bootstrap_resamples`). A quick pass pays these per model built, that is
per row, fold and protocol, whatever the caps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from _common import Table, make_parser, run_main, smoke_folder

ROOT = Path(__file__).resolve().parents[1]
# a cell's step, from what its code calls (first match wins)
STEPS = (("open_study", "start-up: imports, settings, data, leakage audit"),
         ("pretraining(", "pretraining section (reads the pretrained model)"),
         ("run_rows(", "training: every row, fold and protocol"), ("grid.run(", "training: the grid"),
         ("gradcam", "Grad-CAM"), ("write_outputs", "writing outputs"),
         ("preview", "previews (augmentation, stain)"), ("architecture(", "architecture tables"))
DEFAULT_BACKBONES = ("DenseNet121", "VGG16", "MobileNetV2", "ResNet50V2", "MobileNetV3Large", "EfficientNetV2B0")


def step_of(cell: dict[str, Any]) -> str:
    if {"parameters", "injected-parameters"} & set(cell.get("metadata", {}).get("tags", [])):
        return "parameters"
    source = "".join(cell["source"])
    return next((name for pattern, name in STEPS if pattern in source), "report sections (tables, figures)")


def notebook_times(path: Path) -> dict[str, Any]:
    """Kernel start, and seconds per step, of one executed notebook (papermill's metadata)."""
    from datetime import datetime

    notebook = json.loads(path.read_text())
    meta = notebook["metadata"].get("papermill", {})
    cells = [c for c in notebook["cells"] if c["cell_type"] == "code" and "papermill" in c.get("metadata", {})]
    steps: dict[str, float] = {}
    for cell in cells:
        name = step_of(cell)
        steps[name] = steps.get(name, 0.0) + float(cell["metadata"]["papermill"].get("duration") or 0.0)
    first = next((c["metadata"]["papermill"].get("start_time") for c in cells), None)
    kernel = ((datetime.fromisoformat(first) - datetime.fromisoformat(meta["start_time"])).total_seconds()
              if first and meta.get("start_time") else None)
    return {"total": float(meta.get("duration") or 0.0), "kernel": kernel, "steps": steps}


def row_times(timings: dict[str, Any]) -> dict[str, float]:
    """Feature extraction, fitting and prediction seconds summed over a study's rows (lin2024's grid: heads)."""
    out = {"features": 0.0, "fitting": 0.0, "prediction": 0.0}
    for value in timings.values():
        if isinstance(value, dict):
            out["features"] += float(value.get("feature_seconds") or 0.0)
            out["fitting"] += float(value.get("training_seconds") or value.get("head_seconds") or 0.0)
            out["prediction"] += float(value.get("prediction_seconds") or 0.0)
    return out


def render_seconds(path: Path) -> float:
    import nbformat

    from tlrepro.reports.runner import render_html

    started = time.perf_counter()
    render_html(nbformat.read(path, as_version=4), title=path.stem)
    return time.perf_counter() - started


def breakdown(root: Path, render: bool = True) -> float:
    """Print every study's steps and the totals; returns the total seconds (notebooks, rendering, pretraining)."""
    executed = sorted((root / "reports/notebooks").glob("*.ipynb"))
    executed = [p for p in executed if not p.name.endswith(".failed.ipynb")]
    if not executed:
        print(f"no executed notebook under {root / 'reports/notebooks'}: run the pipeline (or the quick pass) first")
        return 0.0
    totals = Table([("study", 14, "<"), ("notebook s", 10, ">"), ("kernel s", 8, ">"), ("start-up s", 10, ">"),
                    ("training s", 10, ">"), ("Grad-CAM s", 10, ">"), ("other cells s", 13, ">"), ("HTML s", 6, ">")])
    rows, grand = [], 0.0
    for path in executed:
        times = notebook_times(path)
        timings_file = root / "reports/timings" / f"{path.stem}.json"
        training = row_times(json.loads(timings_file.read_text())) if timings_file.is_file() else None
        html = render_seconds(path) if render else None
        print(f"\n{path.stem}: notebook {times['total']:.1f} s")
        table = Table([("step", 52, "<"), ("seconds", 8, ">"), ("share", 6, ">")])
        table.header()
        if times["kernel"] is not None:
            table.row("kernel start (before the first cell)", times["kernel"], share(times["kernel"], times["total"]))
        for name, seconds in sorted(times["steps"].items(), key=lambda kv: -kv[1]):
            table.row(name, seconds, share(seconds, times["total"]))
            if name.startswith("training") and training:
                rest = seconds - sum(training.values())
                for part, value in (*training.items(), ("building, tracing, bootstrap, saving (the rest)", rest)):
                    table.row(f"  {part}", value, share(value, times["total"]))
        if html is not None:
            table.row("rendering the HTML report (after the notebook)", html, "")
        steps = times["steps"]
        pick = {k: sum(v for n, v in steps.items() if n.startswith(k)) for k in ("start-up", "training", "Grad-CAM")}
        other = sum(steps.values()) - sum(pick.values())
        rows.append((path.stem, times["total"], times["kernel"], pick["start-up"], pick["training"], pick["Grad-CAM"],
                     other, html))
        grand += times["total"] + (html or 0.0)
    pretraining = 0.0
    for card in sorted((root / "models/pretrained").glob("*.card.json")):
        seconds = float((json.loads(card.read_text()).get("training") or {}).get("seconds") or 0.0)
        print(f"\npretraining {card.name.removesuffix('.card.json')}: training {seconds:.1f} s (its card)")
        pretraining += seconds
    print()
    totals.header()
    for row in rows:
        totals.row(*row)
    totals.rule()
    print(f"studies and rendering: {grand:.1f} s; pretraining: {pretraining:.1f} s; both: {grand + pretraining:.1f} s "
          f"({(grand + pretraining) / 60:.1f} min), besides the data stages and process starts")
    return grand + pretraining


def share(part: float | None, whole: float) -> str:
    return f"{100 * part / whole:.0f}%" if part is not None and whole > 0 else "-"


# ---------------------------------------------------------------- fixed costs, one at a time


def timed_process(code: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, capture_output=True,
                   env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    return time.perf_counter() - started


def kernel_start(kernel: str = "tlrepro") -> float:
    from jupyter_client.manager import start_new_kernel

    started = time.perf_counter()
    manager, client = start_new_kernel(kernel_name=kernel)
    seconds = time.perf_counter() - started
    client.stop_channels()
    manager.shutdown_kernel(now=True)
    return seconds


def clock(fn: Any) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def backbone_costs(backbone: str, image_size: int, images: int, batch: int, resamples: int) -> dict[str, float]:
    """One backbone's fixed costs: build, first vs second predict, a new tf.function's first call, the first fit
    step, Grad-CAM on 4 images, and one bootstrap evaluation."""
    import keras
    import numpy as np
    import tensorflow as tf

    from tlrepro.core import config
    from tlrepro.modeling import explain, models
    from tlrepro.results import metrics

    row = config.resolve_row(backbone, config.RowSettings(), config.RowSettings.model_validate({
        "backbone": backbone, "weights": "random", "image_size": image_size, "batch_size": batch,
        "learning_rate": 1e-3, "epochs": 1, "head": [{"pool": "avg"}, {"dense": 1, "activation": "sigmoid"}]}))
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (images, image_size, image_size, 3)).astype("float32")
    y = (np.arange(images) % 2).astype("float32")
    out: dict[str, float] = {}
    holder: dict[str, Any] = {}
    out["build"] = clock(lambda: holder.update(c=models.build_classifier(row, classes=("b", "m"), seed=0)))
    model = holder["c"].model
    out["predict 1st"] = clock(lambda: model.predict(x, batch_size=batch, verbose=0))
    out["predict 2nd"] = clock(lambda: model.predict(x, batch_size=batch, verbose=0))
    forward = tf.function(lambda t: holder["c"].backbone(t, training=False), reduce_retracing=True)
    out["tf.function 1st"] = clock(lambda: forward(tf.constant(x[:batch])))
    out["tf.function 2nd"] = clock(lambda: forward(tf.constant(x[:batch])))
    holder["c"].backbone.trainable = False  # as the studies train on images: a frozen backbone, the head learning
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
    out["fit 1st"] = clock(lambda: model.fit(x[:batch], y[:batch], epochs=1, verbose=0))
    out["fit 2nd"] = clock(lambda: model.fit(x[:batch], y[:batch], epochs=1, verbose=0))
    # the same calls run eagerly (no graph to trace): what a run pays when it skips tracing
    tf.config.run_functions_eagerly(True)
    warnings.filterwarnings("ignore", message=".*does not apply to tf.data functions")
    try:
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
        out["predict eager"] = clock(lambda: model.predict(x, batch_size=batch, verbose=0))
        out["fit eager"] = clock(lambda: model.fit(x[:batch], y[:batch], epochs=1, verbose=0))
    finally:
        tf.config.run_functions_eagerly(False)
    out["Grad-CAM"] = clock(lambda: explain.gradcam(model, x[:4]))
    probs = rng.random(images)
    out["bootstrap"] = clock(lambda: metrics.evaluate(y, probs, seed=0, resamples=resamples,
                                                                              confidence=0.95))
    out["images"] = images
    return out


def steps(backbones: list[str], image_size: int, images: int, batch: int, resamples: int,
          processes: bool = True) -> None:
    print("fixed costs (each a fresh process or a fresh model; seconds on this machine, now)")
    table = Table([("what", 44, "<"), ("seconds", 8, ">")])
    table.header()
    if processes:
        table.row("python + import tensorflow", timed_process("import tensorflow"))
        table.row("python + import the package (study, report)",
                  timed_process("import tlrepro.studies.base, tlrepro.reports.sections"))
    try:
        table.row("a Jupyter kernel's start (tlrepro)", kernel_start())
    except Exception as exc:  # no kernel registered: say so, measure the rest
        table.row(f"a Jupyter kernel's start: {type(exc).__name__}", None)
    columns = None
    for backbone in backbones:
        costs = backbone_costs(backbone, image_size, images, batch, resamples)
        if columns is None:
            columns = [k for k in costs if k != "images"]
            print(f"\nper model built ({images} images of {image_size} px, batch {batch}, random weights)")
            per = Table([("backbone", 16, "<"), *((c, max(7, len(c)), ">") for c in columns)])
            per.header()
        per.row(backbone, *(costs[c] for c in columns))
    print(f"\nbuild: the classifier; predict: model.predict on the {images} images; tf.function: the backbone through"
          f"\na new tf.function (as each feature extraction makes one) on one batch; fit: one epoch on one batch, the"
          f"\nbackbone frozen; Grad-CAM: 4 images; bootstrap: one evaluation with {resamples} resamples. 1st: traces"
          f"\nthe graph and runs; 2nd: the same call again; eager: the same call under"
          f"\ntf.config.run_functions_eagerly (no graph). A quick pass pays the build and every 1st for each model it"
          f"\nbuilds (row x fold x protocol), whatever the caps.")


# ---------------------------------------------------------------- one study's units, one at a time


def prepare(folder: Path, studies: list[str], per_class: int, epochs: int) -> Path:
    """A throwaway quick-pass project in `folder`: this project's params.yaml with the caps (and every row on
    random weights: no download), only `studies` and the datasets they read, downloaded from $KAGGLE_MIRROR,
    prepared (derived where needed) and split. Returns its root; the package points at it from then on."""
    import shutil

    import yaml

    from tlrepro.core import paths
    from tlrepro.data.derive import derive_dataset
    from tlrepro.data.download import download_dataset
    from tlrepro.data.index import prepare_dataset
    from tlrepro.data.splits import write_study_split

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["scale"] = {"max_images_per_class": per_class, "max_epochs": epochs}
    params["studies"] = {k: v for k, v in params["studies"].items() if k in studies}
    for study in params["studies"].values():
        study["defaults"]["weights"] = "random"
        study["defaults"].pop("init_from", None)
        for row in study["rows"].values():
            row.pop("init_from", None)  # no pretraining stage here
    derived = {k: v for k, v in (params.get("derived") or {}).items()
               if k in {s["dataset"] for s in params["studies"].values()}}
    params["derived"], params["pretraining"] = derived, {}
    wanted = {s["dataset"] for s in params["studies"].values()} | {d["from"] for d in derived.values()}
    params["datasets"] = {k: v for k, v in params["datasets"].items() if k in wanted}
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "dvc.yaml", folder / "dvc.yaml")
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    os.environ["TLREPRO_ROOT"] = str(folder)
    paths.set_root(folder)
    for key in params["datasets"]:
        download_dataset(key)
        prepare_dataset(key)
    for key in derived:
        derive_dataset(key)
    for study in params["studies"]:
        write_study_split(study)
    return folder


def unit_costs(root: Path, study_id: str, row: str, protocol: str | None, count: int) -> None:
    """`run_row` of one row on the first `count` units of a protocol, each timed: the whole call, and within it
    feature extraction, fitting and prediction (the rest: building, tracing, bootstrap)."""
    from tlrepro.core import paths
    from tlrepro.studies import base

    paths.set_root(root)
    os.environ["TLREPRO_ROOT"] = str(root)
    study = base.load_study(study_id, root / "params.yaml")
    protocol = protocol or next((p for p in study.protocols if study.cross_validated(p)), study.primary)
    units = study.units(protocol)
    print(f"{study_id} {row}, protocol {protocol}: {len(units)} unit(s); sides "
          f"{study.protocol(protocol).groupby('side').size().to_dict()} (summed over units)")
    table = Table([("unit", 12, "<"), ("run_row s", 9, ">"), ("features s", 10, ">"), ("fitting s", 9, ">"),
                   ("prediction s", 12, ">"), ("the rest s", 10, ">")])
    table.header()
    for unit in units[:count]:
        started = time.perf_counter()
        result = base.run_row(study, row, protocol=protocol, unit=unit, evaluate=len(units) == 1)
        wall = time.perf_counter() - started
        t = result.training
        table.row(unit.describe(units) or "whole", wall, t.feature_seconds, t.seconds, result.predict_seconds,
                  wall - t.feature_seconds - t.seconds - result.predict_seconds)


# ---------------------------------------------------------------- smoke: a tiny generated project


def smoke_project(folder: Path) -> Path:
    """A project folder with one study notebook executed by papermill (cells named like the study's steps, doing
    almost nothing) and its timings file."""
    import nbformat
    import papermill as pm

    root = folder / "project"
    (root / "reports/notebooks").mkdir(parents=True)
    (root / "reports/timings").mkdir(parents=True)
    notebook = nbformat.v4.new_notebook()
    sources = ['study = "tiny"\nparams_file = "params.yaml"', "# run = open_study(study)\nimport time\ntime.sleep(0.2)",
               "# results = base.run_rows(run)\ntime.sleep(0.5)", "# model_views.gradcam_panel(...)\ntime.sleep(0.1)",
               "# sections.provenance(run)\nprint('a table')"]
    notebook.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    notebook.cells[0].metadata["tags"] = ["parameters"]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    source = folder / "tiny.ipynb"
    nbformat.write(notebook, source)
    pm.execute_notebook(source, root / "reports/notebooks/tiny.ipynb", kernel_name="python3", progress_bar=False,
                        log_output=False)
    (root / "reports/timings/tiny.json").write_text(json.dumps({"row": {"training_seconds": 0.3, "feature_seconds": 0.1,
                                                                         "prediction_seconds": 0.05, "units": 1}}))
    return root


def main() -> None:
    parser = make_parser(__doc__, study_options=False)
    parser.add_argument("--root", type=Path, default=ROOT, help="the project whose last run is broken down")
    parser.add_argument("--steps", action="store_true", help="also measure the fixed costs, one at a time")
    parser.add_argument("--backbones", nargs="+", default=list(DEFAULT_BACKBONES), metavar="NAME")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--images", type=int, default=16, help="images per timed predict (default 16)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (params: 1000)")
    parser.add_argument("--no-render", action="store_true", help="do not re-render the HTML reports")
    parser.add_argument("--prepare", type=Path, metavar="DIR",
                        help="make DIR a quick-pass project of --studies from $KAGGLE_MIRROR, then use it as --root")
    parser.add_argument("--studies", nargs="+", default=["kumar2022"], metavar="ID")
    parser.add_argument("--per-class", type=int, default=20, help="--prepare's scale.max_images_per_class (20)")
    parser.add_argument("--epochs", type=int, default=2, help="--prepare's scale.max_epochs (2)")
    parser.add_argument("--units", nargs=2, metavar=("STUDY", "ROW"),
                        help="time run_row of ROW on the first --count units of --protocol (default: the first "
                             "cross-validated one) in the --root project (its split must exist)")
    parser.add_argument("--protocol", default=None)
    parser.add_argument("--count", type=int, default=2)
    args = parser.parse_args()
    if args.smoke:
        total = breakdown(smoke_project(smoke_folder()))
        assert total > 0.7, total  # the notebook's cells sleep 0.8 s
        steps(["TinyCNN"], 32, 8, 4, 50, processes=False)  # this process imports TensorFlow anyway
        return
    if args.prepare:
        args.root = prepare(args.prepare.resolve(), args.studies, args.per_class, args.epochs)
        print(f"prepared {args.root} ({', '.join(args.studies)})")
    if args.units:
        unit_costs(args.root, *args.units, args.protocol, args.count)
        return
    breakdown(args.root, render=not args.no_render)
    if args.steps:
        print()
        steps(args.backbones, args.image_size, args.images, args.batch_size, args.resamples)


if __name__ == "__main__":
    sys.exit(run_main(main))
