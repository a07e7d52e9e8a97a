"""Download: the mirror copy, atomicity, and clear errors (never a traceback, never the Kaggle key)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from tlrepro.core import paths
from tlrepro.core.errors import UserError
from tlrepro.data import download
from tlrepro.data.download import download_dataset

SECRET = "s3cr3t-kaggle-key-0123456789"
SKIN = "fanconic/skin-cancer-malignant-vs-benign"


def files_under(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def no_kaggle_env(monkeypatch, tmp_path):
    """No credentials anywhere: empty HOME, no KAGGLE_* variables."""
    for name in list(os.environ):
        if name.startswith("KAGGLE_"):
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    return home


def test_mirror_copy(tmp_project, kaggle_mirror, monkeypatch):
    monkeypatch.setenv("KAGGLE_MIRROR", str(kaggle_mirror))
    target = download_dataset("skin")
    assert target == tmp_project / "data/raw/skin"
    assert files_under(target) == files_under(kaggle_mirror / SKIN)
    assert all(p.stat().st_mode & stat.S_IWUSR for p in target.rglob("*"))  # copies are writable
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o444 for p in (kaggle_mirror / SKIN).rglob("*.jpg"))
    assert sorted(os.listdir(paths.RAW)) == ["skin"]


def test_interrupted_copy_leaves_nothing_half_written(tmp_project, kaggle_mirror, monkeypatch):
    monkeypatch.setenv("KAGGLE_MIRROR", str(kaggle_mirror))
    copied, real_copy = [], download._copy_file

    def failing_copy(src, dst):
        if len(copied) == 3:
            raise KeyboardInterrupt
        copied.append(real_copy(src, dst))

    monkeypatch.setattr(download, "_copy_file", failing_copy)
    with pytest.raises(KeyboardInterrupt):
        download_dataset("skin")
    assert os.listdir(paths.RAW) == []

    previous = paths.raw_dir("skin") / "old.txt"
    previous.parent.mkdir()
    previous.write_text("previous download")
    copied.clear()
    with pytest.raises(KeyboardInterrupt):
        download_dataset("skin")
    assert os.listdir(paths.RAW) == ["skin"] and files_under(paths.raw_dir("skin")) == {
        "old.txt": b"previous download"
    }


def test_mirror_without_the_slug(tmp_project, kaggle_mirror, monkeypatch):
    monkeypatch.setenv("KAGGLE_MIRROR", str(kaggle_mirror))
    with pytest.raises(UserError) as caught:
        download_dataset("melanoma")
    message = str(caught.value)
    assert "bhaveshmittal/melanoma-cancer-dataset" in message
    assert f"ambarish/breakhis, {SKIN}" in message
    assert "dvc exp run -S studies.mobilenet2025.dataset=skin" in message
    monkeypatch.setenv("KAGGLE_MIRROR", str(kaggle_mirror / "nowhere"))
    with pytest.raises(UserError, match="not a folder"):
        download_dataset("skin")


def test_empty_mirror_folder_keeps_the_previous_download(tmp_project, kaggle_mirror, monkeypatch, tmp_path):
    empty = tmp_path / "empty-mirror"
    (empty / SKIN / "train").mkdir(parents=True)  # the slug's folder exists but holds no file
    monkeypatch.setenv("KAGGLE_MIRROR", str(empty))
    paths.raw_dir("skin").mkdir(parents=True)
    (paths.raw_dir("skin") / "old.jpg").write_bytes(b"previous download")
    with pytest.raises(UserError, match="empty folder.*left as it was"):
        download_dataset("skin")
    assert files_under(paths.raw_dir("skin")) == {"old.jpg": b"previous download"}
    with pytest.raises(UserError, match="derived dataset"):
        download_dataset("breakhis_stain")


def test_no_credentials_fails_fast(tmp_project, no_kaggle_env):
    start = time.perf_counter()
    with pytest.raises(UserError) as caught:
        download_dataset("skin")
    assert time.perf_counter() - start < 2
    assert "kaggle.json" in str(caught.value) and "KAGGLE_MIRROR" in str(caught.value)
    assert not paths.RAW.exists() or os.listdir(paths.RAW) == []


def fake_kaggle(monkeypatch, fail_login=None, fail_download=None):
    """A stand-in `kaggle` module whose calls fail with errors that quote the key."""

    def raise_(exc):
        if exc:
            raise exc

    api = types.SimpleNamespace(
        authenticate=lambda: raise_(fail_login),
        dataset_download_files=lambda slug, path, unzip, quiet: raise_(fail_download),
    )
    monkeypatch.setitem(sys.modules, "kaggle", types.SimpleNamespace(api=api))


def test_kaggle_errors_name_the_slug_and_hide_the_key(tmp_project, no_kaggle_env, monkeypatch):
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", SECRET)
    error = RuntimeError(f"401 Unauthorized for https://someone:{SECRET}@api.kaggle.com\n(retry)")
    error.response = types.SimpleNamespace(status_code=404)
    fake_kaggle(monkeypatch, fail_download=error)
    with pytest.raises(UserError) as caught:
        download_dataset("skin")
    message = str(caught.value)
    assert SKIN in message and "slug" in message and SECRET not in message and "\n" not in message

    fake_kaggle(monkeypatch, fail_login=ValueError(f"bad key {SECRET}"))
    with pytest.raises(UserError) as caught:
        download_dataset("skin")
    assert "kaggle.json" in str(caught.value) and SECRET not in str(caught.value)

    fake_kaggle(monkeypatch, fail_login=SystemExit(1))
    with pytest.raises(UserError, match="Kaggle login failed"):
        download_dataset("skin")
    assert not paths.RAW.exists() or os.listdir(paths.RAW) == []


def cli(project: Path, home: Path, args: list[str], **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_") and k != "XDG_CONFIG_HOME"}
    clean.update(HOME=str(home), TLREPRO_ROOT=str(project), **env)
    return subprocess.run(
        [sys.executable, "-m", "tlrepro", *args],
        cwd=project,
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_without_credentials_prints_one_error_line(tmp_project, tmp_path):
    home = tmp_path / "empty-home"
    home.mkdir()
    result = cli(tmp_project, home, ["download", "skin"])
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "kaggle.json" in errors[0] and "KAGGLE_MIRROR" in errors[0]
    assert "Traceback" not in result.stderr + result.stdout


def test_cli_with_a_key_never_prints_it(tmp_project, tmp_path):
    """Real client, no reachable Kaggle (or a rejected key): the error must not quote the key."""
    home = tmp_path / "home"
    (home / ".kaggle").mkdir(parents=True)
    result = cli(tmp_project, home, ["download", "skin"], KAGGLE_USERNAME="someone", KAGGLE_KEY=SECRET)
    assert result.returncode == 2, result.stderr
    assert "error:" in result.stderr and SKIN in result.stderr
    assert SECRET not in result.stdout + result.stderr and "Traceback" not in result.stderr
    assert not (tmp_project / "data/raw/skin").exists()


def test_sanitize_hides_every_credential(no_kaggle_env, monkeypatch, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("file-token-abcdef\n")
    (no_kaggle_env / ".kaggle").mkdir()
    (no_kaggle_env / ".kaggle/kaggle.json").write_text('{"username": "someone", "key": "json-key-987654"}')
    monkeypatch.setenv("KAGGLE_API_TOKEN", str(token_file))
    text = download.sanitize("a json-key-987654 b file-token-abcdef\nc")
    assert text == "a *** b *** c"
    monkeypatch.setenv("KAGGLE_API_TOKEN", "env-token-123456")
    assert download.sanitize("x env-token-123456") == "x ***"
