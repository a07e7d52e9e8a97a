"""A study stage's outputs, written by one call at the end of its notebook (`write_outputs`).

- reports/metrics/<study>.json: the headline figures per row (a DVC metric: accuracy with its interval, F1, AUC;
  patient-level accuracy where there are patients), deterministic, so the same parameters give the same bytes;
- reports/metrics/<study>.details.json: everything else (per-row figures on every side, seed and fold spreads,
  leak-free figures, provenance, the study's own tables);
- reports/plots/<study>/*.csv: plot tables (training histories, grids), declared as DVC plots;
- reports/timings/<study>.json: wall times, which vary run to run and so stay out of the metrics.
Everything is written to the staging folder while `tlrepro run` executes the notebook (core.paths.study_output).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from tlrepro.core import fileio, paths
from tlrepro.studies.base import HEADLINE, Results, RowResult, Study


def headline(figures: dict[str, Any], spread: dict[str, Any] | None = None) -> dict[str, Any]:
    """The few figures per row `dvc metrics show` prints: accuracy with its interval, F1, AUC, and patient-level
    accuracy where the figures have one."""
    out = {k: figures.get(k) for k in HEADLINE}
    unit = figures.get("ci_unit")
    if unit and unit != "image" and f"{unit}_accuracy" in figures:
        out[f"{unit}_accuracy"] = figures[f"{unit}_accuracy"]
    if spread:
        out["accuracy_seed_sd"] = spread["std"]
    return out


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


def write_outputs(study: Study, rows: dict[str, dict[str, Any]], details: dict[str, Any] | None = None, *,
                  results: Results | None = None, plots: dict[str, pd.DataFrame] | None = None,
                  timings_extra: dict[str, Any] | None = None) -> None:
    """Every output of the study stage in one call.

    `rows` are the headline figures per row; `details` the study's own tables. With the row runner's `results`,
    their per-row details, training histories (plots `history/<row>`) and timings are added.
    """
    details, plots, times = dict(details or {}), dict(plots or {}), dict(timings_extra or {})
    if results is not None:
        details = {"results": results_details(study, results), **details}
        for (protocol, name), r in results.items():
            plots[f"history/{result_key(study, protocol, name).replace('/', '-')}"] = r.training.history
        times = {**timings(study, results), **times}
    metrics = paths.study_outputs(study.id)["metrics"]
    fileio.write_json(paths.study_output(metrics), {"study": study.id, "dataset": study.dataset, "random_init": study.random_init(),
                               "results": rows})
    fileio.write_json(paths.study_output(paths.study_outputs(study.id)["details"]),
                      {"study": study.id, "provenance": study.provenance(), **details})
    for name, frame in plots.items():
        fileio.write_csv(paths.study_output(f"{paths.study_outputs(study.id)['plots']}/{name}.csv"), frame)
    fileio.write_json(paths.study_output(paths.study_outputs(study.id)["timings"]), times)
    saved = sorted({r.model_path.stem for _, r in (results.items() if results else []) if r.model_path})
    # the project-relative names, not the staging folder's: that is where they are once the notebook succeeds
    print(f"wrote {metrics}, its details, {len(plots)} plot table(s)"
          + (f" and the models of {', '.join(saved)}" if saved else "")
          + (" (moved into place when the whole notebook has run)" if paths.staging_dir() else ""))
