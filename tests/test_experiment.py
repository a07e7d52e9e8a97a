"""What a study notebook shows before its results (tlrepro.reports.experiment): every row's built model with
trainable and frozen parameters, its compile settings and schedule as the row runner applies them, and one
row's training as Keras code that runs when pasted into the notebook."""

from __future__ import annotations

import keras
import pytest
from conftest import build_breakhis_tree
from test_studies import edit_params, tiny_kumar

from tlrepro.core import paths
from tlrepro.data.index import prepare_dataset
from tlrepro.data.splits import write_study_split
from tlrepro.modeling import models
from tlrepro.reports import experiment
from tlrepro.studies import base


@pytest.fixture
def kumar(tmp_project):
    build_breakhis_tree(paths.raw_dir("breakhis"), per_patient=3)

    def two_rows(params: dict) -> None:
        tiny_kumar(params)
        kumar = params["studies"]["kumar2022"]
        kumar["rows"]["Tuned"] = {**kumar["rows"]["VGG16"], "trainable_layers": 2, "optimizer": "sgd",
                                  "momentum": 0.9, "learning_rate": 0.01,
                                  "early_stopping": {"monitor": "val_loss", "patience": 4}}
        kumar["defaults"]["augmentation_views"] = None

    edit_params(tmp_project, two_rows)
    prepare_dataset("breakhis")
    write_study_split("kumar2022")
    return base.load_study("kumar2022")


def test_every_row_is_shown_as_built_with_its_compile_settings(kumar, capsys):
    shown = experiment.show_models(kumar).set_index("row")
    for row in kumar.rows:
        built = base.build(kumar, row, seed=kumar.seed).model
        assert shown.loc[row.name, "trainable"] == models.trainable_count(built)
        assert shown.loc[row.name, "frozen"] == models.parameter_count(built) - models.trainable_count(built) > 0
    assert shown.loc["VGG16", "optimizer"] == "keras.optimizers.Adam(learning_rate=0.001)"
    assert shown.loc["Tuned", "optimizer"] == "keras.optimizers.SGD(learning_rate=0.01, momentum=0.9)"
    assert shown.loc["Tuned", "trainable"] > shown.loc["VGG16", "trainable"]  # two backbone layers train
    assert "EarlyStopping(monitor='val_loss', patience=4" in shown.loc["Tuned", "callbacks"]
    assert shown.loc["VGG16", "loss"] == "binary_crossentropy" and shown.loc["VGG16", "epochs"] == "2"
    layers = experiment.layer_table(base.build(kumar, kumar.row("VGG16"), seed=kumar.seed).model).set_index("layer")
    backbone = next(name for name in layers.index if name not in ("image", "augmentation", "preprocessing", "head"))
    assert layers.loc[backbone, "trained"] == "0" and layers.loc["head", "frozen"] == "0"  # frozen backbone, head trains


def test_the_printed_training_code_runs_as_pasted(kumar):
    code = experiment.training_code(kumar, kumar.row("Tuned"))
    assert "keras.optimizers.SGD(learning_rate=0.01, momentum=0.9)" in code and "epochs=2" in code
    namespace = {"run": kumar}
    exec(compile(code, "<notebook cell>", "exec"), namespace)  # what a reader gets by pasting it
    history, model = namespace["history"], namespace["model"]
    assert isinstance(model, keras.Model) and len(history.history["loss"]) <= 2
    assert isinstance(model.optimizer, keras.optimizers.SGD) and "val_accuracy" in history.history
