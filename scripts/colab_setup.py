"""Set up a study notebook in a fresh Google Colab runtime, inside the clone of the project.

The first cell of every study notebook clones the project (its `REPO_URL` form field) and runs this file with
IPython's `%run`, in the notebook's own kernel:

    %run tlrepro/scripts/colab_setup.py --study kumar2022 [--max-images-per-class 20] [--max-epochs 2]

1. Installs what the runtime lacks, respecting Colab's own packages: a pinned package that is missing or older
   than its pin is installed at the pin; one Colab ships at the pin or newer is kept; Colab's kernel and its
   TensorFlow build are never changed (the project's TensorFlow comes from an extra for that reason). Then the
   project itself, without touching dependencies. Nothing is installed when this version of the project is
   already importable.
2. Kaggle credentials: `KAGGLE_MIRROR` (an offline copy) or credentials already set need nothing; otherwise
   Colab's secrets `KAGGLE_USERNAME` and `KAGGLE_KEY` (the key icon in Colab's left bar), else an uploaded
   `kaggle.json`. The key is never printed.
3. Optional quick-pass caps are written into the clone's params.yaml (`scale`), saying so.
4. Runs the study's data stages in the clone (`dvc repro split@<study>`, with the derived dataset behind it and
   the pretraining entries its rows start from), showing DVC's progress as it goes.
5. Changes into the clone, so the rest of the notebook finds params.yaml and writes its outputs there.

It needs only the standard library and `packaging`, which Colab ships, until the project is installed.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

# Packages the running kernel is made of: upgrading them under a live Colab kernel breaks it.
KERNEL_PACKAGES = {"ipykernel", "ipython", "jupyter-client", "jupyterlab", "notebook", "tornado"}


class SetupError(Exception):
    """A step that cannot go on; the message says what to do."""


def say(message: str) -> None:
    print(f"[colab setup {time.strftime('%H:%M:%S')}] {message}", flush=True)


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned_requirements(pyproject: Path) -> list[tuple[str, str]]:
    """(name, version) of the project's `name==version` dependencies whose markers hold here (extras excluded)."""
    import tomllib

    from packaging.requirements import Requirement

    pins = []
    for text in tomllib.loads(pyproject.read_text())["project"]["dependencies"]:
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        exact = [s.version for s in requirement.specifier if s.operator == "=="]
        if exact:
            pins.append((requirement.name, exact[0]))
    return pins


def to_install(pins: list[tuple[str, str]], installed: dict[str, str]) -> tuple[list[str], list[str]]:
    """The `name==pin` specs to install (missing, or older than the pin) and the names of the runtime's packages
    kept as they are (at the pin or newer, or part of the running kernel)."""
    from packaging.version import InvalidVersion, Version

    install, kept = [], []
    for name, pin in pins:
        have = installed.get(normalized(name))
        if have is not None and normalized(name) in KERNEL_PACKAGES:
            kept.append(f"{name} {have}")
            continue
        try:
            older = have is None or Version(have) < Version(pin)
        except InvalidVersion:
            older = True
        if older:
            install.append(f"{name}=={pin}")
        else:
            kept.append(f"{name} {have}")
    return install, kept


def installed_versions() -> dict[str, str]:
    return {normalized(d.metadata["Name"]): d.version for d in importlib.metadata.distributions() if d.metadata["Name"]}


def stream(command: list[str], cwd: Path, what: str) -> None:
    """Run a command, printing its output line by line as it comes (a notebook cell shows it live)."""
    say(f"{what}: {' '.join(command[2:] if command[:2] == [sys.executable, '-m'] else command)}")
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               bufsize=1, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert process.stdout is not None
    for line in process.stdout:
        print(line, end="", flush=True)
    if process.wait():
        raise SetupError(f"{what} failed (exit status {process.returncode}); its output is above.")


def install(clone: Path) -> None:
    version = re.search(r'^version = "([^"]+)"', (clone / "pyproject.toml").read_text(), re.M).group(1)
    try:
        if importlib.metadata.version("tlrepro") == version:
            say(f"tlrepro {version} is already installed: nothing to install")
            return
    except importlib.metadata.PackageNotFoundError:
        pass
    specs, kept = to_install(pinned_requirements(clone / "pyproject.toml"), installed_versions())
    say(f"keeping {len(kept)} of the runtime's packages as they are (at the pin or newer, or the kernel's own)")
    if specs:
        stream([sys.executable, "-m", "pip", "install", "--progress-bar", "off", *specs], clone,
               f"installing {len(specs)} packages the runtime lacks or has older")
    stream([sys.executable, "-m", "pip", "install", "--no-deps", "--progress-bar", "off", str(clone)], clone,
           "installing the project")
    if importlib.util.find_spec("tensorflow") is None:
        raise SetupError("TensorFlow is not installed in this runtime: run `!pip install tensorflow` and this cell again.")


def colab_secret(name: str) -> str | None:
    """A Colab secret's value, or None when it is missing or this notebook may not read it."""
    try:
        from google.colab import userdata  # type: ignore[import-not-found]

        return userdata.get(name) or None
    except Exception:  # SecretNotFoundError, NotebookAccessError, or not in Colab
        return None


def kaggle_credentials() -> None:
    if os.environ.get("KAGGLE_MIRROR"):
        say(f"KAGGLE_MIRROR is set: the datasets are copied from {os.environ['KAGGLE_MIRROR']}, no Kaggle account needed")
        return
    kaggle_json = Path.home() / ".kaggle" / "kaggle.json"
    if (os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY")) or os.environ.get("KAGGLE_API_TOKEN") \
            or kaggle_json.is_file():
        say("Kaggle credentials found")
        return
    username, key = colab_secret("KAGGLE_USERNAME"), colab_secret("KAGGLE_KEY")
    if username and key:
        os.environ["KAGGLE_USERNAME"], os.environ["KAGGLE_KEY"] = username, key
        say(f"Kaggle credentials of `{username}` taken from Colab's secrets (the key is not shown)")
        return
    say("No Kaggle credentials: add the secrets KAGGLE_USERNAME and KAGGLE_KEY (the key icon in Colab's left bar, "
        "with notebook access), or upload your kaggle.json now (kaggle.com > Settings > Create New Token).")
    try:
        from google.colab import files  # type: ignore[import-not-found]

        uploaded = files.upload()
    except Exception as exc:
        raise SetupError(f"No Kaggle credentials, and no kaggle.json could be uploaded ({type(exc).__name__}).") from None
    content = next((data for name, data in uploaded.items() if name.endswith(".json")), None)
    try:
        fields = json.loads(content or b"")
        assert fields["username"] and fields["key"]
    except Exception:
        raise SetupError("The uploaded file is not a kaggle.json with a username and a key: download a new token "
                         "from kaggle.com (Settings > Create New Token) and run this cell again.") from None
    kaggle_json.parent.mkdir(parents=True, exist_ok=True)
    kaggle_json.write_bytes(content)
    kaggle_json.chmod(0o600)
    say(f"kaggle.json of `{fields['username']}` saved to {kaggle_json} (the key is not shown)")


def set_caps(params_file: Path, max_images_per_class: int, max_epochs: int) -> None:
    """Write the quick-pass caps into the clone's params.yaml (`scale`); 0 leaves a cap off."""
    text = params_file.read_text()
    for key, value in (("max_images_per_class", max_images_per_class), ("max_epochs", max_epochs)):
        if value:
            text, found = re.subn(rf"^(  {key}:)[^#\n]*", rf"\g<1> {int(value)}", text, count=1, flags=re.M)
            if not found:
                raise SetupError(f"{params_file}: no `scale.{key}` line to set")
            say(f"quick pass: scale.{key} = {value} in params.yaml (every report says so in a banner)")
    params_file.write_text(text)


def data_stages(clone: Path, study: str) -> list[str]:
    """The DVC stages to run before the study's notebook: its split, and the pretraining its rows start from."""
    import yaml

    params = yaml.safe_load((clone / "params.yaml").read_text())
    if study not in params.get("studies", {}):
        raise SetupError(f"params.yaml has no study `{study}` (it has: {', '.join(params.get('studies', {}))}).")
    settings = params["studies"][study]
    entries = {row.get("init_from") for row in (settings.get("rows") or {}).values() if row}
    entries.add((settings.get("defaults") or {}).get("init_from"))
    return [f"split@{study}", *(f"pretrain@{e}" for e in sorted(filter(None, entries)))]


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", required=True)
    parser.add_argument("--clone", default=str(Path(__file__).resolve().parents[1]))
    parser.add_argument("--max-images-per-class", type=int, default=0)
    parser.add_argument("--max-epochs", type=int, default=0)
    args = parser.parse_args(argv)
    clone = Path(args.clone).resolve()
    started = time.monotonic()
    install(clone)
    kaggle_credentials()
    set_caps(clone / "params.yaml", args.max_images_per_class, args.max_epochs)
    stages = data_stages(clone, args.study)
    stream([sys.executable, "-m", "dvc", "repro", *stages], clone, f"running the data stages of {args.study}")
    os.chdir(clone)
    os.environ["TLREPRO_ROOT"] = str(clone)
    say(f"ready in {time.monotonic() - started:.0f} s; working folder: {clone}")
    return clone


if __name__ == "__main__":
    try:
        main()
    except SetupError as exc:
        raise SystemExit(f"colab setup: {exc}") from None
