"""reports/index.html: every study's published figures beside ours, one section per study.

The metrics JSON contract: every study stage writes reports/metrics/<study>.json as

    {
      "study": "lin2024",                      # the study id
      "dataset": "skin",                       # params.yaml `datasets` key the run used
      "random_init": ["VGG16"],                # models trained WITHOUT ImageNet weights ([] when none)
      "results": {                             # one entry per row of paper_figures.yaml
        "MobileNetV2": {                       # flat keys of tlrepro.evaluation.evaluate:
          "accuracy": 0.84, "accuracy_ci_low": 0.81, "accuracy_ci_high": 0.87,
          "precision": ..., "recall": ..., "recall_ci_low": ..., "f1": ..., "roc_auc": ..., ...
        }
      }
    }

Rows are the paper's rows (lin2024: backbone names; mobilenet2025: frozen/finetune/augmented; see
paper_figures.yaml). Extra keys, at the top or inside a row, are allowed and ignored here. A study
without a metrics file is listed as "not run yet"; the index never fails because one study is missing.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import jinja2

from tlrepro import io, papers, paths
from tlrepro.errors import UserError

TEMPLATES = Path(__file__).with_name("templates")


def _read_metrics(study: str) -> dict[str, Any] | None:
    path = paths.metrics_json(study)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{paths.relative(path)} is not valid JSON ({exc}): re-run `dvc repro {study}`.") from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise UserError(f"{paths.relative(path)} has no `results` mapping: see the format in tlrepro/report.py.")
    return data


def _fmt(value: Any) -> str:
    """Rates with 4 decimals, counts with thousands separators, missing as a dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if float(value).is_integer() and abs(value) >= 2:
        return f"{int(value):,}"
    return f"{value:.4f}"


def _lines(study: str, results: dict[str, dict[str, Any]]) -> list[dict[str, str]]:
    frame = papers.compare(study, results)
    lines = []
    for rec in frame.to_dict("records"):
        has_ci = not (math.isnan(rec["ci_low"]) or math.isnan(rec["ci_high"]))
        diff = rec["difference"]
        lines.append({
            "row": rec["row"], "metric": rec["metric"],
            "paper": _fmt(rec["paper"]), "ours": _fmt(rec["ours"]),
            "ci": f"[{_fmt(rec['ci_low'])}, {_fmt(rec['ci_high'])}]" if has_ci else "—",
            "difference": "—" if math.isnan(diff) else f"{diff:+.4f}",
            "within": {True: "yes", False: "no"}.get(rec["paper_within_ci"], "—"),
        })
    return lines


def _section(study: str, metrics: dict[str, Any] | None) -> dict[str, Any]:
    paper = papers.load(study)
    section = {"id": study, "paper": paper, "ran": metrics is not None}
    if metrics is None:
        return section
    ours_dataset = metrics.get("dataset") or paper.get("dataset")
    section.update(
        dataset=ours_dataset,
        dataset_info=papers.datasets().get(ours_dataset, {}),
        dataset_differs=ours_dataset != paper.get("dataset"),
        random_init=list(metrics.get("random_init") or []),
        lines=_lines(study, metrics["results"]),
        html=f"{study}.html",
        html_exists=(paths.REPORTS / f"{study}.html").is_file(),
    )
    return section


def render_index(sections: list[dict[str, Any]]) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    return env.get_template("index.html.j2").render(sections=sections, datasets=papers.datasets())


def write_index() -> Path:
    """Write reports/index.html from reports/metrics/*.json and paper_figures.yaml; returns its path."""
    sections = [_section(study, _read_metrics(study)) for study in papers.studies()]
    target = paths.REPORTS / "index.html"
    io.write_text(target, render_index(sections))
    return target
