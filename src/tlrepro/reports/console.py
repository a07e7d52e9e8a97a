"""`tlrepro metrics [STUDY]`: every study's headline figures in the terminal, one line per row and figure.

`dvc metrics show` prints every metrics file as one wide table whose columns are the union of every file's
keys (thousands of characters per line for this project); this reads the same files (reports/metrics/<study>.json,
and the split audits in reports/leakage/) and prints what people look for: study, row, figure, value with its
interval. Studies that have not run are named, not errors.
"""

from __future__ import annotations

from typing import Any

from tlrepro.core import fileio, paths
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


def metrics_text(studies: list[str]) -> str:
    rows, missing = [], []
    for study in studies:
        path = paths.metrics_json(study)
        if not path.is_file():
            missing.append(study)
            continue
        data = fileio.read_json(path, "metrics file")
        random = set(data.get("random_init") or [])
        rows += [(s, r + (" (random init)" if r.split("/")[-1] in random else ""), n, v) for s, r, n, v in lines(data)]
    header = ("study", "row", "figure", "value [95% interval where given]")
    widths = [max(len(str(x[i])) for x in [header, *rows]) for i in range(4)]
    text = [" ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=True)).rstrip()]
    text += [" ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    if missing:
        text.append(f"not run yet: {', '.join(missing)} (dvc repro study@<study>)")
    return "\n".join(text)
