"""A wang2024-style model (trained on Macenko-normalized images) outside the pipeline: its card records the
stain normalizer with its fitted reference, and `tlrepro predict`, `tlrepro serve` and the notebook's path
(the derived stain-normalized PNG, read by load_resized) give the same probability for the same raw image.
A card naming a step this code does not know is refused with one line."""

from __future__ import annotations

import json

import pytest
from conftest import build_breakhis_tree
from fastapi.testclient import TestClient
from PIL import Image

from tlrepro.core import paths
from tlrepro.core.config import RowSettings, Serve, resolve_row
from tlrepro.core.errors import UserError
from tlrepro.data import derive
from tlrepro.data.index import prepare_dataset
from tlrepro.data.labels import BINARY_CLASSES
from tlrepro.data.tfdata import load_resized
from tlrepro.modeling import cards, models
from tlrepro.modeling.predict import Predictor
from tlrepro.serve.app import create_app
from tlrepro.studies.base import training_phashes

SIZE = 32
NAME = "wang2024/honest/DenseNet"


def test_a_stain_normalized_model_predicts_alike_through_predict_serve_and_the_notebook(tmp_project, tmp_path):
    build_breakhis_tree(tmp_project / "data/raw/breakhis", per_patient=5, stained=True)
    prepare_dataset("breakhis")
    derived = derive.derive_dataset("breakhis_stain")  # what derive@breakhis_stain writes
    steps = derive.input_steps("breakhis_stain")  # what card_for records
    assert [s["step"] for s in steps] == ["stain_normalization"] and steps[0]["method"] == "macenko"
    assert set(steps[0]["fitted"]) == {"HERef", "maxCRef"} and steps[0]["reference"].startswith("SOB_M_DC")

    row = resolve_row("DenseNet", RowSettings(), RowSettings(
        backbone="TinyDenseNet", weights="random", image_size=SIZE, batch_size=4, learning_rate=1e-2, epochs=1,
        head=[{"pool": "avg"}, {"dense": 1, "activation": "sigmoid"}]))
    classifier = models.build_classifier(row, classes=BINARY_CLASSES, seed=0)
    dense = classifier.head.layers[-1]
    kernel, bias = dense.get_weights()
    dense.set_weights([kernel * 50, bias])  # a sharp head, so colours move the probability visibly
    training = derived[derived["label"] == "malignant"].head(3)
    model_path = paths.MODELS / f"{NAME}.keras"
    cards.save(classifier.model, model_path, {
        "name": NAME, "study": "wang2024", "row": "DenseNet", "image_size": SIZE, "classes": list(BINARY_CLASSES),
        "threshold": 0.5, "phash_max_distance": 4, "before_model": json.loads(json.dumps(steps)),
        "training_phashes": training_phashes(training), **cards.seen_fields(training, training.iloc[:0])})

    query = derived[derived["label"] == "benign"].iloc[0]  # a raw BreakHis image and its derived PNG
    raw = paths.PROJECT_ROOT / query["source_path"]
    notebook = float(classifier.model.predict(load_resized(query["path"], SIZE)[None].astype("float32"),
                                              verbose=0)[0, 0])
    raw_colours = float(classifier.model.predict(load_resized(str(raw), SIZE)[None].astype("float32"),
                                                 verbose=0)[0, 0])
    assert abs(raw_colours - notebook) > 1e-3  # fed raw colours, the model would answer differently

    predictor = Predictor.load(model_path)
    table, rejected = predictor.predict_paths([raw], progress=False)
    assert rejected.empty and abs(table["p_malignant"].iloc[0] - notebook) <= 1e-5
    assert not table["seen_in_training"].iloc[0]

    app = create_app(paths.MODELS, params=Serve(default_model=NAME), reports_dir=tmp_path)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        answer = client.post("/v1/predict", files={"file": ("query.png", raw.read_bytes(), "image/png")})
        assert answer.status_code == 200, answer.text
        assert abs(answer.json()["probabilities"]["malignant"] - notebook) <= 1e-5
        # a raw training image is recognised through its stain-normalized hash, also rotated
        seen = paths.PROJECT_ROOT / training.iloc[0]["source_path"]
        rotated = tmp_path / "rotated.png"
        Image.open(seen).rotate(90, expand=True).save(rotated)
        for image in (seen, rotated):
            body = client.post("/v1/predict", files={"file": ("x.png", image.read_bytes(), "image/png")}).json()
            assert body["seen_in_training"] and body["nearest_training_distance"] <= 4, (image.name, body)
    table, _ = predictor.predict_paths([seen, rotated], progress=False)
    assert table["seen_in_training"].all()


def test_a_card_naming_an_unknown_step_before_the_model_is_refused(tmp_path):
    row = resolve_row("tiny", RowSettings(), RowSettings(
        backbone="TinyCNN", weights="random", image_size=SIZE, batch_size=4, learning_rate=1e-3, epochs=1,
        head=[{"pool": "avg"}, {"dense": 1, "activation": "sigmoid"}]))
    classifier = models.build_classifier(row, classes=BINARY_CLASSES, seed=0)
    base = tmp_path / "models"
    common = {"image_size": SIZE, "classes": list(BINARY_CLASSES), "threshold": 0.5, "training_phashes": []}
    cards.save(classifier.model, base / "demo" / "future.keras",
               {**common, "name": "demo/future", "before_model": [{"step": "vahadane_normalization"}]})
    cards.save(classifier.model, base / "demo" / "plain.keras", {**common, "name": "demo/plain"})
    with pytest.raises(UserError) as refused:
        Predictor.load(base / "demo" / "future.keras")
    message = str(refused.value)
    assert "`vahadane_normalization`" in message and "does not know" in message and "\n" not in message
    registry = create_app(base, params=Serve(default_model="demo/plain"), reports_dir=tmp_path).state.registry
    assert list(registry.entries) == ["demo/plain"] and "does not know" in registry.skipped["demo/future"]
