"""The package's structure: imports only go down its floors (core <- data <- modeling, results <- studies,
reports, serve <- cli), no import cycle (lazy imports inside functions included), and no module over 400
lines unless its docstring says why."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
FLOORS = {"core": 1, "data": 2, "modeling": 3, "results": 3, "studies": 4, "reports": 4, "serve": 4}
MAX_LINES = 400


def modules() -> dict[str, Path]:
    return {".".join(f.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__"): f
            for f in sorted((SRC / "tlrepro").rglob("*.py"))}


def import_graph() -> dict[str, set[str]]:
    known, graph = modules(), defaultdict(set)
    for name, path in known.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tlrepro"):
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in known and t != name}
    return graph


def floor(module: str) -> int:
    parts = module.split(".")
    return 5 if len(parts) == 1 or parts[1] in ("cli", "__main__") else FLOORS[parts[1]]


def test_imports_only_go_down_the_floors():
    upward = [(a, b) for a, targets in import_graph().items() for b in targets
              if floor(b) > floor(a) or (floor(a) == floor(b) == 3 and a.split(".")[1] != b.split(".")[1])]
    assert not upward, upward


def test_no_import_cycle():
    graph, state, cycles = import_graph(), {}, []

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = "done"

    for module in modules():
        if module not in state:
            visit(module, [module])
    assert not cycles, cycles


def test_long_modules_say_why():
    long = [name for name, path in modules().items()
            if len(path.read_text().splitlines()) > MAX_LINES
            and "400 lines" not in (ast.get_docstring(ast.parse(path.read_text())) or "")]
    assert not long, f"over {MAX_LINES} lines with no reason in the docstring: {long}"


def test_the_checks_see_a_planted_cycle_and_an_upward_import(tmp_path, monkeypatch):
    """The graph is real: a cycle and an upward import planted in a copy are found."""
    import shutil

    shutil.copytree(SRC / "tlrepro", tmp_path / "tlrepro")
    (tmp_path / "tlrepro/core/paths.py").write_text((tmp_path / "tlrepro/core/paths.py").read_text()
                                                     + "\nfrom tlrepro.data import labels\n")
    (tmp_path / "tlrepro/data/labels.py").write_text((tmp_path / "tlrepro/data/labels.py").read_text()
                                                      + "\nfrom tlrepro.core import paths\n")
    monkeypatch.setattr(__import__(__name__), "SRC", tmp_path)
    graph = import_graph()
    assert "tlrepro.data.labels" in graph["tlrepro.core.paths"]
    assert any(floor(b) > floor(a) for a, t in graph.items() for b in t)
