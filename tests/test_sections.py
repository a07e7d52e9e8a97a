"""What a study report prints: every no-verdict reason and the unmeasured figures in its notes, times and
counts formatted by the one number formatter, and random initialisation reaching rows through `init_from`."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pandas as pd
import pytest
from IPython.display import Markdown

from tlrepro.core import config, paths
from tlrepro.reports import sections
from tlrepro.results import compare
from tlrepro.studies.base import Study


@pytest.fixture
def shown(monkeypatch) -> list:
    """Everything the sections display, in order."""
    out: list = []
    monkeypatch.setattr(sections, "display", out.append)
    return out


def markdown(shown: list) -> str:
    return "\n".join(item.data for item in shown if isinstance(item, Markdown))


def test_the_report_notes_give_every_reason_and_name_the_unmeasured_figures(shown):
    prov = {"study": "sarker2025", "dataset": "skin", "source_dataset": "skin", "paper_dataset": None,
            "random_init": [], "capped_epochs": {}, "max_images_per_class": None, "images": 1099,
            "published_images": 3297, "evaluated_on": "val", "seed_kind": "training seeds",
            "validation_chose": {"MobileNetV2": ["early-stopping epoch (val_accuracy)"]}}
    study = SimpleNamespace(id="sarker2025", provenance=lambda: prov, settings=SimpleNamespace(evaluate_on="val"),
                            protocols=["source"],
                            params=SimpleNamespace(evaluation=SimpleNamespace(confidence=0.95)))
    ours = {"MobileNetV2": {"accuracy": 0.81, "accuracy_ci_low": 0.77, "accuracy_ci_high": 0.85, "layers": 158}}
    full = sections.paper_vs_ours(study, ours)
    notes = markdown(shown)
    for text in ("the paper does not name its dataset", "run on a subset of the data (1,099 of the published 3,297",
                 "measured on the validation images that chose its early-stopping epoch",
                 "the paper's figure was measured on the images that chose", "ours 158 vs paper 158 (+0)"):
        assert text in notes, text
    assert compare.unmeasured_notes(full[full["ours"].isna()])[0] in notes  # one sentence, built in one place
    # a one-protocol study's take-away, from its figures beside the paper's
    assert ("**Take-away:** MobileNetV2, the paper's best of 1 models" not in notes
            and "**Take-away:** MobileNetV2 scores accuracy 0.810 [0.770, 0.850] against the paper's 0.800, with no "
                "verdict: the paper does not name its dataset" in notes)
    caption = shown[0].caption
    assert "on the validation side" in caption
    table = shown[0].to_html()
    assert ">+0<" in table and ">0.0000<" not in table  # 158 layers vs 158: a count's difference is a count


def test_tables_print_times_with_their_unit_and_counts_as_counts():
    frame = pd.DataFrame({"row": ["a", "b"], "training s": [1.9, 123.4], "s per epoch": [0.1, 0.25],
                          "training min (paper, GPU)": [1237, None], "layers": [158.0, 2.0], "accuracy": [0.8, 0.75]})
    html = sections.table(frame).to_html()
    for text in (">1.9 s<", ">123 s<", ">0.10 s<", ">0.25 s<", ">1,237 min<", ">158<", ">0.8000<"):
        assert text in html, text
    assert "1.9000" not in html and "0.1000" not in html and "158.0000" not in html


def test_random_initialisation_of_a_pretraining_entry_reaches_the_rows_that_start_from_it(tmp_project):
    """The study reads where an `init_from` row started from the pretrained model's card (the model is the
    stage's dependency; the pretraining settings are not)."""
    card = paths.card_of(paths.pretrained_model("densenet_se_lc25000_lung"))
    card.parent.mkdir(parents=True)
    params = config.load_params()
    study = Study("wang2024", params, params.study("wang2024"), pd.DataFrame(), ("benign", "malignant"))
    card.write_text(json.dumps({"weights": {"source": "random", "note": "random initialisation"}}))
    assert study.random_init() == ["DenseNet-SE-transfer"]
    assert study.random_init_via() == {"DenseNet-SE-transfer": "densenet_se_lc25000_lung"}
    weights = study.initial_weights(study.row("DenseNet-SE-transfer"))
    assert weights["source"] == "random" and weights["init_from"] == "densenet_se_lc25000_lung"
    assert "DenseNet-SE-transfer through `densenet_se_lc25000_lung`" in compare.random_init_banner(
        study.random_init(), study.random_init_via())
    card.write_text(json.dumps({"weights": {"source": "imagenet", "file": "densenet121.h5"}}))
    assert study.random_init() == []


@pytest.mark.parametrize(("low", "said", "not_said"), [
    (None, "without intervals", "by more than its interval"),
    (0.90, "by more than its interval allows", "without intervals"),
    (0.70, "not all of them clear of their intervals", "by more than its interval"),
])
def test_above_the_paper_claims_only_what_its_interval_carries(monkeypatch, low, said, not_said):
    from tlrepro.reports import protocols

    comparison = pd.DataFrame({"row": ["VGG16", "VGG16"], "metric": ["accuracy", "loss"], "paper": [0.80, 0.3],
                               "ours": [0.95, 0.1], "ci_low": [low, None], "ci_high": [0.99 if low else None, None]})
    notes: list[str] = []
    monkeypatch.setattr(protocols, "note", notes.append)
    protocols.above_paper(comparison)
    assert len(notes) == 1 and "VGG16, accuracy: ours 0.950, the paper's 0.800" in notes[0]
    assert said in notes[0] and not_said not in notes[0]
    assert "loss" not in notes[0]  # a loss below the paper's is not "above" it


def test_one_magnification_is_listed_once_not_beside_an_identical_all(shown, monkeypatch):
    from tlrepro.results import metrics

    frame = pd.DataFrame({"magnification": ["100"] * 20, "group": [f"p{i % 10}" for i in range(20)],
                          "label": ["benign", "malignant"] * 10})
    result = SimpleNamespace(probs=[0.1, 0.9] * 10, metrics={"threshold": 0.5}, frame=frame)
    study = SimpleNamespace(unit="patient", seed=1, random_init=lambda: [],
                            labels=lambda f: (f["label"] == "malignant").astype(int).to_numpy(),
                            params=SimpleNamespace(evaluation=SimpleNamespace(bootstrap_resamples=50, confidence=0.95)))
    monkeypatch.setattr(metrics, "MIN_GROUPS", 10)
    out = sections.accuracy_by_group(study, {("image", "VGG16"): result})
    assert set(out["subset"]) == {"all", "100"}  # the figures keep both (paper keys read the magnification)
    listed = shown[-1].to_html()
    assert ">all<" not in listed and ">100<" in listed and ">1.000" in listed
    assert "The data hold one magnification (100)" in markdown(shown)
