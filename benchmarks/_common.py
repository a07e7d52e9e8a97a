"""Helpers the benchmark scripts share: one-line errors, in-memory image caps, aligned tables.

Nothing here imports TensorFlow or tlrepro at import time, so a script can still set environment variables
(TF_CPP_MIN_LOG_LEVEL, TLREPRO_FEATURE_CACHE) after importing this and before importing the package.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# TensorFlow's Python warnings (tf.function retracing notes) would split the tables; errors still show
logging.getLogger("tensorflow").setLevel(logging.ERROR)


REPO = Path(__file__).resolve().parents[1]
SMOKE_HELP = ("a seconds-long run of every step on tiny models and a few generated images, in a throwaway project "
              "under a temporary folder (what tests/test_benchmarks_smoke.py runs: no figure means anything)")
SMOKE_STUDIES = ("lin2024", "mobilenet2025", "kumar2022")  # what the study benchmarks read: skin, melanoma, BreakHis
_smoke: dict[str, Path] = {}


def make_parser(doc: str, rows_help: str | None = None, study_options: bool = True) -> argparse.ArgumentParser:
    """The script's parser: its docstring as help, `--smoke`, and the options every study benchmark takes
    (`--params`, `--max-images`, and `--rows` where `rows_help` is given)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(doc.splitlines()[2:]))
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    if study_options:
        parser.add_argument("--params", type=Path, default=None, help="params file (default: the project's params.yaml)")
        parser.add_argument("--max-images", type=int, default=None, metavar="N",
                            help="at most N images of each class on each side, drawn with the seed (in memory)")
    if rows_help:
        parser.add_argument("--rows", nargs="+", metavar="ROW", default=None, help=rows_help)
    return parser


def smoke_folder() -> Path:
    """This process's temporary folder for smoke runs (removed when the process ends)."""
    if "base" not in _smoke:
        import atexit
        import shutil
        import tempfile

        _smoke["base"] = Path(tempfile.mkdtemp(prefix="tlrepro-bench-smoke-"))
        atexit.register(shutil.rmtree, _smoke["base"], ignore_errors=True)
    return _smoke["base"]


def smoke_project() -> Path:
    """A throwaway project for `--smoke` runs, built once per process; returns its params.yaml.

    It is the end-to-end tests' tiny project (tests/e2e.py: generated Kaggle-like mirrors, the real params.yaml
    with TinyCNN / TinyDenseNet backbones at 32 px and two epochs) for SMOKE_STUDIES, with their datasets
    downloaded from the generated mirror, prepared and split. The package's paths, TLREPRO_ROOT and the feature
    cache point at it from then on."""
    if "params" in _smoke:
        return _smoke["params"]
    import shutil

    sys.path.insert(0, str(REPO / "tests"))
    import e2e  # the tests' generated mirrors and tiny params

    base = smoke_folder()
    root = base / "project"
    root.mkdir()
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    e2e.make_mirror(base / "mirror")
    params = e2e.only(e2e.tiny_params(), SMOKE_STUDIES)
    import yaml

    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    os.environ.update(TLREPRO_ROOT=str(root), KAGGLE_MIRROR=str(base / "mirror"))
    os.environ.setdefault("TLREPRO_FEATURE_CACHE", str(base / "features"))  # scripts that time extraction set their own
    from tlrepro.core import paths
    from tlrepro.data.download import download_dataset
    from tlrepro.data.index import prepare_dataset
    from tlrepro.data.splits import write_study_split

    paths.set_root(root)
    with contextlib.redirect_stdout(io.StringIO()):  # the stages' own summaries: not the benchmark's figures
        for key in params["datasets"]:
            download_dataset(key)
            prepare_dataset(key)
        for study in params["studies"]:
            write_study_split(study)
    _smoke["params"] = root / "params.yaml"
    return _smoke["params"]


def smoke_options(args: argparse.Namespace, **values: Any) -> argparse.Namespace:
    """With `--smoke`: the smoke project's params file and `values` (small counts) in place of what was given."""
    if getattr(args, "smoke", False):
        args.params = smoke_project()
        for name, value in values.items():
            setattr(args, name, value)
    return args


def smoke_pictures(folder: Path, per_class: int, seed: int = 0) -> Path:
    """`per_class` generated 32-px PNGs in folder/benign and folder/malignant: green blotches are benign, red ones
    malignant (what tiny_model learns to tell apart); returns `folder`."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for label, colour in (("benign", (40, 200, 60)), ("malignant", (220, 40, 40))):
        (folder / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = rng.integers(60, 200, (32, 32, 3)).astype("uint8")
            top, left = rng.integers(0, 20, 2)
            image[top : top + 12, left : left + 12] = colour
            Image.fromarray(image).save(folder / label / f"{i}.png")
    return folder


def tiny_model(folder: Path, train_per_class: int = 200, epochs: int = 5) -> Path:
    """A TinyCNN (32 px, random start) fitted to tell red blotches from green ones on generated pictures, saved
    with a card as folder/demo/tiny.keras (what the saved-model benchmarks use where no real model is given)."""
    import keras
    import numpy as np

    from tlrepro.core.config import RowSettings, resolve_row
    from tlrepro.data.images import decode_image
    from tlrepro.data.labels import BINARY_CLASSES
    from tlrepro.modeling import cards, models

    pictures = smoke_pictures(folder / "train", train_per_class, seed=1)
    files = sorted(pictures.glob("*/*.png"))
    x = np.stack([decode_image(f.read_bytes(), 32)[0] for f in files]).astype("float32")
    y = np.array([int(f.parent.name == "malignant") for f in files])
    row = resolve_row("tiny", RowSettings(), RowSettings(
        backbone="TinyCNN", weights="random", image_size=32, batch_size=16, learning_rate=1e-2, epochs=epochs,
        head=[{"pool": "avg"}, {"dense": 1, "activation": "sigmoid"}]))
    clf = models.build_classifier(row, classes=BINARY_CLASSES, seed=0)
    clf.model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="binary_crossentropy")
    clf.model.fit(x, y, epochs=epochs, batch_size=16, verbose=0)
    path, _ = cards.save(clf.model, folder / "demo" / "tiny.keras", {
        "name": "demo/tiny", "study": "generated", "backbone": "TinyCNN", "weights": {"source": "random"},
        "image_size": 32, "classes": list(BINARY_CLASSES), "threshold": 0.5, "preprocessing": "unit"})
    return path


def run_main(run: Callable[[], None]) -> int:
    """Call `run`; a tlrepro UserError becomes one `error:` line on stderr and exit status 2."""
    from tlrepro.core.errors import UserError

    try:
        run()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def cap_sides(frame: Any, max_images: int | None, seed: int) -> Any:
    """At most `max_images` rows per (protocol, side, label) of a long-format split frame, drawn at random
    with `seed`; the rows kept stay in their original order. In memory only: no file is rewritten."""
    import numpy as np

    if not max_images:
        return frame
    rng = np.random.default_rng(seed)
    keys = [c for c in ("protocol", "side", "label") if c in frame.columns]
    keep: list[int] = []
    for _, group in frame.groupby(keys, sort=True):
        size = min(int(max_images), len(group))
        keep.extend(rng.choice(group.index.to_numpy(), size=size, replace=False).tolist())
    return frame.loc[sorted(keep)].reset_index(drop=True)


def side_counts(study: Any, protocol: str | None = None) -> str:
    """`train 1942, val 416, test 418` for one protocol of a tlrepro Study."""
    frame = study.protocol(protocol)
    counts = frame.groupby("side").size().to_dict()
    return ", ".join(f"{side} {counts[side]}" for side in ("train", "val", "test") if side in counts)


class Table:
    """A small aligned text table printed row by row (long runs show each figure as soon as it exists).

    columns: (title, width, align) with align "<" (text) or ">" (numbers); the first column is usually text.
    """

    def __init__(self, columns: Sequence[tuple[str, int, str]]) -> None:
        self.columns = [(title, max(width, len(title)), align) for title, width, align in columns]

    def _line(self, cells: Sequence[str]) -> str:
        return "  ".join(f"{cell:{align}{width}}" for cell, (_, width, align) in zip(cells, self.columns, strict=True))

    def header(self) -> None:
        print(self._line([title for title, _, _ in self.columns]).rstrip())
        print(self._line(["-" * width for _, width, _ in self.columns]), flush=True)

    def row(self, *cells: Any) -> None:
        print(self._line([fmt(c) for c in cells]).rstrip(), flush=True)

    def rule(self) -> None:
        print(self._line(["-" * width for _, width, _ in self.columns]))


def fmt(value: Any) -> str:
    """A table cell: floats with two decimals (none from 10,000 on), None and NaN as `-`, the rest as str."""
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        return f"{value:.2f}" if abs(value) < 10_000 else f"{value:.0f}"
    return str(value)


def duration(seconds: float) -> str:
    """Seconds as people read them: `42.0 s`, `12.5 min`, `3.20 h`."""
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def ratio(numerator: float, denominator: float) -> str:
    return f"{numerator / denominator:.2f}x" if denominator > 0 else "-"
