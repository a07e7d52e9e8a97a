"""The study runner (tlrepro.studies.base) and the pretraining step (tlrepro.studies.transfer) in-process, at
tiny scale: a cross-validated protocol trains one model per fold and pools every image once, only a whole-split
protocol's model is saved with its card, the figures resample patients; pretraining splits LC25000 by dihedral
cluster and its card keeps the curve and the epoch it kept. TinyCNN / TinyDenseNet, 32 px, one or two epochs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from conftest import build_breakhis_tree, build_lc25000_tree

from tlrepro.core import paths
from tlrepro.data.index import prepare_dataset
from tlrepro.data.splits import write_study_split
from tlrepro.studies import base, transfer
from tlrepro.studies.outputs import headline, results_details


def edit_params(project, edit) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    edit(params)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def tiny_kumar(params: dict) -> None:
    kumar = params["studies"]["kumar2022"]
    kumar["protocols"]["patient"]["k"] = 3
    kumar["protocols"].pop("official")  # the dataset's folds: five more trainings (tests/test_official_folds.py)
    kumar["defaults"].update(image_size=32, weights="random", batch_size=8, epochs=2)
    kumar["rows"] = {"VGG16": {**kumar["rows"]["VGG16"], "backbone": "TinyCNN"}}
    kumar["repeats"] = 1  # params.yaml's head seeds: tests/test_significance.py runs them
    params["evaluation"]["bootstrap_resamples"] = 100


@pytest.fixture
def kumar(tmp_project):
    build_breakhis_tree(paths.raw_dir("breakhis"), per_patient=3)
    edit_params(tmp_project, tiny_kumar)
    prepare_dataset("breakhis")
    write_study_split("kumar2022")
    return base.load_study("kumar2022")


def test_a_cross_validation_pools_every_image_once_and_saves_only_whole_split_models(kumar, monkeypatch):
    assert [u.fold for u in kumar.units("patient")] == ["1", "2", "3"] and kumar.units("image") == [base.Unit()]
    built = []
    monkeypatch.setattr(base, "build", lambda *a, build=base.build: built.append(build(*a)) or built[-1])
    results = base.run_rows(kumar)
    # the split's model is kept (saved); folds 2 and 3 train fold 1's classifier again (base.Recycler), exactly as
    # a new one: the same probabilities as a classifier built for fold 3 alone
    assert len(built) == 2
    alone = base.run_row(kumar, "VGG16", protocol="patient", unit=kumar.units("patient")[2], evaluate=False)
    assert np.array_equal(alone.probs, results[("patient", "VGG16")].folds[2].probs)
    image, patient = results[("image", "VGG16")], results[("patient", "VGG16")]
    tested = kumar.part("test", "patient")
    assert len(patient.folds) == 3 and patient.model_path is None and patient.classifier is not None
    assert sorted(patient.frame["path"]) == sorted(tested["path"]) and patient.frame["path"].is_unique
    assert len(patient.probs) == len(patient.frame) and patient.extra["fold_spread"]["accuracy"]["folds"] >= 2
    assert [f.classifier is None for f in patient.folds] == [True, True, False]  # finished folds let go
    # every unit trained on its own fold: no test accession of a fold among that fold's training images
    for fold in patient.folds:
        train = kumar.part("train", "patient", fold.unit)
        assert not set(train["group"]) & set(fold.frame["group"])
    # six accessions: figures resample them, and are too few for an interval
    assert patient.metrics["ci_unit"] == "patient" and patient.metrics["patients"] == 6
    assert patient.metrics["accuracy_ci_low"] is None and "too few patients" in patient.metrics["ci_note"]
    assert image.model_path is not None and image.model_path.name == "VGG16.keras"
    card = json.loads(paths.card_of(image.model_path).read_text())
    assert card["protocol"] == "image" and card["metrics"]["accuracy"] == image.metrics["accuracy"]
    details = results_details(kumar, results)
    assert len(details["patient/VGG16"]["units"]) == 3 and details["patient/VGG16"]["model"] is None
    assert headline(patient.metrics)["patient_accuracy"] == patient.metrics["patient_accuracy"]


@pytest.mark.extended  # a DenseNet-SE pretraining of its own, about 30 s (the e2e pipeline runs the stage too): CI runs it
def test_pretraining_splits_lc25000_by_dihedral_cluster_and_keeps_its_curve(tmp_project):
    build_lc25000_tree(paths.raw_dir("lc25000"), per_class=8)

    def tiny(params: dict) -> None:
        params["pretraining"]["densenet_se_lc25000_lung"]["model"].update(
            image_size=32, weights="random", batch_size=8, learning_rate=1e-3, max_epochs=2)
        params["evaluation"]["bootstrap_resamples"] = 100

    edit_params(tmp_project, tiny)
    prepare_dataset("lc25000")
    path = transfer.pretrain("densenet_se_lc25000_lung")
    card = json.loads(paths.card_of(path).read_text())
    assert card["data"]["split"] == "grouped by dihedral_cluster" and card["classes"] == ["lung_aca", "lung_n", "lung_scc"]
    assert card["data"]["sides"]["train"] + card["data"]["sides"]["val"] == 24
    history = card["training"]["history"]
    assert len(history["epoch"]) == card["training"]["epochs_run"] <= 2
    assert 1 <= card["training"]["best_epoch"] <= card["training"]["epochs_run"]
    assert 0 <= card["metrics"]["accuracy"] <= 1 and card["weights"]["source"] == "random"
    assert np.isfinite(history["val_accuracy"]).all()
