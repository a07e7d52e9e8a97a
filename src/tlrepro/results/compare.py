"""The published figures of each study (paper_figures.yaml) beside ours, with honest notes.

Kept as data, not code, so a corrected transcription is a one-line YAML change that DVC tracks.

A confidence interval over the evaluation images of one trained model says how much our figure could move
with other images; it leaves out the paper's own sampling error and the variation between training runs. So
the notes never call a difference "real", and they give no inside/outside verdict at all where the runs are
not like for like (`no_verdict_reasons`): random initialisation (also through an `init_from` pretraining
entry), a dataset the paper does not name or another one, a subset of the data, a figure measured on the
images that chose its epoch, schedule or grid cell (ours or the paper's), capped training, a quick pass.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from tlrepro.core.errors import UserError
from tlrepro.core.numbers import is_count, number

FIGURES_FILE = Path(__file__).with_name("paper_figures.yaml")
COMPARE_COLUMNS = ["row", "metric", "paper", "ours", "ci_low", "ci_high", "difference", "seed_mean", "seed_std",
                   "seeds", "paper_within_ci", "side"]
SIDE_NAMES = {"train": "training", "val": "validation", "test": "test"}


@functools.cache
def _figures() -> dict[str, Any]:
    return yaml.safe_load(FIGURES_FILE.read_text())


def studies() -> list[str]:
    """Study ids in the order paper_figures.yaml lists them."""
    return list(_figures()["studies"])


def datasets() -> dict[str, dict[str, Any]]:
    """Dataset citations keyed like params.yaml `datasets`."""
    return copy.deepcopy(_figures()["datasets"])


def load(study: str) -> dict[str, Any]:
    """One study's entry (title, authors, year, data, rows, ...), with `id` and its `dataset_info`."""
    entries = _figures()["studies"]
    if study not in entries:
        raise UserError(f"Unknown study `{study}`: {FIGURES_FILE.name} has {', '.join(entries)}.")
    entry = copy.deepcopy(entries[study])
    entry["id"] = study
    entry["dataset_info"] = datasets().get(entry.get("dataset"), {})
    return entry


def reported(study: str) -> pd.DataFrame:
    """The paper's figures as a table: one row per model/configuration, one column per metric."""
    return pd.DataFrame.from_dict(load(study)["rows"], orient="index").rename_axis("row")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return None if math.isnan(value) else float(value)


def compare(study: str, ours: Mapping[str, Mapping[str, Any]], metrics: Sequence[str] | None = None,
            spread: Mapping[str, Mapping[str, Mapping[str, float]]] | None = None) -> pd.DataFrame:
    """The paper's figures beside ours, one line per (row, metric) the paper reports as a number.

    `ours` maps row -> flat figures (accuracy, accuracy_ci_low, ...; `side`: the side they were measured on,
    when it is not the study's evaluation side); `spread` maps row -> metric -> the seed spread (mean, std,
    seeds). Rows or metrics we did not measure keep the paper's value with ours empty (NaN);
    `paper_within_ci` is None where we have no interval.
    """
    entry = load(study)
    metrics = list(metrics or entry.get("headline") or [])
    lines = []
    for row, figures in entry["rows"].items():
        mine = ours.get(row, {})
        for metric in metrics:
            paper = _number(figures.get(metric))
            if paper is None:
                continue
            value, low, high = (_number(mine.get(k)) for k in (metric, f"{metric}_ci_low", f"{metric}_ci_high"))
            seeds = ((spread or {}).get(row) or {}).get(metric) or {}
            lines.append({
                "row": row, "metric": metric, "paper": paper, "ours": value, "ci_low": low, "ci_high": high,
                "difference": None if value is None else round(value - paper, 6),
                "seed_mean": seeds.get("mean"), "seed_std": seeds.get("std"), "seeds": seeds.get("seeds"),
                "paper_within_ci": None if low is None or high is None else bool(low <= paper <= high),
                "side": mine.get("side"),
            })
    frame = pd.DataFrame(lines, columns=COMPARE_COLUMNS)
    for column in ("paper", "ours", "ci_low", "ci_high", "difference", "seed_mean", "seed_std", "seeds"):
        frame[column] = frame[column].astype(float)
    frame["paper_within_ci"] = frame["paper_within_ci"].astype(object)
    return frame


def paper_dataset_unnamed(provenance: Mapping[str, Any]) -> bool:
    return not provenance.get("paper_dataset")


def dataset_note(provenance: Mapping[str, Any]) -> str:
    """One sentence when our dataset is not the paper's (or the paper names none), else ''."""
    ours = provenance.get("dataset")
    if paper_dataset_unnamed(provenance):
        described = load(provenance["study"]).get("dataset_described") if provenance.get("study") else None
        return (f"The paper does not name its dataset{f' ({described})' if described else ''}; this run used "
                f"`{ours}` in its place.")
    if provenance.get("source_dataset", ours) != provenance["paper_dataset"]:
        return f"This run used `{ours}`, not the paper's `{provenance['paper_dataset']}`."
    return ""


def no_verdict_reasons(provenance: Mapping[str, Any], row: str, side: str | None = None) -> list[str]:
    """Why a row's figures cannot be set against the paper's as like for like (empty when they can).

    `side` is the side the figure was measured on (default: the study's evaluation side, `evaluated_on`). A
    paper row with `of: <row>` (sarker2025's prediction folder) is a figure of that row's model: its training's
    reasons (weights, caps, what validation chose) are that row's."""
    entry = load(provenance["study"]) if provenance.get("study") else {}
    model = ((entry.get("rows") or {}).get(row) or {}).get("of", row)
    reasons = []
    if model in provenance.get("random_init", []):
        via = (provenance.get("random_init_via") or {}).get(model)
        reasons.append("trained from random initialisation, not ImageNet weights"
                       + (f" (it starts from the pretraining entry `{via}`, trained from random initialisation)"
                          if via else ""))
    if paper_dataset_unnamed(provenance):
        reasons.append(f"the paper does not name its dataset; ours, `{provenance.get('dataset')}`, stands in for it")
    elif provenance.get("source_dataset", provenance.get("dataset")) != provenance.get("paper_dataset"):
        reasons.append(f"run on `{provenance.get('dataset')}`, not the paper's `{provenance.get('paper_dataset')}`")
    published, images = provenance.get("published_images"), provenance.get("images")
    if published and images and images < published:
        reasons.append(f"run on a subset of the data ({images:,} of the published {published:,} images)")
    chose = (provenance.get("validation_chose") or {}).get(model)
    if (side or provenance.get("evaluated_on")) == "val" and chose:
        reasons.append(f"measured on the validation images that chose its {' and '.join(chose)}")
    paper_chose = entry.get("chosen_on_reported_images")
    if paper_chose and row in paper_chose.get("rows", [row]):
        reasons.append(f"the paper's figure was measured on the images that chose {paper_chose['what']}")
    capped = (provenance.get("capped_epochs") or {}).get(model)
    if capped:
        reasons.append(f"training capped at {capped['ours']} of {capped['paper']} epochs")
    if provenance.get("max_images_per_class"):
        reasons.append(f"at most {provenance['max_images_per_class']} images per class (quick pass)")
    return reasons


def _shown(value: float, count: bool, signed: bool = False) -> str:
    return number(int(round(value)), signed=signed) if count else number(value, signed=signed)


def difference_notes(frame: pd.DataFrame, provenance: Mapping[str, Any], confidence: float) -> list[str]:
    """One plain note per row: each of its figures beside the paper's, the interval verdict per figure, and what
    the intervals leave out or why there is no verdict, said once for the row (the reasons depend on the row
    and its side only; repeated on every figure they buried the figures)."""
    level = f"{confidence:.0%}"
    seed_kind = provenance.get("seed_kind") or "seeds"
    notes = []
    for row, lines in frame.groupby("row", sort=False):
        parts, reasons, images = [], [], None
        for line in lines.itertuples():
            metric = line.metric.replace("_", " ")
            if pd.isna(line.ours):
                parts.append(f"{metric}: not measured here (paper {number(line.paper)})")
                continue
            side = line.side if isinstance(getattr(line, "side", None), str) else None
            count = is_count(line.paper)  # layers, parameters: whole numbers, printed as such, no interval
            text = (f"{metric}: ours {_shown(line.ours, count)} vs paper {_shown(line.paper, count)} "
                    f"({_shown(line.difference, count, signed=True)})")
            if not pd.isna(line.seed_std) and line.seeds and line.seeds > 1:
                text += f", across {int(line.seeds)} {seed_kind} {line.seed_mean:.4f} ± {line.seed_std:.4f} (sd)"
            line_reasons = [] if count else no_verdict_reasons(provenance, str(row), side)
            reasons += [r for r in line_reasons if r not in reasons]
            if not line_reasons and not count and line.paper_within_ci is not None:
                where = "inside" if line.paper_within_ci else "outside"
                text += f", the paper's figure {where} our {level} interval [{line.ci_low:.3f}, {line.ci_high:.3f}]"
                images = SIDE_NAMES.get(side or provenance.get("evaluated_on") or "", "evaluation")
            parts.append(text)
        note = f"{row}: " + "; ".join(parts) + "."
        if reasons:
            note += f" No verdict: {'; '.join(reasons)}."
        if images:
            note += (f" Each interval covers only the sampling of our {images} images, not the paper's own "
                     f"sampling error nor the variation between training runs.")
        notes.append(note)
    return notes


def unmeasured_notes(missing: pd.DataFrame) -> list[str]:
    """One sentence naming the paper's figures this run has nothing to set beside (e.g. absent magnifications)."""
    if not len(missing):
        return []
    names = sorted(set(missing["metric"].str.replace("_", " ")))
    return [f"Not measured here, so not compared: {', '.join(names)} (for {', '.join(dict.fromkeys(missing['row']))})"
            " — this run produced no figure for them."]


def split_facts(frame: pd.DataFrame) -> dict[str, Any]:
    """What a split file's images are (each image once, whatever its views and protocols): how many, per class,
    and, where the file has them, the magnifications, accession numbers and patient folders present."""
    images = frame.drop_duplicates("path")
    facts: dict[str, Any] = {"images": len(images),
                             "classes": {str(k): int(v) for k, v in images.groupby("label").size().items()}}
    if "magnification" in images:
        facts["magnifications"] = sorted({int(m) for m in images["magnification"]})
    for column in ("accession", "patient"):
        if column in images:
            facts[f"{column}s"] = int(images[column].nunique())
    return facts


def _share(counts: Mapping[str, int], label: str) -> str:
    total = sum(counts.values())
    return f"{counts.get(label, 0) / total:.0%} {label} ({counts.get(label, 0):,} of {total:,})"


def data_deviations(dataset: str, facts: Mapping[str, Any]) -> list[dict[str, str]]:
    """What the run's data lack against the whole dataset (paper_figures.yaml `datasets`): magnifications,
    accession numbers, and the class balance (at the magnifications present), each a deviation with its reason."""
    info = datasets().get(dataset, {})
    listed = []
    known = {int(m): c for m, c in (info.get("by_magnification") or {}).items()}
    present = facts.get("magnifications") or []
    if known and present and set(present) != set(known):
        listed.append({"what": "Magnifications", "paper": ", ".join(f"{m}X" for m in sorted(known)),
                       "ours": ", ".join(f"{m}X" for m in present) + " only",
                       "reason": "the run's data hold no other magnification: no figure at the others is measured"})
    if info.get("accessions") and facts.get("accessions") and facts["accessions"] < info["accessions"]:
        folders = f" ({facts['patients']:,} patient folders)" if facts.get("patients") else ""
        listed.append({"what": "Patients", "paper": f"{info['accessions']} accession numbers "
                                                    f"({info.get('patients', '?')} patient folders)",
                       "ours": f"{facts['accessions']:,} of the {info['accessions']} accession numbers{folders}",
                       "reason": "a subset of the patients: every patient-level figure and interval rests on these"})
    ours = facts.get("classes") or {}
    whole = ({label: sum(known[m].get(label, 0) for m in present if m in known) for label in ours}
             if known and present else dict(info.get("classes") or {}))
    if len(ours) > 1 and sum(whole.values()) and set(ours) <= set(whole):
        label = sorted(ours)[0]
        where = f" at {', '.join(f'{m}X' for m in present)}" if known and present else ""
        if abs(ours[label] / sum(ours.values()) - whole[label] / sum(whole.values())) >= 0.005:
            listed.append({"what": "Class balance", "paper": f"the whole dataset{where}: {_share(whole, label)}",
                           "ours": _share(ours, label),
                           "reason": "the run's data hold this mix; accuracy and its trivial baseline (calling "
                                     "every image the majority class) depend on it"})
    return listed


def deviations(study: str, provenance: Mapping[str, Any], data: Mapping[str, Any] | None = None
               ) -> list[dict[str, str]]:
    """Every way this run departs from the paper, each with its reason: the study's own list from
    paper_figures.yaml, then what this run's data and settings add (subset, caps, random weights). `data`: the
    split's facts (`split_facts`), which add the magnifications, patients and class balance present."""
    listed = [dict(d) for d in load(study).get("deviations", [])]
    published = provenance.get("published_images")
    images = provenance.get("images")
    if published and images and images < published:
        listed.append({"what": "Data", "paper": f"{published:,} images", "ours": f"{images:,} images",
                       "reason": "a subset of the published dataset (the offline mirror holds part of it)"})
    if data:
        listed += data_deviations(str(provenance.get("source_dataset") or provenance.get("dataset")), data)
    if not paper_dataset_unnamed(provenance) and (
            provenance.get("source_dataset", provenance.get("dataset")) != provenance.get("paper_dataset")):
        listed.append({"what": "Dataset", "paper": str(provenance.get("paper_dataset")),
                       "ours": str(provenance.get("dataset")), "reason": "set in params.yaml for this run"})
    for row in provenance.get("random_init", []):
        via = (provenance.get("random_init_via") or {}).get(row)
        listed.append({"what": f"{row} weights", "paper": "ImageNet",
                       "ours": f"from `{via}`, itself trained from random initialisation" if via else "random initialisation",
                       "reason": "no ImageNet weights reachable for this backbone (set explicitly in params.yaml)"})
    for row, cap in (provenance.get("capped_epochs") or {}).items():
        listed.append({"what": f"{row} epochs", "paper": f"{cap['paper']} epochs", "ours": f"at most {cap['ours']}",
                       "reason": "a cap in params.yaml to keep the run practical on a CPU"})
    if provenance.get("max_images_per_class"):
        listed.append({"what": "Images per class", "paper": "all", "ours": str(provenance["max_images_per_class"]),
                       "reason": "scale.max_images_per_class: a quick pass"})
    return listed


def random_init_banner(random_init: Sequence[str], via: Mapping[str, str] | None = None) -> str:
    """The headline every report shows when a model was not given ImageNet weights, directly or through the
    pretraining entry its `init_from` names (`via`: row -> entry)."""
    if not random_init:
        return ""
    through = [f"{row} through `{entry}`" for row, entry in (via or {}).items() if row in random_init]
    return (f"RANDOM INITIALISATION: {', '.join(random_init)} trained WITHOUT ImageNet weights "
            f"(set explicitly in params.yaml{'; ' + ', '.join(through) + ', its init_from pretraining entry' if through else ''})."
            " Their figures are not comparable with the paper's.")



# ---------------------------------------------------------------- the sentences a reader takes away


def _level(unit: str) -> str:
    return "image" if unit == "image" else unit


def leading_row(study: str) -> str:
    """The row a study's sentence is about: the one with the paper's best figure on its first headline metric."""
    entry = load(study)
    metric = (entry.get("headline") or ["accuracy"])[0]
    scored = {row: _number(f.get(metric)) for row, f in entry["rows"].items()}
    scored = {row: v for row, v in scored.items() if v is not None}
    return max(scored, key=scored.get) if scored else next(iter(entry["rows"]))


def takeaway_id(study: str) -> str:
    return f"tlrepro-takeaway-{study}"


def takeaway_slot(study: str) -> None:
    """At the top of a study's report, before anything else is imported or shown: where its take-away sentence is
    written once every figure is in (tlrepro.reports.evidence.takeaway updates this display in place, so the
    executed notebook and its HTML show the sentence here). Light to import: no TensorFlow."""
    from IPython.display import Markdown, display

    display(Markdown("*The take-away sentence is written here once every figure is in (see the end of the "
                     "report for how it is built).*"), display_id=takeaway_id(study))


def takeaway_sentence(facts: Mapping[str, Any]) -> str:
    """One sentence per BreakHis study, from its figures (`facts`, as tlrepro.reports.protocols.takeaway_facts
    builds them and the details file keeps them): the row under the paper's protocol beside the paper's figure,
    under the cross-validation with its interval against the trivial baseline (or the count of patients that
    is too few for one), and over the official folds."""
    row = facts["row"] + (" (random initialisation)" if facts.get("random_init") else "")
    parts = []
    paper = facts.get("paper") or {}
    if paper.get("ours") is not None:
        metric = str(paper.get("metric", "accuracy")).replace("_", " ")
        published = f" (paper {paper['published']:.3f})" if paper.get("published") is not None else ""
        parts.append(f"Under the paper's protocol {row} scores {metric} {paper['ours']:.3f}{published}")
    cv = facts.get("cv") or {}
    if cv.get("value") is not None:
        unit = cv.get("unit", "patient")
        lead = f"with every {unit} tested once it" if parts else f"With every {unit} tested once, {row}"
        has_interval = cv.get("low") is not None and cv.get("high") is not None
        figure = f"{cv['value']:.3f}" + (f" [{cv['low']:.3f}, {cv['high']:.3f}]" if has_interval else "")
        text = f"{lead} scores {figure} at {_level(unit)} level"
        if not has_interval and cv.get("groups"):
            text += f" from {cv['groups']} {unit}s"
        if cv.get("p_value") is not None:
            text += f" (permutation p = {cv['p_value']:.2f})"
        if cv.get("against_trivial"):
            text += f", {cv['against_trivial']}"
        parts.append(text)
    official = facts.get("official") or {}
    if official.get("mean") is not None:
        parts.append(f"over the dataset's {official['folds']} official folds (repeated splits that can put one "
                     f"accession number on both sides) it scores {official['mean']:.3f} ± {official['sd']:.3f} "
                     f"(mean ± sd over folds) at {_level(official.get('unit', 'patient'))} level")
    if not parts:
        return f"{facts.get('study', 'This study')}: no figure to take away yet."
    sentence = "; ".join(parts)
    return sentence[0].upper() + sentence[1:] + "."


def comparison_takeaway(study: str, frame: pd.DataFrame, provenance: Mapping[str, Any], confidence: float) -> str:
    """One sentence for a study without an honest protocol: its leading row (the paper's best figure on its
    first headline metric) beside the paper, with the verdict or why there is none."""
    measured = frame[frame["ours"].notna() & (frame["paper"] <= 1)]
    if measured.empty:
        return f"{study}: nothing measured here can be set beside the paper's figures."
    first = measured[measured["metric"] == measured["metric"].iloc[0]]
    line = first.loc[first["paper"].idxmax()]
    metric = str(line["metric"]).replace("_", " ")
    rows = measured["row"].nunique()
    name = f"{line['row']}{' (random initialisation)' if line['row'] in provenance.get('random_init', []) else ''}"
    lead = f"{name}, the paper's best of {rows} models," if rows > 1 else name
    interval_text = (f" [{line['ci_low']:.3f}, {line['ci_high']:.3f}]"
                     if pd.notna(line["ci_low"]) and pd.notna(line["ci_high"]) else "")
    text = f"{lead} scores {metric} {line['ours']:.3f}{interval_text} against the paper's {line['paper']:.3f}"
    side = line["side"] if isinstance(line.get("side"), str) else None
    reasons = no_verdict_reasons(provenance, str(line["row"]), side)
    if reasons:
        text += f", with no verdict: {reasons[0]}" + (f" (and {len(reasons) - 1} more reason(s))" if len(reasons) > 1 else "")
    elif line["paper_within_ci"] is not None:
        where = "inside" if line["paper_within_ci"] else "outside"
        text += f", the paper's figure {where} our {confidence:.0%} interval"
    return text + "."
