"""paper_figures.yaml, papers.compare and reports/index.html from fake metrics files."""

from __future__ import annotations

import json
import math

import pytest

from tlrepro import io, papers, paths, report
from tlrepro.errors import UserError


def test_all_five_studies_transcribed():
    assert papers.studies() == ["lin2024", "mobilenet2025", "sarker2025", "kumar2022", "wang2024"]
    for study in papers.studies():
        entry = papers.load(study)
        for key in ("title", "first_author", "year", "data", "source", "rows", "headline", "dataset"):
            assert entry[key], (study, key)
        assert entry["dataset_info"]["citation"]
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


def fake_metrics(study: str, rows: dict, dataset: str, random_init: list[str]) -> None:
    io.write_json(paths.metrics_json(study), {"study": study, "dataset": dataset, "random_init": random_init,
                                              "results": rows, "extra": {"ignored": True}})


def test_write_index_two_studies(tmp_project):
    fake_metrics("lin2024", {"VGG16": {"accuracy": 0.8612, "accuracy_ci_low": 0.83, "accuracy_ci_high": 0.89,
                                       "roc_auc": 0.93, "note": "extra"}}, "skin", [])
    fake_metrics("mobilenet2025", {"frozen": {"accuracy": 0.7, "precision": 0.6, "recall": 0.5, "f1": 0.55}},
                 "skin", ["MobileNetV2"])
    io.write_text(paths.REPORTS / "lin2024.html", "<html></html>")
    out = report.write_index()
    assert out == tmp_project / "reports" / "index.html"
    html = out.read_text()
    for text in ("lin2024", "mobilenet2025", "0.8612", "0.8470", "[0.8300, 0.8900]", "+0.0142",
                 'href="lin2024.html"', "Spanhol", "Transfer Learning with Convolutional"):
        assert text in html, text
    assert html.count('class="warning"') == 1 and "MobileNetV2 trained WITHOUT ImageNet" in html
    assert "not the paper&#39;s" in html or "not the paper's" in html  # mobilenet2025 ran on skin, not melanoma
    for study in ("sarker2025", "kumar2022", "wang2024"):
        assert f"dvc repro {study}" in html
    assert html.count("Not run yet") == 3
    assert "<script" not in html
    assert report.write_index().read_text() == html  # stable bytes for DVC


def test_bad_metrics_json_names_file(tmp_project):
    io.write_text(paths.metrics_json("kumar2022"), "{not json")
    with pytest.raises(UserError, match="reports/metrics/kumar2022.json"):
        report.write_index()
    io.write_text(paths.metrics_json("kumar2022"), json.dumps({"study": "kumar2022"}))
    with pytest.raises(UserError, match="results"):
        report.write_index()
