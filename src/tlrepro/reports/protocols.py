"""Report sections for studies that run the paper's protocol beside others (kumar2022, wang2024): the folds and
what every fold holds, each unit's training, the paper's protocol against the others (one-class rows left out,
random-init rows marked), Grad-CAM with its caveats, and the paper's figures as counts. Each protocol's figures
beside their baselines, and the take-away sentence, are in tlrepro.reports.evidence.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from IPython.display import display

from tlrepro.data.splits import protocol_sentence
from tlrepro.reports.evidence import (  # noqa: F401  (pooled_figures: the notebooks' name for it)
    marked,
    near_chance,
    one_class,
    pooled_figures,
    protocol_facts,
    protocol_kind,
    protocol_title,
    row_label,
    unit_name,
)
from tlrepro.reports.sections import SIDE_NAMES, ci, note, show, table
from tlrepro.results import comparison_plots, plots
from tlrepro.studies import crossval
from tlrepro.studies.base import Results, Study


def folds_table(study: Study) -> pd.DataFrame | None:
    """Per protocol with folds: what its split file shows (tests per image, images and patients never tested,
    accessions on two sides), images and groups per side of every fold, and every fold's composition."""
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
            records.append(rec)
        counts = {c: rows[c].nunique() for c in ("accession", "patient") if c in rows}
        by = {"accession": "accession number", "patient": "patient folder"}.get(study.group or "", study.group)
        held = " and ".join(f"{n:,} {'accession numbers' if c == 'accession' else 'patient folders'}"
                            for c, n in counts.items())
        note(f"**{protocol_title(study, protocol).capitalize()}:** {protocol_sentence(protocol_facts(study, protocol))} "
             f"{unit.capitalize()}s are identified by {by}" + (f"; the data hold {held}" if held else "") + ".")
    if not records:
        return None
    frame = pd.DataFrame(records)
    views = "view" in study.split and (study.split["view"].fillna("").replace("identity", "") != "").any()
    counted = ("; training images count each rotated or flipped view" if views
               else "; each image is counted once: no rotated or flipped copies are added")
    show(table(frame, f"Folds: {unit}s and images per side (validation {unit}s are carved from each fold's training "
                      f"{unit}s{counted})"))
    for protocol in dict.fromkeys(frame["protocol"]):
        fold_composition(study, protocol)
    return frame


def _subtype_column(rows: pd.DataFrame) -> str | None:
    return next((c for c in ("subtype_name", "subtype") if c in rows), None)


def fold_composition(study: Study, protocol: str) -> pd.DataFrame:
    """Every fold's test side: images and patients per class, subtypes, the patients themselves, and the
    subtypes of the data that the fold never trains on (a fold that tests the only case of a subtype)."""
    rows = study.protocol(protocol)
    unit, subtype = unit_name(study), _subtype_column(rows)
    everything = set(rows[subtype]) if subtype else set()
    records = []
    for fold, part in sorted(rows.groupby("fold"), key=lambda kv: int(kv[0]) if str(kv[0]).isdigit() else 0):
        test = part[part["side"] == "test"].drop_duplicates("path")
        per_group = test.drop_duplicates("group")
        rec: dict[str, Any] = {
            "fold": fold,
            "test images": ", ".join(f"{n:,} {c}" for c, n in test.groupby("label").size().items()),
            f"test {unit}s": ", ".join(f"{n} {c}" for c, n in per_group.groupby("label").size().items()),
            f"tested {unit}s": ", ".join(f"{g} ({lab[0].upper()})" for g, lab in
                                         sorted(zip(per_group["group"], per_group["label"], strict=True))),
        }
        if subtype:
            rec["test subtypes"] = ", ".join(f"{str(t).replace('_', ' ')} {n}"
                                             for t, n in test.groupby(subtype).size().items())
            trained = set(part.loc[part["side"] == "train", subtype])
            never = sorted(everything - trained)
            tested = set(test[subtype])
            rec["subtypes never trained on"] = ", ".join(
                str(t).replace("_", " ") + (" (tested here)" if t in tested else "") for t in never) or "none"
        records.append(rec)
    frame = pd.DataFrame(records)
    show(table(frame, f"{protocol_title(study, protocol).capitalize()}: what every fold tests (each test image once; "
                      f"B benign, M malignant), and the subtypes its training side lacks"))
    return frame


def training_facts(study: Study, results: Results) -> pd.DataFrame:
    """One line per trained model: protocol, row, fold or magnification, epochs, the epoch kept, seconds."""
    records = []
    for (protocol, name), r in results.items():
        for u in r.folds or [r]:
            t = u.training
            records.append({"protocol": protocol, "model": marked(study, name), "unit": u.unit.describe(study.units(protocol)) or "—",
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
            display(plots.validation_curves({marked(study, name): r.training.history for name, r in ours.items()},
                                            title=f"protocol: {protocol}"))
            continue
        for name, r in ours.items():
            display(plots.validation_curves(
                {u.unit.describe(study.units(protocol)) or name: u.training.history for u in r.folds or [r]},
                title=f"protocol {protocol}: {marked(study, name)}, one line per fold (each fold's own validation {unit_name(study)}s)"))


def protocol_gap(study: Study, results: Results, paper_protocol: str, honest_protocol: str) -> pd.DataFrame:
    """Accuracy under one protocol (the paper's), under another, and their difference with an interval from
    resampling patients jointly, per row: a table and a figure. A row that predicts one class under either is
    marked and left out of the difference (its figure there is the class mix, not what leakage is worth);
    random-init rows are marked."""
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
        single = {q: one_class(study, x) for q, x in ((paper_protocol, r), (honest_protocol, h))}
        single = {q: w for q, w in single.items() if w}
        rec = {"row": name, **gap, "from": paper_protocol, "to": honest_protocol,
               "random_init": name in study.random_init(),
               "one_class": "; ".join(f"{q}: {w}" for q, w in single.items()) or None}
        if single:
            rec.update(difference=None, ci_low=None, ci_high=None)
        records.append(rec)
    frame = pd.DataFrame(records)
    if frame.empty:
        return frame
    frame["label"] = [row_label(rec) for rec in records]
    shown = pd.DataFrame({
        "row": frame["label"], f"{paper_protocol}": frame["paper_protocol"], f"{honest_protocol}": frame["honest"],
        "difference [CI]": [ci(rec["difference"], rec["ci_low"], rec["ci_high"]) if not rec["one_class"]
                            else "left out (one class)" for rec in records],
        f"{unit}s": frame[f"{unit}s"]})
    show(table(shown, f"Image-level accuracy under {protocol_title(study, paper_protocol)} and under "
                      f"{protocol_title(study, honest_protocol)} (difference: the first minus the second; interval "
                      f"from resampling {unit}s jointly)"))
    notes = []
    if "ci_note" in frame and frame["ci_note"].notna().any():
        notes.append(f"No interval for the difference: {frame['ci_note'].dropna().iloc[0]}.")
    for rec in records:
        if rec["one_class"]:
            notes.append(f"{rec['row']} is left out of the difference: it predicts one class ({rec['one_class']}), "
                         f"so its accuracy there is the share of that class, not what the split is worth.")
    if notes:
        note("<small>" + " ".join(notes) + "</small>")
    display(comparison_plots.protocol_gap(frame, paper_protocol, honest_protocol))
    return frame


def protocol_gaps(study: Study, results: Results) -> dict[str, pd.DataFrame]:
    """The paper's protocol against every other one (what sharing a patient is worth), and the official folds
    against the patient-level cross-validation where both ran (what sharing an accession number is worth within
    the official protocol), keyed by the second protocol (or `<official>-vs-<cv>`)."""
    others = [p for p in study.protocols if p != study.primary]
    out = {p: protocol_gap(study, results, study.primary, p) for p in others}
    official = [p for p in others if protocol_kind(study, p) == "official"]
    grouped = [p for p in others if protocol_kind(study, p) == "cv"]
    for a in official:
        for b in grouped:
            out[f"{a}-vs-{b}"] = protocol_gap(study, results, a, b)
    return out


def confusion_matrices(study: Study, results: Results) -> None:
    """Per protocol, every row's confusion matrix (counts), random-init rows marked."""
    for protocol in study.protocols:
        display(plots.confusion_matrices({f"{marked(study, name)} ({p})": r.metrics["confusion"]
                                          for (p, name), r in results.items() if p == protocol}, normalize=False))


def gradcam_result(result: Any) -> Any:
    """The unit whose model explains its own test images: the whole result, or a pooled result's last fold."""
    return result.folds[-1] if result.folds else result


def gradcam_panels(study: Study, results: Results, records: list[Mapping[str, Any]] | None = None,
                   n: int = 4) -> None:
    """Grad-CAM for every row, from the model trained on a whole split (the paper's protocol) where there is one,
    else a fold's model; each panel with its caveats: a random-init backbone, and a model whose cross-validated
    figures (`records`, from pooled_figures) do not show it separates the classes."""
    from tlrepro.reports import model_views

    honest = {rec["row"]: rec for rec in records or [] if rec.get("kind") == "cv"}
    for name in dict.fromkeys(name for (_, name), _r in results.items()):
        whole = results.by_key.get((study.primary, name))
        chosen = whole if whole is not None and whole.classifier is not None else gradcam_result(
            results[(study.protocols[-1], name)])
        caveats = []
        if name in study.random_init():
            caveats.append("its backbone was trained from random initialisation, not ImageNet: the heat shows what "
                           "filters learnt on these few images respond to")
        if reason := near_chance(honest.get(name)):
            caveats.append(f"under the {unit_name(study)}-level cross-validation {reason}: a map of where a model "
                           "looks says nothing of tissue when the model has not shown it separates the classes")
        if chosen.unit.fold:
            caveats.append(f"the model of fold {chosen.unit.fold} of `{chosen.protocol}`, explaining that fold's test images")
        elif protocol_kind(study, chosen.protocol) == "paper":
            caveats.append(f"the model of the paper's protocol, whose test {unit_name(study)}s also sit in its "
                           "training: where it looks may be where it recognises a patient")
        model_views.gradcam_panel(study, chosen, n=n, caveats=caveats)


def no_paper_figure(study: Study, protocol: str) -> None:
    kind = protocol_kind(study, protocol)
    shows = {"cv": f"It shows what the models do on {unit_name(study)}s they never saw.",
             "official": ("It is the protocol the BreakHis literature reports, which keeps patient folders whole but "
                          "can put two folders of one accession number on opposite sides.")}.get(kind, "")
    note(f"**{protocol_title(study, protocol).capitalize()} has no paper figure:** the paper reports only its own "
         f"protocol ({study.primary}), so no figure of this protocol gets a verdict against the paper's. {shows}")


def above_paper(comparison: pd.DataFrame) -> None:
    """Say where our figure under the paper's own protocol lies above the paper's, only as far as the interval
    carries it, and only with what it means: both figures come from the paper's protocol, so the difference
    compares two runs of that protocol and says nothing about leakage."""
    rates = comparison[comparison["ours"].notna() & (comparison["paper"] <= 1) & ~comparison["metric"].str.contains("loss")]
    above = rates[rates["ours"] > rates["paper"]]
    if above.empty:
        return
    listed = "; ".join(f"{r.row}, {r.metric.replace('_', ' ')}: ours {r.ours:.3f}, the paper's {r.paper:.3f}"
                       for r in above.itertuples())
    has_interval = above["ci_low"].notna()
    beyond = has_interval & (above["ci_low"] > above["paper"])
    if beyond.all():
        how = "each above the paper's figure by more than its interval allows"
    elif not has_interval.any():
        how = "without intervals (too few patients to resample), so not shown to differ from the paper's"
    else:
        how = "not all of them clear of their intervals, so not all shown to differ from the paper's"
    note(f"**Above the paper's own figures** ({listed}): {how}. Both figures come from the paper's protocol (ours "
         "re-run on this run's data), so this compares two runs of one protocol and says nothing about leakage; what "
         "a patient on both sides of the split is worth is measured below, against the protocols that keep patients "
         "apart.")


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
    show(table(frame, f"The paper's figures as counts of {n:,} test images (a size inferred from its figures)"))
    inferred = entry.get("test_images_inferred")
    note(f"<small>A test side of {n:,} images is inferred, not stated" + (f" ({inferred})" if inferred else "")
         + ". The binomial interval treats its test images as independent; they are not (one patient's images, on "
         "both sides of a split by image), so it is narrower than the paper's real uncertainty.</small>")
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

