"""Progress lines for long runs: the notebook keeps a short training log, the terminal that started the run
(`dvc repro` -> `tlrepro run` -> papermill -> the notebook's kernel) shows every epoch, and the HTML report shows
neither (curves and tables say it better)."""

from __future__ import annotations

import re
import sys

EPOCH_LINE = re.compile(r"^\[[^\]]*\] epoch \d+/\d+: ")


def epoch_line(name: str, epoch: int, epochs: int, logs: dict | None) -> str:
    shown = ", ".join(f"{k} {v:.4f}" for k, v in (logs or {}).items() if k != "learning_rate")
    return f"[{name}] epoch {epoch}/{epochs}: {shown}"


def to_terminal(line: str) -> None:
    """Show a line in the terminal that started the run: inside a notebook kernel, print() goes into the notebook
    while the process's own stderr is still that terminal. Elsewhere stderr already is the terminal."""
    if sys.stderr is not sys.__stderr__ and sys.__stderr__ is not None:
        print(line, file=sys.__stderr__, flush=True)
