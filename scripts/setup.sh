#!/usr/bin/env bash
# Set up the project on a machine with Python 3.11, 3.12 or 3.13 and pip: a .venv in the project root holding
# the pinned dependencies (pyproject.toml), the project itself (editable), the dev tools, and the Jupyter kernel
# "Python (tlrepro)" that the notebooks name.
#
#   bash scripts/setup.sh          # from any folder; safe to run again (a no-op when nothing changed)
#
# The interpreter: $PYTHON if set, else `python3` when it is a supported version, else the newest of
# python3.13, python3.12 and python3.11 on PATH; it says which one it chose.
# Environment: PYTHON=/path/to/python3.x to choose the interpreter; TLREPRO_EXTRAS=gpu,dev for CUDA
# TensorFlow instead of the CPU build (default cpu,dev); TLREPRO_SETUP_FORCE=1 to reinstall
# even when pyproject.toml has not changed since the last successful run.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

VENV=.venv
STAMP="$VENV/.tlrepro-setup"
LOG="$VENV/setup-pip.log"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
started=$SECONDS

step() { printf '[setup %4ss] %s\n' "$((SECONDS - started))" "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

# Supported Pythons: requires-python in pyproject.toml (TensorFlow 2.21 has wheels for each).
SUPPORTED="3.11 3.12 3.13"
is_supported() { "$1" -c 'import sys; sys.exit(sys.version_info[:2] not in ((3, 11), (3, 12), (3, 13)))' >/dev/null 2>&1; }

find_python() {
  local candidate
  if [[ -n "${PYTHON:-}" ]]; then
    is_supported "$PYTHON" && { command -v "$PYTHON"; return 0; }
    die "PYTHON=$PYTHON is $("$PYTHON" -V 2>&1 || echo 'not runnable'); it must be Python ${SUPPORTED// /, }."
  fi
  for candidate in python3 python3.13 python3.12 python3.11; do
    if command -v "$candidate" >/dev/null 2>&1 && is_supported "$candidate"; then
      command -v "$candidate"
      return 0
    fi
  done
  return 1
}

# Run pip with its output in $LOG; on failure show the end of the log.
pip_logged() {
  if ! "$VENV/bin/python" -m pip "$@" >>"$LOG" 2>&1; then
    echo "--- last lines of $LOG ---" >&2
    tail -n 30 "$LOG" >&2
    die "pip $* failed (full log: $ROOT/$LOG)"
  fi
}

# 1. the virtual environment
if [[ -x "$VENV/bin/python" ]] && is_supported "$VENV/bin/python" \
   && { [[ -z "${PYTHON:-}" ]] || [[ "$("$VENV/bin/python" -V 2>&1)" == "$("$PYTHON" -V 2>&1)" ]]; }; then
  step "using the existing $VENV ($("$VENV/bin/python" -V 2>&1))"
else
  if [[ -e "$VENV" ]]; then
    [[ -f "$VENV/pyvenv.cfg" ]] || die "$ROOT/$VENV exists but is not a virtual environment: move it away."
    step "$VENV is not a working Python ${SUPPORTED// /, } environment of the one asked for: recreating it"
    rm -rf "$VENV"
  fi
  PY="$(find_python)" || die "Python ${SUPPORTED// /, } is required (requires-python in pyproject.toml), and none \
was found (python3 is: $(python3 -V 2>&1 || echo missing)). Install one (Debian/Ubuntu: apt-get install python3 \
python3-venv; macOS: brew install python@3.12; or https://www.python.org/downloads/), or run with \
PYTHON=/path/to/python3.x."
  step "creating $VENV with $PY ($("$PY" -V 2>&1); supported: ${SUPPORTED// /, })"
  "$PY" -m venv "$VENV" || die "'$PY -m venv' failed: on Debian/Ubuntu install the venv package of that Python \
(e.g. python3.12-venv)."
fi

# 2. dependencies and the project; skipped when pyproject.toml is unchanged since the last success
wanted="${TLREPRO_EXTRAS:-cpu,dev} $(cat pyproject.toml scripts/setup.sh | "$VENV/bin/python" -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())') $ROOT"
if [[ "${TLREPRO_SETUP_FORCE:-}" != 1 && -f "$STAMP" && "$(cat "$STAMP")" == "$wanted" ]] \
   && "$VENV/bin/python" -c 'import tlrepro, pytest' >/dev/null 2>&1; then
  step "dependencies up to date (pyproject.toml unchanged; TLREPRO_SETUP_FORCE=1 reinstalls)"
else
  rm -f "$STAMP"
  : >"$LOG"
  step "upgrading pip"
  pip_logged install --upgrade pip
  extras="${TLREPRO_EXTRAS:-cpu,dev}"  # TLREPRO_EXTRAS=gpu,dev for CUDA TensorFlow
  step "installing the project and its pinned dependencies (pip install -e \".[$extras]\"; log: $LOG)"
  # pip would byte-compile every file on one core (32 s of CPU here); compiled afterwards on every core, and
  # without the packages' own test suites (a fifth of the files, never imported), it takes 15 s on 2 cores instead
  # of 23. The bytecode matters: where PYTHONDONTWRITEBYTECODE is set, no import writes it, and every process
  # would compile what it imports again (the suite took 436 s instead of about 300 without it).
  pip_logged install --no-compile -e ".[$extras]"
  step "byte-compiling the environment (but its packages' tests) and src/ on every core"
  # exit status ignored, as pip ignores it: a few packages ship files that are not Python 3 (examples, templates)
  "$VENV/bin/python" -c 'import compileall, re, sysconfig
for folder in sorted({sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}) + ["src"]:
    skip = re.compile(re.escape(folder) + r".*[/\\]tests?[/\\]")  # below the folder: a clone may sit in tests/
    compileall.compile_dir(folder, quiet=1, workers=0, rx=skip)' >>"$LOG" 2>&1 || true
  step "installed: $("$VENV/bin/python" -m pip list --format=freeze 2>/dev/null | wc -l) packages in $VENV"
  echo "$wanted" >"$STAMP"
fi

# 3. the Jupyter kernel the notebooks (and papermill) run on, inside the venv
step "registering the Jupyter kernel 'Python (tlrepro)'"
"$VENV/bin/python" -m ipykernel install --sys-prefix --name tlrepro --display-name "Python (tlrepro)" >/dev/null \
  || die "registering the Jupyter kernel failed"

step "done. Activate with: . $VENV/bin/activate"
