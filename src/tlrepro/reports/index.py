"""reports/index.html: every study's published figures beside ours, a forest plot, provenance and the
dataset overlap matrix.

It reads what the study stages wrote: reports/metrics/<study>.json (headline figures) and
<study>.details.json (provenance, every figure, seed spreads), for every study of params.yaml and
paper_figures.yaml, without listing them; and data/overlap.json. A study that has not run is listed as such;
the index never fails because one study is missing.
"""

from __future__ import annotations

import base64
import re
from io import BytesIO
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd

from tlrepro.core import config, fileio, identity, paths
from tlrepro.core.numbers import interval, is_count, number
from tlrepro.results import compare, comparison_plots

TEMPLATES = Path(__file__).with_name("templates")


def comparison_rows(study: str, metrics: dict[str, Any], details: dict[str, Any]) -> pd.DataFrame:
    """The paper vs ours frame for a study under its primary protocol, with seed spreads: the comparison the
    study's report made (its details file keeps it, e.g. per-magnification figures that are not headline
    metrics), else one computed from the headline metrics."""
    primary = details.get("provenance", {}).get("primary_protocol")
    stored = details.get("comparison")
    if isinstance(stored, dict):  # one comparison per protocol
        stored = stored.get(primary)
    if stored:
        return pd.DataFrame(stored)
    results = details.get("results", {})
    ours, spread = {}, {}
    for key, figures in metrics["results"].items():
        protocol, _, row = key.rpartition("/")
        if protocol and protocol != primary:
            continue
        detail = results.get(key, {})
        ours[row] = {**(detail.get("evaluation") or detail.get("test") or {}), **figures}
        spread[row] = {m: s for m, s in (detail.get("seeds") or {}).items() if isinstance(s, dict)}
    return compare.compare(study, ours, spread=spread)


def _evaluation(details: dict[str, Any], key: str) -> dict[str, Any]:
    """A row's figures on its evaluation side, as the details file keeps them (empty when it has none)."""
    found = (details.get("results") or {}).get(key) or {}
    return found.get("evaluation") or found.get("test") or {}


def section(study: str, metrics: dict[str, Any] | None, details: dict[str, Any] | None) -> dict[str, Any]:
    paper = compare.load(study)
    out: dict[str, Any] = {"id": study, "paper": paper, "ran": metrics is not None}
    if metrics is None:
        return out
    details = details or {}
    prov = details.get("provenance", {"dataset": metrics.get("dataset"), "random_init": metrics.get("random_init", [])})
    # the paper's side comes from paper_figures.yaml as it is now (a corrected transcription needs no re-run)
    prov = {**prov, "study": study, "paper_dataset": paper.get("dataset")}
    full = comparison_rows(study, metrics, details)
    frame = full[full["ours"].notna()].reset_index(drop=True)
    missing = full[full["ours"].isna()]
    confidence = config.load_params().evaluation.confidence
    out.update(
        dataset=prov.get("dataset"), dataset_info=compare.datasets().get(prov.get("source_dataset", prov.get("dataset")), {}),
        dataset_note=compare.dataset_note(prov), seed_kind=prov.get("seed_kind") or "seeds",
        random_init=list(prov.get("random_init") or []), provenance=prov,
        lines=[{"row": r.row + (" (random init)" if r.row in (metrics.get("random_init") or []) else ""),
                "metric": r.metric.replace("_", " "), "paper": number(r.paper),
                "ours": interval(r.ours, r.ci_low, r.ci_high),
                "difference": number(int(round(r.difference)) if is_count(r.paper) else r.difference, signed=True),
                "seeds": "—" if pd.isna(r.seed_std) else f"{r.seed_mean:.3f} ± {r.seed_std:.3f} (n={int(r.seeds)})"}
               for r in frame.itertuples()],
        notes=compare.difference_notes(frame, prov, confidence) + compare.unmeasured_notes(missing), frame=frame,
        ours_only=[{"key": k + (" (random init)" if k.rpartition("/")[2] in (metrics.get("random_init") or []) else ""),
                    "accuracy": interval(v.get("accuracy"), v.get("accuracy_ci_low"), v.get("accuracy_ci_high")),
                    # F1 and AUC are in the details file (the metrics file keeps the headline figures)
                    "f1": number(v.get("f1", _evaluation(details, k).get("f1")), 3),
                    "roc_auc": number(v.get("roc_auc", _evaluation(details, k).get("roc_auc")), 3)}
                   for k, v in metrics["results"].items()],
        html=f"{study}.html", html_exists=(paths.REPORTS / f"{study}.html").is_file(),
        level=f"{confidence:.0%}",
        # how the run was made (commit, experiment, date, versions, hardware), and a quick pass's caps
        run=identity.text(prov.get("run")), quick_pass=identity.quick_pass(prov), images_used=identity.images_text(prov),
    )
    # the sentence a reader takes away, and every BreakHis figure beside its baselines
    out.update(takeaway=takeaway(study, frame, details, prov, confidence), baselines=baseline_lines(details))
    return out


def quick_pass_banners(sections: list[dict[str, Any]]) -> list[str]:
    """The index's top banners: each distinct quick-pass banner of the studies that ran, naming its studies."""
    studies: dict[str, list[str]] = {}
    for s in sections:
        if s.get("quick_pass"):
            studies.setdefault(s["quick_pass"], []).append(s["id"])
    return [f"{banner} Studies: {', '.join(ids)}." for banner, ids in studies.items()]


def takeaway(study: str, frame: pd.DataFrame, details: dict[str, Any], provenance: dict[str, Any],
             confidence: float) -> str:
    """The study's one sentence, rebuilt from its figures: from the facts its report kept (`takeaway` in the details
    file: the paper's protocol, the cross-validation against its trivial baseline, the official folds), else from
    its figures beside the paper's."""
    facts = details.get("takeaway")
    if isinstance(facts, dict) and facts.get("row"):
        return compare.takeaway_sentence(facts)
    return compare.comparison_takeaway(study, frame, provenance, confidence)


def baseline_lines(details: dict[str, Any]) -> list[dict[str, str]]:
    """Every (protocol, row) figure the report kept (`protocol_figures`) beside its baselines on the same rows:
    patient-level accuracy against the trivial baseline and colour alone, ROC AUC against chance and colour, the
    permutation p-value, the spreads over seeds and folds, and the marks (random init, one class)."""
    lines = []
    for rec in details.get("protocol_figures") or []:
        def fig(prefix: str, name: str, rec: dict[str, Any] = rec) -> str:
            if rec.get("one_class") and not prefix:
                return f"{number(rec.get(name), 3)} (one class)"
            return interval(rec.get(f"{prefix}{name}"), rec.get(f"{prefix}{name}_ci_low"),
                            rec.get(f"{prefix}{name}_ci_high"))

        seeds, folds = rec.get("seeds_group_accuracy"), (rec.get("folds_accuracy") or {}).get("group")
        marks = [m for m, on in (("random init", rec.get("random_init")), ("one class", rec.get("one_class"))) if on]
        lines.append({
            "protocol": rec.get("protocol", ""), "kind": {"paper": "paper's protocol", "cv": "every patient tested once",
                                                          "official": "official folds (repeated splits)"}.get(
                                                              rec.get("kind"), ""),
            "row": rec.get("row", "") + (f" ({', '.join(marks)})" if marks else ""),
            "groups": number(rec.get("groups")), "accuracy": fig("", "group_accuracy"),
            "trivial": number(rec.get("trivial_group_accuracy"), 3), "colour": fig("colour_", "group_accuracy"),
            "auc": fig("", "roc_auc"), "colour_auc": fig("colour_", "roc_auc"),
            "p": number(rec.get("p_value"), 3),
            "seeds": f"{seeds['mean']:.3f} ± {seeds['std']:.3f} (n={seeds['seeds']})" if seeds else "—",
            "folds": f"{folds['mean']:.3f} ± {folds['std']:.3f}" if folds else "—",
            "words": str(rec.get("against_trivial") or ""), "unit": str(rec.get("unit", "patient"))})
    return lines


def forest_plot(sections: list[dict[str, Any]]) -> str:
    """Every headline figure, paper beside ours with its interval and seed spread: a PNG as a data URI."""

    frames = [s["frame"].assign(study=s["id"], random_init=s["frame"]["row"].isin(s["random_init"]))
              for s in sections if s.get("ran") and len(s.get("frame", []))]
    # rates only: losses and counts (layers, parameters) are compared in the tables
    frames = [f[(f["paper"] <= 1) & ~f["metric"].str.contains("loss")] for f in frames]
    if not frames:
        return ""
    fig = comparison_plots.forest(pd.concat(frames, ignore_index=True))
    buffer = BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def overlap_table(overlap: dict[str, Any] | None) -> dict[str, Any] | None:
    if not overlap:
        return None
    names = list(overlap["datasets"])
    rows = []
    for a in names:
        cells = []
        for b in names:
            v = overlap["matrix"][a][b]
            cells.append("—" if a == b else f"{v['exact']:,} exact / {v['near']:,} near")
        rows.append({"dataset": a, "images": f"{overlap['datasets'][a]:,}", "cells": cells})
    return {"names": names, "rows": rows, "distance": overlap["phash_max_distance"]}


def code_spans(escaped: str) -> str:
    """An already escaped note's `names` as <code> (the notes are written for the Markdown reports too); the
    template escapes first and marks the result safe: `{{ note | e | code | safe }}`."""
    return re.sub(r"`([^`<>]+)`", r"<code>\1</code>", str(escaped))


def protocol_gaps(details: dict[str, dict[str, Any] | None]) -> dict[str, Any] | None:
    """Every study's paper-protocol vs honest accuracy (their details' `protocol_gap`): table lines and a figure."""
    records = []
    for study, detail in details.items():
        for protocol, rows in ((detail or {}).get("protocol_gap") or {}).items():
            primary = (detail.get("provenance") or {}).get("primary_protocol", "paper")
            for rec in rows:
                marks = [m for m, on in (("random init", rec.get("random_init")), ("one class", rec.get("one_class")))
                         if on]
                records.append({**rec, "study": study, "protocol": rec.get("to", protocol),
                                "primary": rec.get("from", primary),
                                "label": f"{study} · {rec['row']}" + (f" ({', '.join(marks)})" if marks else "")})
    if not records:
        return None
    frame = pd.DataFrame(records)
    unit = records[0].get("unit", "patient")
    fig = comparison_plots.protocol_gap(frame)
    buffer = BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    lines = [{"study": r["study"], "row": r["label"].split(" · ", 1)[1], "primary": r["primary"], "protocol": r["protocol"],
              "paper_protocol": number(r["paper_protocol"], 3), "honest": number(r["honest"], 3),
              "difference": ("left out (one class)" if r.get("one_class")
                             else interval(r["difference"], r.get("ci_low"), r.get("ci_high"))),
              "groups": r.get(f"{unit}s"),
              "note": (f"predicts one class ({r['one_class']}): its accuracy is the class mix, not what the split is "
                       "worth" if r.get("one_class") else r.get("ci_note") if isinstance(r.get("ci_note"), str) else "")}
             for r in records]
    return {"lines": lines, "unit": unit,
            "figure": "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()}


def render_index(sections: list[dict[str, Any]], overlap: dict[str, Any] | None,
                 gaps: dict[str, Any] | None = None) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, trim_blocks=True,
                             lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    env.filters["code"] = code_spans
    return env.get_template("index.html.j2").render(
        sections=sections, datasets=compare.datasets(), forest=forest_plot(sections), overlap=overlap_table(overlap),
        gaps=gaps, quick_pass=quick_pass_banners(sections))


def write_index() -> Path:
    """Write reports/index.html from the metrics and details files; returns its path."""
    params = config.load_params()
    ids = list(dict.fromkeys([*compare.studies(), *params.studies]))
    details = {s: _read_details(s) for s in ids if s in compare.studies()}
    sections = [section(s, fileio.read_metrics(paths.metrics_json(s)), details[s]) for s in details]
    overlap = fileio.read_json(paths.overlap_json(), "overlap file") if paths.overlap_json().is_file() else None
    return fileio.write_text(paths.REPORTS / "index.html", render_index(sections, overlap, protocol_gaps(details)))


def _read_details(study: str) -> dict[str, Any] | None:
    path = paths.details_json(study)
    return fileio.read_json(path, "details file") if path.is_file() else None
