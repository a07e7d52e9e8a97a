"""Prediction throughput of a saved model: the `tlrepro predict` path against the bare model on arrays.

On the same images, with the same batch size, each after one warm-up call and best of `--repeat` runs:

- (a) `Predictor.predict_paths`: everything `tlrepro predict` does per image except writing the CSV:
  read and decode the file, resize it as the model card says, compute its perceptual hash (compared with
  the training images' hashes), run the model, build the table;
- (b) `model.predict` on the same images already decoded and resized, held in memory as one float32 array.

It prints images per second for both and the ratio (a)/(b) (the share of the bare model's throughput that
the full path keeps), then times the whole CLI path `predict_folder` once, for information (it also loads
the model and its card, scans the folder and writes the CSV, into a temporary folder).

    python benchmarks/predict_throughput.py                          # models/sarker2025/MobileNetV2.keras
    python benchmarks/predict_throughput.py --model lin2024/VGG16 --images 64 --batch-size 16
    python benchmarks/predict_throughput.py --model /tmp/tiny.keras --images 8 --repeat 2

The model is a .keras file with its card beside it, or a `<study>/<row>` name under models/ (the default,
sarker2025/MobileNetV2, exists once `dvc repro study@sarker2025` has run). Images: every image under
`--folder` (default: the skin dataset's test folder, data/raw/skin/test), or its first `--images N`.
It prints figures; it is not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from _common import Table, make_parser, ratio, run_main, smoke_folder, smoke_pictures, tiny_model  # noqa: E402

DEFAULT_MODEL = "sarker2025/MobileNetV2"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = make_parser(__doc__, study_options=False)
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="a saved .keras model with its card, or a <study>/<row> name (default: %(default)s)")
    parser.add_argument("--folder", type=Path, default=None,
                        help="folder of images, searched recursively (default: data/raw/skin/test)")
    parser.add_argument("--images", type=int, default=None, metavar="N", help="only the first N images (sorted)")
    parser.add_argument("--batch-size", type=int, default=32, metavar="N",
                        help="batch size of both measurements (default: %(default)s, as `tlrepro predict`)")
    parser.add_argument("--repeat", type=int, default=3, metavar="N",
                        help="timed runs of each measurement after the warm-up; the best counts (default: %(default)s)")
    args = parser.parse_args(argv)
    for name in ("images", "batch_size", "repeat"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def best_of(repeat: int, call) -> float:
    """Seconds of the fastest of `repeat` calls, after one untimed warm-up call."""
    call()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return min(times)


def run(args: argparse.Namespace) -> None:
    from tlrepro.core import paths
    from tlrepro.core.errors import UserError
    from tlrepro.modeling import cards

    if args.smoke:  # a tiny model and 8 generated pictures, one timed run
        base = smoke_folder() / "predict_throughput"
        args.model, args.folder = str(tiny_model(base, 16, 1)), smoke_pictures(base / "images", 4)
        args.batch_size, args.repeat = 4, 1
    if args.model == DEFAULT_MODEL and not (paths.MODELS / f"{DEFAULT_MODEL}.keras").is_file():
        raise UserError(f"no saved model {paths.relative(paths.MODELS / DEFAULT_MODEL)}.keras yet: run "
                        f"`dvc repro study@sarker2025` first, or give another one with --model.")
    model_path = cards.resolve(args.model)
    cards.read_card(model_path)  # a missing or mismatched card stops here, before TensorFlow starts
    folder = args.folder or paths.raw_dir("skin") / "test"
    if not folder.is_dir():
        raise UserError(f"{paths.relative(folder)} is not a folder: give a folder of images with --folder.")

    import numpy as np

    from tlrepro.data.tfdata import load_resized
    from tlrepro.modeling.predict import Predictor, find_images, predict_folder

    files, _, _ = find_images(folder)
    files = files[: args.images] if args.images else files
    if not files:
        raise UserError(f"{paths.relative(folder)} holds no images: give a folder of images with --folder.")
    started = time.perf_counter()
    predictor = Predictor.load(model_path)
    load_seconds = time.perf_counter() - started
    batch, n = args.batch_size, len(files)
    print(f"model: {predictor.name} ({paths.relative(model_path)}), {predictor.size} px, "
          f"classes {', '.join(predictor.classes)}; loaded in {load_seconds:.2f} s")
    print(f"images: {n} from {paths.relative(folder)}, batch {batch}, best of {args.repeat} after a warm-up",
          flush=True)

    def full_path():
        table, rejected = predictor.predict_paths(files, batch_size=batch, progress=False)
        if len(rejected):
            raise UserError(f"{len(rejected)} image(s) could not be read, e.g. {rejected['path'].iloc[0]}: "
                            f"{rejected['reason'].iloc[0]}; pick a folder of readable images.")

    pipeline = best_of(args.repeat, full_path)
    started = time.perf_counter()
    arrays = np.stack([load_resized(str(f), predictor.size) for f in files]).astype("float32")
    decode_seconds = time.perf_counter() - started
    bare = best_of(args.repeat, lambda: predictor.model.predict(arrays, batch_size=batch, verbose=0))

    with tempfile.TemporaryDirectory(prefix="tlrepro-predict-") as tmp:
        source = folder
        if args.images:  # predict_folder takes a folder: copy the chosen images into a temporary one
            source = Path(tmp) / "images"
            for f in files:
                target = source / f.relative_to(folder)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, target)
        started = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):  # its summary line would split the table
            predict_folder(model_path, source, out=Path(tmp) / "predictions.csv", batch_size=batch, progress=False)
        cli = time.perf_counter() - started

    print()
    table = Table([("measurement", 58, "<"), ("seconds", 9, ">"), ("images/s", 9, ">")])
    table.header()
    table.row("(a) Predictor.predict_paths: decode, resize, phash, model", pipeline, n / pipeline)
    table.row("(b) model.predict on a decoded float32 array", bare, n / bare)
    table.rule()
    table.row("predict_folder once (+ load, scan, CSV; no warm-up)", cli, n / cli)
    table.row("input of (b): decode + resize in one Python loop (not in b)", decode_seconds, n / decode_seconds)
    print()
    print(f"ratio (a)/(b) in images per second: {ratio(n / pipeline, n / bare)} "
          f"(1.00x: the full path costs nothing over the bare model)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_main(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
