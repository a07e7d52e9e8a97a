"""Experiments queued and run in parallel (`dvc exp run --queue` + `dvc queue start -j 2`): two tiny lin2024
variations of a git project run side by side in DVC's own temporary workspaces, share the feature cache of the
main workspace, and each ends with the metrics a direct run of its settings gives. Bounded in time; the queue's
workers are stopped however the test ends."""

from __future__ import annotations

import json
import time

import pytest
from e2e import make_project

pytestmark = [pytest.mark.slow, pytest.mark.extended]  # about 70 s of DVC's queue workers: CI runs it
RATES = ("0.001", "0.005")


def test_two_queued_experiments_finish_with_the_metrics_of_direct_runs(tmp_path):
    project = make_project(tmp_path, studies=("lin2024",))
    params = project.params()
    params["studies"]["lin2024"]["grid"] = {"learning_rates": [0.001], "epochs": [1]}
    params["studies"]["lin2024"]["rows"] = {"MobileNetV2": {"backbone": "TinyCNN"}}
    params["studies"]["lin2024"]["repeats"] = 1
    project.write_params(params)
    env = {k: v for k, v in project.env.items() if k != "TLREPRO_ROOT"}  # each experiment runs in its own folder
    project.env.clear()
    project.env.update(env, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
                       GIT_COMMITTER_EMAIL="t@t")
    project.run("git", "init", "-q")
    project.dvc("init", "-q")
    project.run("git", "add", "-A")
    project.run("git", "commit", "-qm", "tiny lin2024")
    for rate in RATES:
        project.dvc("exp", "run", "--queue", "-S", f"studies.lin2024.grid.learning_rates=[{rate}]")
    project.dvc("queue", "start", "-j", "2")
    try:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline:
            status = project.dvc("queue", "status", stdout_only=True)
            if status.count("Success") == len(RATES) or "Failed" in status:
                break
            time.sleep(3)
        assert status.count("Success") == len(RATES), status + project.dvc("queue", "logs", status.split()[-4], ok=False)
    finally:
        project.dvc("queue", "stop", "--kill", ok=None)
    shown = json.loads(project.dvc("exp", "show", "--json", stdout_only=True))
    queued = {}
    for commit in shown:
        for exp in commit.get("experiments") or []:
            for revision in exp["revs"]:
                data = revision["data"]
                rate = data["params"]["params.yaml"]["data"]["studies"]["lin2024"]["grid"]["learning_rates"][0]
                queued[str(rate)] = data["metrics"]["reports/metrics/lin2024.json"]["data"]["results"]
    assert set(queued) == {str(float(r)) for r in RATES}, queued.keys()
    # a direct run of the first setting in the workspace gives the queued experiment's metrics
    project.dvc("exp", "run", "-S", f"studies.lin2024.grid.learning_rates=[{RATES[0]}]")
    direct = json.loads((project.root / "reports/metrics/lin2024.json").read_text())["results"]
    assert direct == queued[str(float(RATES[0]))]
