"""`tlrepro metrics [STUDY]`: every study's headline figures in the terminal, one line per row and figure.

`dvc metrics show` prints every metrics file as one wide table whose columns are the union of every file's
keys; this reads the same files (reports/metrics/<study>.json, with F1, AUC and loss from the details beside
them) and prints what people look for: study, row, figure, value with its interval. Studies that have not run
are named, not errors.
"""

from __future__ import annotations

import textwrap
from typing import Any

from tlrepro.core import fileio, identity, paths
from tlrepro.core.numbers import interval, number

SHOWN = ("accuracy", "patient_accuracy", "f1", "roc_auc", "loss", "accuracy_seed_sd")


def lines(study: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(study, row, figure, value) for one metrics file."""
    out = []
    for row, figures in study["results"].items():
        for name in SHOWN:
            if figures.get(name) is None:
                continue
            value = (interval(figures[name], figures.get(f"{name}_ci_low"), figures.get(f"{name}_ci_high"), 3)
                     if name == "accuracy" else number(figures[name], 3))
            out.append((study["study"], row, name.replace("_", " "), value))
    return out


def with_details(study: str, data: dict[str, Any]) -> dict[str, Any]:
    """A metrics file (headline figures only: accuracy, its interval, per patient, seed sd) with the study's id,
    its random-init rows and each row's F1, AUC and loss from the details file (older metrics files held them)."""
    path = paths.details_json(study)
    details = fileio.read_json(path, "details file") if path.is_file() else {}
    found = (details or {}).get("results") or {}
    results = {row: {**{k: v for k, v in ((found.get(row) or {}).get("evaluation") or {}).items() if k in SHOWN},
                     **figures} for row, figures in data["results"].items()}
    random = data.get("random_init") or ((details or {}).get("provenance") or {}).get("random_init")
    return {**data, "study": study, "random_init": random, "results": results}


def metrics_text(studies: list[str]) -> str:
    rows, missing, quick_studies = [], [], []
    for study in studies:
        found = fileio.read_metrics(paths.metrics_json(study))
        if found is None:
            missing.append(study)
            continue
        data = with_details(study, found)
        random = set(data.get("random_init") or [])
        quick = " (quick pass)" if _quick_pass(study) else ""
        quick_studies += [study] if quick else []
        rows += [(s, r + (" (random init)" if r.split("/")[-1] in random else "") + quick, n, v)
                 for s, r, n, v in lines(data)]
    header = ("study", "row", "figure", "value [95% interval where given]")
    widths = [max(len(str(x[i])) for x in [header, *rows]) for i in range(4)]
    text = [" ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=True)).rstrip()]
    text += [" ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    if quick_studies:
        text += textwrap.wrap(f"(quick pass): {', '.join(quick_studies)} ran with params.yaml `scale` caps; their "
                              f"figures show that the pipeline runs, not the studies' results", width=100)
    if missing:
        text.append(f"not run yet: {', '.join(missing)} (dvc repro study@<study>)")
    return "\n".join(text)


def _quick_pass(study: str) -> bool:
    """Whether the study's last run had a quick-pass cap (its details file's provenance says)."""
    path = paths.details_json(study)
    details = fileio.read_json(path, "details file") if path.is_file() else {}
    return bool(identity.quick_pass((details or {}).get("provenance") or {}))
