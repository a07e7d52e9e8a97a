"""The pinned install resolves on every Python that requires-python admits (3.11 to 3.13), without installing it.

Each Python the machine has gets a scratch venv, whose own pip resolves `pip install --dry-run ".[cpu,dev]"`
against the package index (so environment markers and wheel tags are that Python's). `--python-version` with
`--only-binary=:all:` cannot do it: antlr4-python3-runtime, which DVC needs through hydra-core, ships no wheel.
A Python the machine lacks is skipped, saying so.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VERSIONS = ("3.11", "3.12", "3.13")


def interpreter(version: str) -> str | None:
    """A working python<version>: on PATH, or installed by pyenv (whose shims exist but may refuse to run)."""
    candidates = [shutil.which(f"python{version}"),
                  *sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/python{version}")))]
    for candidate in filter(None, candidates):
        probe = subprocess.run([candidate, "-c", "import sys, venv; print('%d.%d' % sys.version_info[:2])"],
                               capture_output=True, text=True)
        if probe.returncode == 0 and probe.stdout.strip() == version:
            return candidate
    return None


def test_requires_python_admits_every_supported_version():
    import tomllib

    from packaging.specifiers import SpecifierSet

    spec = SpecifierSet(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"])
    assert all(spec.contains(f"{v}.0") for v in VERSIONS) and not spec.contains("3.10.0")


@pytest.mark.slow
@pytest.mark.extended  # a pip resolution of 230 packages per Python (about 30 s each): CI runs it
@pytest.mark.parametrize("version", [v for v in VERSIONS if v != "{}.{}".format(*sys.version_info[:2])])
def test_the_pinned_install_resolves(tmp_path, version):
    python = interpreter(version)
    if python is None:
        pytest.skip(f"Python {version} is not installed on this machine")
    subprocess.run([python, "-m", "venv", str(tmp_path / "venv")], check=True, capture_output=True)
    report = tmp_path / "report.json"
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    done = subprocess.run([str(tmp_path / "venv/bin/python"), "-m", "pip", "install", "--dry-run", "--quiet",
                           "--report", str(report), ".[cpu,dev]"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    resolved = {item["metadata"]["name"].lower().replace("_", "-"): item["metadata"]["version"]
                for item in json.loads(report.read_text())["install"]}
    assert resolved["tlrepro"] and resolved["keras"] == "3.15.1" and resolved["dvc"] == "3.67.1"
    assert resolved.get("tensorflow-cpu", resolved.get("tensorflow")) == "2.21.0"
