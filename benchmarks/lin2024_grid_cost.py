"""What lin2024's learning-rate x epoch grid costs here: one forward pass, then every head at once.

For each lin2024 row (backbone) it runs `tlrepro.studies.grid.run_backbone`, the study's own code, with an
empty temporary feature cache (so the forward pass is really computed, not loaded), and prints:

- forward s: feature extraction, the frozen backbone's one forward pass over every train/val/test image;
- heads s: training every head of the grid at once on those features (all seeds, learning rates, epochs);
- grid s: the wall time of run_backbone (also building the backbone, choosing the cell, evaluating it and
  rebuilding the chosen cell's full model);
- grid/forward: how much the whole grid costs over the bare forward pass.

With --naive it adds the estimated cost of training every cell the study's way, one Keras model per
(learning rate, epoch budget, seed), the whole model on images in every epoch: a few real `train_on_batch`
steps of the full model (and `predict_on_batch` steps for validation) are timed after a warm-up, scaled to
the split's size, then to the grid's total epochs, len(learning_rates) x sum(epoch budgets) x repeats.
Image decoding is left out of that estimate, so it is a lower bound.

    python benchmarks/lin2024_grid_cost.py                       # every row, the full split (hours on CPU)
    python benchmarks/lin2024_grid_cost.py --rows MobileNetV2 --naive
    python benchmarks/lin2024_grid_cost.py --params /tmp/params.yaml --max-images 4 --repeats 1   # a quick look

Epoch budgets come from params.yaml (`studies.lin2024.grid`), after `scale.max_epochs` and the rows'
`max_epochs`. Needs data/splits/lin2024.csv and, where a row asks for them, ImageNet weights (internet, or
IMAGENET_WEIGHTS_DIR). It prints figures; it is not a test.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from _common import Table, cap_sides, duration, make_parser, ratio, run_main, side_counts, smoke_options  # noqa: E402

STUDY = "lin2024"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = make_parser(__doc__, rows_help=f"rows (backbones) of {STUDY} to run (default: all, in params order)")
    parser.add_argument("--repeats", type=int, default=None, metavar="N",
                        help=f"head seeds per cell (default: params studies.{STUDY}.repeats)")
    parser.add_argument("--naive", action="store_true",
                        help="add the estimated cost of training every cell separately on images")
    parser.add_argument("--batches", type=int, default=3, metavar="N",
                        help="--naive: timed batches per backbone, after one warm-up (default: %(default)s)")
    parser.add_argument("--keep-cache", action="store_true",
                        help="use the project's feature cache instead of an empty temporary one (cached features "
                             "are then loaded, not computed, and `forward s` is mostly loading)")
    args = parser.parse_args(argv)
    for name in ("max_images", "repeats", "batches"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def naive_cost(study, name: str, batches: int) -> tuple[float, int]:
    """(estimated seconds, epochs) of training every cell of one backbone separately, the whole model on images."""
    import numpy as np

    from tlrepro.data.tfdata import image_dataset
    from tlrepro.modeling import training
    from tlrepro.studies.base import build

    row = study.row(name)
    grid = study.settings.grid
    batch = row.batch_size
    classifier = build(study, row, study.seed)
    model = classifier.model
    training.compile_model(model, row, float(grid.learning_rates[0]))
    train, val = study.part("train"), study.part("val")

    def one_batch(frame):
        sample = frame.head(batch)
        labels = training.targets(study.labels(sample), model)
        return next(iter(image_dataset(sample, row.image_size, batch, labels=labels)))

    x, y = one_batch(train)
    model.train_on_batch(x, y)  # warm-up: tracing and the first allocation are not per-epoch costs
    started = time.perf_counter()
    for _ in range(batches):
        model.train_on_batch(x, y)
    train_step = (time.perf_counter() - started) / batches
    val_step = 0.0
    if len(val):
        xv, _ = one_batch(val)
        model.predict_on_batch(xv)
        started = time.perf_counter()
        for _ in range(batches):
            model.predict_on_batch(xv)
        val_step = (time.perf_counter() - started) / batches
    per_epoch = train_step * int(np.ceil(len(train) / batch)) + val_step * int(np.ceil(len(val) / batch))
    budgets = sorted({study.epochs(row, e) for e in grid.epochs})
    epochs = len(grid.learning_rates) * sum(budgets) * study.settings.repeats
    return per_epoch * epochs, epochs


def run(args: argparse.Namespace) -> None:
    smoke_options(args, max_images=2, repeats=1, naive=True, batches=1, rows=None)
    from tlrepro.core import config, paths

    settings = config.load_params(args.params).study(STUDY)  # bad params stop here, before TensorFlow starts
    for name in args.rows or []:
        settings.row(name)

    from tlrepro.studies import grid
    from tlrepro.studies.base import load_study

    study = load_study(STUDY, args.params)
    if args.repeats:
        study.settings = study.settings.model_copy(update={"repeats": args.repeats})
    study.split = cap_sides(study.split, args.max_images, study.seed)
    names = args.rows or [row.name for row in study.rows]
    rows = [study.row(name) for name in names]  # an unknown row stops here, before any work
    settings = study.settings.grid
    budgets = sorted({study.epochs(rows[0], e) for e in settings.epochs})
    capped = f", at most {args.max_images} per class per side" if args.max_images else ""
    cache = "the configured" if args.keep_cache else "an empty temporary"
    print(f"{STUDY}: {len(settings.learning_rates)} learning rates x epoch budgets {budgets} x "
          f"{study.settings.repeats} seed(s), heads trained at once; feature cache: {cache} one "
          f"({paths.relative(paths.feature_cache_dir())})")
    print(f"images: {side_counts(study)} (protocol {study.primary}{capped})")
    print("rows: " + ", ".join(f"{r.name} ({r.backbone}, {r.weights}, {r.image_size} px, batch {r.batch_size})"
                               for r in rows))
    print()

    columns = [("backbone", max(len(n) for n in [*names, "total"]), "<"), ("forward s", 9, ">"),
               ("heads s", 9, ">"), ("grid s", 9, ">"), ("grid/forward", 12, ">")]
    if args.naive:
        columns += [("naive epochs", 12, ">"), ("naive s", 10, ">"), ("naive/grid", 10, ">")]
    table = Table(columns)
    table.header()
    totals = {"forward": 0.0, "heads": 0.0, "grid": 0.0, "naive": 0.0}
    for name in names:
        started = time.perf_counter()
        result = grid.run_backbone(study, name)
        wall = time.perf_counter() - started
        cells = [name, result.feature_seconds, result.head_seconds, wall, ratio(wall, result.feature_seconds)]
        if args.naive:
            naive, epochs = naive_cost(study, name, args.batches)
            totals["naive"] += naive
            cells += [epochs, naive, ratio(naive, wall)]
        table.row(*cells)
        totals["forward"] += result.feature_seconds
        totals["heads"] += result.head_seconds
        totals["grid"] += wall
    table.rule()
    cells = ["total", totals["forward"], totals["heads"], totals["grid"], ratio(totals["grid"], totals["forward"])]
    if args.naive:
        cells += ["", totals["naive"], ratio(totals["naive"], totals["grid"])]
    table.row(*cells)
    print()
    print(f"whole grid / forward pass, all backbones: {ratio(totals['grid'], totals['forward'])} "
          f"({duration(totals['grid'])} against {duration(totals['forward'])})")
    if args.naive:
        print(f"naive (every cell separately, backbone run every epoch): {duration(totals['naive'])}, "
              f"{ratio(totals['naive'], totals['grid'])} the grid's {duration(totals['grid'])}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cache_dir = None
    if not args.keep_cache:  # before tlrepro is imported: an empty cache, so extraction is timed
        cache_dir = tempfile.mkdtemp(prefix="tlrepro-features-")
        os.environ["TLREPRO_FEATURE_CACHE"] = cache_dir
    try:
        return run_main(lambda: run(args))
    finally:
        if cache_dir:
            shutil.rmtree(cache_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
