"""Every script in benchmarks/ runs its `--smoke` mode (tiny models, a few generated images, a throwaway project
under a temporary folder), so a change in the package that breaks a benchmark fails here, not months later.

All scripts run one after another in ONE fresh process (TensorFlow starts once, and the smoke project that
benchmarks/_common.py builds is shared), each as `python benchmarks/<script>.py --smoke` would run it
(runpy, `__main__`); the test asserts each exits 0 and printed something. A script that does not know --smoke
is a failure too (argparse exits 2). Run with -s to see each script's wall and CPU seconds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"

RUNNER = r"""
import contextlib, io, json, resource, runpy, sys, time, traceback
from pathlib import Path

folder = Path(sys.argv[1])
sys.path.insert(0, str(folder))  # as running a script puts its own folder first: `from _common import ...`
results = {}
for name in sys.argv[2:]:
    started, cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    out = io.StringIO()
    sys.argv = [str(folder / name), "--smoke"]
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(str(folder / name), run_name="__main__")
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        code, out = 1, io.StringIO(out.getvalue() + traceback.format_exc())
    used = resource.getrusage(resource.RUSAGE_SELF)
    results[name] = {"code": code, "seconds": round(time.perf_counter() - started, 1),
                     "cpu_seconds": round(used.ru_utime + used.ru_stime - cpu.ru_utime - cpu.ru_stime, 1),
                     "output": out.getvalue()[-3000:]}
    print(f"smoke {name}: exit {code} in {results[name]['seconds']} s ({results[name]['cpu_seconds']} s CPU)",
          file=sys.stderr, flush=True)
print("SMOKE-RESULTS " + json.dumps(results))
"""


def scripts() -> list[str]:
    return sorted(p.name for p in BENCHMARKS.glob("*.py") if not p.name.startswith("_"))


@pytest.mark.extended  # every script's smoke mode, about 60 s: CI runs it
def test_every_benchmark_runs_its_smoke_mode():
    names = scripts()
    assert len(names) >= 11, names
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAGGLE_", "IMAGENET_", "TLREPRO_", "GPU_BENCH_"))}
    env.update(TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow", PYTHONPATH=str(REPO / "src"))
    done = subprocess.run([sys.executable, "-c", RUNNER, str(BENCHMARKS), *names], capture_output=True, text=True,
                          timeout=600, env=env, cwd=REPO)
    lines = [line for line in done.stdout.splitlines() if line.startswith("SMOKE-RESULTS ")]
    assert done.returncode == 0 and lines, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads(lines[-1].removeprefix("SMOKE-RESULTS "))
    print({name: (r["seconds"], r["cpu_seconds"]) for name, r in results.items()})  # with -s: wall and CPU seconds
    failed = {name: r["output"] for name, r in results.items() if r["code"] != 0 or not r["output"].strip()}
    assert not failed, "\n\n".join(f"{name}:\n{out}" for name, out in failed.items()) + done.stderr[-3000:]
    assert set(results) == set(names)
