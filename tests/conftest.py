"""Shared fixtures: a throwaway project folder, generated image trees shaped like the real archives, and a
folder of small saved models (with cards) for the predict, explain, serve and export tests.

Images are small smooth random pictures, so each one has a distinct perceptual hash; nothing is downloaded.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
from PIL import Image

from tlrepro.core import paths

REPO = Path(__file__).resolve().parents[1]
FORMATS = {
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".png": "PNG",
    ".gif": "GIF",
    ".bmp": "BMP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
}


def picture(seed: int, size: tuple[int, int] = (64, 64)) -> Image.Image:
    """A smooth random RGB picture: an upscaled 6x6 noise grid, so different seeds differ in phash."""
    grid = np.random.default_rng(seed).integers(0, 256, (6, 6, 3), dtype=np.uint8)
    return Image.fromarray(grid).resize(size, Image.Resampling.BICUBIC)


def write_image(path: Path, seed: int = 0, mode: str = "RGB", size: tuple[int, int] = (64, 64)) -> Path:
    """Save picture(seed) at `path` in `mode` (RGB, L, RGBA, P, CMYK or I;16), format from the extension."""
    image = picture(seed, size)
    if mode == "I;16":
        image = Image.fromarray(np.asarray(image.convert("L"), dtype=np.uint16) * 257)
    elif mode == "P":
        image = image.convert("P", palette=Image.Palette.ADAPTIVE)
    elif mode != "RGB":
        image = image.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, FORMATS[path.suffix.lower()])
    return path


# Optical-density colours (per unit concentration) of hematoxylin (purple) and eosin (pink).
HEMATOXYLIN = np.array([0.65, 0.70, 0.29])
EOSIN = np.array([0.07, 0.99, 0.11])


def unit(vector: np.ndarray) -> np.ndarray:
    return vector / np.linalg.norm(vector)


def he_image(seed: int, hematoxylin: np.ndarray = HEMATOXYLIN, eosin: np.ndarray = EOSIN,
             intensity: float = 1.0, size: int | tuple[int, int] = 64) -> np.ndarray:
    """Beer-Lambert I = 240 * exp(-(c_h * OD_h + c_e * OD_e)): purple nuclei blobs on a pink background
    (an H&E slide's colours, for stain normalization); `size` is (height, width) or one side."""
    height, width = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    c_h = np.zeros((height, width))
    for _ in range(8):
        (cy, cx), radius = rng.uniform(0, 1, 2) * (height, width), rng.uniform(3, 8)
        c_h += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius**2))
    c_e = 0.3 + 0.4 * rng.random((height, width))
    od = intensity * (c_h[..., None] * unit(hematoxylin) + c_e[..., None] * unit(eosin))
    return np.clip(240 * np.exp(-od), 0, 255).astype(np.uint8)


@pytest.fixture
def make_image() -> Callable[..., Path]:
    return write_image


# ---------------------------------------------------------------- saved models

TINY_SIZE = 32  # input size of the shared saved models
SEEN_SEED = 1  # picture(SEEN_SEED) (64x64) is listed as a training image in demo/tiny's card
TINY_METRICS = {"side": "test", "accuracy": 0.84, "accuracy_ci_low": 0.8, "accuracy_ci_high": 0.88, "f1": 0.83,
                "roc_auc": 0.9, "n": 660}


def red_detector():
    """image -> preprocessing -> backbone (8x8 maps of red and of green) -> head (P(malignant) from red only).

    Shaped like build_classifier's models (parts_of finds its parts), with hand-set weights, so its decision
    depends on where the image is red and nowhere else: Grad-CAM must light up a red patch, not a green one,
    and distinct pictures get distinct probabilities. It says malignant for every image (P >= 0.5)."""
    import keras
    from keras import layers

    from tlrepro.modeling import models

    image = keras.Input((TINY_SIZE, TINY_SIZE, 3), name="image")
    inner = keras.Input((TINY_SIZE, TINY_SIZE, 3))
    channels = layers.Conv2D(2, 1, activation="relu", name="colours")
    pooled = layers.AveragePooling2D(4, name="pool")(channels(inner))
    backbone = keras.Model(inner, pooled, name="colournet")
    head = keras.Sequential([layers.GlobalAveragePooling2D(), layers.Dense(1, activation="sigmoid")], name="head")
    out = head(backbone(models.ImageNetPreprocessing("unit", name="preprocessing")(image)))
    model = keras.Model(image, out, name="red_detector")
    channels.set_weights([np.array([[[[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]]], dtype="float32"), np.zeros(2, "float32")])
    head.layers[-1].set_weights([np.array([[8.0], [0.0]], dtype="float32"), np.zeros(1, "float32")])
    return model


@pytest.fixture(scope="session")
def saved_models(tmp_path_factory) -> Path:
    """A models folder saved once per session with `tlrepro.modeling.cards.save`:

    - demo/tiny: the smoke-test TinyCNN backbone at 32 px (random weights, seed 0), a sigmoid head; its card
      lists picture(SEEN_SEED) as a training image, says `weights.source: random` and has test metrics;
    - demo/red: red_detector(), whose card says it was trained on nothing.

    Tests that add files copy what they need into a folder of their own: this one is shared."""
    from tlrepro.core.config import RowSettings, resolve_row
    from tlrepro.data.images import phash_of
    from tlrepro.data.labels import BINARY_CLASSES
    from tlrepro.modeling import cards, models

    base = tmp_path_factory.mktemp("saved-models")
    row = resolve_row("tiny", RowSettings(), RowSettings(
        backbone="TinyCNN", weights="random", image_size=TINY_SIZE, batch_size=4, learning_rate=1e-3, epochs=1,
        head=[{"pool": "avg"}, {"dense": 1, "activation": "sigmoid"}]))
    common = {"study": "demo", "image_size": TINY_SIZE, "classes": list(BINARY_CLASSES), "threshold": 0.5,
              "phash_max_distance": 4, "input": {"color": "RGB", "range": [0, 255], "resize": "bilinear"},
              "weights": {"source": "random", "note": "random initialisation (Keras defaults, seeded)"}}
    cards.save(models.build_classifier(row, classes=BINARY_CLASSES, seed=0).model, base / "demo" / "tiny.keras", {
        **common, "name": "demo/tiny", "row": "tiny", "backbone": "TinyCNN", "preprocessing": "unit",
        "metrics": TINY_METRICS, "report": "reports/demo.html", "training_phashes": [phash_of(picture(SEEN_SEED))]})
    cards.save(red_detector(), base / "demo" / "red.keras", {
        **common, "name": "demo/red", "row": "red", "backbone": "colournet", "preprocessing": "unit",
        "report": "reports/red.html", "training_phashes": []})
    return base


@pytest.fixture
def tmp_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder (the real params.yaml and dvc.yaml) that tlrepro.core.paths points at for the test."""
    root = tmp_path / "project"
    root.mkdir()
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(REPO / name, root / name)
    monkeypatch.setenv("TLREPRO_ROOT", str(root))
    monkeypatch.setenv("TLREPRO_FEATURE_CACHE", str(tmp_path / "features"))
    monkeypatch.delenv(paths.STAGING_ENV, raising=False)
    original = paths.PROJECT_ROOT
    paths.set_root(root)
    yield root
    paths.set_root(original)


def build_skin_tree(folder: Path) -> dict:
    """A messy skin-like archive; returns what a correct index of it must find.

    Like the real one it holds every image twice (train/, test/ and again under data/), class folders differ
    in case and depth, extensions vary, and some files are broken.
    """
    originals = {
        "train/Benign/b{}.jpg": ("benign", "train", 4),
        "train/benign/b{}.png": ("benign", "train", 2),
        "train/malignant/m{}.JPG": ("malignant", "train", 5),
        "test/benign/tb{}.jpeg": ("benign", "test", 3),
        "test/extra/MALIGNANT/tm{}.jpg": ("malignant", "test", 3),
    }
    seed = 0
    for pattern, (_, _, n) in originals.items():
        for i in range(n):
            seed += 1
            write_image(folder / pattern.format(i), seed)
    for split in ("train", "test"):
        shutil.copytree(folder / split, folder / "data" / split)
    shutil.copy(folder / "train/Benign/b0.jpg", folder / "data/train/malignant/conflict.jpg")
    good = (folder / "train/Benign/b1.jpg").read_bytes()
    (folder / "train/Benign/truncated.jpg").write_bytes(good[: len(good) // 2])
    (folder / "train/benign/empty.jpg").write_bytes(b"")
    (folder / "test/benign/notes.jpg").write_text("not an image\n")
    write_image(folder / "loose.jpg", 99)
    (folder / "README.txt").write_text("rejected: not an image file\n")
    return {
        "images": 17,
        "labels": {"benign": 9, "malignant": 8},
        "source_splits": {"train": 11, "test": 6},
        "duplicates": 18,
        "label_conflicts": 1,
        "rejected": {
            "train/Benign/truncated.jpg",
            "train/benign/empty.jpg",
            "test/benign/notes.jpg",
            "loose.jpg",
            "README.txt",
        },
    }


BREAKHIS_PATIENTS = [
    ("B", "A", "adenosis", "14-22549AB"),
    ("B", "A", "adenosis", "14-22549CD"),  # another slide set of accession 14-22549
    ("B", "F", "fibroadenoma", "14-9133"),
    ("B", "TA", "tubular_adenoma", "14-3411F"),
    ("M", "DC", "ductal_carcinoma", "14-12312"),
    ("M", "LC", "lobular_carcinoma", "14-16196"),
    ("M", "MC", "mucinous_carcinoma", "14-10147"),
]


# The generated tree's Folds.csv: per fold, the patient folders on its test side (the others train). Like the
# dataset's own folds they are repeated splits, not a partition: 14-12312 is tested in three folds, 14-10147 in
# none, and folders 22549AB and 22549CD (one accession) sit on the two sides of folds 1, 3 and 5.
BREAKHIS_TEST_FOLDERS = {1: ("14-22549CD", "14-12312"), 2: ("14-3411F", "14-16196"), 3: ("14-22549CD", "14-16196"),
                         4: ("14-9133", "14-12312"), 5: ("14-22549AB", "14-12312")}


def write_folds_csv(folder: Path, test_folders: dict[int, tuple[str, ...]] = BREAKHIS_TEST_FOLDERS,
                    extra_lines: tuple[str, ...] = ()) -> Path:
    """`folder`/Folds.csv in Kaggle's layout (fold, mag, grp, filename), listing every BreakHis-named image under
    `folder` in every fold, then `extra_lines` as written (rows for absent images, broken rows)."""
    images = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("SOB_*-*.png"))
    lines = ["fold,mag,grp,filename"]
    for fold, tested in test_folders.items():
        for image in images:
            _, year, number, mag, _ = PurePosixPath(image).stem.split("-")  # SOB_B_A-14-22549AB-100-001
            lines.append(f"{fold},{mag},{'test' if f'{year}-{number}' in tested else 'train'},{image}")
    path = folder / "Folds.csv"
    path.write_text("\n".join([*lines, *extra_lines]) + "\n")
    return path


def build_breakhis_tree(folder: Path, per_patient: int = 5, *, stained: bool = False, folds: bool = True) -> dict:
    """BreakHis's layout: <class>/SOB/<subtype>/SOB_<B|M>_<code>_<patient>/<mag>X/SOB_..-<mag>-<n>.png, and the
    download's Folds.csv beside it (write_folds_csv; `folds=False` leaves it out).

    `stained`: H&E-like images (he_image), each patient's slide stained a little differently, for stain
    normalization; else smooth random pictures."""
    seed = 1000
    for number, (cls, code, name, patient) in enumerate(BREAKHIS_PATIENTS):
        label = "benign" if cls == "B" else "malignant"
        for mag in (100, 40) if code == "DC" else (100,):
            base = (
                folder
                / f"BreaKHis_v1/histology_slides/breast/{label}/SOB/{name}/SOB_{cls}_{code}_{patient}/{mag}X"
            )
            for i in range(1, per_patient + 1):
                seed += 1
                path = base / f"SOB_{cls}_{code}-{patient}-{mag}-{i:03d}.png"
                if stained:
                    shade = 1 + 0.15 * number * np.array([1.0, -0.5, 0.8])
                    path.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(he_image(seed, HEMATOXYLIN * shade, EOSIN, 0.8 + 0.2 * number, (46, 70))).save(path)
                else:
                    write_image(path, seed)
    write_image(folder / "BreaKHis_v1/histology_slides/breast/benign/SOB/adenosis/stray.png", 1)
    if folds:
        write_folds_csv(folder)
    return {"images": 8 * per_patient, "patients": 7, "accessions": 6, "rejected": 1 + folds}  # + Folds.csv


def build_lc25000_tree(folder: Path, per_class: int = 4) -> dict:
    """LC25000's layout: lung_colon_image_set/<organ>_image_sets/<class>/<name>.jpeg."""
    classes = {"lung": ["lung_aca", "lung_n", "lung_scc"], "colon": ["colon_aca", "colon_n"]}
    seed = 2000
    for organ, names in classes.items():
        for name in names:
            for i in range(per_class):
                seed += 1
                write_image(folder / f"lung_colon_image_set/{organ}_image_sets/{name}/{name}{i}.jpeg", seed)
    return {"images": 5 * per_class, "labels": sum(classes.values(), [])}


@pytest.fixture
def skin_raw(tmp_project: Path) -> dict:
    return build_skin_tree(tmp_project / "data/raw/skin")


@pytest.fixture
def breakhis_raw(tmp_project: Path) -> dict:
    return build_breakhis_tree(tmp_project / "data/raw/breakhis")


@pytest.fixture
def lc25000_raw(tmp_project: Path) -> dict:
    return build_lc25000_tree(tmp_project / "data/raw/lc25000")


@pytest.fixture
def kaggle_mirror(tmp_path: Path) -> Path:
    """An offline mirror holding the skin and BreakHis slugs, read-only like the shared one."""
    mirror = tmp_path / "mirror"
    build_skin_tree(mirror / "fanconic/skin-cancer-malignant-vs-benign")
    build_breakhis_tree(mirror / "ambarish/breakhis", per_patient=2)
    for path in mirror.rglob("*"):
        if path.is_file():
            path.chmod(0o444)
    return mirror


@pytest.fixture(scope="session")
def e2e(tmp_path_factory):
    """The shared end-to-end project (tests/e2e.py), after one `dvc repro` of the whole pipeline.

    Tests that use it live in tests/test_pipeline_e2e.py (`--dist loadfile` keeps a file on one worker), so the
    project is built once per session. Tests may change its params.yaml only inside `try/finally` blocks that restore it.
    """
    from e2e import make_project

    project = make_project(tmp_path_factory.mktemp("e2e"))
    project.dvc("init", "--no-scm")
    project.dvc("repro")
    return project


# The order xdist deals test files out in (pyproject.toml: --no-loadscope-reorder): the end-to-end file first (the
# longest: it builds while the other worker runs everything else), then the next longest (seconds measured on 2
# cores: 36, 31, 17, 15, 13, 13, 12), then the rest in collection order. A long file dealt last runs alone on one
# worker while the other has nothing left (test_training.py, last by name, did: 216 s against 183 s of tests).
LONGEST_FIRST = ("test_pipeline_e2e.py", "test_training.py", "test_models.py", "test_colab.py", "test_blocks.py",
                 "test_bad_input.py", "test_serve_strain.py", "test_export.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's tests keep their order
