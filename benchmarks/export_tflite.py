"""TFLite exports beside the Keras model: file size, per-image latency and accuracy on a study's test side.

For each model, `tlrepro.modeling.export` writes the SavedModel and the TFLite variants (float32, float16
weights, dynamic-range int8 weights) into a temporary folder; then each and the Keras model label the same
test images (the SavedModel also from the files' bytes, decoding inside, when the images are files),
decoded and resized once by our decode path (`tlrepro.data.images.decode_image`, or the study's own loader
with its views), one image per call (as an app on a phone would), and the script prints per variant: file
size, median latency per image (after a warm-up; TFLite interpreter with --threads threads), accuracy at
the card's threshold, the largest difference of P(positive) from the Keras model's, and how many labels
differ from the Keras model's (`flipped`: what quantization costs on a real model; `tlrepro export
--quantize` measures the same for each export). `--smoke`: the tiny model, 8 test pictures, 2 timed calls.

Test images: the study's test side (data/splits/<study>.csv, protocol from the card) when it exists, else
`--images-dir` (a folder with benign/ and malignant/ subfolders). Models: `--model NAME|PATH ...`, default
every saved model under models/; with none there, a tiny generated model (TinyCNN at 32 px fitted in seconds
to tell red blotches from green ones on generated pictures) and its generated test pictures.

    python benchmarks/export_tflite.py                                        # models/, or the tiny model
    python benchmarks/export_tflite.py --model benchmarks/out/demo-models/demo/MobileNetV2.keras \\
        --images-dir $KAGGLE_MIRROR/fanconic/skin-cancer-malignant-vs-benign/test
"""

from __future__ import annotations

import contextlib
import io
import sys
import tempfile
import time
import warnings
from pathlib import Path

from _common import Table, make_parser, run_main, smoke_pictures, tiny_model

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


def tiny_generated(folder: Path, per_class: int = 100, train_per_class: int = 200, epochs: int = 5):
    """A TinyCNN fitted to tell red blotches (malignant) from green ones (_common.tiny_model); its test pictures."""
    path = tiny_model(folder, train_per_class, epochs)
    return path, folder_images(smoke_pictures(folder / "test", per_class, seed=2), 32, None)


def flips(probs, keras_probs, threshold: float) -> str:
    """How many labels differ from the Keras model's at the card's threshold, of how many."""
    import numpy as np

    return f"{int(np.sum((probs >= threshold) != (keras_probs >= threshold)))}/{len(probs)}"


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
              f"{np.abs(probs - keras_probs).max():.1e}", flips(probs, keras_probs, threshold))
    if blobs:
        from_bytes = loaded.signatures["serving_default"]
        probs = np.concatenate([from_bytes(image_bytes=tf.constant(blobs[i : i + 32]))["probabilities"].numpy()[:, -1]
                                for i in range(0, len(blobs), 32)])
        ms = 1000 * median_latency(lambda batch: from_bytes(image_bytes=tf.constant(batch)),
                                   [[blob] for blob in blobs], repeats)
        table.row("SavedModel bytes", f"{size:.3f}", ms, f"{np.mean((probs >= threshold) == y):.3f}",
                  f"{np.abs(probs - keras_probs).max():.1e}", flips(probs, keras_probs, threshold))


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
              f"{np.mean((keras_probs >= threshold) == y):.3f}", "-", "-")
    with tempfile.TemporaryDirectory(prefix="tlrepro-tflite-") as scratch:
        saved_model_rows(model_path, Path(scratch), x, y, blobs, keras_probs, threshold, repeats, table)
        for quantize in VARIANTS:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                # export's own measurement lines: this table says the same for these images
                target = export(model_path, "tflite", quantize=quantize,
                                out=Path(scratch) / f"{quantize or 'float32'}.tflite")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # tf.lite.Interpreter's note about LiteRT
                runner = tf.lite.Interpreter(model_path=str(target), num_threads=threads).get_signature_runner("pixels")
            probs = np.concatenate([runner(pixels=x[i : i + 1])["probabilities"][:, 1] for i in range(len(x))])
            ms = 1000 * median_latency(lambda batch, r=runner: r(pixels=batch), singles, repeats)
            table.row(f"TFLite {quantize or 'float32'}", f"{target.stat().st_size / 1e6:.3f}", ms,
                      f"{np.mean((probs >= threshold) == y):.3f}", f"{np.abs(probs - keras_probs).max():.1e}",
                      flips(probs, keras_probs, threshold))


def main() -> int:
    parser = make_parser(__doc__, study_options=False)
    parser.add_argument("--model", nargs="+", default=None, help="saved models (names or .keras paths)")
    parser.add_argument("--images-dir", type=Path, default=None, help="benign/ and malignant/ subfolders")
    parser.add_argument("--max-images", type=int, default=None,
                        help="at most N test images (the study's first N; evenly spaced over a folder's)")
    parser.add_argument("--threads", type=int, default=2, help="TFLite interpreter threads (default: 2)")
    parser.add_argument("--repeats", type=int, default=50, help="timed calls per variant (default: 50)")
    args = parser.parse_args()
    if args.smoke:
        args.repeats = 2

    def run() -> None:
        from tlrepro.modeling import cards
        from tlrepro.modeling.predict import model_names

        table = Table([("variant", 18, "<"), ("size MB", 8, ">"), ("ms/image", 9, ">"), ("accuracy", 9, ">"),
                       ("max |dP|", 9, ">"), ("flipped", 9, ">")])
        names = [] if args.smoke else args.model or model_names()
        with tempfile.TemporaryDirectory(prefix="tlrepro-tiny-") as scratch:
            if not names:
                print("smoke run: a tiny generated model" if args.smoke else
                      "no saved model under models/: a tiny generated model instead")
                path, images = (tiny_generated(Path(scratch), 4, 16, 1) if args.smoke else
                                tiny_generated(Path(scratch)))
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
