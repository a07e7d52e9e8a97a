"""Where TensorFlow runs (tlrepro.modeling.compute), on this CPU: the schema's `compute` section, the plan `auto`
makes without a GPU (the run exactly as before), MirroredStrategy over two logical CPU devices, and a two-worker
MultiWorkerMirroredStrategy over loopback, each against the default strategy's result. Strategies are fixed when
TensorFlow starts, so each run is a fresh process (tests/distributed_run.py), bounded in time and stopped."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import write_image
from PIL import Image

from tlrepro.core import config
from tlrepro.core.errors import UserError

HERE = Path(__file__).parent
# Replicas sum their gradients in another order than one device does: float32 rounding, nothing more.
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("distributed")
    rows = []
    for i in range(40):
        label = "malignant" if i % 2 else "benign"
        path = write_image(folder / f"{i}.png", seed=300 + i)
        if label == "malignant":  # darker, so the head learns and the compared probabilities spread out
            Image.fromarray((np.asarray(Image.open(path)) * 0.35).astype(np.uint8)).save(path)
        rows.append({"path": str(path), "label": label, "side": "val" if i % 5 == 0 else "train",
                     "sha256": f"s{i}", "view": "identity"})
    pd.DataFrame(rows).to_csv(folder / "frame.csv", index=False)
    return folder


def run(args: list[str], env: dict | None = None, timeout: int = 180) -> dict:
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TLREPRO_FEATURE_CACHE": str(Path(args[1]) / "cache"),
                   **(env or {})}
    done = subprocess.run([sys.executable, str(HERE / "distributed_run.py"), *args], capture_output=True, text=True,
                          timeout=timeout, env=environment)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def single(images) -> dict:
    return run(["default", str(images)])


def test_the_schema_refuses_bad_compute_values_with_one_line(tmp_path):
    raw = yaml.safe_load(config.paths.PARAMS_FILE.read_text())
    for key, value, message in (("strategy", "tpu", "Input should be 'auto', 'default', 'mirrored' or 'multi_worker'"),
                                ("mixed_precision", "half", "'auto', 'off', 'float16' or 'bfloat16'"),
                                ("worker_timeout_s", 0, "greater than 0"),
                                ("jit", "on", "unknown setting `jit`; known settings: jit_compile")):
        bad = json.loads(json.dumps(raw))
        bad["compute"][key] = value
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(bad, sort_keys=False))
        with pytest.raises(UserError) as err:
            config.load_params(tmp_path / "params.yaml")
        where = "`compute`" if key == "jit" else f"`compute.{key}`"
        assert where in str(err.value) and message in str(err.value) and "\n" not in str(err.value)


def test_auto_on_a_cpu_is_the_run_as_before():
    from tlrepro.modeling import compute

    compute.reset()
    try:
        plan = compute.activate(config.Compute())
        assert (plan.name, plan.replicas, plan.precision, plan.jit_compile) == ("default", 1, "float32", "auto")
        assert plan.per_replica_batch(32) == 32 and plan.describe()["gpus"] == []
    finally:
        compute.reset()


def test_multi_worker_without_tf_config_says_what_to_set(monkeypatch):
    from tlrepro.modeling import compute

    monkeypatch.delenv("TF_CONFIG", raising=False)
    compute.reset()
    with pytest.raises(UserError, match="TF_CONFIG is not set"):
        compute.activate(config.Compute(strategy="multi_worker"))
    compute.reset()


def test_multi_worker_names_a_worker_that_does_not_answer_instead_of_waiting(monkeypatch):
    """Inside a kernel (or the pretraining stage) too, before TensorFlow's server starts: MultiWorkerMirroredStrategy
    itself would wait for ever for a worker whose port is closed."""
    import time

    from tlrepro.modeling import compute

    ports = free_ports(2)
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                                                "task": {"type": "worker", "index": 1}}))
    compute.reset()
    started = time.monotonic()
    with pytest.raises(UserError, match=f"127.0.0.1:{ports[0]} did not answer within 0.5 s"):
        compute.activate(config.Compute(strategy="multi_worker", worker_timeout_s=0.5))
    assert time.monotonic() - started < 5
    compute.reset()


@pytest.mark.extended  # two TensorFlow processes (one per strategy), about 19 s: CI runs it
def test_mirrored_over_two_logical_cpus_gives_the_default_strategys_result(images, single):
    mirrored = run(["mirrored", str(images), "2"])
    assert mirrored["replicas"] == 2 and mirrored["strategy"] == "mirrored" and single["replicas"] == 1
    assert mirrored["path"] == single["path"] == "cached features"
    # the model learned, so agreement is over spread-out probabilities, not a constant both runs would share
    assert np.ptp(single["probs"]) > 0.5 and single["val_accuracy"] == 1.0
    assert np.abs(np.array(mirrored["probs"]) - np.array(single["probs"])).max() < TOLERANCE
    assert mirrored["val_accuracy"] == single["val_accuracy"]


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.extended  # two TensorFlow worker processes, about 25 s: CI runs it
def test_two_workers_on_loopback_train_to_the_same_result(images, single):
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    try:
        for index in range(2):
            env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TLREPRO_FEATURE_CACHE": str(images / f"cache{index}"),
                   "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
            procs.append(subprocess.Popen([sys.executable, str(HERE / "distributed_run.py"), "multi_worker",
                                           str(images)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                          env=env))
        outs = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    results = [json.loads(o[0].strip().splitlines()[-1]) for o in outs]
    assert [r["replicas"] for r in results] == [2, 2] and results[0]["probs"] == results[1]["probs"]
    assert np.abs(np.array(results[0]["probs"]) - np.array(single["probs"])).max() < TOLERANCE
