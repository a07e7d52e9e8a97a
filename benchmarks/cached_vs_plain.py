"""Cached frozen features vs plain Keras `fit`: wall time and test accuracy of mobilenet2025's config 1.

Config 1 (frozen MobileNetV2 backbone, the study's head, Adam at its learning rate) is trained twice on
the same images from the same seed:

- plain: the whole model is fitted on images (tlrepro.training.train(..., use_cache=False)), so the
  frozen backbone runs on every image in every epoch;
- cached: the frozen part runs once per split into an empty, temporary feature cache and only the head is
  fitted (use_cache=True); its wall time includes that feature extraction.

Both models are then evaluated on the split's test images through the whole model (no cache).
All settings come from params.yaml (`seed`, `mobilenet2025.*`, `mobilenet2025.configs.frozen`).

    python benchmarks/cached_vs_plain.py                                   # the full study split
    python benchmarks/cached_vs_plain.py --split data/splits/lin2024.csv --max-images 60 --epochs 2

Needs ImageNet weights for MobileNetV2 (internet, or IMAGENET_WEIGHTS_DIR), or `--weights random`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

STUDY = "mobilenet2025"
CONFIG = "frozen"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", type=Path, default=Path(f"data/splits/{STUDY}.csv"),
                        help="split CSV with train/val/test rows (default: %(default)s)")
    parser.add_argument("--params", type=Path, default=None, help="params file (default: the project's params.yaml)")
    parser.add_argument("--epochs", type=int, default=None,
                        help=f"epochs (default: params.yaml {STUDY}.configs.{CONFIG}.epochs)")
    parser.add_argument("--max-images", type=int, default=None, metavar="N",
                        help="at most N images of each class in each of train/val/test, drawn with the seed")
    parser.add_argument("--weights", choices=("imagenet", "random"), default=None,
                        help=f"backbone weights (default: params.yaml {STUDY}.weights)")
    return parser.parse_args(argv)


def cap(frame, max_images: int | None, seed: int):
    """At most `max_images` rows per (split, label), drawn at random with `seed`; row order kept."""
    import numpy as np

    if not max_images:
        return frame
    rng = np.random.default_rng(seed)
    frame = frame.sort_values("path").reset_index(drop=True)
    keep: list[int] = []
    for _, group in frame.groupby(["split", "label"], sort=True):
        size = min(int(max_images), len(group))
        keep.extend(rng.choice(group.index.to_numpy(), size=size, replace=False).tolist())
    return frame.loc[sorted(keep)].reset_index(drop=True)


def run(args: argparse.Namespace) -> None:
    from tlrepro import config, models, paths, training
    from tlrepro.evaluation import binary_metrics
    from tlrepro.tfdata import read_split

    params = config.load_params(args.params)
    seed = int(config.require(params, "seed"))
    study = config.study(STUDY, params)
    settings = config.require(params, f"{STUDY}.configs.{CONFIG}")
    backbone = str(config.require(params, f"{STUDY}.backbone"))
    image_size = int(config.require(params, f"{STUDY}.image_size"))
    batch_size = int(config.require(params, f"{STUDY}.batch_size"))
    head = config.require(params, f"{STUDY}.head")
    preprocessing = str(study.get("preprocessing", "native"))
    weights = args.weights or str(config.require(params, f"{STUDY}.weights"))
    learning_rate = float(config.require(params, f"{STUDY}.configs.{CONFIG}.learning_rate"))
    trainable = settings.get("trainable_layers", 0)
    epochs = int(args.epochs or config.require(params, f"{STUDY}.configs.{CONFIG}.epochs"))

    split_path = args.split if args.split.is_absolute() else paths.PROJECT_ROOT / args.split
    frame = cap(read_split(split_path), args.max_images, seed)
    test = frame[frame["split"] == "test"]
    if test.empty:
        raise SystemExit(f"error: {paths.relative(split_path)} has no test rows to evaluate on.")
    counts = frame.groupby("split").size().to_dict()
    capped = f", at most {args.max_images} per class per split" if args.max_images else ""
    print(f"{STUDY} config `{CONFIG}`: {backbone} ({weights}), trainable_layers {trainable}, "
          f"preprocessing {preprocessing}, Adam {learning_rate:g}, {epochs} epochs, batch {batch_size}, seed {seed}")
    print("images: " + ", ".join(f"{s} {counts.get(s, 0)}" for s in ("train", "val", "test"))
          + f" ({paths.relative(split_path)}{capped})", flush=True)

    cache_dir = Path(tempfile.mkdtemp(prefix="tlrepro-features-"))
    results = {}
    try:
        for name, use_cache in (("plain", False), ("cached", True)):
            if use_cache:
                os.environ["TLREPRO_FEATURE_CACHE"] = str(cache_dir)  # empty: extraction is timed
            training.seed_everything(seed)
            classifier = models.build_classifier(backbone, image_size=image_size, weights=weights, head=head,
                                                 preprocessing=preprocessing, seed=seed)
            models.set_trainable(classifier, trainable)
            started = time.perf_counter()
            fitted = training.train(classifier, frame, learning_rate=learning_rate, epochs=epochs,
                                    batch_size=batch_size, seed=seed, name=name, config=settings,
                                    use_cache=use_cache)
            wall = time.perf_counter() - started
            if use_cache and not fitted.cached:
                raise SystemExit("error: the cached path fell back to plain training (nothing frozen to cache).")
            probs, _ = training.predict(classifier, test, batch_size=batch_size, use_cache=False)
            results[name] = {"wall": wall, "fit": fitted.seconds, "features": fitted.feature_seconds,
                             "metrics": binary_metrics(test["label"], probs)}
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)

    plain, cached = results["plain"], results["cached"]
    print()
    print(f"{'':8} {'wall s':>9} {'test accuracy':>14}")
    print(f"{'plain':8} {plain['wall']:9.1f} {plain['metrics']['accuracy']:14.4f}")
    print(f"{'cached':8} {cached['wall']:9.1f} {cached['metrics']['accuracy']:14.4f}   "
          f"(feature extraction {cached['features']:.1f} s + fit {cached['fit']:.1f} s)")
    print(f"wall time ratio plain / cached: {plain['wall'] / cached['wall']:.2f}x")
    print(f"test accuracy difference cached - plain: {cached['metrics']['accuracy'] - plain['metrics']['accuracy']:+.4f} "
          f"(n = {plain['metrics']['n']} test images)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from tlrepro.errors import UserError

    try:
        run(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
