"""`tlrepro offline-flags`: the README's offline command must be accepted by `dvc exp run -S` as printed.

The flags are applied with DVC's own override code (what `dvc exp run -S` calls), to the project's real
params.yaml, and the result must validate and switch exactly the rows whose weights file is missing.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from dvc.utils.hydra import apply_overrides

from tlrepro.cli import main
from tlrepro.core import config, paths

REPO = Path(__file__).resolve().parents[1]
PRESENT = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"


def offline_flags(root: Path, weights: Path | None, monkeypatch, capsys) -> tuple[int, str, str]:
    """`tlrepro offline-flags` in-process, with the project at `root`: (exit status, stdout, stderr)."""
    monkeypatch.setattr(paths, "PARAMS_FILE", root / "params.yaml")
    if weights is None:
        monkeypatch.delenv("IMAGENET_WEIGHTS_DIR", raising=False)
    else:
        monkeypatch.setenv("IMAGENET_WEIGHTS_DIR", str(weights))
    status = main(["offline-flags"])
    out = capsys.readouterr()
    return status, out.out, out.err


def test_printed_flags_apply_with_dvc_and_switch_only_rows_without_weights(tmp_path, monkeypatch, capsys):
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(REPO / name, tmp_path / name)
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / PRESENT).write_bytes(b"")  # only its presence is checked

    status, out, err = offline_flags(tmp_path, weights, monkeypatch, capsys)
    assert status == 0, err[-2000:]
    words = shlex.split(out)
    assert words[::2] == ["-S"] * (len(words) // 2) and words, words
    apply_overrides(str(tmp_path / "params.yaml"), words[1::2])

    params = config.load_params(tmp_path / "params.yaml")
    switched = {(s, row.name) for s, study in params.studies.items() for row in study.all_rows()
                if row.weights == "random"}
    kept = {(s, row.name) for s, study in params.studies.items() for row in study.all_rows()
            if row.weights == "imagenet" and not row.init_from}
    assert switched, "the real params have backbones without a weights file here"
    assert all(row.backbone == "MobileNetV2" for s, study in params.studies.items() for row in study.all_rows()
               if (s, row.name) in kept), kept
    assert not any(row.backbone == "MobileNetV2" for s, study in params.studies.items()
                   for row in study.all_rows() if (s, row.name) in switched)


def test_without_a_weights_folder_it_says_what_to_set(tmp_path, monkeypatch, capsys):
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(REPO / name, tmp_path / name)
    status, _, err = offline_flags(tmp_path, None, monkeypatch, capsys)
    assert status == 2 and "IMAGENET_WEIGHTS_DIR" in err and "Traceback" not in err


def test_offline_flags_profile_and_help_start_without_tensorflow(tmp_path):
    """They answer in a second: none of them imports TensorFlow or Keras."""
    probe = ("import sys, contextlib, io\n"
             "from tlrepro.cli import main\n"
             "with contextlib.redirect_stdout(io.StringIO()):\n"
             "    main(['offline-flags'])\n"
             "    main(['profile', 'gpu'])\n"
             "    try:\n"
             "        main(['--help'])\n"
             "    except SystemExit:\n"
             "        pass\n"
             "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))")
    env = {**os.environ, "IMAGENET_WEIGHTS_DIR": str(tmp_path), "TLREPRO_ROOT": str(REPO)}
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr[-2000:]


def test_the_gpu_profile_lifts_every_cpu_cap_through_dvcs_own_override_code(tmp_path, monkeypatch, capsys):
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(REPO / name, tmp_path / name)
    monkeypatch.setattr(paths, "PARAMS_FILE", tmp_path / "params.yaml")
    assert main(["profile", "gpu"]) == 0
    words = shlex.split(capsys.readouterr().out)
    assert words[::2] == ["-S"] * (len(words) // 2) and words
    apply_overrides(str(tmp_path / "params.yaml"), words[1::2])
    params = config.load_params(tmp_path / "params.yaml")
    rows = [row for study in params.studies.values() for row in study.all_rows()]
    rows += [entry.row(key) for key, entry in params.pretraining.items()]
    assert all(row.max_epochs is None and row.trainable_from is None for row in rows)
    wang = params.study("wang2024").row("DenseNet-SE-transfer")
    assert wang.trainable_layers == "all" and params.epochs(wang) == 200  # the paper's epochs, every layer
    pretraining = params.pretraining["densenet_se_lc25000_lung"].row("densenet_se_lc25000_lung")
    assert pretraining.trainable_layers == "all" and params.epochs(pretraining) == 200
