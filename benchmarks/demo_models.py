"""Realistic saved models for the serve and export benchmarks, without running a study: ImageNet backbones
(from IMAGENET_WEIGHTS_DIR or Keras's download) with the study head fitted on a few skin images.

For each backbone: a classifier as lin2024 builds it (224 px, the backbone's own preprocessing, frozen, a
sigmoid head), the head fitted on `--per-class` training images of each class of the skin dataset's train/
folder (features computed once), its validation accuracy measured on `--val-per-class` other train/ images,
and its test figures on the test/ folder (the lin2024 / sarker2025 test side). Saved with a card
(`tlrepro.modeling.cards.save`) as <out>/demo/<backbone>.keras, so `tlrepro serve --models <out>` and
`tlrepro export` use them as they would a study's.

    python benchmarks/demo_models.py --backbones MobileNetV2 VGG16          # into benchmarks/out/demo-models
    python benchmarks/serve_load.py --models benchmarks/out/demo-models

Options: `--skin DIR` (default data/raw/skin, else $KAGGLE_MIRROR/fanconic/skin-cancer-malignant-vs-benign),
`--backbones NAME ...`, `--per-class N` (default 40), `--val-per-class N` (default 20), `--epochs N` (head
epochs, default 30), `--out DIR`, `--seed N`, `--smoke` (a TinyCNN at 32 px on generated pictures, seconds).
These are demonstration models (a few dozen training images), not a study's results.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from _common import make_parser, run_main, smoke_folder, smoke_pictures

REPO = Path(__file__).resolve().parents[1]
SIZE = 224  # the studies' input size (`--smoke`: 32, a TinyCNN with random weights)


def skin_folder(given: Path | None) -> Path:
    import os

    from tlrepro.core.errors import UserError

    candidates = [given] if given else [REPO / "data/raw/skin"]
    if not given and os.environ.get("KAGGLE_MIRROR"):
        candidates.append(Path(os.environ["KAGGLE_MIRROR"]) / "fanconic/skin-cancer-malignant-vs-benign")
    for folder in candidates:
        if (folder / "train").is_dir() and (folder / "test").is_dir():
            return folder
    raise UserError(f"no skin dataset (train/ and test/) at {', '.join(map(str, candidates))}: pass --skin DIR, "
                    f"set KAGGLE_MIRROR, or run `dvc repro download@skin`.")


def labelled(folder: Path) -> list[tuple[Path, int]]:
    """(image, 1 for malignant) for every JPEG under folder/<class>/, sorted."""
    return sorted((p, int(p.parent.name.lower() == "malignant")) for p in folder.glob("*/*")
                  if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


def arrays(items: list[tuple[Path, int]], size: int = SIZE):
    import numpy as np

    from tlrepro.data.images import decode_image, inspect_bytes

    pixels, labels, hashes = [], [], []
    for path, label in items:
        data = path.read_bytes()
        array, _, ok, _ = decode_image(data, size)
        if ok:
            pixels.append(array)
            labels.append(label)
            hashes.append(inspect_bytes(data, dihedral=False).phash)
    return np.stack(pixels).astype("float32"), np.array(labels), hashes


def build(backbone: str, train, val, test, epochs: int, seed: int, out: Path, size: int = SIZE,
          weights: str = "imagenet") -> Path:
    import keras
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    from tlrepro.core.config import RowSettings, resolve_row
    from tlrepro.data.labels import BINARY_CLASSES
    from tlrepro.modeling import backbones, cards, models

    row = resolve_row(backbone, RowSettings(), RowSettings(
        backbone=backbone, weights=weights, image_size=size, batch_size=16, learning_rate=1e-3, epochs=epochs,
        head=[{"pool": "avg"}, {"dense": 1, "activation": "sigmoid"}]))
    clf = models.build_classifier(row, classes=BINARY_CLASSES, seed=seed)
    models.set_trainable(clf, 0)
    start = time.perf_counter()
    features = {name: clf.backbone.predict(clf.preprocessing(x), batch_size=16, verbose=0)
                for name, (x, _, _) in (("train", train), ("val", val))}
    clf.head.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy", metrics=["accuracy"])
    clf.head.fit(features["train"], train[1], validation_data=(features["val"], val[1]), epochs=epochs,
                 batch_size=16, verbose=0)
    val_probs = clf.model.predict(val[0], batch_size=16, verbose=0)[:, 0]
    test_probs = clf.model.predict(test[0], batch_size=16, verbose=0)[:, 0]
    fitted = time.perf_counter() - start
    figures = {"side": "test", "accuracy": float(accuracy_score(test[1], test_probs >= 0.5)),
               "f1": float(f1_score(test[1], test_probs >= 0.5)), "roc_auc": float(roc_auc_score(test[1], test_probs)),
               "n": len(test[1])}
    card = {"name": f"demo/{backbone}", "study": "demo", "row": backbone, "seed": seed, "backbone": backbone,
            "weights": backbones.weights_provenance(backbone, weights, size), "image_size": size,
            "input": {"color": "RGB", "range": [0, 255], "resize": "bilinear", "dtype": "float32"},
            "preprocessing": backbones.backbone_spec(backbone).preprocessing, "classes": list(BINARY_CLASSES),
            "positive_class": "malignant", "threshold": 0.5, "head": [{"pool": "avg"}, {"dense": 1}],
            "training": {"images": len(train[1]), "epochs": epochs, "note": "benchmarks/demo_models.py: a "
                         "demonstration model, head fitted on a few skin images"},
            "validation": {"accuracy": float(accuracy_score(val[1], val_probs >= 0.5)), "n": len(val[1])},
            "metrics": figures, "phash_max_distance": 4, "training_phashes": sorted(set(train[2]))}
    path, _ = cards.save(clf.model, out / "demo" / f"{backbone}.keras", card)
    print(f"{backbone}: head fitted in {fitted:.1f} s; validation accuracy {card['validation']['accuracy']:.3f} "
          f"(n {len(val[1])}), test accuracy {figures['accuracy']:.3f} (n {figures['n']}); wrote {path}", flush=True)
    return path


def main() -> int:
    parser = make_parser(__doc__, study_options=False)
    parser.add_argument("--skin", type=Path, default=None)
    parser.add_argument("--backbones", nargs="+", default=["MobileNetV2"])
    parser.add_argument("--per-class", type=int, default=40)
    parser.add_argument("--val-per-class", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/out/demo-models")
    args = parser.parse_args()
    size, weights = SIZE, "imagenet"
    if args.smoke:  # 4 + 2 generated pictures per class, a TinyCNN, one epoch
        size, weights, args.backbones = 32, "random", ["TinyCNN"]
        args.per_class, args.val_per_class, args.epochs = 4, 2, 1
        args.out = smoke_folder() / "demo-models"

    def run() -> None:
        import numpy as np

        if args.smoke:
            args.skin = smoke_folder() / "skin"
            smoke_pictures(args.skin / "train", 6)
            smoke_pictures(args.skin / "test", 2, seed=3)
        folder = skin_folder(args.skin)
        rng = np.random.default_rng(args.seed)
        train_val: list = []
        pool = labelled(folder / "train")
        for label in (0, 1):
            items = [pool[i] for i in rng.permutation(len(pool)) if pool[i][1] == label]
            train_val.append((items[: args.per_class], items[args.per_class : args.per_class + args.val_per_class]))
        train = arrays(train_val[0][0] + train_val[1][0], size)
        val = arrays(train_val[0][1] + train_val[1][1], size)
        test = arrays(labelled(folder / "test"), size)
        print(f"skin images from {folder}: train {len(train[1])}, validation {len(val[1])}, test {len(test[1])}")
        for backbone in args.backbones:
            build(backbone, train, val, test, args.epochs, args.seed, args.out, size, weights)

    return run_main(run)


if __name__ == "__main__":
    sys.exit(main())
