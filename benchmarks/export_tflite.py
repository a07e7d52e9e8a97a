"""TFLite exports beside the Keras model: file size, per-image latency and accuracy on a study's test side.

For each model, `tlrepro.modeling.export` writes the TFLite variants (float32, float16 weights, dynamic-range
int8 weights) into a temporary folder; then each variant and the Keras model label the same test images,
decoded and resized once by our decode path (`tlrepro.data.images.decode_image`, or the study's own loader
with its views), one image per call (as an app on a phone would), and the script prints per variant: file
size, median latency per image (after a warm-up; TFLite interpreter with --threads threads), accuracy at
the card's threshold, and the largest difference of P(positive) from the Keras model's.

Test images: the study's test side (data/splits/<study>.csv, protocol from the card) when it exists, else
`--images-dir` (a folder with benign/ and malignant/ subfolders). Models: `--model NAME|PATH ...`, default
every saved model under models/; with none there, a tiny generated model (TinyCNN at 32 px fitted in seconds
to tell red blotches from green ones on generated pictures) and its generated test pictures.

    python benchmarks/export_tflite.py                                        # models/, or the tiny model
    python benchmarks/export_tflite.py --model benchmarks/out/demo-models/demo/MobileNetV2.keras \\
        --images-dir $KAGGLE_MIRROR/fanconic/skin-cancer-malignant-vs-benign/test
"""

from __future__ import annotations

import sys
import tempfile
import time
import warnings
from pathlib import Path

from _common import Table, make_parser, run_main

VARIANTS = (None, "float16", "dynamic")


def folder_images(folder: Path, size: int):
    import numpy as np

    from tlrepro.data.images import decode_image

    pixels, labels = [], []
    for path in sorted(folder.glob("*/*")):
        if path.parent.name.lower() in ("benign", "malignant"):
            array, _, ok, _ = decode_image(path.read_bytes(), size)
            if ok:
                pixels.append(array)
                labels.append(int(path.parent.name.lower() == "malignant"))
    return np.stack(pixels).astype("float32"), np.array(labels), f"{folder} ({len(labels)} images)"


def study_images(card: dict, size: int, limit: int | None):
    """The study's test side as the study evaluated it, or None when its split is not there."""
    import numpy as np

    from tlrepro.core import paths
    from tlrepro.data.tfdata import load_resized
    from tlrepro.studies.base import load_study

    study_id = card.get("study")
    if not study_id or not paths.split_csv(study_id).is_file():
        return None
    study = load_study(study_id)
    frame = study.part("test", card.get("protocol"))
    frame = frame.iloc[:limit] if limit else frame
    views = frame["view"] if "view" in frame.columns else ["identity"] * len(frame)
    pixels = np.stack([load_resized(str(p), size, v) for p, v in zip(frame["path"], views, strict=True)])
    return pixels.astype("float32"), study.labels(frame), f"{study_id} test side ({len(frame)} images)"


def tiny_generated(folder: Path):
    """A TinyCNN fitted to tell red blotches (malignant) from green ones, saved with a card; its test pictures."""
    import keras
    import numpy as np

    from tlrepro.core.config import RowSettings, resolve_row
    from tlrepro.data.labels import BINARY_CLASSES
    from tlrepro.modeling import cards, models

    rng = np.random.default_rng(0)

    def pictures(n: int):
        x = rng.integers(60, 200, (n, 32, 32, 3)).astype("float32")
        y = rng.integers(0, 2, n)
        for image, label in zip(x, y, strict=True):
            top, left = rng.integers(0, 20, 2)
            image[top : top + 12, left : left + 12] = (220, 40, 40) if label else (40, 200, 60)
        return x, y

    row = resolve_row("tiny", RowSettings(), RowSettings(
        backbone="TinyCNN", weights="random", image_size=32, batch_size=16, learning_rate=1e-2, epochs=5,
        head=[{"pool": "avg"}, {"dense": 1, "activation": "sigmoid"}]))
    clf = models.build_classifier(row, classes=BINARY_CLASSES, seed=0)
    clf.model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="binary_crossentropy")
    train_x, train_y = pictures(400)
    clf.model.fit(train_x, train_y, epochs=5, batch_size=16, verbose=0)
    path, _ = cards.save(clf.model, folder / "demo" / "tiny.keras", {
        "name": "demo/tiny", "study": "generated", "backbone": "TinyCNN", "weights": {"source": "random"},
        "image_size": 32, "classes": list(BINARY_CLASSES), "threshold": 0.5, "preprocessing": "unit"})
    test_x, test_y = pictures(200)
    return path, (test_x, test_y, "generated red/green pictures (200)")


def median_latency(run, images, repeats: int) -> float:
    run(images[:1])  # warm-up
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        run(images[i % len(images)][None])
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


def compare(model_path: Path, images, threads: int, repeats: int, table: Table) -> None:
    import numpy as np
    import tensorflow as tf

    from tlrepro.modeling.export import export
    from tlrepro.modeling.predict import Predictor

    predictor = Predictor.load(model_path)
    x, y, where = images
    threshold = 0.5 if predictor.threshold is None else float(predictor.threshold)
    keras_probs = np.concatenate([predictor.forward(tf.constant(x[i : i + 32]))[:, 0] for i in range(0, len(x), 32)])
    keras_ms = 1000 * median_latency(lambda batch: predictor.forward(tf.constant(batch)), x, repeats)
    print(f"\n{predictor.name}: test images {where}", flush=True)
    table.header()
    table.row("Keras (.keras)", f"{model_path.stat().st_size / 1e6:.3f}", keras_ms,
              f"{np.mean((keras_probs >= threshold) == y):.3f}", "-")
    with tempfile.TemporaryDirectory(prefix="tlrepro-tflite-") as scratch:
        for quantize in VARIANTS:
            target = export(model_path, "tflite", quantize=quantize, out=Path(scratch) / f"{quantize or 'float32'}.tflite")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # tf.lite.Interpreter's note about LiteRT
                runner = tf.lite.Interpreter(model_path=str(target), num_threads=threads).get_signature_runner("pixels")
            probs = np.concatenate([runner(pixels=x[i : i + 1])["probabilities"][:, 1] for i in range(len(x))])
            ms = 1000 * median_latency(lambda batch, r=runner: r(pixels=batch), x, repeats)
            table.row(f"TFLite {quantize or 'float32'}", f"{target.stat().st_size / 1e6:.3f}", ms,
                      f"{np.mean((probs >= threshold) == y):.3f}", f"{np.abs(probs - keras_probs).max():.1e}")


def main() -> int:
    parser = make_parser(__doc__, study_options=False)
    parser.add_argument("--model", nargs="+", default=None, help="saved models (names or .keras paths)")
    parser.add_argument("--images-dir", type=Path, default=None, help="benign/ and malignant/ subfolders")
    parser.add_argument("--max-images", type=int, default=None, help="at most N test images (the first N)")
    parser.add_argument("--threads", type=int, default=2, help="TFLite interpreter threads (default: 2)")
    parser.add_argument("--repeats", type=int, default=50, help="timed calls per variant (default: 50)")
    args = parser.parse_args()

    def run() -> None:
        from tlrepro.modeling import cards
        from tlrepro.modeling.predict import model_names

        table = Table([("variant", 16, "<"), ("size MB", 8, ">"), ("ms/image", 9, ">"), ("accuracy", 9, ">"),
                       ("max |dP|", 9, ">")])
        names = args.model or model_names()
        with tempfile.TemporaryDirectory(prefix="tlrepro-tiny-") as scratch:
            if not names:
                print("no saved model under models/: a tiny generated model instead")
                path, images = tiny_generated(Path(scratch))
                compare(path, images, args.threads, args.repeats, table)
                return
            for name in names:
                path = cards.resolve(name)
                card = cards.read_card(path)
                size = int(card["image_size"])
                images = study_images(card, size, args.max_images)
                if images is None and args.images_dir is not None:
                    images = folder_images(args.images_dir, size)
                if images is None:
                    print(f"\n{name}: no test side (data/splits/{card.get('study')}.csv) and no --images-dir: skipped")
                    continue
                compare(path, images, args.threads, args.repeats, table)

    return run_main(run)


if __name__ == "__main__":
    sys.exit(main())
