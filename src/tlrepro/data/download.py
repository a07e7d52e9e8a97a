"""Fetching a dataset into data/raw/<key>/, unpacked: from Kaggle, or from an offline mirror.

With $KAGGLE_MIRROR set, `$KAGGLE_MIRROR/<owner>/<slug>/` is copied instead of downloading (the mirror is
shared and read-only, so files are copied, never linked). Only regular files are copied: FIFOs, sockets,
devices, broken and looping links are listed as skipped and never read, and a file that cannot be read stops
the copy with one line naming it. Either way the files land in a temporary folder beside data/raw/<key> that
is renamed into place only when complete: an interrupted run leaves nothing half-written. Every failure becomes one UserError line; Kaggle's key never appears in it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import stat
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from tlrepro.core import config, fileio, inputs, paths
from tlrepro.core.errors import UserError

CREDENTIALS_HELP = (
    "put your Kaggle API token in ~/.kaggle/kaggle.json (or set KAGGLE_USERNAME and KAGGLE_KEY, "
    "or KAGGLE_API_TOKEN), or set KAGGLE_MIRROR to an offline mirror laid out as <owner>/<slug>/"
)


def download_dataset(key: str) -> Path:
    """Fill data/raw/<key>/ with the dataset params.yaml `datasets.<key>.slug` names; returns that folder."""
    params = config.load_params()
    params.dataset(key)  # names the known datasets if `key` is not one
    if key not in params.datasets:
        raise UserError(f"`{key}` is a derived dataset: run `dvc repro derive@{key}`; only `datasets` are downloaded.")
    slug = params.datasets[key].slug
    target = paths.raw_dir(key)
    mirror = os.environ.get("KAGGLE_MIRROR")
    if mirror:
        source = _mirror_folder(Path(mirror), slug, key, params)
        found = inputs.walk(source)
        if found.errors:
            first = found.errors[0]
            raise UserError(f"Cannot read {source / first['path']} in KAGGLE_MIRROR ({first['reason']}): make it "
                            f"readable (e.g. chmod -R a+rX), or remove it from the mirror; {paths.relative(target)} was "
                            f"left as it was.")
        if not found.files:
            raise UserError(f"KAGGLE_MIRROR holds {slug} as an empty folder ({source}): fill it, or unset "
                            f"KAGGLE_MIRROR to download from Kaggle. {paths.relative(target)} was left as it was.")
        with fileio.atomic_dir(target) as tmp:
            copy_tree(source, tmp, found.files, shown=target)
        for entry in found.skipped:
            print(f"skipped {entry['path']}: {entry['reason']}")
        print(f"copied {slug} from {mirror} into {paths.relative(target)}"
              + (f" ({len(found.skipped)} entries skipped, listed above)"
                 if found.skipped else ""))
    else:
        _require_credentials()
        with fileio.atomic_dir(target) as tmp:
            _kaggle_download(slug, tmp)
            if not any(p.is_file() for p in tmp.rglob("*")):
                raise UserError(f"Kaggle returned no files for `{slug}` (params.yaml datasets.{key}.slug); "
                                f"{paths.relative(target)} was left as it was.")
        print(f"downloaded {slug} into {paths.relative(target)}")
    return target


def copy_tree(source: Path, target: Path, files: list[PurePosixPath] | None = None, *,
              shown: Path | None = None) -> None:
    """Copy regular files under `source` (relative paths; default: every one inputs.walk finds) into `target`,
    with a progress bar; copies are made user-writable. A file that cannot be read or written is one
    UserError naming it; `shown` is the folder the messages name instead of a temporary `target`."""
    files = files if files is not None else inputs.walk(source).files
    shown = shown or target
    for rel in tqdm(files, desc=f"copying {source.name}", unit="file", disable=None):
        src, dst = source / rel, target / rel
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            _copy_file(src, dst)
            dst.chmod(dst.stat().st_mode | stat.S_IWUSR | stat.S_IRUSR)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            if exc.filename and Path(exc.filename) in (dst, dst.parent):
                raise UserError(f"Cannot write {paths.relative(shown / rel)} ({reason}): free some disk space or make "
                                f"{paths.relative(shown.parent)} writable, then run again; {paths.relative(shown)} was "
                                f"left as it was.") from None
            raise UserError(f"Cannot read {src} ({reason}): make it readable (e.g. chmod a+r), or remove it from "
                            f"the mirror; {paths.relative(shown)} was left as it was.") from None


def _copy_file(src: Path, dst: Path) -> None:
    """One regular file with its times; opened by inputs.open_regular, so nothing else is ever waited on."""
    with inputs.open_regular(src) as handle, open(dst, "wb") as out:
        shutil.copyfileobj(handle, out)
    shutil.copystat(src, dst)


def mirrored_slugs(mirror: Path) -> list[str]:
    """The `<owner>/<slug>` folders a mirror holds."""
    return sorted(f"{d.parent.name}/{d.name}" for d in mirror.glob("*/*") if d.is_dir())


def _mirror_folder(mirror: Path, slug: str, key: str, params: config.Params) -> Path:
    if not mirror.is_dir():
        raise UserError(
            f"KAGGLE_MIRROR={mirror} is not a folder: point it at the mirror, or unset it to use Kaggle."
        )
    folder = mirror / slug
    if folder.is_dir():
        return folder
    held = ", ".join(mirrored_slugs(mirror)) or "nothing"
    studies = sorted(s for s, v in params.studies.items() if v.dataset == key)
    study = studies[0] if studies else "<study>"
    raise UserError(
        f"KAGGLE_MIRROR={mirror} has no {slug} (dataset `{key}`); it holds: {held}. "
        f"Point the study at a mirrored dataset, e.g. `dvc exp run -S studies.{study}.dataset=skin`."
    )


def _credential_files() -> list[Path]:
    """Where the kaggle client looks for credentials (kaggle.json, an access token, OAuth credentials)."""
    home = Path.home() / ".kaggle"
    xdg = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "kaggle"
    dirs = [Path(os.environ["KAGGLE_CONFIG_DIR"])] if os.environ.get("KAGGLE_CONFIG_DIR") else [home, xdg]
    return [d / "kaggle.json" for d in dirs] + [
        home / "access_token",
        home / "access_token.txt",
        home / "credentials.json",
    ]


def _require_credentials() -> None:
    """Fail in milliseconds when no credentials exist: importing `kaggle` would print help and try to log in."""
    env = os.environ
    if env.get("KAGGLE_API_TOKEN") or (env.get("KAGGLE_USERNAME") and env.get("KAGGLE_KEY")):
        return
    if any(p.is_file() for p in _credential_files()):
        return
    raise UserError(f"No Kaggle credentials found: {CREDENTIALS_HELP}.")


def _secrets() -> list[str]:
    """Every credential value that must never be printed."""
    values = [os.environ.get(name, "") for name in ("KAGGLE_KEY", "KAGGLE_API_TOKEN")]
    token_file = Path(values[1]) if values[1] and len(values[1]) < 4096 else None  # the token may be a path
    for path in _credential_files() + ([token_file] if token_file else []):
        with contextlib.suppress(OSError, ValueError):
            text = inputs.read_regular(path).decode().strip()
            values.append(text)
            with contextlib.suppress(ValueError, AttributeError):
                values.extend(str(v) for v in json.loads(text).values())
    return sorted({v for v in values if len(v) >= 4}, key=len, reverse=True)


def sanitize(text: str) -> str:
    """`text` with every Kaggle secret replaced by ***, on one line of at most 300 characters."""
    for secret in _secrets():
        text = text.replace(secret, "***")
    text = " ".join(text.split())
    return text if len(text) <= 300 else text[:297] + "..."


def _kaggle_download(slug: str, folder: Path) -> None:
    captured = io.StringIO()
    try:
        # `import kaggle` authenticates on import and prints help (or exits) on failure: capture that.
        with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
            import kaggle

            if not getattr(kaggle.api, "_authenticated", False):
                kaggle.api.authenticate()
    except (Exception, SystemExit) as exc:
        detail = sanitize(str(exc) if isinstance(exc, Exception) else "") or "credentials were rejected"
        raise UserError(f"Kaggle login failed ({detail}): {CREDENTIALS_HELP}.") from None
    try:
        kaggle.api.dataset_download_files(slug, path=str(folder), unzip=True, quiet=False)
    except (Exception, SystemExit) as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        hint = {
            401: "your Kaggle credentials were rejected",
            403: "accept the dataset's rules on kaggle.com first, or check your credentials",
            404: "no such dataset: check params.yaml `datasets.<key>.slug`",
        }.get(status, "check your network, or set KAGGLE_MIRROR to an offline mirror")
        raise UserError(
            f"Downloading Kaggle dataset `{slug}` failed ({sanitize(str(exc))}): {hint}."
        ) from None
