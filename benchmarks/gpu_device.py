"""GPU figures for issue 20, on a lent GPU machine that has JAX but no TensorFlow (and no package registry):
Keras 3.15 runs on its JAX backend there, with the project's own SE blocks (tlrepro.modeling.blocks, which
use Keras operations only). Not the project's TensorFlow pipeline: its speed and numbers are Keras/JAX's.

    KERAS_BACKEND=jax python benchmarks/gpu_device.py BUNDLE.npz WEIGHTS_DIR OUT_DIR
    python benchmarks/gpu_device.py --smoke        # every step in seconds, 32 px, on the CPU (what the tests run)

1. images/s of every backbone's forward pass (224 px, batch 128, random weights), float32 against mixed
   float16 and mixed bfloat16;
2. mobilenet2025's augmented configuration (MobileNetV2, last 30 layers trainable, the paper's augmentation
   layers, Adam 1e-5, batch 16): seconds per epoch over 1,942 images (the shared subset's training side; random
   pixels, since only time is measured), float32 and mixed float16, projected to its 30 epochs;
3. wang2024 under `tlrepro profile gpu` on the shared BreakHis (BUNDLE: the stain-normalized images at 224 px
   and the split rows the CPU pipeline wrote): DenseNet121 + SE from ImageNet weights, every layer trained,
   SGD 0.01 momentum 0.9, batch 32, up to the paper's 200 epochs with early stopping on validation accuracy
   (patience 3, best weights kept), under the paper's protocol and the 5-fold patient cross-validation;
   time, epochs, image- and patient-level test accuracy. The LC25000 transfer row is not run here.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

# a seconds-long dry run of every step, on any machine (32 px, random weights, a generated bundle; no arguments)
SMOKE = bool(os.environ.get("GPU_BENCH_SMOKE")) or "--smoke" in sys.argv[1:]
os.environ.setdefault("KERAS_BACKEND", "tensorflow" if SMOKE else "jax")  # smoke: the project's own backend
import keras  # noqa: E402
import numpy as np  # noqa: E402

SIZE = 32 if SMOKE else 224
BACKBONES = ("MobileNetV2", "ResNet50V2", "VGG16", "DenseNet121")
BUDGET_S = int(os.environ.get("GPU_BENCH_BUDGET_S", 430))  # the whole script stays inside one device call: later steps are skipped, and say so
STARTED = time.perf_counter()
POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")
VIEWS = {"identity": lambda a: a, "rot90": lambda a: np.rot90(a, 1), "rot180": lambda a: np.rot90(a, 2),
         "rot270": lambda a: np.rot90(a, 3), "flip_h": lambda a: a[:, ::-1], "flip_v": lambda a: a[::-1]}


def log(*parts: object) -> None:
    print(*parts, flush=True)


def throughput(out: dict) -> None:
    rng = np.random.default_rng(0)
    x = (rng.random((8 if SMOKE else 512, SIZE, SIZE, 3)) * 255).astype("float32")
    for policy in POLICIES[:1] if SMOKE else POLICIES:
        keras.mixed_precision.set_global_policy(policy)
        for name in BACKBONES[:1] if SMOKE else BACKBONES:
            model = getattr(keras.applications, name)(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3),
                                                      pooling="avg")
            model.predict(x[:128], batch_size=128, verbose=0)  # compile
            started = time.perf_counter()
            model.predict(x, batch_size=128, verbose=0)
            rate = len(x) / (time.perf_counter() - started)
            out.setdefault("throughput", {}).setdefault(name, {})[policy] = round(rate, 1)
            log(f"throughput {name:18s} {policy:15s} {rate:9.1f} images/s")
    keras.mixed_precision.set_global_policy("float32")


def mobilenet_augmented(out: dict) -> None:
    rng = np.random.default_rng(1)
    n = 32 if SMOKE else 1942
    x = (rng.random((n, SIZE, SIZE, 3)) * 255).astype("float32")
    y = rng.integers(0, 2, n).astype("float32")
    for policy in ("float32",) if SMOKE else ("float32", "mixed_float16"):
        keras.mixed_precision.set_global_policy(policy)
        keras.utils.set_random_seed(42)
        if SMOKE:  # the tests' TinyCNN: tracing MobileNetV2's training step alone costs seconds
            sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
            from tlrepro.modeling.backbones import tiny_cnn

            base = tiny_cnn(input_shape=(SIZE, SIZE, 3))
        else:
            base = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3))
        for layer in base.layers[:-30]:
            layer.trainable = False
        inputs = keras.Input((SIZE, SIZE, 3))
        h = keras.layers.RandomFlip("horizontal_and_vertical")(inputs)
        h = keras.layers.RandomRotation(0.5)(h)
        h = keras.layers.RandomZoom(0.2)(h)
        h = keras.layers.RandomTranslation(0.1, 0.1)(h)
        h = keras.layers.Rescaling(1 / 255)(h)
        h = keras.layers.GlobalAveragePooling2D()(base(h))
        h = keras.layers.Dropout(0.3)(keras.layers.Dense(128, activation="relu")(h))
        model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid", dtype="float32")(h))
        model.compile(keras.optimizers.Adam(1e-5), "binary_crossentropy")
        model.fit(x[:64], y[:64], batch_size=16, epochs=1, verbose=0)  # compile
        started = time.perf_counter()
        model.fit(x, y, batch_size=16, epochs=2, verbose=0)
        per_epoch = (time.perf_counter() - started) / 2
        out.setdefault("mobilenet2025_augmented", {})[policy] = {"seconds_per_epoch": round(per_epoch, 2),
                                                                 "projected_30_epochs_s": round(30 * per_epoch, 1)}
        log(f"mobilenet2025 augmented {policy:15s} {per_epoch:6.2f} s/epoch, 30 epochs ~ {30 * per_epoch:7.1f} s")
    keras.mixed_precision.set_global_policy("float32")


def densenet_se(weights: Path | None) -> keras.Model:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from tlrepro.modeling.blocks import insert_squeeze_excitation

    if SMOKE:  # one layer per dense block (the tests' TinyDenseNet): DenseNet121's 120 layers take a minute to trace
        from tlrepro.modeling.backbones import tiny_densenet

        base = tiny_densenet(input_shape=(SIZE, SIZE, 3))
    else:
        base = keras.applications.DenseNet121(include_top=False, weights=str(weights), input_shape=(SIZE, SIZE, 3))
    base = insert_squeeze_excitation(base, reduction=16)
    inputs = keras.Input((SIZE, SIZE, 3))
    mean, std = np.array([0.485, 0.456, 0.406], "float32"), np.array([0.229, 0.224, 0.225], "float32")
    scaled = (inputs / 255.0 - mean) / std  # the "torch" preprocessing of DenseNet121's ImageNet weights
    h = keras.layers.Dropout(0.25)(keras.layers.GlobalAveragePooling2D()(base(scaled)))
    return keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid", dtype="float32")(h))


def wang_gpu_profile(bundle: Path, weights: Path | None, out: dict, target: Path | None = None) -> None:
    data = np.load(bundle, allow_pickle=False)
    images, labels, groups = data["images"], data["labels"], data["groups"]
    rows = json.loads(str(data["rows"]))
    results = {}
    keras.mixed_precision.set_global_policy("float32" if SMOKE else "mixed_float16")  # float16 on a CPU: slow
    keras.utils.set_random_seed(42)
    model = densenet_se(weights)
    start_weights = model.get_weights()
    model.compile(keras.optimizers.SGD(0.01, momentum=0.9), "binary_crossentropy", metrics=["accuracy"])
    for unit in sorted({(r["protocol"], r["fold"]) for r in rows})[: 2 if SMOKE else None]:
        if time.perf_counter() - STARTED > BUDGET_S:
            log(f"wang2024 {unit}: skipped, out of the call's time")
            continue
        part = [r for r in rows if (r["protocol"], r["fold"]) == unit]

        def side(name: str, part: list = part) -> tuple[np.ndarray, np.ndarray, list]:
            chosen = [r for r in part if r["side"] == name]
            x = np.stack([np.ascontiguousarray(VIEWS[r["view"]](images[r["index"]])) for r in chosen])
            return x, np.array([labels[r["index"]] for r in chosen], "float32"), chosen

        (xt, yt, _), (xv, yv, _), (xs, ys, test) = side("train"), side("val"), side("test")
        model.set_weights(start_weights)  # every unit starts from ImageNet, with a fresh optimizer state
        for variable in model.optimizer.variables:
            variable.assign(np.zeros(variable.shape, variable.dtype))
        stop = keras.callbacks.EarlyStopping(monitor="val_accuracy", patience=3, restore_best_weights=True)
        started = time.perf_counter()
        history = model.fit(xt, yt, validation_data=(xv, yv), batch_size=32, epochs=1 if SMOKE else 200, verbose=0,
                            callbacks=[stop])
        seconds = time.perf_counter() - started
        probs = model.predict(xs, batch_size=64, verbose=0).ravel()
        correct = (probs >= 0.5) == (ys >= 0.5)
        results[f"{unit[0]}/{unit[1] or 'whole'}"] = {
            "train": len(xt), "val": len(xv), "test": len(xs), "epochs_run": len(history.history["loss"]),
            "best_epoch": stop.best_epoch + 1, "seconds": round(seconds, 1),
            "correct": correct.astype(int).tolist(), "test_groups": [groups[r["index"]] for r in test]}
        log(f"wang2024 DenseNet-SE {unit}: {len(history.history['loss'])} epochs in {seconds:.1f} s, "
            f"test accuracy {correct.mean():.3f} on {len(xs)} images")
        out.setdefault("wang2024_units", {})[f"{unit[0]}/{unit[1] or 'whole'}"] = {
            k: v for k, v in results[f"{unit[0]}/{unit[1] or 'whole'}"].items() if k not in ("correct", "test_groups")}
        if target is not None:
            (target / "gpu_figures.json").write_text(json.dumps(out, indent=1))
    for protocol in sorted({k.split('/')[0] for k in results}):
        parts = [v for k, v in results.items() if k.startswith(protocol + "/")]
        correct = np.concatenate([p["correct"] for p in parts])
        per = {}
        for group, ok in zip(sum((p["test_groups"] for p in parts), []), correct, strict=True):
            per.setdefault(group, []).append(ok)
        summary = {"image_accuracy": round(float(correct.mean()), 4),
                   "patient_accuracy": round(float(np.mean([np.mean(v) for v in per.values()])), 4),
                   "patients": len(per), "images": len(correct), "seconds": round(sum(p["seconds"] for p in parts), 1),
                   "epochs": [p["epochs_run"] for p in parts]}
        out.setdefault("wang2024_gpu_profile", {})[protocol] = summary
        log(f"wang2024 DenseNet-SE, protocol {protocol}: {summary}")
    keras.mixed_precision.set_global_policy("float32")


def smoke_bundle(folder: Path) -> Path:
    """A BUNDLE like the real one, at SIZE px: 24 generated images of 6 patients in two folds of one protocol."""
    rng = np.random.default_rng(0)
    rows = [{"protocol": "patient", "fold": fold, "side": side, "view": "identity", "index": i}
            for fold in ("1", "2") for i, side in enumerate(["train"] * 12 + ["val"] * 6 + ["test"] * 6)]
    path = folder / "bundle.npz"
    np.savez(path, images=rng.integers(0, 256, (24, SIZE, SIZE, 3)).astype("uint8"),
             labels=np.arange(24) % 2, groups=np.array([f"p{i % 6}" for i in range(24)]), rows=json.dumps(rows))
    return path


def main() -> None:
    if SMOKE:
        import atexit
        import shutil
        import tempfile

        target = Path(tempfile.mkdtemp(prefix="tlrepro-gpu-smoke-"))
        atexit.register(shutil.rmtree, target, ignore_errors=True)
        bundle, weights = smoke_bundle(target), None
    else:
        bundle, weights, target = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    if keras.backend.backend() == "jax":
        import jax

        out = {"devices": [str(d) for d in jax.devices()], "keras": keras.__version__, "jax": jax.__version__}
    else:
        out = {"backend": keras.backend.backend(), "keras": keras.__version__}
    log(out)
    wanted = os.environ.get("GPU_BENCH_STEPS", "throughput,mobilenet,wang").split(",")
    for step in [s for name, s in (("throughput", throughput), ("mobilenet", mobilenet_augmented)) if name in wanted]:
        if time.perf_counter() - STARTED < BUDGET_S:
            step(out)
            (target / "gpu_figures.json").write_text(json.dumps(out, indent=1))
    if "wang" in wanted:
        wang_gpu_profile(bundle, weights / "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5" if weights else None,
                         out, target)
    (target / "gpu_figures.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
