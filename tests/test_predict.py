"""`tlrepro predict` and the package's predict functions on a tiny saved model: every good image labelled, bad
ones listed with reasons, the same probability as a direct forward pass, seen-in-training flags, clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SEEN_SEED, TINY_SIZE, write_image
from PIL import Image

from tlrepro.core import paths
from tlrepro.core.errors import UserError
from tlrepro.data.images import inspect_image
from tlrepro.data.tfdata import load_resized
from tlrepro.modeling import cards
from tlrepro.modeling.predict import Predictor, predict_folder
from tlrepro.studies.base import training_phashes

SIZE = TINY_SIZE


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """JPEG, PNG (a training image of the model), GIF (one in a subfolder), a truncated file, a WebP, a text file."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for name, fmt in (("a.jpg", "JPEG"), ("sub/c.gif", "GIF"), ("sub/deeper/d.JPEG", "JPEG")):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((rng.random((40, 50, 3)) * 255).astype("uint8")).save(path, fmt)
    write_image(root / "b.png", SEEN_SEED)  # a training image of the saved model
    good = (root / "a.jpg").read_bytes()
    (root / "broken.jpg").write_bytes(good[: len(good) // 3])
    Image.new("RGB", (8, 8)).save(root / "e.webp", "WEBP")
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def saved_model(saved_models) -> Path:
    """The shared TinyCNN model (tests/conftest.py): its card lists b.png's picture as a training image."""
    return saved_models / "demo" / "tiny.keras"


def test_predict_folder_labels_every_good_image_and_lists_bad_ones(saved_model, folder, tmp_path):
    out, table, rejected = predict_folder(saved_model, folder, out=tmp_path / "pred.csv", batch_size=3, progress=False)
    assert sorted(table["path"]) == ["a.jpg", "b.png", "sub/c.gif", "sub/deeper/d.JPEG"]
    written = pd.read_csv(out)
    assert list(written.columns) == ["path", "predicted_label", "p_benign", "p_malignant", "threshold",
                                     "seen_in_training", "nearest_training_distance"]
    np.testing.assert_allclose(written["p_benign"] + written["p_malignant"], 1.0, atol=1e-6)
    reasons = dict(zip(rejected["path"], rejected["reason"], strict=True))
    assert set(reasons) == {"broken.jpg", "e.webp"}
    assert "truncated" in reasons["broken.jpg"] and "unsupported image format .webp" in reasons["e.webp"]
    assert pd.read_csv(tmp_path / "pred.rejected.csv")["path"].tolist() == ["broken.jpg", "e.webp"]
    seen = written.set_index("path")
    assert bool(seen.loc["b.png", "seen_in_training"]) and seen.loc["b.png", "nearest_training_distance"] == 0
    assert not seen.loc["a.jpg", "seen_in_training"]


def test_the_same_image_gets_the_same_probability_as_a_direct_forward_pass(saved_model, folder):
    predictor = Predictor.load(saved_model)
    files = [folder / "a.jpg", folder / "sub/c.gif"]
    table, _ = predictor.predict_paths(files, batch_size=1, progress=False)
    direct = predictor.model.predict(np.stack([load_resized(str(f), SIZE) for f in files]).astype("float32"),
                                     verbose=0).ravel()
    np.testing.assert_allclose(table["p_malignant"], direct, atol=1e-6)
    from_bytes, _ = predictor.predict_bytes([f.read_bytes() for f in files])
    np.testing.assert_allclose(from_bytes["p_malignant"], direct, atol=1e-6)
    arrays = predictor.predict_arrays([np.asarray(Image.open(f).convert("RGB")) for f in files])
    np.testing.assert_allclose(arrays["p_malignant"], direct, atol=1e-6)
    _, bad = predictor.predict_bytes([b"", b"GIF89a junk"])
    assert bad["reason"].tolist()[0] == "empty file (0 bytes)" and bad["reason"].tolist()[1].startswith(("cannot", "not"))


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TLREPRO_")}
    return subprocess.run([sys.executable, "-m", "tlrepro", "predict", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_exits_0_and_writes_the_table(saved_model, folder, tmp_path):
    result = run_cli(str(saved_model), str(folder), "--out", str(tmp_path / "p.csv"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "labelled 4 image(s)" in result.stdout and "2 file(s) could not be used" in result.stdout
    assert len(pd.read_csv(tmp_path / "p.csv")) == 4


def test_cli_errors_are_one_line(saved_model, folder, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    no_card = tmp_path / "nocard.keras"
    no_card.write_bytes(saved_model.read_bytes())
    mismatch = tmp_path / "m" / "tiny.keras"
    mismatch.parent.mkdir()
    mismatch.write_bytes(saved_model.read_bytes() + b"changed")
    card = json.loads(paths.card_of(saved_model).read_text())
    paths.card_of(mismatch).write_text(json.dumps(card))
    future = tmp_path / "f" / "tiny.keras"
    future.parent.mkdir()
    future.write_bytes(saved_model.read_bytes())
    paths.card_of(future).write_text(json.dumps({**card, "before_model": [{"step": "vahadane_normalization"}]}))
    for args, expected in (((str(saved_model), str(empty)), "holds no image"),
                           ((str(saved_model), str(tmp_path / "missing")), "is not a folder"),
                           ((str(tmp_path / "missing.keras"), str(folder)), "not found"),
                           ((str(no_card), str(folder)), "has no model card"),
                           ((str(mismatch), str(folder)), "does not match"),
                           ((str(future), str(folder)), "`vahadane_normalization` before the model, a step this version of tlrepro does not know"),
                           (("nostudy/norow", str(folder)), "No saved model `nostudy/norow`")):
        result = run_cli(*args, cwd=tmp_path)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and expected in lines[0] and "Traceback" not in result.stderr, result.stderr


def test_names_resolve_to_saved_models(saved_model):
    base = saved_model.parent.parent
    assert cards.resolve("demo/tiny", base) == saved_model
    with pytest.raises(UserError, match="known: .*demo/tiny"):
        cards.resolve("demo/other", base)


def hashed(*files: Path) -> pd.DataFrame:
    """Rows as a split file holds them (path, view, dihedral hashes) for image files."""
    return pd.DataFrame({"path": [str(f) for f in files], "view": "identity",
                         "dihedral_phashes": [inspect_image(f).dihedral_phashes for f in files]})


def test_seen_matches_rotations_and_validation_and_pretraining_images(tmp_project, saved_model, folder, tmp_path):
    """As the split audit: a rotated training image is seen (canonical hash); so are the validation images (they
    chose the epoch) and an init_from model's pretraining images (from its card); each with the nearest distance."""
    pretrained = paths.pretrained_model("entry")
    pretrained.parent.mkdir(parents=True)
    pretrained.write_bytes(saved_model.read_bytes())
    card = json.loads(paths.card_of(saved_model).read_text())
    pretraining = hashed(folder / "sub/deeper/d.JPEG")  # as transfer.pretrain writes its card
    paths.card_of(pretrained).write_text(json.dumps({**card, "training_phashes": training_phashes(pretraining),
                                                     **cards.seen_fields(pretraining, hashed())}))
    train, val = hashed(folder / "sub/c.gif"), hashed(folder / "a.jpg")
    fields = cards.seen_fields(train, val, "entry")
    assert fields["validation_phashes"] == [inspect_image(folder / "a.jpg").phash]
    assert fields["pretraining_phashes"] == [inspect_image(folder / "sub/deeper/d.JPEG").phash]
    model = tmp_path / "m" / "seen.keras"
    model.parent.mkdir()
    model.write_bytes(saved_model.read_bytes())
    paths.card_of(model).write_text(json.dumps({**card, "training_phashes": [inspect_image(folder / "sub/c.gif").phash],
                                                **fields}))
    queries = tmp_path / "queries"
    queries.mkdir()
    Image.open(folder / "sub/c.gif").convert("RGB").transpose(Image.Transpose.ROTATE_90).save(queries / "c_rot90.png")
    Image.open(folder / "sub/c.gif").convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(queries / "c_flip.png")
    for name in ("a.jpg", "sub/deeper/d.JPEG"):
        (queries / Path(name).name).write_bytes((folder / name).read_bytes())
    Image.fromarray((np.random.default_rng(9).random((40, 50, 3)) * 255).astype("uint8")).save(queries / "new.png")
    _, table, _ = predict_folder(model, queries, out=tmp_path / "p.csv", progress=False)
    seen = table.set_index("path")
    assert seen["seen_in_training"].to_dict() == {"a.jpg": True, "c_flip.png": True, "c_rot90.png": True,
                                                  "d.JPEG": True, "new.png": False}
    assert seen.loc["a.jpg", "nearest_training_distance"] == 0 and seen.loc["d.JPEG", "nearest_training_distance"] == 0
    assert seen.loc["c_rot90.png", "nearest_training_distance"] <= 4 < seen.loc["new.png", "nearest_training_distance"]
