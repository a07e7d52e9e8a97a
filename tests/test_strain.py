"""Runs that meet a bad setup stop in one line or carry on without what they could not have (issue 29):
a `multi_worker` run checks TF_CONFIG and reaches every other worker (closed port: one line naming it, within
compute.worker_timeout_s, before any kernel starts); a feature cache that cannot be written is skipped with one
line and the results stay the same; a metrics file with a text where a number belongs is one line naming the
file and the key; `tlrepro profile gpu` says when no GPU is visible, its flags still alone on stdout."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tlrepro.cli import main
from tlrepro.core import fileio, paths
from tlrepro.core.errors import UserError

# ---------------------------------------------------------------- multi_worker: TF_CONFIG before any kernel


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tf_config(ports: list[int], index: int = 0) -> str:
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]}, "task": {"type": "worker", "index": index}})


@pytest.fixture
def multi_worker_project(tmp_project, monkeypatch):
    """The project with `compute.strategy: multi_worker`, a 1 s worker timeout, and a runner that fails the test
    if it ever starts a kernel."""
    params = paths.PARAMS_FILE.read_text()
    assert "  strategy: auto " in params and "  worker_timeout_s: 30 " in params
    paths.PARAMS_FILE.write_text(params.replace("  strategy: auto ", "  strategy: multi_worker ")
                                 .replace("  worker_timeout_s: 30 ", "  worker_timeout_s: 1 "))
    from tlrepro.reports import runner

    def no_kernel() -> str:
        raise AssertionError("a kernel was about to start")

    monkeypatch.setattr(runner, "ensure_kernel", no_kernel)
    return tmp_project


def test_a_worker_on_a_closed_port_is_named_in_one_line_before_any_kernel(multi_worker_project, monkeypatch, capsys):
    ports = [closed_port(), closed_port()]
    monkeypatch.setenv("TF_CONFIG", tf_config(ports))
    started = time.monotonic()
    assert main(["run", "lin2024"]) == 2
    took = time.monotonic() - started
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"127.0.0.1:{ports[1]} did not answer within 1 s" in err[0], err
    assert "compute.worker_timeout_s" in err[0] and f":{ports[0]}" not in err[0]  # its own address is not asked
    assert 1 <= took < 8, took
    with socket.socket() as s:  # the check let go of this worker's own port
        s.bind(("127.0.0.1", ports[0]))


@pytest.mark.parametrize("value, expected", [
    (None, "TF_CONFIG is not set"),
    ("{not json", "TF_CONFIG is not valid JSON"),
    (json.dumps({"cluster": {"worker": ["127.0.0.1:1"]}}), "`task` must name"),
    (json.dumps({"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 3}}), "index 3 is not"),
    (json.dumps({"cluster": {"worker": ["localhost"]}, "task": {"type": "worker", "index": 0}}), "is not host:port"),
])
def test_a_missing_or_malformed_tf_config_is_one_line_before_any_kernel(multi_worker_project, monkeypatch, capsys,
                                                                         value, expected):
    if value is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", value)
    assert main(["run", "lin2024"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0] and err[0].startswith("error:"), err


def test_workers_started_together_find_each_other():
    """Each holds its own port open while it checks the others, so two checks started at once both pass."""
    from tlrepro.modeling.compute import check_cluster

    ports = [closed_port(), closed_port()]
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        time.sleep(0.3 * index)  # the second starts a little later, as a second machine would
        try:
            check_cluster(5, tf_config(ports, index))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not errors and not any(t.is_alive() for t in threads), errors


def test_a_port_this_worker_cannot_open_is_named():
    from tlrepro.modeling.compute import check_cluster

    with socket.socket() as busy:
        busy.bind(("", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        with pytest.raises(UserError, match=f"port {port} cannot be opened here"):
            check_cluster(1, tf_config([port, closed_port()]))


# ---------------------------------------------------------------- a feature cache that cannot be written


@pytest.fixture(scope="module")
def frame(tmp_path_factory) -> pd.DataFrame:
    folder = tmp_path_factory.mktemp("strain-images")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(16):
        label = "malignant" if i % 2 else "benign"
        Image.fromarray((rng.random((32, 32, 3)) * (255 if i % 2 else 110)).astype("uint8")).save(folder / f"{i}.png")
        rows.append((str(folder / f"{i}.png"), label, ("train", "train", "train", "val")[i % 4], f"sha{i}", "identity"))
    return pd.DataFrame(rows, columns=["path", "label", "side", "sha256", "view"])


def train_frozen(frame: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray, bool]:
    """A frozen TinyCNN with a small head, trained on the cached path: (history, predictions, cached)."""
    from tlrepro.core.config import RowSettings, resolve_row
    from tlrepro.data.labels import BINARY_CLASSES, encode
    from tlrepro.modeling import models, training

    row = resolve_row("r", RowSettings(), RowSettings(
        backbone="TinyCNN", weights="random", image_size=32, batch_size=4, learning_rate=1e-2, epochs=2,
        head=[{"pool": "avg"}, {"dense": 1, "activation": "sigmoid"}]))
    training.seed_everything(5)
    clf = models.build_classifier(row, classes=BINARY_CLASSES, seed=5)
    models.set_trainable(clf, 0)
    train, val = frame[frame["side"] == "train"], frame[frame["side"] == "val"]
    result = training.train(clf, train, val, train_labels=encode(train["label"], BINARY_CLASSES),
                            val_labels=encode(val["label"], BINARY_CLASSES), epochs=2, seed=5, log=False)
    probs, _ = training.predict(clf, frame)
    return result.history, np.asarray(probs), result.cached


@pytest.fixture
def reference(frame, tmp_path, monkeypatch):
    """The run with a working cache; later runs in the test start with the cache skipping forgotten."""
    from tlrepro.modeling import feature_store

    monkeypatch.setattr(feature_store, "_unwritable", {}, raising=False)
    monkeypatch.setenv("TLREPRO_FEATURE_CACHE", str(tmp_path / "good-cache"))
    history, probs, cached = train_frozen(frame)
    assert cached and list((tmp_path / "good-cache").rglob("*.keys.npy"))
    return history, probs


def assert_same_run_and_one_line(frame, reference, capsys, cache: Path, reason: str) -> None:
    capsys.readouterr()
    history, probs, cached = train_frozen(frame)
    train_frozen(frame)  # a second run in the same process: no second line
    pd.testing.assert_frame_equal(history, reference[0], atol=1e-6, check_exact=False)
    np.testing.assert_allclose(probs, reference[1], atol=1e-6)
    assert cached  # the frozen path still ran, from features held in memory
    lines = [line for line in capsys.readouterr().err.splitlines() if "feature cache" in line]
    assert len(lines) == 1 and str(cache) in lines[0] and reason in lines[0] and "skipped" in lines[0], lines
    assert not (cache.is_dir() and [p for p in cache.rglob("*") if p.is_file()])  # nothing half-written


def test_a_cache_folder_that_cannot_be_created_is_skipped_with_one_line(frame, reference, tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("TLREPRO_FEATURE_CACHE", str(blocker / "cache"))
    assert_same_run_and_one_line(frame, reference, capsys, blocker / "cache", "Not a directory")


def test_a_full_disk_is_skipped_with_one_line(frame, reference, tmp_path, monkeypatch, capsys):
    """np.save failing part-way, as on a full disk; the partial chunk is removed."""
    from tlrepro.modeling import feature_store

    def full_disk(*args, **kwargs):
        raise OSError("12800 requested and 4064 written")

    monkeypatch.setattr(feature_store.np, "save", full_disk)
    monkeypatch.setenv("TLREPRO_FEATURE_CACHE", str(tmp_path / "full"))
    assert_same_run_and_one_line(frame, reference, capsys, tmp_path / "full", "12800 requested and 4064 written")


def test_a_read_only_cache_is_skipped_with_one_line(frame, reference, tmp_path, monkeypatch, capsys):
    """A read-only folder; as root chmod does not stop writes, so there the refusal is injected where the store
    writes (fileio.atomic_path's temporary file), as the file system would refuse it."""
    import errno
    import os
    import tempfile

    cache = tmp_path / "read-only"
    cache.mkdir()
    cache.chmod(0o555)
    if os.geteuid() == 0:
        real = tempfile.mkstemp

        def refuse(*args, dir=None, **kwargs):
            if dir is not None and str(cache) in str(dir):
                raise PermissionError(errno.EACCES, "Permission denied", str(dir))
            return real(*args, dir=dir, **kwargs)

        monkeypatch.setattr(fileio.tempfile, "mkstemp", refuse)
    monkeypatch.setenv("TLREPRO_FEATURE_CACHE", str(cache))
    try:
        assert_same_run_and_one_line(frame, reference, capsys, cache, "Permission denied")
    finally:
        cache.chmod(0o755)


# ---------------------------------------------------------------- metrics files and `profile gpu`


@pytest.mark.parametrize("command", [["report"], ["metrics"], ["metrics", "lin2024"]])
def test_a_text_where_a_figure_belongs_is_one_line_naming_file_and_key(tmp_project, capsys, command):
    fileio.write_json(paths.metrics_json("lin2024"), {"study": "lin2024", "dataset": "skin", "random_init": [],
                                                      "results": {"VGG16": {"accuracy": "0.86", "accuracy_ci_low": 0.8,
                                                                            "accuracy_ci_high": 0.9}}})
    assert main(command) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "reports/metrics/lin2024.json" in err[0] and "results.VGG16.accuracy" in err[0], err
    assert "Traceback" not in err[0] and "Unknown format code" not in err[0]


def test_profile_gpu_says_when_no_gpu_is_visible_and_keeps_stdout_the_flags(monkeypatch, capsys):
    from tlrepro.modeling import profiles

    monkeypatch.setattr(profiles, "visible_gpus", lambda: 0)
    assert main(["profile", "gpu"]) == 0
    shown = capsys.readouterr()
    assert shown.out.startswith("-S ") and "GPU" not in shown.out
    err = shown.err.strip().splitlines()
    assert len(err) == 1 and "no GPU is visible" in err[0]
    monkeypatch.setattr(profiles, "visible_gpus", lambda: 2)
    assert main(["profile", "gpu"]) == 0
    assert capsys.readouterr().err == ""


def test_visible_gpus_follows_the_driver_and_cuda_visible_devices(monkeypatch, tmp_path):
    from tlrepro.modeling import profiles

    (tmp_path / "0000:01:00.0").mkdir()
    (tmp_path / "0000:02:00.0").mkdir()
    monkeypatch.setattr(profiles, "NVIDIA_GPUS", tmp_path)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert profiles.visible_gpus() == 2
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert profiles.visible_gpus() == 0
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setattr(profiles, "NVIDIA_GPUS", tmp_path / "absent")
    monkeypatch.setattr(profiles.shutil, "which", lambda name: None)
    assert profiles.visible_gpus() == 0
