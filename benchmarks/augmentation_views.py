"""kumar2022 with `augmentation_views: K`: seconds per epoch and test accuracy against the faithful path.

Each kumar2022 row (VGG16, MobileNetV3, ResNet50V2: frozen backbone, random brightness/flip/rotation in
front of it) is built and trained twice from the same seed on the same images of the `image` protocol:

- faithful: the row as the paper describes it, augmentation inside the model, so the frozen backbone
  runs on freshly augmented images in every epoch (validation, never augmented, runs on cached frozen
  outputs, computed once: `one-off s`);
- views (K): the same row with `augmentation_views: K`: the frozen backbone runs once over K augmented
  views of every training image (and once over the validation images), `one-off s`; then only the head
  is fitted, epoch e on view e mod K.

Each run starts from an empty temporary feature cache, so every one-off extraction is really computed.
Per row it prints the one-off seconds, the seconds per epoch (`fit` time / epochs run: the first epoch's
tracing included), the epochs, the total wall time, the test accuracy (whole model on images), and the
speed-up per epoch and overall.

    python benchmarks/augmentation_views.py                               # every row, params' epochs
    python benchmarks/augmentation_views.py --rows VGG16 --views 8 --epochs 10
    python benchmarks/augmentation_views.py --params /tmp/params.yaml --max-images 4 --epochs 2 --views 2

Epochs come from params.yaml (`studies.kumar2022`), after `scale.max_epochs` and the rows' `max_epochs`
(which also cap `--epochs`). Needs data/splits/kumar2022.csv and ImageNet weights for the backbones
(internet, or IMAGENET_WEIGHTS_DIR) unless `--weights random`. It prints figures; it is not a test.
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

STUDY = "kumar2022"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = make_parser(__doc__, rows_help=f"rows of {STUDY} to run (default: all, in params order)")
    parser.add_argument("--views", type=int, default=4, metavar="K",
                        help="augmented views computed once per training image (default: %(default)s)")
    parser.add_argument("--protocol", default="image", help="split protocol (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=None, metavar="N",
                        help="epochs (default: the row's, after scale.max_epochs and the row's max_epochs)")
    parser.add_argument("--weights", choices=("imagenet", "random"), default=None,
                        help="backbone weights of every row (default: each row's `weights`)")
    args = parser.parse_args(argv)
    for name in ("views", "epochs", "max_images"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def train_once(study, row, frames: dict, epochs: int, cache_root: Path, label: str) -> dict:
    """Build the row's classifier, train it from an empty cache, and score it on the test side."""
    from tlrepro.modeling import training
    from tlrepro.studies.base import build

    cache = Path(tempfile.mkdtemp(prefix="run-", dir=cache_root))
    os.environ["TLREPRO_FEATURE_CACHE"] = str(cache)  # read at each extraction: this run's own, empty cache
    try:
        training.seed_everything(study.seed)
        classifier = build(study, row, study.seed)  # build_classifier + the row's freeze policy
        train, val, test = frames["train"], frames["val"], frames["test"]
        started = time.perf_counter()
        fitted = training.train(classifier, train, val, train_labels=study.labels(train),
                                val_labels=study.labels(val), epochs=epochs, seed=study.seed,
                                name=f"{row.name} {label}", log=False)
        wall = time.perf_counter() - started
        probs, _ = training.predict(classifier, test, use_cache=False)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return {"one_off": fitted.feature_seconds, "per_epoch": fitted.seconds / max(fitted.epochs_run, 1),
            "epochs": fitted.epochs_run, "wall": wall, "accuracy": study.evaluate(test, probs)["accuracy"],
            "path": fitted.path}


def run(args: argparse.Namespace, cache_root: Path) -> None:
    smoke_options(args, max_images=2, epochs=1, views=2, rows=None)
    from tlrepro.core import config
    from tlrepro.core.errors import UserError

    settings = config.load_params(args.params).study(STUDY)  # bad params stop here, before TensorFlow starts
    for name in args.rows or []:
        settings.row(name)

    from tlrepro.studies.base import load_study

    study = load_study(STUDY, args.params)
    if args.protocol not in study.protocols:
        raise UserError(f"{STUDY} has no protocol `{args.protocol}`: it has {', '.join(study.protocols)}.")
    study.split = cap_sides(study.split, args.max_images, study.seed)
    names = args.rows or [row.name for row in study.rows]
    rows = []
    for name in names:  # every problem stops here, before any training
        row = study.row(name)
        if row.augmentation is None:
            raise UserError(f"{STUDY} row `{name}` has no `augmentation`: there are no views to cache.")
        if args.weights:
            row = row.model_copy(update={"weights": args.weights})
        rows.append(row)
    frames = {side: study.part(side, args.protocol) for side in ("train", "val", "test")}
    if frames["test"].empty:
        raise UserError(f"{STUDY} protocol `{args.protocol}` has no test images to evaluate on.")
    capped = f", at most {args.max_images} per class per side" if args.max_images else ""
    print(f"{STUDY}, protocol {args.protocol}: images {side_counts(study, args.protocol)}{capped}; "
          f"views K = {args.views}; seed {study.seed}")
    print("rows: " + ", ".join(f"{r.name} ({r.backbone}, {r.weights}, {r.image_size} px, batch {r.batch_size}, "
                               f"{study.epochs(r, args.epochs)} epoch(s))" for r in rows))
    augmentations = {r.augmentation.model_dump_json(exclude_none=True) for r in rows}
    print("augmentation: " + "; ".join(sorted(augmentations)))
    print()

    table = Table([("row", max(len(n) for n in [*names, "row"]), "<"), ("path", 9, "<"), ("one-off s", 9, ">"),
                   ("s/epoch", 8, ">"), ("epochs", 6, ">"), ("total s", 8, ">"), ("test acc", 8, ">"),
                   ("speed-up/epoch", 14, ">"), ("speed-up total", 14, ">")])
    table.header()
    for row in rows:
        epochs = study.epochs(row, args.epochs)
        faithful = train_once(study, row.model_copy(update={"augmentation_views": None}), frames, epochs,
                              cache_root, "faithful")
        table.row(row.name, "faithful", faithful["one_off"], faithful["per_epoch"], faithful["epochs"],
                  faithful["wall"], f"{faithful['accuracy']:.4f}", "", "")
        views = train_once(study, row.model_copy(update={"augmentation_views": args.views}), frames, epochs,
                           cache_root, f"views {args.views}")
        if not views["path"].startswith("cached augmented views"):
            raise UserError(f"row `{row.name}` with augmentation_views trained on `{views['path']}`, not on "
                            f"cached views (is its backbone frozen?).")
        table.row("", f"views ({args.views})", views["one_off"], views["per_epoch"], views["epochs"], views["wall"],
                  f"{views['accuracy']:.4f}", ratio(faithful["per_epoch"], views["per_epoch"]),
                  ratio(faithful["wall"], views["wall"]))
    print()
    print("one-off s: frozen outputs computed once (faithful: validation only; views: K training views and "
          "validation); s/epoch: fit time per epoch; speed-ups: faithful / views.")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cache_root = Path(tempfile.mkdtemp(prefix="tlrepro-features-"))
    os.environ["TLREPRO_FEATURE_CACHE"] = str(cache_root)  # before tlrepro is imported; each run gets its own
    try:
        return run_main(lambda: run(args, cache_root))
    finally:
        shutil.rmtree(cache_root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
