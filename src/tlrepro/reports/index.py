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

from tlrepro.core import config, fileio, paths
from tlrepro.core.errors import UserError
from tlrepro.core.numbers import interval, is_count, number
from tlrepro.results import compare, comparison_plots

TEMPLATES = Path(__file__).with_name("templates")


def _read(path: Path, what: str) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    data = fileio.read_json(path, what)
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise UserError(f"{paths.relative(path)} has no `results` mapping: re-run `dvc repro study@{path.stem.split('.')[0]}`.")
    return data


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
        dataset=metrics.get("dataset"), dataset_info=compare.datasets().get(prov.get("source_dataset", metrics.get("dataset")), {}),
        dataset_note=compare.dataset_note(prov), seed_kind=prov.get("seed_kind") or "seeds",
        random_init=list(metrics.get("random_init") or []), provenance=prov,
        lines=[{"row": r.row, "metric": r.metric.replace("_", " "), "paper": number(r.paper),
                "ours": interval(r.ours, r.ci_low, r.ci_high),
                "difference": number(int(round(r.difference)) if is_count(r.paper) else r.difference, signed=True),
                "seeds": "—" if pd.isna(r.seed_std) else f"{r.seed_mean:.3f} ± {r.seed_std:.3f} (n={int(r.seeds)})"}
               for r in frame.itertuples()],
        notes=compare.difference_notes(frame, prov, confidence) + compare.unmeasured_notes(missing), frame=frame,
        ours_only=[{"key": k, "accuracy": interval(v.get("accuracy"), v.get("accuracy_ci_low"), v.get("accuracy_ci_high")),
                    "f1": number(v.get("f1"), 3), "roc_auc": number(v.get("roc_auc"), 3)}
                   for k, v in metrics["results"].items()],
        html=f"{study}.html", html_exists=(paths.REPORTS / f"{study}.html").is_file(),
        level=f"{confidence:.0%}",
    )
    return out


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
                records.append({**rec, "study": study, "protocol": protocol, "primary": primary,
                                "label": f"{study} · {rec['row']}"})
    if not records:
        return None
    frame = pd.DataFrame(records)
    unit = records[0].get("unit", "patient")
    fig = comparison_plots.protocol_gap(frame)
    buffer = BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    lines = [{"study": r["study"], "row": r["row"], "primary": r["primary"], "protocol": r["protocol"],
              "paper_protocol": number(r["paper_protocol"], 3), "honest": number(r["honest"], 3),
              "difference": interval(r["difference"], r.get("ci_low"), r.get("ci_high")),
              "groups": r.get(f"{unit}s"), "note": r.get("ci_note") if isinstance(r.get("ci_note"), str) else ""}
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
        gaps=gaps)


def write_index() -> Path:
    """Write reports/index.html from the metrics and details files; returns its path."""
    params = config.load_params()
    ids = list(dict.fromkeys([*compare.studies(), *params.studies]))
    details = {s: _read_details(s) for s in ids if s in compare.studies()}
    sections = [section(s, _read(paths.metrics_json(s), "metrics file"), details[s]) for s in details]
    overlap = fileio.read_json(paths.overlap_json(), "overlap file") if paths.overlap_json().is_file() else None
    return fileio.write_text(paths.REPORTS / "index.html", render_index(sections, overlap, protocol_gaps(details)))


def _read_details(study: str) -> dict[str, Any] | None:
    path = paths.details_json(study)
    return fileio.read_json(path, "details file") if path.is_file() else None
