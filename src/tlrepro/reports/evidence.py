"""What each figure of a protocol is evidence of: the protocol it comes from (described by what its split file
shows), the baselines it is set beside on the same rows (calling every image one class, chance, colour alone), its
marks (random initialisation, one class predicted), its spread over seeds and folds, its permutation p-value, what
the protocol's patients can resolve, and the one sentence a reader takes away from a study.

Three kinds of protocol (`protocol_kind`): the paper's (the first); a patient-level cross-validation
(`grouped_kfold`), a partition in which every patient is tested exactly once, by a model that never saw them; and
the dataset's official folds (`folds`, BreakHis's Folds.csv), repeated splits in which an image may be tested
several times or never, and accession numbers can straddle sides. Each is described by what its split file shows,
never by what it is meant to be.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from IPython.display import Markdown, update_display

from tlrepro.core import fileio, paths
from tlrepro.core.numbers import number
from tlrepro.data.labels import predicted_positive
from tlrepro.data.splits import describe_protocol
from tlrepro.reports.sections import SIDE_NAMES, ci, interval_note, note, show, table
from tlrepro.results import baselines, compare, metrics, significance
from tlrepro.studies.base import Results, Study

FIGURES = ("accuracy", "recall", "specificity", "roc_auc")
NAMES = {"accuracy": "image-level accuracy", "recall": "sensitivity", "specificity": "specificity",
         "roc_auc": "ROC AUC"}


def unit_name(study: Study) -> str:
    return study.unit


def marked(study: Study, row: str) -> str:
    """The row's name as every table and plot shows it: with " (random init)" when it was trained without ImageNet
    weights."""
    return row + (" (random init)" if row in study.random_init() else "")


def protocol_kind(study: Study, protocol: str) -> str:
    """`paper` (the first protocol), `cv` (a grouped k-fold: every patient tested once), `official` (the
    dataset's own folds: repeated splits) or `split` (any other one-split protocol)."""
    if protocol == study.primary:
        return "paper"
    return {"grouped_kfold": "cv", "folds": "official"}.get(study.settings.protocols[protocol].method, "split")


def protocol_title(study: Study, protocol: str) -> str:
    unit = unit_name(study)
    return {"paper": f"the paper's protocol (`{protocol}`)", "cv": f"the {unit}-level cross-validation (`{protocol}`)",
            "official": f"the dataset's official folds (`{protocol}`)",
            "split": f"protocol `{protocol}`"}[protocol_kind(study, protocol)]


# ---------------------------------------------------------------- what a protocol's split file shows


def protocol_facts(study: Study, protocol: str) -> dict[str, Any]:
    """What the protocol's split file shows (tlrepro.data.splits.describe_protocol: tests per image, images and
    groups never tested, groups straddling test and training): as the split stage recorded it in its audit, else
    counted from the split now."""
    audit = fileio.read_json(paths.leakage_details_json(study.id), "leakage audit").get(protocol, {})
    if isinstance(audit.get("facts"), dict):
        return audit["facts"]
    return describe_protocol(study.protocol(protocol), folds_file=audit.get("folds_file"))


# ---------------------------------------------------------------- one class, baselines, near chance


def one_class(study: Study, result: Any) -> str | None:
    """Where a row's predictions are one class, in words: over every evaluation image (pooled), or within a fold
    whose test side holds both classes (a fold that tests one class gives a right model one class too); None where
    they are not. Such a row is a trivial classifier there."""
    folds = None
    if "fold" in result.frame and result.frame["fold"].nunique() > 1:
        labels = pd.Series(study.labels(result.frame), index=result.frame.index)
        mixed = labels.groupby(result.frame["fold"]).transform("nunique") == 2
        folds = result.frame["fold"].where(mixed, "").to_numpy()
    found = significance.one_class(result.probs, folds, threshold=result.metrics["threshold"])
    return found["note"] or None


@dataclass
class Checks:
    """What a protocol's figures are set against, computed once per protocol on its own evaluation rows: the
    trivial baseline (each unit's training majority), colour alone (where run), what its patients can resolve,
    and per row the permutation test by patient."""

    trivial: baselines.Baseline
    colour: baselines.Baseline | None
    resolution: dict[str, Any] | None
    permutation: dict[str, dict[str, Any]] = field(default_factory=dict)


def protocol_checks(study: Study, results: Results, protocol: str, *, colour: bool = True) -> Checks:
    """The baselines of one protocol (same folds, sides and unit as its models) and each row's permutation test;
    `colour`: also fit the colour-only logistic regression (it reads every image once)."""
    e, unit = study.params.evaluation, unit_name(study)
    rows = study.protocol(protocol)
    by = ("fold", "magnification") if study.settings.per_magnification else ("fold",)
    common = {"side": study.settings.evaluate_on, "by": by, "seed": study.seed, "resamples": e.bootstrap_resamples,
              "confidence": e.confidence, "unit": unit}
    trivial = baselines.trivial_baseline(rows, **common)
    labels, groups = study.labels(trivial.frame), trivial.frame["group"].to_numpy()
    try:
        resolved = significance.resolution(labels, groups, baseline=trivial.metrics.get(f"{unit}_accuracy"), unit=unit)
    except ValueError:  # a group holding both classes: no count of patients per class
        resolved = None
    permutation = {}
    for (_, name), r in results.items(protocol):
        try:
            permutation[name] = significance.permutation_test(
                study.labels(r.frame), r.probs, r.frame["group"].to_numpy(), draws=max(e.bootstrap_resamples,
                                                                                         significance.MIN_DRAWS),
                seed=study.seed, threshold=r.metrics["threshold"], unit=unit)
        except ValueError:
            continue
    return Checks(trivial, baselines.colour_baseline(rows, **common) if colour else None, resolved, permutation)


def _flat(m: Mapping[str, Any], unit: str, prefix: str = "") -> dict[str, Any]:
    """Accuracy, patient-level accuracy and ROC AUC of flat figures, with their intervals, under `prefix`."""
    out = {}
    for key, name in (("accuracy", "accuracy"), (f"{unit}_accuracy", "group_accuracy"), ("roc_auc", "roc_auc")):
        for suffix in ("", "_ci_low", "_ci_high"):
            out[f"{prefix}{name}{suffix}"] = m.get(f"{key}{suffix}")
    return out


def figure_record(study: Study, results: Results, key: tuple[str, str], checks: Checks) -> dict[str, Any]:
    """One (protocol, row)'s figures beside its baselines, as plain values the report and the index both read:
    accuracy at image and patient level and ROC AUC with intervals; the trivial baseline, chance and colour on the
    same rows; the permutation p-value; the seed and fold spreads; the one-class and random-init marks; and the
    figure against the trivial baseline in words."""
    protocol, name = key
    r = results[key]
    m, unit = r.metrics, unit_name(study)
    trivial = checks.trivial.metrics
    perm = checks.permutation.get(name) or {}
    rec: dict[str, Any] = {
        "protocol": protocol, "kind": protocol_kind(study, protocol), "row": name,
        "random_init": name in study.random_init(), "one_class": one_class(study, r), "unit": unit,
        "images": m.get("n"), "groups": m.get(f"{unit}s"), "min_groups": metrics.MIN_GROUPS, **_flat(m, unit),
        "chance_auc": baselines.CHANCE_AUC, "trivial_name": checks.trivial.name,
        "trivial_accuracy": trivial.get("accuracy"), "trivial_group_accuracy": trivial.get(f"{unit}_accuracy"),
        **(_flat(checks.colour.metrics, unit, "colour_") if checks.colour else {}),
        "p_value": (perm.get(f"{unit}_accuracy") or {}).get("p_value"),
        "p_value_auc": (perm.get("roc_auc") or {}).get("p_value"), "permutation_draws": perm.get("draws"),
        "resolution": checks.resolution,
        "seeds_group_accuracy": results.spread(key, f"{unit}_accuracy"), "seeds_accuracy": results.spread(key, "accuracy"),
        "folds_accuracy": fold_means(study, r),
    }
    if rec["one_class"]:
        rec["against_trivial"] = f"it {rec['one_class']}: a trivial classifier itself"
    else:
        rec["against_trivial"] = baselines.verdict(
            rec["group_accuracy"], rec["group_accuracy_ci_low"], rec["group_accuracy_ci_high"],
            rec["trivial_group_accuracy"], baselines.describe(checks.trivial, f"{unit}_accuracy"))["sentence"]
    return rec


def fold_means(study: Study, result: Any) -> dict[str, Any] | None:
    """Mean, sd, min and max over folds of each fold's own accuracy, at image and at patient level (how Spanhol
    et al. report their five folds); None without folds."""
    frame = result.frame
    if "fold" not in frame or frame["fold"].nunique() < 2:
        return None
    correct = (predicted_positive(result.probs, result.metrics["threshold"]).astype(int)
               == study.labels(frame)).astype(float)
    data = frame.assign(_correct=correct)
    image = data.groupby("fold")["_correct"].mean()
    group = data.groupby(["fold", "group"])["_correct"].mean().groupby("fold").mean()
    return {"folds": int(len(image)), "image": metrics.seed_spread(image.to_numpy()),
            "group": metrics.seed_spread(group.to_numpy())}


def near_chance(rec: Mapping[str, Any] | None) -> str | None:
    """Why a row's figures do not show that it separates the classes (Grad-CAM's caveat), or None: one class
    predicted, a ROC AUC interval that holds chance, or a patient-level accuracy not clear of the trivial
    baseline (no interval: not shown to beat it)."""
    if not rec:
        return None
    if rec.get("one_class"):
        return f"it {rec['one_class']}"
    low, high = rec.get("roc_auc_ci_low"), rec.get("roc_auc_ci_high")
    if low is not None and high is not None and low <= baselines.CHANCE_AUC <= high:
        return f"its ROC AUC interval [{low:.3f}, {high:.3f}] holds chance ({baselines.CHANCE_AUC})"
    if not str(rec.get("against_trivial", "")).startswith("better than"):
        return f"it is {rec['against_trivial']}"
    return None


def _spread_text(spread: Mapping[str, Any] | None) -> str:
    if not spread:
        return "—"
    return f"{spread['mean']:.3f} ± {spread['std']:.3f} [{spread['min']:.3f}, {spread['max']:.3f}]"


def _figure(rec: Mapping[str, Any], key: str) -> str:
    """A figure with its interval, or without one for a row that predicts one class (its interval would
    measure only the class mix of the resampled patients)."""
    if rec["one_class"] and rec.get(f"{key}_ci_low") is not None:
        return f"{ci(rec[key], None, None)} (one class)"
    return ci(rec[key], rec.get(f"{key}_ci_low"), rec.get(f"{key}_ci_high"))


def row_label(rec: Mapping[str, Any]) -> str:
    """The row's name with its marks: random initialisation, one class predicted."""
    marks = [m for m, on in (("random init", rec["random_init"]), ("one class", rec["one_class"])) if on]
    return rec["row"] + (f" ({', '.join(marks)})" if marks else "")


def pooled_figures(study: Study, results: Results, protocol: str, *, colour: bool = True) -> list[dict[str, Any]]:
    """The protocol's figures per row beside its baselines on the same evaluation rows: patient-level accuracy
    with its interval, the spread over seeds and folds, image-level accuracy, sensitivity, specificity, ROC AUC and
    the permutation p-value; then the baselines (the trivial one, chance, colour alone unless `colour` is False),
    one sentence per row against the trivial baseline, and what the protocol's patients can resolve. Returns the
    records (figure_record) the details file keeps."""
    unit = unit_name(study)
    keys = [k for k, _ in results.items(protocol)]
    if not keys:
        return []
    checks = protocol_checks(study, results, protocol, colour=colour)
    recs = [figure_record(study, results, k, checks) for k in keys]
    shown = []
    for rec in recs:
        m = results[(protocol, rec["row"])].metrics
        line: dict[str, Any] = {"row": row_label(rec), "images": rec["images"], f"{unit}s": rec["groups"],
                                f"{unit}-level accuracy": _figure(rec, "group_accuracy")}
        if rec["seeds_group_accuracy"]:
            line[f"{unit}-level over {rec['seeds_group_accuracy']['seeds']} seeds"] = _spread_text(
                rec["seeds_group_accuracy"])
        for k in FIGURES:
            line[NAMES[k]] = _figure({**rec, k: m.get(k), f"{k}_ci_low": m.get(f"{k}_ci_low"),
                                      f"{k}_ci_high": m.get(f"{k}_ci_high")}, k)
        if rec["folds_accuracy"]:
            line["across folds: image-level"] = _spread_text(rec["folds_accuracy"]["image"])
            line[f"across folds: {unit}-level"] = _spread_text(rec["folds_accuracy"]["group"])
        if rec["p_value"] is not None:
            line[f"permutation p ({unit}-level)"] = rec["p_value"]
        shown.append(line)
    frame = pd.DataFrame(shown)
    facts = protocol_facts(study, protocol)
    how = {"cv": f"out-of-fold: every image tested once, by the fold model that never saw its {unit}",
           "official": (f"every test of the folds pooled ({facts['tests']:,} tests of {facts['images']:,} images; "
                        f"an image tested in several folds counts each time, and a resampled {unit} brings all its "
                        f"tests)"),
           }.get(protocol_kind(study, protocol), f"its {SIDE_NAMES[study.settings.evaluate_on]} side")
    show(table(frame, f"{protocol_title(study, protocol).capitalize()}: figures over {how} ({unit}-level accuracy: "
                      f"the mean over {unit}s of each {unit}'s accuracy)"))
    extras = []
    if "across folds: image-level" in frame:
        extras.append("Across folds: mean ± sd [min, max] of each fold's own accuracy"
                      + (", as Spanhol et al. report the official folds" if protocol_kind(study, protocol)
                         == "official" else "") + ".")
    if any(rec["seeds_group_accuracy"] for rec in recs):
        extras.append(f"Over seeds: mean ± sd [min, max] over the {study.settings.repeats} seeds of `repeats` (the "
                      f"same folds), beside the interval from resampling {unit}s, which holds the seed fixed.")
    if any(rec["p_value"] is not None for rec in recs):
        draws = next(rec["permutation_draws"] for rec in recs if rec["p_value"] is not None)
        extras.append(f"Permutation p: labels shuffled among {unit}s ({draws:,} draws), scored against the fixed "
                      f"predictions.")
    if any(rec["one_class"] for rec in recs):
        extras.append("(one class): the row predicts one class over every image, or within a fold that tests both; "
                      "its figures are shown without intervals, and it is left out of the comparison of protocols.")
    note(f"<small>{interval_note(results[k].metrics for k in keys)} {' '.join(extras)}</small>")
    baselines_table(study, checks)
    note("\n".join(f"- **{row_label(rec)}**: {unit}-level accuracy {_figure(rec, 'group_accuracy')}, "
                    f"{rec['against_trivial']}." for rec in recs))
    resolution(study, protocol, recs[0])
    return recs


def baselines_table(study: Study, checks: Checks) -> pd.DataFrame:
    """What needs no model, on the protocol's own evaluation rows: the trivial baseline (a constant: no interval
    is printed for it), chance, and colour alone (a logistic regression on colour statistics, same folds)."""
    unit = unit_name(study)
    t = checks.trivial.metrics
    lines = [{"baseline": checks.trivial.name, "image-level accuracy": number(t.get("accuracy"), 3),
              f"{unit}-level accuracy": number(t.get(f"{unit}_accuracy"), 3), "ROC AUC": "0.500 (constant)"},
             {"baseline": "chance", "image-level accuracy": "—", f"{unit}-level accuracy": "—",
              "ROC AUC": f"{baselines.CHANCE_AUC:.3f}"}]
    if checks.colour:
        c = checks.colour.metrics
        lines.append({"baseline": "colour only (logistic regression on 12 colour statistics, same folds)",
                      "image-level accuracy": ci(c.get("accuracy"), c.get("accuracy_ci_low"), c.get("accuracy_ci_high")),
                      f"{unit}-level accuracy": ci(c.get(f"{unit}_accuracy"), c.get(f"{unit}_accuracy_ci_low"),
                                                   c.get(f"{unit}_accuracy_ci_high")),
                      "ROC AUC": ci(c.get("roc_auc"), c.get("roc_auc_ci_low"), c.get("roc_auc_ci_high"))})
    frame = pd.DataFrame(lines)
    show(table(frame, "Baselines on the same images, folds and sides (the trivial one predicts each fold's training "
                      "majority class; a constant prediction has no interval)"))
    return frame


def resolution(study: Study, protocol: str, rec: Mapping[str, Any]) -> None:
    """What the protocol can resolve: the patients of each class behind its figures, whether they allow an
    interval at all, and the smallest patient-level accuracy and AUC a test on them could tell from the baselines."""
    unit, resolved = unit_name(study), rec.get("resolution")
    text = f"**What {protocol_title(study, protocol)} can resolve:** "
    if resolved:
        text += resolved["sentence"]
    else:
        text += f"{rec['groups']} {unit}s."
    if rec["groups"] is not None and rec["groups"] < rec["min_groups"]:
        text += (f" They are too few {unit}s for an interval (at least {rec['min_groups']} needed): no figure here can "
                 "be told from its baseline.")
    note(text + f" Specificity rests on the {study.classes[0]} {unit}s alone.")


def side_by_side(study: Study, records: list[Mapping[str, Any]]) -> pd.DataFrame:
    """Per row, its patient-level accuracy under every protocol, each beside that protocol's trivial baseline on
    the same rows (and, for the official folds, the mean ± sd over folds): the protocols set side by side."""
    unit = unit_name(study)
    short = {"paper": "paper's protocol", "cv": "every patient tested once", "official": "official folds",
             "split": "split"}
    lines: dict[str, dict[str, Any]] = {}
    for rec in records:
        line = lines.setdefault(rec["row"], {"row": marked(study, rec["row"])})
        title = f"{rec['protocol']} ({short[rec['kind']]})"
        line[title] = _figure(rec, "group_accuracy")
        if rec["kind"] == "official" and rec["folds_accuracy"]:
            spread = rec["folds_accuracy"]["group"]
            line[title] += f"; over folds {spread['mean']:.3f} ± {spread['std']:.3f}"
        line[f"{title}: trivial"] = number(rec["trivial_group_accuracy"], 3)
    frame = pd.DataFrame(list(lines.values()))
    show(table(frame, f"{unit.capitalize()}-level accuracy under every protocol, each beside its trivial baseline "
                      f"(each fold calling every image its training majority) on the same rows"))
    return frame


# ---------------------------------------------------------------- the sentence a reader takes away


def takeaway_facts(study: Study, records: list[Mapping[str, Any]], comparison: pd.DataFrame | None) -> dict[str, Any]:
    """What the study's sentence says, as plain values (the details file keeps them; the index rebuilds the
    sentence from them): the paper's best row under the paper's protocol beside its published figure, under the
    patient-level cross-validation against the trivial baseline, and over the official folds."""
    rows = list(dict.fromkeys(rec["row"] for rec in records))
    row = compare.leading_row(study.id)
    row = row if row in rows or not rows else rows[0]
    facts: dict[str, Any] = {"study": study.id, "row": row, "random_init": row in study.random_init()}
    if comparison is not None and len(comparison):
        lines = comparison[(comparison["row"] == row) & comparison["ours"].notna() & (comparison["paper"] <= 1)
                           & ~comparison["metric"].str.contains("loss")]
        if len(lines):
            line = lines.iloc[0]
            facts["paper"] = {"protocol": study.primary, "metric": line["metric"], "ours": float(line["ours"]),
                              "published": float(line["paper"])}
    mine = {rec["kind"]: rec for rec in records if rec["row"] == row}
    if rec := mine.get("cv"):
        facts["cv"] = {"protocol": rec["protocol"], "unit": rec["unit"], "value": rec["group_accuracy"],
                           "low": rec["group_accuracy_ci_low"], "high": rec["group_accuracy_ci_high"],
                           "groups": rec["groups"], "min_groups": rec["min_groups"], "p_value": rec["p_value"],
                           "one_class": rec["one_class"], "against_trivial": rec["against_trivial"],
                           "trivial": rec["trivial_group_accuracy"]}
    if (rec := mine.get("official")) and rec["folds_accuracy"]:
        spread = rec["folds_accuracy"]["group"]
        facts["official"] = {"protocol": rec["protocol"], "unit": rec["unit"], "folds": rec["folds_accuracy"]["folds"],
                             "mean": spread["mean"], "sd": spread["std"]}
    return facts


def takeaway(study: Study, records: list[Mapping[str, Any]], comparison: pd.DataFrame | None) -> dict[str, Any]:
    """Build the study's sentence from its figures, write it into the slot at the top of the report (and here),
    and return its facts for the details file."""
    facts = takeaway_facts(study, records, comparison)
    sentence = compare.takeaway_sentence(facts)
    update_display(Markdown(f"**Take-away:** {sentence}"), display_id=compare.takeaway_id(study.id))
    note(f"**Take-away:** {sentence}")
    return facts
