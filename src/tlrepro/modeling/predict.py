"""Prediction with a saved model and its card: on a folder, a list of paths, or in-memory images.

Preprocessing comes from the card (input size, colour, resizing, the steps before the model such as stain
normalization with its fitted reference; scaling is inside the model), never from the caller, and images
are decoded by the same code the study's evaluation used, so an image gets the same probability here as
it did there. Each image is decoded once, in parallel (tf.data, fixed order), giving both the model's input
and the perceptual hashes of its eight rotations and flips, as sent and as prepared; they are compared,
as the split audit compares images, with the hashes of the images that shaped the model (its card: the
training images, the validation images that chose its epoch and threshold, and an `init_from` model's
pretraining images), so every prediction says whether the image was, nearly, seen, and how near the
nearest one is. Unreadable images are listed with the reason and never stop the rest, and so are images
with a side under serve.min_image_side pixels (`tlrepro predict`, the service): too little to label.

    tlrepro predict models/sarker2025/MobileNetV2.keras some/folder --out predictions.csv
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from tlrepro.core import fileio, inputs, paths
from tlrepro.core.errors import UserError
from tlrepro.data import images
from tlrepro.data.index import scan
from tlrepro.data.labels import predicted_positive
from tlrepro.data.leakage import as_uint64
from tlrepro.modeling import cards

DEFAULT_SEEN_DISTANCE = 4  # bits of perceptual-hash distance that count as "the same picture"
HASHES = 2 * len(images.VIEWS)  # per image: its eight dihedral forms as sent, then as prepared


def too_small(data: bytes, min_side: int) -> str | None:
    """Why an image is refused for its size (a side under `min_side` pixels, read from its header alone), or
    None; an image whose header cannot be read, or in a format not decoded, is left to the decoder to explain."""
    if min_side <= 1:
        return None
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height, known = *image.size, image.format in images.DECODED_FORMATS
    except Exception:
        return None
    if not known or min(width, height) >= min_side:
        return None
    return (f"too small ({width}x{height} pixels): an image needs at least {min_side} pixels a side to be labelled "
            f"(serve.min_image_side); send the original, not a thumbnail")


def decode_checked(data: bytes, size: int, prepare: Any = None, max_pixels: int = images.MAX_PIXELS,
                   min_side: int = 1) -> tuple[np.ndarray, np.ndarray, bool, bytes]:
    """images.decode_image, refusing first an image with a side under `min_side` pixels."""
    if (reason := too_small(data, min_side)) is not None:
        return np.zeros((size, size, 3), np.uint8), np.zeros(HASHES, np.int64), False, reason.encode()
    return images.decode_image(data, size, prepare, max_pixels)


def _decode_file(path: bytes, size: int, prepare: Any = None, min_side: int = 1
                 ) -> tuple[np.ndarray, np.ndarray, bool, bytes]:
    try:
        data = inputs.read_regular(os.fsdecode(path))
    except OSError as exc:
        return (np.zeros((size, size, 3), np.uint8), np.zeros(HASHES, np.int64), False,
                f"unreadable file: {exc.strerror or exc}".encode())
    return decode_checked(data, size, prepare, min_side=min_side)


def _decode_bytes(data: bytes, size: int, prepare: Any = None, min_side: int = 1
                  ) -> tuple[np.ndarray, np.ndarray, bool, bytes]:
    return decode_checked(data, size, prepare, min_side=min_side)


def min_image_side() -> int:
    """serve.min_image_side from params.yaml when there is one (`tlrepro predict` also runs outside a project),
    else its default."""
    from tlrepro.core.config import Serve, load_params

    return load_params().serve.min_image_side if paths.PARAMS_FILE.is_file() else Serve().min_image_side


def _nearest(queries: np.ndarray, references: np.ndarray) -> np.ndarray:
    """For each row of `queries` (N, k) uint64: the smallest Hamming distance of any of its k hashes to any
    reference hash (65 when there are none)."""
    out = np.full(len(queries), 65, dtype=int)
    if not len(references):
        return out
    step = max(1, (1 << 22) // (queries.shape[1] * len(references)))  # about 32 MB of XORs at a time
    for start in range(0, len(queries), step):
        chunk = queries[start : start + step, :, None] ^ references[None, None, :]
        out[start : start + step] = np.bitwise_count(chunk).min(axis=(1, 2))
    return out


@dataclass
class Predictor:
    """A saved model with its card, ready to label images."""

    model_path: Path
    model: Any = field(repr=False)
    card: dict[str, Any] = field(repr=False)
    min_side: int = 1  # images with a side under this many pixels are refused (`tlrepro predict`: serve.min_image_side)

    @classmethod
    def load(cls, model: str | Path, models_dir: Path | None = None, *, min_side: int = 1) -> Predictor:
        path = cards.resolve(str(model), models_dir)
        keras_model, card = cards.load(path)
        return cls(path, keras_model, card, min_side)

    def __post_init__(self) -> None:
        self.size = int(self.card["image_size"])
        self.classes = list(self.card["classes"])
        self.threshold = self.card.get("threshold")
        self.seen_distance = int(self.card.get("phash_max_distance", DEFAULT_SEEN_DISTANCE))
        self.prepare = cards.input_transform(self.card)
        seen = ("training_phashes", "validation_phashes", "pretraining_phashes")
        self.training = np.unique(as_uint64([h for key in seen for h in self.card.get(key) or []]))
        self.canonical = np.unique(as_uint64(self.card.get("canonical_phashes") or []))
        import tensorflow as tf

        self._compiled = tf.function(lambda x: self.model(x, training=False), reduce_retracing=True)

    def decode(self, data: bytes, max_pixels: int = images.MAX_PIXELS) -> tuple[np.ndarray, np.ndarray, bool, bytes]:
        """(uint8 image for the model, its perceptual hashes, ok, reason) from encoded bytes, with the card's
        steps before the model: how every caller (predict, Grad-CAM, the service) turns a file into input."""
        return decode_checked(data, self.size, self.prepare, max_pixels, self.min_side)

    def forward(self, batch: Any) -> np.ndarray:
        """The model's raw output for a batch of float32 images (N, size, size, 3), values 0..255."""
        return np.asarray(self._compiled(batch), dtype="float64")

    @property
    def name(self) -> str:
        return str(self.card.get("name") or self.model_path.stem)

    def dataset(self, sources: Sequence[str], batch_size: int, *, from_bytes: Sequence[bytes] | None = None) -> Any:
        """Batches of (image, phash, ok, reason), decoded in parallel in a fixed order (a tf.data.Dataset)."""
        import tensorflow as tf

        items = list(from_bytes) if from_bytes is not None else [os.fsencode(s) for s in sources]
        ds = tf.data.Dataset.from_tensor_slices(tf.constant(items, dtype=tf.string))
        reader = _decode_bytes if from_bytes is not None else _decode_file

        def decode(item):
            image, bits, ok, reason = tf.numpy_function(lambda d: reader(d, self.size, self.prepare, self.min_side),
                                                        [item],
                                                        [tf.uint8, tf.int64, tf.bool, tf.string])
            image = tf.ensure_shape(tf.cast(image, tf.float32), (self.size, self.size, 3))
            return image, tf.ensure_shape(bits, (HASHES,)), tf.ensure_shape(ok, ()), tf.ensure_shape(reason, ())

        return ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(batch_size).prefetch(
            tf.data.AUTOTUNE)

    def _run(self, dataset: Any, total: int, batch_size: int, progress: bool
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
        probs, bits, oks, reasons = [], [], [], []
        steps = int(np.ceil(total / batch_size))
        for image, phash, ok, reason in tqdm(dataset, total=steps, desc=f"predict ({self.name})", unit="batch",
                                             disable=None if progress else True, leave=False):
            probs.append(self.forward(image))
            bits.append(phash.numpy()), oks.append(ok.numpy())
            reasons += [r.decode() for r in reason.numpy()]
        if not probs:
            return np.zeros((0, len(self.classes))), np.zeros((0, HASHES), np.uint64), np.zeros(0, bool), []
        return (np.concatenate(probs), np.concatenate(bits).view(np.uint64), np.concatenate(oks), reasons)

    def nearest_training(self, hashes: np.ndarray) -> np.ndarray:
        """Hamming distance (bits) from each image to the nearest image that shaped the model, matched as the
        split audit matches (tlrepro.data.leakage): its hash, as sent or as prepared, against the training,
        validation and pretraining images' hashes (near), and its canonical hash (the smallest over its eight
        rotations and flips) against theirs (dihedral). `hashes` is (N, 16) as `decode` gives them, or (N,)
        plain hashes; 65 when the card lists none."""
        hashes = np.asarray(hashes).astype(np.uint64)
        if hashes.ndim == 1:
            return _nearest(hashes[:, None], self.training)
        views = len(images.VIEWS)
        shown = hashes[:, [0, views]]
        canonical = np.stack([hashes[:, :views].min(axis=1), hashes[:, views:].min(axis=1)], axis=1)
        return np.minimum(_nearest(shown, self.training), _nearest(canonical, self.canonical))

    def labels_of(self, probs: np.ndarray) -> list[str]:
        if probs.shape[1] == 1:  # binary: P(positive class) against the card's threshold
            return [self.classes[int(positive)] for positive in predicted_positive(probs[:, 0], self.threshold)]
        return [self.classes[i] for i in probs.argmax(axis=1)]

    def probabilities(self, probs: np.ndarray) -> np.ndarray:
        """One column per class (a binary model's single output becomes P(benign), P(malignant))."""
        return np.column_stack([1 - probs[:, 0], probs[:, 0]]) if probs.shape[1] == 1 else probs

    def _rows(self, names: Sequence[str], probs, bits, oks, reasons) -> tuple[pd.DataFrame, pd.DataFrame]:
        good = np.flatnonzero(oks)
        per_class = self.probabilities(probs[good]) if len(good) else np.zeros((0, len(self.classes)))
        distance = self.nearest_training(bits[good])
        table = pd.DataFrame({"path": [names[i] for i in good], "predicted_label": self.labels_of(probs[good])})
        for j, name in enumerate(self.classes):
            table[f"p_{name}"] = np.round(per_class[:, j], 6)
        table["threshold"] = self.threshold
        table["seen_in_training"] = distance <= self.seen_distance
        table["nearest_training_distance"] = distance
        bad = [i for i in range(len(names)) if not oks[i]]
        rejected = pd.DataFrame({"path": [names[i] for i in bad],
                                 "reason": [reasons[i] for i in bad]}, columns=["path", "reason"])
        return table, rejected

    def predict_paths(self, files: Sequence[str | Path], *, batch_size: int = 32, progress: bool = True,
                      names: Sequence[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(predictions, rejected) for image files, in the given order."""
        files = [str(f) for f in files]
        out = self._run(self.dataset(files, batch_size), len(files), batch_size, progress)
        return self._rows(list(names) if names is not None else files, *out)

    def predict_bytes(self, blobs: Sequence[bytes], *, batch_size: int = 32,
                      names: Sequence[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(predictions, rejected) for encoded images held in memory (uploads)."""
        out = self._run(self.dataset([], batch_size, from_bytes=blobs), len(blobs), batch_size, progress=False)
        return self._rows(list(names) if names is not None else [f"image {i}" for i in range(len(blobs))], *out)

    def predict_arrays(self, arrays: Iterable[np.ndarray | Image.Image], *, batch_size: int = 32) -> pd.DataFrame:
        """Predictions for decoded RGB images (any size: resized as the card says)."""
        blobs = []
        for a in arrays:
            buffer = io.BytesIO()
            (a if isinstance(a, Image.Image) else Image.fromarray(np.asarray(a, dtype=np.uint8))).save(buffer, "PNG")
            blobs.append(buffer.getvalue())
        return self.predict_bytes(blobs, batch_size=batch_size)[0]


def find_images(folder: Path) -> tuple[list[Path], pd.DataFrame, int]:
    """(image files, rejected files with reasons, count of other files) under `folder`, recursively, sorted."""
    files, problems, _, _ = scan(folder)
    accepted, rejected, other = [], list(problems), 0
    for rel in files:
        if images.is_image_file(rel.name):
            accepted.append(folder / rel)
        elif rel.suffix.lower() in images.UNSUPPORTED_EXTENSIONS:
            rejected.append({"path": str(rel), "reason": f"unsupported image format {rel.suffix.lower()}: "
                                                         f"convert it to PNG or JPEG"})
        else:
            other += 1
    rejected = [{"path": str(folder / r["path"]) if not Path(r["path"]).is_absolute() else r["path"],
                 "reason": r["reason"]} for r in rejected]
    return accepted, pd.DataFrame(rejected, columns=["path", "reason"]), other


def predict_folder(model: str | Path, folder: str | Path, *, out: str | Path = "predictions.csv", batch_size: int = 32,
                   progress: bool = True, explain: bool = False, min_side: int | None = None
                   ) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    """Label every image under `folder`; write the CSV (and <out>.rejected.csv when some could not be read, or
    have a side under `min_side` pixels: default serve.min_image_side).

    Everything that can be checked without TensorFlow (folder, images, model file, card) is checked first,
    so a mistake costs a second, not a TensorFlow start."""
    folder, out = Path(folder), Path(out)
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder: give the folder of images to label.")
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, not {batch_size}.")
    files, rejected_files, other = find_images(folder)
    if not files:
        raise UserError(f"{folder} holds no image that prepare accepts ({', '.join(sorted(images.IMAGE_EXTENSIONS))})"
                        f"{f'; {len(rejected_files)} rejected' if len(rejected_files) else ''}: point at a folder of images.")
    cards.read_card(cards.resolve(str(model)))
    predictor = Predictor.load(model, min_side=min_image_side() if min_side is None else min_side)
    names = [os.path.relpath(f, folder) for f in files]
    table, rejected = predictor.predict_paths(files, batch_size=batch_size, progress=progress, names=names)
    rejected_files = rejected_files.assign(path=[os.path.relpath(p, folder) for p in rejected_files["path"]])
    rejected = pd.concat([rejected, rejected_files], ignore_index=True).sort_values("path", ignore_index=True)
    fileio.write_csv(out, table)
    rejected_path = out.with_name(out.stem + ".rejected.csv")
    if len(rejected):
        fileio.write_csv(rejected_path, rejected)
    else:
        rejected_path.unlink(missing_ok=True)
    if explain and len(table):
        from tlrepro.modeling.explain import write_overlays

        write_overlays(predictor, [folder / p for p in table["path"]], out.with_name(out.stem + "_gradcam"))
    counts = table["predicted_label"].value_counts().to_dict()
    print(f"{predictor.name}: labelled {len(table)} image(s) in {folder} ("
          + ", ".join(f"{counts.get(c, 0)} {c}" for c in predictor.classes) + f"); wrote {out}")
    if len(rejected):
        print(f"{len(rejected)} file(s) could not be used, with the reasons in {rejected_path}")
    seen = int(table["seen_in_training"].sum())
    if seen:
        print(f"{seen} image(s) look like images the model was trained, validated or pretrained on (perceptual "
              f"hash within {predictor.seen_distance} bits, in some rotation or flip): their predictions say little "
              f"about new images")
    if other:
        print(f"{other} other file(s) ignored (not images)")
    return out, table, rejected


def predict_cli(model: str, folder: str, *, out: str, batch_size: int, explain: bool) -> None:
    predict_folder(model, folder, out=out, batch_size=batch_size, explain=explain)


def model_names(models_dir: Path | None = None) -> list[str]:
    """Every saved model with a card under models/ (pretrained ones excluded), as <study>/<row> names."""
    base = models_dir or paths.MODELS
    found = []
    for card in sorted(base.rglob("*.card.json")) if base.is_dir() else []:
        rel = card.relative_to(base)
        if rel.parts[0] != "pretrained":
            found.append(str(rel.with_name(rel.name.removesuffix(".card.json"))))
    return found
