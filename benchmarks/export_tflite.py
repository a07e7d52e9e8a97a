"""TFLite exports beside the Keras model: file size, per-image latency and accuracy on a study's test side.

For each model, `tlrepro.modeling.export` writes the SavedModel and the TFLite variants (float32, float16
weights, dynamic-range int8 weights) into a temporary folder; then each and the Keras model label the same
test images (the SavedModel also from the files' bytes, decoding inside, when the images are files),
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


def folder_images(folder: Path, size: int, limit: int | None):
    """The images under folder/benign and folder/malignant (at most `limit`, evenly spaced over the sorted list)."""
    import numpy as np

    from tlrepro.data.images import decode_image

    pixels, labels, blobs = [], [], []
    files = sorted(p for p in folder.glob("*/*") if p.parent.name.lower() in ("benign", "malignant"))
    if limit and limit < len(files):
        files = [files[i] for i in np.linspace(0, len(files) - 1, limit).round().astype(int)]
    for path in files:
        data = path.read_bytes()
        array, _, ok, _ = decode_image(data, size)
        if ok:
            pixels.append(array)
            labels.append(int(path.parent.name.lower() == "malignant"))
            blobs.append(data)
    return np.stack(pixels).astype("float32"), np.array(labels), f"{folder} ({len(labels)} images)", blobs


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
    return pixels.astype("float32"), study.labels(frame), f"{study_id} test side ({len(frame)} images)", None


def tiny_generated(folder: Path):
    """A TinyCNN fitted to tell red blotches (malignant) from green ones, saved with a card; its test pictures."""
    import io

    import keras
    import numpy as np
    from PIL import Image

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
    blobs = []
    for image in test_x.astype("uint8"):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "PNG")
        blobs.append(buffer.getvalue())
    return path, (test_x, test_y, "generated red/green pictures (200)", blobs)


def median_latency(run, singles, repeats: int) -> float:
    """Median seconds of `run(single)` over `repeats` calls, cycling through `singles` (one-image batches)."""
    run(singles[0])  # warm-up
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        run(singles[i % len(singles)])
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


def saved_model_rows(model_path: Path, scratch: Path, x, y, blobs, keras_probs, threshold: float, repeats: int,
                     table: Table) -> None:
    """The SavedModel's two signatures: `pixels` on our decoded images, `serving_default` on the files' bytes."""
    import numpy as np
    import tensorflow as tf

    from tlrepro.modeling.export import export

    version = export(model_path, "saved_model", out=scratch / "saved_model")
    size = sum(f.stat().st_size for f in version.rglob("*") if f.is_file()) / 1e6
    loaded = tf.saved_model.load(str(version))
    pixels = loaded.signatures["pixels"]
    probs = np.concatenate([pixels(pixels=tf.constant(x[i : i + 32]))["probabilities"].numpy()[:, -1]
                            for i in range(0, len(x), 32)])
    singles = [x[i : i + 1] for i in range(len(x))]
    ms = 1000 * median_latency(lambda batch: pixels(pixels=tf.constant(batch)), singles, repeats)
    table.row("SavedModel pixels", f"{size:.3f}", ms, f"{np.mean((probs >= threshold) == y):.3f}",
              f"{np.abs(probs - keras_probs).max():.1e}")
    if blobs:
        from_bytes = loaded.signatures["serving_default"]
        probs = np.concatenate([from_bytes(image_bytes=tf.constant(blobs[i : i + 32]))["probabilities"].numpy()[:, -1]
                                for i in range(0, len(blobs), 32)])
        ms = 1000 * median_latency(lambda batch: from_bytes(image_bytes=tf.constant(batch)),
                                   [[blob] for blob in blobs], repeats)
        table.row("SavedModel bytes", f"{size:.3f}", ms, f"{np.mean((probs >= threshold) == y):.3f}",
                  f"{np.abs(probs - keras_probs).max():.1e}")


def compare(model_path: Path, images, threads: int, repeats: int, table: Table) -> None:
    import numpy as np
    import tensorflow as tf

    from tlrepro.modeling.export import export
    from tlrepro.modeling.predict import Predictor

    predictor = Predictor.load(model_path)
    x, y, where, blobs = images
    threshold = 0.5 if predictor.threshold is None else float(predictor.threshold)
    keras_probs = np.concatenate([predictor.forward(tf.constant(x[i : i + 32]))[:, 0] for i in range(0, len(x), 32)])
    singles = [x[i : i + 1] for i in range(len(x))]
    keras_ms = 1000 * median_latency(lambda batch: predictor.forward(tf.constant(batch)), singles, repeats)
    print(f"\n{predictor.name}: test images {where}; latency: one image per call", flush=True)
    table.header()
    table.row("Keras (.keras)", f"{model_path.stat().st_size / 1e6:.3f}", keras_ms,
              f"{np.mean((keras_probs >= threshold) == y):.3f}", "-")
    with tempfile.TemporaryDirectory(prefix="tlrepro-tflite-") as scratch:
        saved_model_rows(model_path, Path(scratch), x, y, blobs, keras_probs, threshold, repeats, table)
        for quantize in VARIANTS:
            target = export(model_path, "tflite", quantize=quantize, out=Path(scratch) / f"{quantize or 'float32'}.tflite")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # tf.lite.Interpreter's note about LiteRT
                runner = tf.lite.Interpreter(model_path=str(target), num_threads=threads).get_signature_runner("pixels")
            probs = np.concatenate([runner(pixels=x[i : i + 1])["probabilities"][:, 1] for i in range(len(x))])
            ms = 1000 * median_latency(lambda batch, r=runner: r(pixels=batch), singles, repeats)
            table.row(f"TFLite {quantize or 'float32'}", f"{target.stat().st_size / 1e6:.3f}", ms,
                      f"{np.mean((probs >= threshold) == y):.3f}", f"{np.abs(probs - keras_probs).max():.1e}")


def main() -> int:
    parser = make_parser(__doc__, study_options=False)
    parser.add_argument("--model", nargs="+", default=None, help="saved models (names or .keras paths)")
    parser.add_argument("--images-dir", type=Path, default=None, help="benign/ and malignant/ subfolders")
    parser.add_argument("--max-images", type=int, default=None,
                        help="at most N test images (the study's first N; evenly spaced over a folder's)")
    parser.add_argument("--threads", type=int, default=2, help="TFLite interpreter threads (default: 2)")
    parser.add_argument("--repeats", type=int, default=50, help="timed calls per variant (default: 50)")
    args = parser.parse_args()

    def run() -> None:
        from tlrepro.modeling import cards
        from tlrepro.modeling.predict import model_names

        table = Table([("variant", 18, "<"), ("size MB", 8, ">"), ("ms/image", 9, ">"), ("accuracy", 9, ">"),
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
                    images = folder_images(args.images_dir, size, args.max_images)
                if images is None:
                    print(f"\n{name}: no test side (data/splits/{card.get('study')}.csv) and no --images-dir: skipped")
                    continue
                compare(path, images, args.threads, args.repeats, table)

    return run_main(run)


if __name__ == "__main__":
    sys.exit(main())
