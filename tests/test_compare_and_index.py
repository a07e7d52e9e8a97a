"""paper_figures.yaml, the paper-vs-ours comparison and its notes, and reports/index.html from fake outputs."""

from __future__ import annotations

import json
import math

import pytest

from tlrepro.core import fileio, paths
from tlrepro.core.errors import UserError
from tlrepro.reports import index as report
from tlrepro.results import compare as papers


def test_all_five_studies_transcribed():
    assert papers.studies() == ["lin2024", "mobilenet2025", "sarker2025", "kumar2022", "wang2024"]
    for study in papers.studies():
        entry = papers.load(study)
        for key in ("title", "first_author", "year", "data", "source", "rows", "headline"):
            assert entry[key], (study, key)
        if entry["dataset"] is None:  # the paper names no dataset: what it describes instead
            assert entry["dataset_described"], study
        else:
            assert entry["dataset_info"]["citation"]
    assert papers.load("sarker2025")["dataset"] is None  # its figures are not `skin` figures
    assert {"skin", "melanoma", "breakhis", "lc25000"} <= set(papers.datasets())
    assert "Spanhol" in papers.datasets()["breakhis"]["citation"]
    assert "Borkowski" in papers.datasets()["lc25000"]["citation"]


def test_reported_tables():
    lin = papers.reported("lin2024")
    assert list(lin.index) == ["MobileNetV2", "ResNet50V2", "EfficientNetV2B0", "VGG16"]
    assert lin.loc["MobileNetV2", "accuracy"] == 0.8394 and lin.loc["VGG16", "roc_auc"] == 0.9497
    assert lin.loc["VGG16", "best_epochs"] == 40 and lin.loc["ResNet50V2", "val_accuracy_range"] == [0.5465, 0.8159]
    mob = papers.reported("mobilenet2025")
    assert list(mob.index) == ["frozen", "finetune", "augmented"]
    assert mob.loc["augmented", "recall"] == 0.8315 and mob.loc["finetune", "training_time_s"] == 898.5
    assert papers.reported("wang2024").loc["DenseNet-SE-transfer", "patient_accuracy_100x"] == 0.843
    assert papers.reported("kumar2022").loc["MobileNetV3", "accuracy"] == pytest.approx(0.8115, abs=1e-4)
    assert papers.reported("sarker2025").loc["MobileNetV2", "parameters"] == 2264385
    assert papers.reported("sarker2025").loc["prediction_folder", "accuracy"] == 0.70  # b26-b30, m26-m30: 7 of 10
    with pytest.raises(UserError, match="lin2024"):
        papers.load("lin2023")


def test_compare_values():
    ours = {"MobileNetV2": {"accuracy": 0.85, "accuracy_ci_low": 0.82, "accuracy_ci_high": 0.88,
                            "recall": 0.80, "recall_ci_low": 0.75, "recall_ci_high": 0.85, "f1": 0.8}}
    frame = papers.compare("lin2024", ours, metrics=["accuracy", "recall", "f1"])
    assert list(frame.columns) == papers.COMPARE_COLUMNS
    assert len(frame) == 12  # 4 paper rows x 3 metrics, ours missing for 3 rows
    acc = frame[(frame["row"] == "MobileNetV2") & (frame["metric"] == "accuracy")].iloc[0]
    assert acc["paper"] == 0.8394 and acc["ours"] == 0.85
    assert acc["difference"] == pytest.approx(0.0106) and acc["paper_within_ci"] is True
    rec = frame[(frame["row"] == "MobileNetV2") & (frame["metric"] == "recall")].iloc[0]
    assert rec["difference"] == pytest.approx(-0.07) and rec["paper_within_ci"] is False
    f1 = frame[(frame["row"] == "MobileNetV2") & (frame["metric"] == "f1")].iloc[0]
    assert f1["paper_within_ci"] is None and math.isnan(f1["ci_low"])
    vgg = frame[frame["row"] == "VGG16"].iloc[0]
    assert math.isnan(vgg["ours"]) and vgg["paper_within_ci"] is None
    headline = papers.compare("lin2024", ours)
    assert set(headline["metric"]) == {"accuracy", "precision", "recall", "f1", "roc_auc"}


PROVENANCE = {"dataset": "skin", "source_dataset": "skin", "paper_dataset": "skin", "random_init": [],
              "capped_epochs": {}, "max_images_per_class": None}


def test_notes_never_claim_a_real_difference_and_give_no_verdict_when_unlike():
    ours = {"MobileNetV2": {"accuracy": 0.70, "accuracy_ci_low": 0.65, "accuracy_ci_high": 0.75},
            "VGG16": {"accuracy": 0.85, "accuracy_ci_low": 0.80, "accuracy_ci_high": 0.90}}
    frame = papers.compare("lin2024", ours, metrics=["accuracy"])
    notes = papers.difference_notes(frame, PROVENANCE, 0.95)
    assert not any("real" in n for n in notes)
    mobile = next(n for n in notes if n.startswith("MobileNetV2"))
    assert "outside our 95% interval" in mobile and "not the paper's own sampling error" in mobile
    vgg = next(n for n in notes if n.startswith("VGG16"))
    assert "inside our 95% interval" in vgg
    for changes, reason in (({"random_init": ["VGG16"]}, "random initialisation"),
                            ({"dataset": "melanoma", "source_dataset": "melanoma"}, "not the paper's"),
                            ({"capped_epochs": {"VGG16": {"ours": 2, "paper": 40}}}, "capped at 2 of 40"),
                            ({"max_images_per_class": 20}, "quick pass")):
        vgg = next(n for n in papers.difference_notes(frame, {**PROVENANCE, **changes}, 0.95) if n.startswith("VGG16"))
        assert "No verdict" in vgg and reason in vgg and "inside" not in vgg, (changes, vgg)


def test_deviations_list_the_studys_own_and_the_runs():
    listed = papers.deviations("lin2024", {**PROVENANCE, "images": 1099, "published_images": 3297,
                                           "random_init": ["ResNet50V2"], "max_images_per_class": 20})
    whats = [d["what"] for d in listed]
    assert "Cell selection" in whats and "Data" in whats and "ResNet50V2 weights" in whats
    assert all(d["reason"] for d in listed)
    assert all(papers.load(s).get("deviations") for s in papers.studies())


def fake_outputs(study: str, rows: dict, dataset: str, random_init: list[str], **provenance) -> None:
    fileio.write_json(paths.metrics_json(study), {"study": study, "dataset": dataset, "random_init": random_init,
                                              "results": rows})
    prov = {**PROVENANCE, "dataset": dataset, "source_dataset": dataset, "paper_dataset": papers.load(study)["dataset"],
            "random_init": random_init, "images": 1099, "published_images": 3297, "primary_protocol": "source",
            "sides": {"source": {"train": 703, "val": 176, "test": 220}},
            "weights": {r: {"source": "random"} if r in random_init else
                        {"source": "imagenet", "file": "w.h5", "sha256": "ab" * 32, "from": "IMAGENET_WEIGHTS_DIR"}
                        for r in rows}, **provenance}
    fileio.write_json(paths.details_json(study), {"study": study, "provenance": prov,
                                              "results": {r: {"seeds": {"accuracy": {"mean": 0.84, "std": 0.01,
                                                                                     "seeds": 5}}} for r in rows}})


def test_write_index_two_studies(tmp_project):
    fake_outputs("lin2024", {"VGG16": {"accuracy": 0.8612, "accuracy_ci_low": 0.83, "accuracy_ci_high": 0.89,
                                       "roc_auc": 0.93, "f1": 0.85}}, "skin", [])
    fake_outputs("mobilenet2025", {"frozen": {"accuracy": 0.7, "accuracy_ci_low": 0.6, "accuracy_ci_high": 0.8,
                                              "f1": 0.55}}, "skin", ["frozen"])
    fileio.write_json(paths.overlap_json(), {"phash_max_distance": 4, "datasets": {"skin": 10, "melanoma": 20},
                                         "matrix": {"skin": {"skin": {"images": 10, "exact": 10, "near": 10},
                                                             "melanoma": {"images": 10, "exact": 0, "near": 7}},
                                                    "melanoma": {"skin": {"images": 20, "exact": 0, "near": 7},
                                                                 "melanoma": {"images": 20, "exact": 20, "near": 20}}}})
    fileio.write_text(paths.REPORTS / "lin2024.html", "<html></html>")
    out = report.write_index()
    assert out == tmp_project / "reports" / "index.html"
    html = out.read_text()
    for text in ("lin2024", "mobilenet2025", "0.861 [0.830, 0.890]", "0.8470", "+0.0142", "0.840 ± 0.010 (n=5)",
                 'href="lin2024.html"', "Spanhol", "Transfer Learning with Convolutional", "data:image/png;base64,",
                 "0 exact / 7 near", "a subset", "IMAGENET_WEIGHTS_DIR", "sha256 <code>abababab"):
        assert text in html, text
    assert html.count('class="warning"') == 1 and "frozen trained WITHOUT ImageNet" in html
    assert "not the paper" in html  # mobilenet2025 ran on skin, not melanoma
    assert " real " not in html and "real difference" not in html
    for study in ("sarker2025", "kumar2022", "wang2024"):
        assert f"dvc repro study@{study}" in html
    assert "<script" not in html
    assert report.write_index().read_text() == html  # stable bytes for DVC


def test_bad_metrics_json_names_file(tmp_project):
    fileio.write_text(paths.metrics_json("kumar2022"), "{not json")
    with pytest.raises(UserError, match="reports/metrics/kumar2022.json"):
        report.write_index()
    fileio.write_text(paths.metrics_json("kumar2022"), json.dumps({"study": "kumar2022"}))
    with pytest.raises(UserError, match="results"):
        report.write_index()


def test_index_uses_the_reports_own_comparison_per_protocol():
    """wang2024's figures per magnification are not headline metrics: the index takes the comparison the report
    stored for the primary protocol, sets measured figures beside the paper's, and names the unmeasured ones once."""
    measured = {"row": "DenseNet", "metric": "image_accuracy_100x", "paper": 0.775, "ours": 0.6, "ci_low": 0.35,
                "ci_high": 0.8, "difference": -0.175, "paper_within_ci": True, "seed_mean": None, "seed_std": None,
                "seeds": None}
    absent = {**measured, "metric": "image_accuracy_40x", "paper": 0.725, "ours": None, "ci_low": None,
              "ci_high": None, "difference": None, "paper_within_ci": None}
    other = {**measured, "ours": 0.99}
    details = {"provenance": {"primary_protocol": "honest", "dataset": "breakhis_stain", "random_init": []},
               "comparison": {"paper": [other], "honest": [measured, absent]}}
    metrics = {"study": "wang2024", "dataset": "breakhis_stain", "random_init": [],
               "results": {"honest/DenseNet": {"accuracy": 0.6}}}
    section = report.section("wang2024", metrics, details)
    assert [(line["metric"], line["ours"]) for line in section["lines"]] == [
        ("image accuracy 100x", "0.600 [0.350, 0.800]")]
    assert len(section["frame"]) == 1
    assert [n for n in section["notes"] if n.startswith("Not measured here")] == [
        "Not measured here, so not compared: image accuracy 40x (for DenseNet) — this run produced no figure for "
        "them."]


# ---------------------------------------------------------------- one test per verdict rule

LIKE_FOR_LIKE = {"study": "mobilenet2025", "dataset": "melanoma", "source_dataset": "melanoma",
                 "paper_dataset": "melanoma", "random_init": [], "capped_epochs": {}, "max_images_per_class": None,
                 "images": 13879, "published_images": 13879, "evaluated_on": "test",
                 "validation_chose": {"frozen": [], "augmented": ["early-stopping epoch (val_loss)"]}}
FROZEN = {"frozen": {"accuracy": 0.88, "accuracy_ci_low": 0.86, "accuracy_ci_high": 0.90}}


def frozen_note(provenance: dict, ours: dict = FROZEN) -> str:
    frame = papers.compare("mobilenet2025", ours, metrics=["accuracy"])
    return next(n for n in papers.difference_notes(frame, provenance, 0.95) if n.startswith("frozen"))


def test_a_like_for_like_run_gets_a_verdict_over_the_side_it_was_measured_on():
    note = frozen_note(LIKE_FOR_LIKE)
    assert "No verdict" not in note and "inside our 95% interval [0.860, 0.900]" in note
    assert "sampling of our test images" in note and papers.no_verdict_reasons(LIKE_FOR_LIKE, "frozen") == []
    on_val = frozen_note({**LIKE_FOR_LIKE, "evaluated_on": "val"})  # validation chose nothing for `frozen`
    assert "inside" in on_val and "sampling of our validation images" in on_val and "test images" not in on_val


@pytest.mark.parametrize("changes, reason", [
    ({"random_init": ["frozen"]}, "trained from random initialisation"),
    ({"random_init": ["frozen"], "random_init_via": {"frozen": "lc25000_entry"}},
     "starts from the pretraining entry `lc25000_entry`, trained from random initialisation"),
    ({"dataset": "skin", "source_dataset": "skin"}, "run on `skin`, not the paper's `melanoma`"),
    ({"paper_dataset": None}, "the paper does not name its dataset; ours, `melanoma`, stands in for it"),
    ({"images": 1099}, "run on a subset of the data (1,099 of the published 13,879 images)"),
    ({"evaluated_on": "val", "validation_chose": {"frozen": ["early-stopping epoch (val_loss)"]}},
     "measured on the validation images that chose its early-stopping epoch (val_loss)"),
    ({"capped_epochs": {"frozen": {"ours": 2, "paper": 10}}}, "training capped at 2 of 10 epochs"),
    ({"max_images_per_class": 20}, "at most 20 images per class (quick pass)"),
])
def test_each_reason_suppresses_the_verdict(changes, reason):
    note = frozen_note({**LIKE_FOR_LIKE, **changes})
    assert "No verdict" in note and reason in note, note
    assert "inside" not in note and "outside" not in note


def test_a_figure_the_paper_measured_on_the_images_that_chose_it_gets_no_verdict():
    """lin2024's counts make its 660 'validation' images its test images; sarker2025 reports the validation
    images early stopping watched, for its MobileNetV2 figures but not for its prediction list."""
    lin = {**LIKE_FOR_LIKE, "study": "lin2024", "dataset": "skin", "source_dataset": "skin", "paper_dataset": "skin",
           "images": 3297, "published_images": 3297}
    frame = papers.compare("lin2024", {"VGG16": {"accuracy": 0.85, "accuracy_ci_low": 0.82, "accuracy_ci_high": 0.88}},
                           metrics=["accuracy"])
    vgg = next(n for n in papers.difference_notes(frame, lin, 0.95) if n.startswith("VGG16"))
    assert "No verdict" in vgg and "the paper's figure was measured on the images that chose its grid cell" in vgg
    sarker = {**LIKE_FOR_LIKE, "study": "sarker2025", "dataset": "skin", "source_dataset": "skin",
              "paper_dataset": None, "evaluated_on": "val", "images": 3297, "published_images": 3297,
              "validation_chose": {"MobileNetV2": ["early-stopping epoch (val_accuracy)", "learning-rate schedule"]}}
    assert any("the paper's figure" in r for r in papers.no_verdict_reasons(sarker, "MobileNetV2"))
    assert not any("the paper's figure" in r for r in papers.no_verdict_reasons(sarker, "prediction_folder"))


def test_sarker2025_notes_say_why_print_counts_as_counts_and_name_the_validation_side():
    prov = {"study": "sarker2025", "dataset": "skin", "source_dataset": "skin", "paper_dataset": None,
            "random_init": [], "capped_epochs": {}, "max_images_per_class": None, "images": 3297,
            "published_images": 3297, "evaluated_on": "val",
            "validation_chose": {"MobileNetV2": ["early-stopping epoch (val_accuracy)", "learning-rate schedule"]}}
    ours = {"MobileNetV2": {"accuracy": 0.81, "accuracy_ci_low": 0.77, "accuracy_ci_high": 0.85, "layers": 158,
                            "parameters": 2264385},
            "prediction_folder": {"accuracy": 0.79, "accuracy_ci_low": 0.76, "accuracy_ci_high": 0.82, "side": "test"}}
    frame = papers.compare("sarker2025", ours)
    assert frame.set_index("row").loc["prediction_folder", "side"] == "test"
    notes = papers.difference_notes(frame, prov, 0.95)
    mobile = next(n for n in notes if n.startswith("MobileNetV2:"))
    assert "layers: ours 158 vs paper 158 (+0)" in mobile and "158.0000" not in mobile
    assert "parameters: ours 2,264,385 vs paper 2,264,385 (+0)" in mobile
    accuracy = mobile
    for reason in ("the paper does not name its dataset", "validation images that chose its early-stopping epoch",
                   "the paper's figure was measured on the images that chose its early-stopping epoch"):
        assert reason in accuracy, accuracy
    folder = next(n for n in notes if n.startswith("prediction_folder"))
    assert "ours 0.7900 vs paper 0.7000 (+0.0900)" in folder and "does not name its dataset" in folder
    assert "validation images that chose" not in folder  # scored on the test side, which chose nothing
    counts_only = next(n for n in papers.difference_notes(frame[frame["metric"].isin(["layers", "parameters"])],
                                                           prov, 0.95) if n.startswith("MobileNetV2:"))
    assert counts_only.endswith("(+0).")  # a count has no interval: no verdict to explain away
    assert sum(n.count("does not name its dataset") for n in notes) == 2  # once per row, not once per figure
    # the prediction folder is MobileNetV2's output: that model's training reasons are its reasons
    capped = {**prov, "random_init": ["MobileNetV2"], "capped_epochs": {"MobileNetV2": {"ours": 2, "paper": 30}}}
    folder = next(n for n in papers.difference_notes(frame, capped, 0.95) if n.startswith("prediction_folder"))
    assert "trained from random initialisation" in folder and "capped at 2 of 30" in folder
    assert papers.dataset_note(prov).startswith("The paper does not name its dataset (an unnamed")
    assert not any(d["what"] == "Dataset" and d["paper"] == "None" for d in papers.deviations("sarker2025", prov))


def test_the_deviations_the_papers_text_shows():
    def listed(study):
        return {d["what"]: d for d in papers.deviations(study, {})}

    sarker = listed("sarker2025")
    assert "first 20 %" in sarker["Train/validation split"]["paper"] and "last" not in sarker["Train/validation split"]["paper"]
    assert "independently" in sarker["Zoom"]["paper"] and "aspect ratio is kept" in sarker["Zoom"]["ours"]
    assert "one axis" in sarker["Shear"]["paper"] and "both axes" in sarker["Shear"]["ours"]
    assert "§3.4" in sarker["Trainable layers"]["paper"] and "last 30 layers" in sarker["Trainable layers"]["ours"]
    assert "reshuffled every epoch" in listed("mobilenet2025")["Batch order"]["ours"]
    assert "same SEED" in listed("kumar2022")["Augmentation seeds"]["paper"]
    assert listed("lin2024")["Optimizer"]["paper"] == "not stated"


def test_random_initialisation_through_init_from_reaches_the_banner():
    banner = papers.random_init_banner(["DenseNet-SE-transfer"], {"DenseNet-SE-transfer": "lung_entry"})
    assert "DenseNet-SE-transfer trained WITHOUT ImageNet weights" in banner and "through `lung_entry`" in banner
    assert papers.random_init_banner([]) == ""


def test_the_index_gives_each_reason_and_prints_counts_as_counts(tmp_project):
    fake_outputs("sarker2025", {"MobileNetV2": {"accuracy": 0.81, "accuracy_ci_low": 0.77, "accuracy_ci_high": 0.85}},
                 "skin", [], evaluated_on="val", images=3297,
                 validation_chose={"MobileNetV2": ["early-stopping epoch (val_accuracy)"]})
    details = fileio.read_json(paths.details_json("sarker2025"), "details")
    details["comparison"] = fileio.records(papers.compare("sarker2025", {
        "MobileNetV2": {"accuracy": 0.81, "accuracy_ci_low": 0.77, "accuracy_ci_high": 0.85, "layers": 158}}))
    fileio.write_json(paths.details_json("sarker2025"), details)
    fake_outputs("lin2024", {"VGG16": {"accuracy": 0.86, "accuracy_ci_low": 0.83, "accuracy_ci_high": 0.89}},
                 "skin", ["VGG16"], images=3297, seed_kind="head seeds")
    html = report.write_index().read_text()
    for text in ("The paper does not name its dataset (an unnamed", "the paper does not name its dataset; ours",
                 "measured on the validation images that chose its early-stopping epoch",
                 "the paper&#39;s figure was measured on the images that chose its early-stopping epoch",
                 "the paper&#39;s figure was measured on the images that chose its grid cell",
                 "trained from random initialisation", "ours 158 vs paper 158 (+0)", "Ours over head seeds",
                 "this run used <code>skin</code> in its place"):
        assert text in html, text
    assert "158.0000" not in html and "inside our" not in html and "outside our" not in html


def test_index_notes_show_names_as_code_and_escape_the_rest():
    assert report.code_spans("run on `skin` &lt;b&gt;") == "run on <code>skin</code> &lt;b&gt;"
