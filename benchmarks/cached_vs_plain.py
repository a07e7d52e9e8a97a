"""Cached frozen features vs plain Keras `fit`: wall time and test accuracy of one row trained both ways.

By default mobilenet2025's `frozen` row (frozen MobileNetV2, the study's head, Adam at the row's learning
rate and epochs; all from params.yaml) is built and trained twice from the same seed on the same images:

- plain: `tlrepro.modeling.training.train(..., use_cache=False)`: the whole model is fitted on images, so
  the frozen backbone runs on every image in every epoch (validation too);
- cached: `train(..., use_cache=True)` with an empty temporary feature cache: the frozen part runs once
  over the train and validation images, then only the head is fitted; its wall time includes that
  feature extraction.

Both models are then evaluated on the study's evaluation side through the whole model on images (no
cache), and the script prints both wall times, their ratio, both accuracies and their difference.

    python benchmarks/cached_vs_plain.py                                   # the full study split
    python benchmarks/cached_vs_plain.py --max-images 60 --epochs 2        # a quick look
    python benchmarks/cached_vs_plain.py --params /tmp/params.yaml --max-images 4 --epochs 1 --weights random

Needs data/splits/<study>.csv, and ImageNet weights for the row's backbone (internet, or
IMAGENET_WEIGHTS_DIR) unless `--weights random`. It prints figures; it is not a test.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from _common import Table, cap_sides, make_parser, ratio, run_main, side_counts, smoke_options  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = make_parser(__doc__)
    parser.add_argument("--study", default="mobilenet2025", help="study id (default: %(default)s)")
    parser.add_argument("--row", default="frozen", help="row of the study to train, from its initial weights (a `start_from` is not followed; "
                             "default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=None, metavar="N",
                        help="epochs (default: the row's, after scale.max_epochs and the row's max_epochs)")
    parser.add_argument("--weights", choices=("imagenet", "random"), default=None,
                        help="backbone weights (default: the row's `weights`)")
    args = parser.parse_args(argv)
    for name in ("epochs", "max_images"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def run(args: argparse.Namespace) -> None:
    smoke_options(args, max_images=2, epochs=1)
    from tlrepro.core import config
    from tlrepro.core.errors import UserError

    config.load_params(args.params).study(args.study).row(args.row)  # bad params stop here, before TensorFlow

    from tlrepro.modeling import frozen_cache as fc
    from tlrepro.modeling import training
    from tlrepro.studies.base import build, load_study

    study = load_study(args.study, args.params)
    row = study.row(args.row)
    if args.weights:
        row = row.model_copy(update={"weights": args.weights})
    study.split = cap_sides(study.split, args.max_images, study.seed)
    seed = study.seed
    epochs = study.epochs(row, args.epochs)
    train_frame, val_frame = study.part("train"), study.part("val")
    side = study.settings.evaluate_on
    evaluation = study.part(side)
    if evaluation.empty:
        raise UserError(f"{args.study} has no {side} images to evaluate on (protocol {study.primary}).")
    capped = f", at most {args.max_images} per class per side" if args.max_images else ""
    rate = f"{row.optimizer} {row.learning_rate:g}" if row.learning_rate else row.optimizer
    frozen = f"trainable_from {row.trainable_from}" if row.trainable_from else f"trainable_layers {row.trainable_layers}"
    print(f"{args.study} row `{row.name}`: {row.backbone} ({row.weights}), {frozen}, "
          f"preprocessing {row.preprocessing}, {rate}, {epochs} epoch(s), batch {row.batch_size}, "
          f"{row.image_size} px, seed {seed}")
    print(f"images: {side_counts(study)} (protocol {study.primary}{capped}); evaluated on {side}", flush=True)

    results = {}
    for name, use_cache in (("plain", False), ("cached", True)):
        training.seed_everything(seed)
        classifier = build(study, row, seed)
        if not use_cache and fc.split_frozen(classifier) is None:
            raise UserError(f"row `{row.name}` has no frozen part the cache can hold (augmentation before it, or "
                            f"nothing frozen): cached and plain training would be the same; pick another --row.")
        started = time.perf_counter()
        fitted = training.train(classifier, train_frame, val_frame, train_labels=study.labels(train_frame),
                                val_labels=study.labels(val_frame), epochs=epochs, seed=seed, name=name,
                                use_cache=use_cache, log=False)
        wall = time.perf_counter() - started
        probs, _ = training.predict(classifier, evaluation, use_cache=False)
        results[name] = (wall, fitted, study.evaluate(evaluation, probs))

    print()
    table = Table([("path", 6, "<"), ("wall s", 9, ">"), ("features s", 10, ">"), ("fit s", 9, ">"),
                   ("epochs", 6, ">"), (f"{side} accuracy", 13, ">"), ("training path", 15, "<")])
    table.header()
    for name, (wall, fitted, figures) in results.items():
        table.row(name, wall, fitted.feature_seconds if fitted.cached else None, fitted.seconds, fitted.epochs_run,
                  f"{figures['accuracy']:.4f}", fitted.path)
    (plain_wall, _, plain), (cached_wall, _, cached) = results["plain"], results["cached"]
    print()
    print(f"wall time ratio plain / cached: {ratio(plain_wall, cached_wall)}")
    print(f"{side} accuracy difference cached - plain: {cached['accuracy'] - plain['accuracy']:+.4f} "
          f"(n = {plain['n']} {side} images)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cache_dir = Path(tempfile.mkdtemp(prefix="tlrepro-features-"))
    os.environ["TLREPRO_FEATURE_CACHE"] = str(cache_dir)  # empty: the cached run's extraction is timed
    try:
        return run_main(lambda: run(args))
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
