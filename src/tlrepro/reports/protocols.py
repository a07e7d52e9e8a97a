"""Report sections for studies that run the paper's protocol beside an honest one (kumar2022, wang2024): the
folds, each unit's training, pooled out-of-fold figures with patient-level intervals, the spread across folds,
and the paper's protocol against the honest one.

A cross-validated protocol's figures pool every fold's test side: under a grouped k-fold every patient is tested
exactly once, by a model that never saw them, and the intervals resample patients.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from IPython.display import display

from tlrepro.core import fileio, paths
from tlrepro.reports.sections import SIDE_NAMES, ci, interval_note, note, show, table
from tlrepro.results import comparison_plots, plots
from tlrepro.studies import crossval
from tlrepro.studies.base import Results, Study

FIGURES = ("accuracy", "recall", "specificity", "roc_auc")
NAMES = {"accuracy": "image-level accuracy", "recall": "sensitivity", "specificity": "specificity",
         "roc_auc": "ROC AUC"}


def unit_name(study: Study) -> str:
    return study.unit


def folds_table(study: Study) -> pd.DataFrame | None:
    """Per cross-validated protocol and fold: images and groups on each side, and where the folds come from."""
    audit = fileio.read_json(paths.leakage_details_json(study.id), "leakage audit")
    unit = unit_name(study)
    records = []
    for protocol in study.protocols:
        if not study.cross_validated(protocol):
            continue
        rows = study.protocol(protocol)
        for fold, part in rows.groupby("fold", sort=False):
            rec: dict[str, Any] = {"protocol": protocol, "fold": fold}
            for side in ("train", "val", "test"):
                on = part[part["side"] == side]
                rec[f"{SIDE_NAMES[side]} {unit}s"] = on["group"].nunique()
                rec[f"{SIDE_NAMES[side]} images"] = on["path"].nunique()
            test = part[part["side"] == "test"]
            rec["test classes"] = ", ".join(f"{n} {label}" for label, n in test.drop_duplicates("group")
                                            .groupby("label").size().items())
            records.append(rec)
        source = audit.get(protocol, {}).get("folds_source") or "ours"
        counts = {c: rows[c].nunique() for c in ("accession", "patient") if c in rows}
        by = {"accession": "accession number", "patient": "patient folder"}.get(study.group or "", study.group)
        note(f"**Protocol {protocol}:** {rows['fold'].nunique()} folds, {source}; every {unit} is tested in exactly "
             f"one fold. {unit.capitalize()}s are identified by {by}; the data hold "
             + " and ".join(f"{n:,} {'accession numbers' if c == 'accession' else 'patient folders'}"
                            for c, n in counts.items()) + f". Folds keep whole {unit}s.")
    if not records:
        return None
    frame = pd.DataFrame(records)
    show(table(frame, f"Cross-validation folds: {unit}s and images per side (validation {unit}s are carved from each "
                      f"fold's training {unit}s; training images count each rotated or flipped view)"))
    return frame


def training_facts(study: Study, results: Results) -> pd.DataFrame:
    """One line per trained model: protocol, row, fold or magnification, epochs, the epoch kept, seconds."""
    records = []
    for (protocol, name), r in results.items():
        for u in r.folds or [r]:
            t = u.training
            records.append({"protocol": protocol, "model": name, "unit": u.unit.describe(study.units(protocol)) or "—",
                            "path": t.path, "epochs run": t.epochs_run, "weights of epoch": t.best_epoch,
                            "training s": round(t.seconds, 1), "s per epoch": t.seconds / max(t.epochs_run, 1)})
    frame = pd.DataFrame(records)
    show(table(frame, "Training: one model per protocol and row, or per fold (times depend on the hardware)"))
    return frame


def curves(study: Study, results: Results) -> None:
    """Validation accuracy and loss per epoch: all models of a one-split protocol on one pair of axes (the
    paper's figure); under cross-validation one pair per model, a line per fold (fifteen lines would not read)."""
    for protocol in study.protocols:
        ours = {name: r for (p, name), r in results.items() if p == protocol}
        if not any(r.folds for r in ours.values()):
            display(plots.validation_curves({name: r.training.history for name, r in ours.items()},
                                            title=f"protocol: {protocol}"))
            continue
        for name, r in ours.items():
            display(plots.validation_curves(
                {u.unit.describe(study.units(protocol)) or name: u.training.history for u in r.folds or [r]},
                title=f"protocol {protocol}: {name}, one line per fold (each fold's own validation {unit_name(study)}s)"))


def pooled_figures(study: Study, results: Results, protocol: str) -> pd.DataFrame:
    """The protocol's figures per row: image-level and patient-level accuracy, sensitivity, specificity, ROC AUC
    with their intervals, and under cross-validation the spread across folds beside them."""
    unit = unit_name(study)
    records = []
    for (p, name), r in results.items():
        if p != protocol:
            continue
        m = r.metrics
        rec: dict[str, Any] = {"row": name, "images": m.get("n"), f"{unit}s": m.get(f"{unit}s")}
        rec[f"{unit}-level accuracy"] = ci(m.get(f"{unit}_accuracy"), m.get(f"{unit}_accuracy_ci_low"),
                                           m.get(f"{unit}_accuracy_ci_high"))
        for k in FIGURES:
            rec[NAMES[k]] = ci(m.get(k), m.get(f"{k}_ci_low"), m.get(f"{k}_ci_high"))
        spread = r.extra.get("fold_spread", {}).get("accuracy")
        if spread:
            rec["accuracy across folds"] = (f"{spread['mean']:.3f} ± {spread['std']:.3f} "
                                            f"[{spread['min']:.3f}, {spread['max']:.3f}]")
        records.append(rec)
    frame = pd.DataFrame(records)
    how = ("out-of-fold: every image tested once, by the fold model that never saw its "
           f"{unit}" if study.cross_validated(protocol) else f"its {SIDE_NAMES[study.settings.evaluate_on]} side")
    show(table(frame, f"Protocol {protocol}: figures over {how} ({unit}-level accuracy: the mean over {unit}s of "
                      f"each {unit}'s accuracy)"))
    extra = (" Across folds: mean ± sd [min, max] of each fold's own accuracy." if "accuracy across folds" in frame
             else "")
    note(f"<small>{interval_note(r.metrics for (p, _), r in results.items() if p == protocol)}{extra}</small>")
    return frame


def protocol_gap(study: Study, results: Results, paper_protocol: str, honest_protocol: str) -> pd.DataFrame:
    """Accuracy under the paper's protocol, under the honest one, and their difference with a patient-bootstrap
    interval, per row: a table and a figure."""
    e = study.params.evaluation
    unit = unit_name(study)
    records = []
    for (p, name), r in results.items():
        if p != paper_protocol or (honest_protocol, name) not in results.by_key:
            continue
        h = results[(honest_protocol, name)]
        correct = [(np.asarray(x.probs) >= x.metrics["threshold"]).astype(int) == study.labels(x.frame) for x in (r, h)]
        gap = crossval.protocol_gap(r.frame, correct[0], h.frame, correct[1], seed=study.seed,
                                    resamples=e.bootstrap_resamples, confidence=e.confidence, unit=unit)
        records.append({"row": name, **gap})
    frame = pd.DataFrame(records)
    if frame.empty:
        return frame
    shown = pd.DataFrame({
        "row": frame["row"], f"paper's protocol ({paper_protocol})": frame["paper_protocol"],
        f"honest ({honest_protocol})": frame["honest"],
        "difference [CI]": [ci(d, lo, hi) for d, lo, hi in zip(frame["difference"], frame["ci_low"], frame["ci_high"],
                                                                strict=True)],
        f"{unit}s": frame[f"{unit}s"]})
    show(table(shown, f"Image-level accuracy under the paper's protocol and under the honest one (difference: "
                      f"paper's minus honest; interval from resampling {unit}s jointly)"))
    if "ci_note" in frame and frame["ci_note"].notna().any():
        note(f"<small>No interval for the difference: {frame['ci_note'].dropna().iloc[0]}.</small>")
    display(comparison_plots.protocol_gap(frame, paper_protocol, honest_protocol))
    return frame


def gradcam_result(result: Any) -> Any:
    """The unit whose model explains its own test images: the whole result, or a pooled result's last fold."""
    return result.folds[-1] if result.folds else result


def no_paper_figure(study: Study, protocol: str) -> None:
    note(f"**Protocol {protocol} has no paper figure:** the paper reports only its own protocol "
         f"({study.primary}), so no figure of this protocol gets a verdict against the paper. It shows what the "
         f"models do on {unit_name(study)}s they never saw.")


def above_paper(comparison: pd.DataFrame) -> None:
    """Say where our figure under the paper's own protocol lies above the paper's, and only as far as the
    interval carries it: above the interval's reach, within it, or with no interval at all (too few patients)."""
    rates = comparison[comparison["ours"].notna() & (comparison["paper"] <= 1) & ~comparison["metric"].str.contains("loss")]
    above = rates[rates["ours"] > rates["paper"]]
    if above.empty:
        return
    listed = "; ".join(f"{r.row}, {r.metric.replace('_', ' ')}: ours {r.ours:.3f}, the paper's {r.paper:.3f}"
                       for r in above.itertuples())
    has_interval = above["ci_low"].notna()
    beyond = has_interval & (above["ci_low"] > above["paper"])
    if beyond.all():
        how = ("each above the paper's figure by more than its interval allows. The paper's protocol lets a model "
               "meet, at test time, patients and rotated copies of images it trained on; these figures are what "
               "that is worth here, on this run's data (see the verdict notes above for what they can be held to).")
    elif not has_interval.any():
        how = ("without intervals (too few patients to resample), so not evidence on their own that the protocol "
               "inflates figures; the comparison with the honest protocol below measures that directly.")
    else:
        how = ("not all of them clear of their intervals, so they do not on their own show that the protocol "
               "inflates figures; the comparison with the honest protocol below measures that directly.")
    note(f"**Above the paper's own figures under its own protocol** ({listed}): {how}")


def paper_counts(study: Study) -> pd.DataFrame | None:
    """The paper's accuracies as counts of its test images, with their exact binomial (Clopper-Pearson) intervals,
    when paper_figures.yaml gives the paper's test size."""
    from scipy.stats import binomtest

    entry = study.paper
    n = entry.get("test_images")
    if not n:
        return None
    level = study.params.evaluation.confidence
    records = []
    for row, figures in entry["rows"].items():
        accuracy = figures.get("accuracy")
        if accuracy is None:
            continue
        k = round(accuracy * n)
        interval = binomtest(k, n).proportion_ci(confidence_level=level, method="exact")
        records.append({"row": row, "paper's accuracy": accuracy, "as a count": f"{k}/{n}",
                        f"binomial {level:.0%} interval": ci(k / n, interval.low, interval.high)})
    frame = pd.DataFrame(records)
    show(table(frame, f"The paper's figures as counts of its {n:,} test images"))
    note(f"<small>The paper's accuracies are exact fractions of {n:,}: that was its test side. The binomial "
         "interval treats its test images as independent; they are not (one patient's images, on both sides of a "
         "split by image), so it is narrower than the paper's real uncertainty.</small>")
    return frame


def paper_keyed(by_magnification: pd.DataFrame, protocol: str, unit: str) -> dict[str, dict[str, Any]]:
    """Per row, our per-magnification figures under the paper's keys (`image_accuracy_100x`,
    `patient_accuracy_100x`, with `_ci_low`/`_ci_high`), for the paper-vs-ours comparison."""
    out: dict[str, dict[str, Any]] = {}
    part = by_magnification[(by_magnification["protocol"] == protocol) & (by_magnification["subset"] != "all")]
    for rec in part.to_dict("records"):
        figures = out.setdefault(rec["model"], {})
        for kind, column in (("image", "image"), ("patient", unit)):
            key = f"{kind}_accuracy_{rec['subset']}x"
            figures[key] = rec[f"{column}_accuracy"]
            figures[f"{key}_ci_low"], figures[f"{key}_ci_high"] = rec[f"{column}_ci_low"], rec[f"{column}_ci_high"]
    return out


def pretraining_curve(card: dict[str, Any], name: str) -> None:
    """The pretraining step's training curve, with the epoch whose weights were kept marked."""
    t = card["training"]
    history = pd.DataFrame(t["history"])
    if "epoch" not in history:
        history.insert(0, "epoch", range(1, len(history) + 1))
    display(plots.training_curves({name: history}, marks={name: t["best_epoch"]}))
    if "val_accuracy" in history:
        values = history["val_accuracy"]
        note(f"Validation accuracy ranged from {values.min():.3f} to {values.max():.3f} over {len(values)} epochs; "
             f"the weights of epoch {t['best_epoch']} (validation accuracy {values.iloc[t['best_epoch'] - 1]:.3f}) "
             "were kept and passed on to BreakHis.")
