"""Progress lines for long runs: the notebook keeps a short training log, the terminal that started the run
(`dvc repro` -> `tlrepro run` -> papermill -> the notebook's kernel) shows every epoch, and the HTML report shows
neither (curves and tables say it better)."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from typing import Any

from tqdm import tqdm

EPOCH_LINE = re.compile(r"^\[[^\]]*\] epoch \d+/\d+: ")
# a tqdm bar's line ("desc:  42%|████      | 51/122 [00:10<00:14, 5.06batch/s]"): inside a kernel the process's
# stderr is also captured into the notebook, so the runner drops these from the executed notebook and the report
BAR_LINE = re.compile(r"\d+%\|.*\| *\d+/\d+ \[")


def epoch_line(name: str, epoch: int, epochs: int, logs: dict | None) -> str:
    shown = ", ".join(f"{k} {v:.4f}" for k, v in (logs or {}).items() if k != "learning_rate")
    return f"[{name}] epoch {epoch}/{epochs}: {shown}"


def in_kernel() -> bool:
    """True inside a notebook kernel: sys.stderr is the kernel's stream into the notebook, while the process's own
    stderr (sys.__stderr__) is still the terminal that started the run."""
    return sys.stderr is not sys.__stderr__ and sys.__stderr__ is not None


def to_terminal(line: str) -> None:
    """Show a line in the terminal that started the run (inside a kernel, print() would go into the notebook).
    Elsewhere stderr already is the terminal, and the caller's own output shows the line."""
    if in_kernel():
        print(line, file=sys.__stderr__, flush=True)


def bar(iterable: Iterable, **kwargs: Any) -> tqdm:
    """A tqdm bar for long loops (feature extraction, prediction). Inside a kernel it goes to the terminal that
    started the run, at most every 10 s (so `dvc repro` shows which backbone and how far, not only papermill's
    "cell N of M"); ipykernel also copies that stream into the notebook, where the runner drops it (BAR_LINE).
    Elsewhere tqdm's own rule (shown on a terminal only)."""
    if in_kernel():
        return tqdm(iterable, file=sys.__stderr__, mininterval=10, disable=False, **kwargs)
    return tqdm(iterable, disable=None, **kwargs)
