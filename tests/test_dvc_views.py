"""What DVC's own views show of a study stage's outputs, read back with DVC itself on files written by the package's
writers (studies.outputs.write_outputs, from synthetic training histories: no TensorFlow) in a throwaway DVC
project with the real dvc.yaml, params.yaml and .dvc/plots templates.

- `dvc plots show --json`: every chart names its x and y fields (none falls back to DVC's default of step against
  the last column), one per-epoch chart per study with a line per row and fold, the lin2024 grid as a heatmap, and
  no chart of a table that is not one (the prediction folder, the grid's per-seed cells);
- the metrics file holds the headline figures only (at most about 6 per row), the rest is in the details file.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

from tlrepro.core import fileio, paths
from tlrepro.modeling.training import TrainResult
from tlrepro.studies import outputs
from tlrepro.studies.base import Results, RowResult
from tlrepro.studies.crossval import WHOLE, Unit

REPO = Path(__file__).resolve().parents[1]
DVC = str(Path(sys.executable).parent / "dvc")
FIGURES = {"accuracy": 0.8, "accuracy_ci_low": 0.7, "accuracy_ci_high": 0.9, "f1": 0.75, "roc_auc": 0.85,
           "loss": 0.4, "n": 40, "ci_unit": "patient", "patient_accuracy": 0.82, "threshold": 0.5}


def history(epochs: int, shift: float) -> pd.DataFrame:
    """A Keras-like history as training.history_frame builds it."""
    epoch = np.arange(1, epochs + 1)
    return pd.DataFrame({"epoch": epoch, "accuracy": 0.5 + shift + 0.05 * epoch, "loss": 1 / epoch,
                         "val_accuracy": 0.5 + shift + 0.04 * epoch, "val_loss": 1.2 / epoch})


def fake_study(study_id: str, protocols: dict[str, list[Unit]]) -> SimpleNamespace:
    """What write_outputs reads of a Study."""
    methods = {p: SimpleNamespace(method="grouped_kfold" if p == "patient" else "stratified") for p in protocols}
    return SimpleNamespace(id=study_id, dataset="skin", protocols=list(protocols), units=lambda p: protocols[p],
                           settings=SimpleNamespace(protocols=methods),
                           provenance=lambda: {"dataset": "skin", "random_init": ["B"]}, random_init=lambda: ["B"],
                           model_name=lambda row, protocol: f"{study_id}/{row}")


def result(protocol: str, row: str, units: list[Unit], shift: float) -> RowResult:
    def one(unit: Unit, k: int) -> RowResult:
        return RowResult(None, protocol, 0, None, TrainResult(history(3 + k, shift + k / 100), 1.0, "cached features"),
                         "test", pd.DataFrame(), np.array([]), metrics=dict(FIGURES), unit=unit)

    parts = [one(u, k) for k, u in enumerate(units)]
    return parts[0] if len(parts) == 1 else RowResult(None, protocol, 0, None, parts[0].training, "test",
                                                      pd.DataFrame(), np.array([]), metrics=dict(FIGURES), folds=parts)


def write_studies() -> None:
    """Three studies' outputs as their notebooks write them: rows with folds, a prediction-folder table, a grid."""
    folds = [Unit(fold=str(k)) for k in (1, 2, 3)]
    kumar = fake_study("kumar2022", {"image": [WHOLE], "patient": folds})
    results = Results({(p, r): result(p, r, kumar.units(p), i / 10) for i, (p, r) in
                       enumerate((p, r) for p in kumar.protocols for r in ("VGG16", "ResNet50V2"))})
    outputs.write_outputs(kumar, {outputs.result_key(kumar, p, r): {**outputs.headline(res.metrics), "loss": 0.4}
                                  for (p, r), res in results.items()}, results=results)

    sarker = fake_study("sarker2025", {"source": [WHOLE]})
    results = Results({("source", "MobileNetV2"): result("source", "MobileNetV2", [WHOLE], 0)})
    table = pd.DataFrame({"path": ["a.jpg", "b.jpg"], "predicted_label": ["benign", "malignant"]})
    outputs.write_outputs(sarker, {"MobileNetV2": outputs.headline(FIGURES)}, results=results,
                          plots={"prediction_folder": table})

    lin = fake_study("lin2024", {"source": [WHOLE]})
    cells = pd.DataFrame([{"backbone": b, "learning_rate": lr, "epochs": e, "seed": s, "val_accuracy": 0.6 + lr * 10,
                           "val_loss": 0.5} for b in ("MobileNetV2", "VGG16") for lr in (1e-3, 5e-3)
                          for e in (1, 2) for s in (0, 1)])
    mean = cells.groupby(["backbone", "learning_rate", "epochs"], as_index=False)[["val_accuracy", "val_loss"]].mean()
    outputs.write_outputs(lin, {b: outputs.headline(FIGURES, {"std": 0.01}) for b in ("MobileNetV2", "VGG16")},
                          plots={"grid": mean, "grid_seeds": cells})
    # a pretraining entry's chart, as studies.transfer.pretrain writes it
    fileio.write_csv(paths.PLOTS / "pretraining/lung/epochs.csv", outputs.runs_table([history(4, 0).assign(run="lung")]))


def plots_json(root: Path) -> dict:
    for template in (REPO / ".dvc/plots").glob("*.json"):
        (root / ".dvc/plots").mkdir(parents=True, exist_ok=True)
        shutil.copy(template, root / ".dvc/plots" / template.name)
    shown = subprocess.run([DVC, "plots", "show", "--json"], cwd=root, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr[-2000:]
    out = json.loads(shown.stdout)
    assert not out.get("errors"), out["errors"]
    return out["data"]


def test_dvc_plots_show_names_every_charts_axes_and_draws_a_line_per_row_and_fold(tmp_project):
    subprocess.run([DVC, "init", "--no-scm", "-q"], cwd=tmp_project, check=True, timeout=60)
    write_studies()
    charts = plots_json(tmp_project)
    assert set(charts) == {"reports/plots/kumar2022/epochs.csv", "reports/plots/sarker2025/epochs.csv",
                           "reports/plots/lin2024/epochs.csv", "reports/plots/lin2024/grid.csv",
                           "reports/plots/pretraining/lung/epochs.csv"}, set(charts)
    axes = {}
    for name, (chart,) in charts.items():
        spec = chart["content"]
        encoding = spec["encoding"]
        axes[name] = (encoding["x"]["field"], encoding["y"]["field"], spec["mark"]["type"])
        assert encoding["x"]["field"] in spec["data"]["values"][0] and encoding["y"]["field"] in spec["data"]["values"][0]
    assert axes == {"reports/plots/kumar2022/epochs.csv": ("epoch", "val_accuracy", "line"),
                    "reports/plots/sarker2025/epochs.csv": ("epoch", "val_accuracy", "line"),
                    "reports/plots/lin2024/epochs.csv": ("epoch", "val_accuracy", "line"),
                    "reports/plots/lin2024/grid.csv": ("learning_rate", "epochs", "rect"),
                    "reports/plots/pretraining/lung/epochs.csv": ("epoch", "val_accuracy", "line")}
    # one chart per study, one line (colour) per row, and per fold where there are folds
    kumar = charts["reports/plots/kumar2022/epochs.csv"][0]["content"]
    assert kumar["encoding"]["color"]["field"] == "run"
    assert {v["run"] for v in kumar["data"]["values"]} == {
        "image/VGG16", "image/ResNet50V2", *(f"patient/{r} · fold {k}/3" for r in ("VGG16", "ResNet50V2")
                                             for k in (1, 2, 3))}
    lin = charts["reports/plots/lin2024/grid.csv"][0]["content"]
    assert lin["encoding"]["color"]["field"] == "val_accuracy" and lin["encoding"]["column"]["field"] == "backbone"
    assert len(lin["data"]["values"]) == 2 * 2 * 2  # the mean over seeds per cell, not every seed


def test_the_metrics_file_holds_the_headline_and_the_details_file_the_rest(tmp_project):
    write_studies()
    for study in ("kumar2022", "sarker2025", "lin2024"):
        metrics = json.loads(paths.metrics_json(study).read_text())
        assert set(metrics) == {"results"}
        for figures in metrics["results"].values():
            assert set(figures) <= {"accuracy", "accuracy_ci_low", "accuracy_ci_high", "patient_accuracy",
                                    "accuracy_seed_sd"} and len(figures) <= 6
    # several protocols: the per-patient figure under the patient-level cross-validation only
    kumar_metrics = json.loads(paths.metrics_json("kumar2022").read_text())["results"]
    assert "patient_accuracy" in kumar_metrics["patient/VGG16"] and "patient_accuracy" not in kumar_metrics["image/VGG16"]
    assert kumar_metrics["image/VGG16"]["accuracy_ci_low"] is not None
    kumar = json.loads(paths.details_json("kumar2022").read_text())
    assert kumar["results"]["patient/VGG16"]["evaluation"]["roc_auc"] == 0.85  # F1, AUC, loss: in the details
    assert kumar["provenance"]["random_init"] == ["B"]
    sarker = json.loads(paths.details_json("sarker2025").read_text())
    assert sarker["tables"]["prediction_folder"][1] == {"path": "b.jpg", "predicted_label": "malignant"}
    lin = json.loads(paths.details_json("lin2024").read_text())
    assert len(lin["tables"]["grid_seeds"]) == 16
    assert not list((tmp_project / "reports/plots").rglob("prediction_folder*"))


def test_tlrepro_metrics_still_prints_f1_and_auc_from_the_details(tmp_project):
    from tlrepro.reports import console

    write_studies()
    text = console.metrics_text(["kumar2022"])
    assert "patient/VGG16 (random init)" not in text  # random init is row B only
    line = next(x for x in text.splitlines() if x.startswith("kumar2022") and "patient/VGG16" in x and " roc auc " in x)
    assert line.split()[-1] == "0.850"
    assert any("patient accuracy" in x for x in text.splitlines())
