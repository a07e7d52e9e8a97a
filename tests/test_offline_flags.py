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

from tlrepro.core import config

REPO = Path(__file__).resolve().parents[1]
PRESENT = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"


def offline_flags(root: Path, weights: Path | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("IMAGENET_WEIGHTS_DIR", "TLREPRO_ROOT")}
    env["TLREPRO_ROOT"] = str(root)
    if weights is not None:
        env["IMAGENET_WEIGHTS_DIR"] = str(weights)
    return subprocess.run([sys.executable, "-m", "tlrepro", "offline-flags"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


def test_printed_flags_apply_with_dvc_and_switch_only_rows_without_weights(tmp_path):
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(REPO / name, tmp_path / name)
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / PRESENT).write_bytes(b"")  # only its presence is checked

    result = offline_flags(tmp_path, weights)
    assert result.returncode == 0, result.stderr[-2000:]
    words = shlex.split(result.stdout)
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


def test_without_a_weights_folder_it_says_what_to_set(tmp_path):
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(REPO / name, tmp_path / name)
    result = offline_flags(tmp_path, None)
    assert result.returncode == 2 and "IMAGENET_WEIGHTS_DIR" in result.stderr and "Traceback" not in result.stderr
