"""A study stage's outputs, written by one call at the end of its notebook (`write_outputs`).

- reports/metrics/<study>.json: the headline figures per row, the study's only DVC metric, so that `dvc exp show`
  fits a screen: accuracy with its interval, the patient-level accuracy where there are patients (of a study with
  several protocols, under its patient-level cross-validation only) and the seed sd where there are seeds (at
  most 5 columns per row); deterministic, so the same parameters give the same bytes;
- reports/metrics/<study>.details.json: everything else (per-row figures on every side, seed and fold spreads,
  leak-free figures, provenance, the study's own tables), an output but not a metric;
- reports/plots/<study>/: the charts `dvc plots` draws (dvc.yaml's top-level `plots`): epochs.csv, every fit's
  per-epoch figures in one table (a line per row and fold), and grid.csv, the learning-rate x epochs grid;
- reports/training/<study>/: DVCLive's folder per fit, written while it trains (tlrepro.modeling.training); a
  pretraining entry has its own, and its chart in reports/plots/pretraining/<entry>/ (studies.transfer);
- reports/timings/<study>.json: wall times, which vary run to run and so stay out of the metrics.
Everything is written to the staging folder while `tlrepro run` executes the notebook (core.paths.study_output).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from tlrepro.core import fileio, paths
from tlrepro.studies.base import Results, RowResult, Study

HEADLINE = ("accuracy", "accuracy_ci_low", "accuracy_ci_high")
CHARTS = ("epochs", "grid")  # the tables dvc.yaml draws; a study's other tables go to its details file


def headline(figures: dict[str, Any], spread: dict[str, Any] | None = None) -> dict[str, Any]:
    """The few figures per row `dvc exp show` lists: accuracy with its interval, the accuracy per patient (or
    other unit) where the figures have one, and the sd over seeds where there are several."""
    out = {k: figures.get(k) for k in HEADLINE}
    unit = figures.get("ci_unit")
    if unit and unit != "image" and f"{unit}_accuracy" in figures:
        out[f"{unit}_accuracy"] = figures[f"{unit}_accuracy"]
    if spread:
        out["accuracy_seed_sd"] = spread["std"]
    return out


def is_headline(name: str) -> bool:
    return name in HEADLINE or name == "accuracy_seed_sd" or (name.endswith("_accuracy") and name != "val_accuracy")


def metric_columns(study: Study, key: str, figures: dict[str, Any]) -> dict[str, Any]:
    """The figures of one row that go to the metrics file. A study with several protocols keeps accuracy with its
    interval under each, and the per-patient figure under its patient-level cross-validation only (the honest
    protocol's figure): `dvc exp show` of an experiment that reruns one such study then fits in 40 columns."""
    kept = {k: v for k, v in figures.items() if is_headline(k)}
    protocol, _, _ = key.rpartition("/")
    if len(study.protocols) > 1 and protocol in study.protocols \
            and study.settings.protocols[protocol].method != "grouped_kfold":
        kept = {k: v for k, v in kept.items() if k in HEADLINE or k == "accuracy_seed_sd"}
    return kept


def result_key(study: Study, protocol: str, row: str) -> str:
    return row if len(study.protocols) == 1 else f"{protocol}/{row}"


def results_details(study: Study, results: Results) -> dict[str, Any]:
    """Per (protocol, row): every figure on the evaluation side, without leaked images, on train, the seed and
    fold spreads, and the training facts (epochs run, the epoch whose weights were evaluated, the path)."""
    out: dict[str, Any] = {}
    for (protocol, name), r in results.items():
        units = r.folds or [r]
        out[result_key(study, protocol, name)] = {
            "protocol": protocol, "row": name, "side": r.side, "evaluation": r.metrics,
            "without_train_matches": r.clean_metrics, "train": r.train_metrics,
            "seeds": {m: results.spread((protocol, name), m) for m in ("accuracy", "f1", "roc_auc")},
            "folds": r.extra.get("fold_spread") or None,
            "units": [{"unit": u.unit.describe(study.units(protocol)), "epochs_run": u.training.epochs_run,
                       "best_epoch": u.training.best_epoch} for u in units],
            "epochs_run": r.training.epochs_run, "best_epoch": r.training.best_epoch,
            "training_path": r.training.path, "model": study.model_name(name, protocol) if r.model_path else None,
        }
    return out


def timings(study: Study, results: Results) -> dict[str, Any]:
    """Per (protocol, row): training, feature and prediction seconds, summed over its units."""
    out = {}
    for (protocol, name), r in results.items():
        units: list[RowResult] = r.folds or [r]
        out[result_key(study, protocol, name)] = {
            "training_seconds": sum(u.training.seconds for u in units),
            "feature_seconds": sum(u.training.feature_seconds for u in units),
            "prediction_seconds": sum(u.predict_seconds for u in units),
            "units": len(units), "path": r.training.path}
    return out


def fit_label(study: Study, protocol: str, row: str, unit: RowResult) -> str:
    """One fit as the per-epoch chart names its line: the row (with its protocol), and its fold where there are."""
    where = unit.unit.describe(study.units(protocol))
    return result_key(study, protocol, row) + (f" · {where}" if where else "")


def epoch_table(study: Study, results: Results | None, grid: pd.DataFrame | None = None) -> pd.DataFrame | None:
    """Every fit's per-epoch figures in one long table (run, epoch, figures), the study's per-epoch chart: a
    line per row, per fold. A grid study's runs are its (backbone, learning rate) cells, mean over seeds."""
    if results is not None:
        frames = [u.training.history.assign(run=fit_label(study, protocol, name, u))
                  for (protocol, name), r in results.items() for u in (r.folds or [r])]
    elif grid is not None and {"backbone", "learning_rate", "epochs"} <= set(grid.columns):
        runs = grid["backbone"] + " · lr " + grid["learning_rate"].map("{:g}".format)
        frames = [grid.rename(columns={"epochs": "epoch"}).drop(columns=["backbone", "learning_rate"]).assign(run=runs)]
    else:
        return None
    return runs_table(frames)


def runs_table(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Per-epoch tables (each with its `run`) as one, in a fixed column order: run, epoch, then the figures."""
    frame = pd.concat(frames, ignore_index=True)
    return frame[["run", "epoch", *sorted(c for c in frame.columns if c not in ("run", "epoch"))]]


def write_outputs(study: Study, rows: dict[str, dict[str, Any]], details: dict[str, Any] | None = None, *,
                  results: Results | None = None, plots: dict[str, pd.DataFrame] | None = None,
                  timings_extra: dict[str, Any] | None = None) -> None:
    """Every output of the study stage in one call.

    `rows` are the headline figures per row (only `is_headline` figures go to the metrics file); `details` the
    study's own tables; `plots` tables, of which those named in CHARTS are drawn and the others kept in the
    details. With the row runner's `results`, their per-row details, per-epoch chart and timings are added.
    """
    details, tables, times = dict(details or {}), dict(plots or {}), dict(timings_extra or {})
    if results is not None:
        details = {"results": results_details(study, results), **details}
        times = {**timings(study, results), **times}
    epochs = epoch_table(study, results, tables.get("grid"))
    charts = {name: frame for name, frame in {**tables, "epochs": epochs}.items() if name in CHARTS and frame is not None}
    other = {name: fileio.records(frame) for name, frame in tables.items() if name not in CHARTS}
    outputs = paths.study_outputs(study.id)
    fileio.write_json(paths.study_output(outputs["metrics"]),
                      {"results": {row: metric_columns(study, row, figures) for row, figures in rows.items()}})
    fileio.write_json(paths.study_output(outputs["details"]),
                      {"study": study.id, "provenance": study.provenance(), **details,
                       **({"tables": other} if other else {})})
    for name, frame in charts.items():
        fileio.write_csv(paths.study_output(f"{outputs['plots']}/{name}.csv"), frame)
    fileio.write_json(paths.study_output(outputs["timings"]), times)
    saved = sorted({r.model_path.stem for _, r in (results.items() if results else []) if r.model_path})
    # the project-relative names, not the staging folder's: that is where they are once the notebook succeeds
    print(f"wrote {outputs['metrics']}, its details, {len(charts)} chart table(s)"
          + (f" and the models of {', '.join(saved)}" if saved else "")
          + (f" in {paths.relative(paths.staging_dir())}/ (run by hand)" if paths.by_hand()
             else " (moved into place when the whole notebook has run)" if paths.staging_dir() else ""))
