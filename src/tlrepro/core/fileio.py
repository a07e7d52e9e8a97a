"""Writing outputs safely: to a temporary path beside the target, then an atomic rename.

An interrupted or failed run therefore never leaves a half-written output behind, and a target that
cannot be written (a read-only folder, a full disk) is one UserError naming it, not a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tlrepro.core.errors import UserError
from tlrepro.core.inputs import read_regular


def _cannot_write(target: Path, exc: OSError) -> UserError:
    from tlrepro.core.paths import relative

    reason = exc.strerror or str(exc)
    hint = {errno.EACCES: "make the folder writable", errno.EROFS: "the file system is read-only",
            errno.ENOSPC: "free some disk space"}.get(exc.errno, "check the folder")
    return UserError(f"Cannot write {relative(target)} ({reason}): {hint}, then run again.")


@contextlib.contextmanager
def atomic_path(target: Path | str, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary file path beside `target` (ending in `suffix`, for writers that check the extension);
    on success it replaces `target` in one rename. The one way this project writes a file."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
        os.close(fd)
    except OSError as exc:
        raise _cannot_write(target, exc) from None
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        try:
            os.chmod(tmp_path, 0o644)  # mkstemp makes 0600; outputs are meant to be read by others
            os.replace(tmp_path, target)
        except OSError as exc:
            raise _cannot_write(target, exc) from None
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(target: Path | str) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces the folder `target` whole."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    except OSError as exc:
        raise _cannot_write(target, exc) from None
    try:
        yield tmp
        replace_dir(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replace_dir(source: Path, target: Path) -> None:
    """Move the folder `source` to `target`, replacing any folder there (two renames, no copy)."""
    try:
        os.chmod(source, 0o755)  # mkdtemp makes 0700
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(source, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, target)
    except OSError as exc:
        raise _cannot_write(target, exc) from None


def file_sha256(path: Path | str) -> str:
    """The sha256 of a file's bytes (hex), read in chunks: the one file-hash helper."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def write_text(target: Path | str, text: str) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_text(text)
    return Path(target)


def write_bytes(target: Path | str, data: bytes) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def json_text(data: Any, target: Path | str) -> str:
    """Stable JSON (sorted keys, no NaN) so equal results give equal bytes; `target` names it in the error."""
    try:
        return json.dumps(plain(data), indent=2, sort_keys=True, allow_nan=False) + "\n"
    except ValueError as exc:  # a NaN or infinity: a degenerate result must not replace a good one
        raise UserError(f"Refusing to write {target}: {exc} (a degenerate result); nothing was changed.") from None


def write_json(target: Path | str, data: Any) -> Path:
    return write_text(target, json_text(data, target))


def write_csv(target: Path | str, frame: Any) -> Path:
    """A pandas DataFrame as CSV, atomically."""
    with atomic_path(target) as tmp:
        frame.to_csv(tmp, index=False, lineterminator="\n")
    return Path(target)


def plain(value: Any, digits: int = 6) -> Any:
    """JSON-ready: numpy scalars and arrays to Python, floats rounded to `digits` places, keys to str."""
    import numpy as np

    if isinstance(value, dict):
        return {str(k): plain(v, digits) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v, digits) for v in value]
    if isinstance(value, np.ndarray):
        return plain(value.tolist(), digits)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and np.isfinite(value):
        return round(value, digits)
    return value


def records(frame: Any) -> list[dict[str, Any]]:
    """A DataFrame as JSON-ready records: missing values as None, not NaN."""
    import math

    return [{str(k): (None if isinstance(v, float) and math.isnan(v) else v) for k, v in rec.items()}
            for rec in frame.to_dict(orient="records")]


def read_table(path: Path | str, what: str, stage: str, required: Any = ()) -> Any:
    """A CSV output of ours with every column as text (hashes and ids round-trip unchanged), checked: missing,
    unreadable, malformed, lacking a column or empty is one UserError naming the stage to re-run."""
    import pandas as pd

    from tlrepro.core.paths import relative

    path, rerun = Path(path), f"re-run `dvc repro {stage}`"
    if not path.is_file():
        raise UserError(f"{relative(path)} not found: run `dvc repro {stage}` first.")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except OSError as exc:
        raise UserError(f"{relative(path)} cannot be read ({exc.strerror or exc}): make it readable, or {rerun}.") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise UserError(f"{relative(path)} is not a readable {what} ({' '.join(str(exc).split())[:120]}): "
                        f"{rerun}.") from None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise UserError(f"{relative(path)} lacks columns {missing}: {rerun}.")
    if frame.empty:
        raise UserError(f"{relative(path)} holds no rows: {rerun}.")
    return frame


def read_json(path: Path | str, what: str = "file") -> Any:
    """JSON from a file, or a UserError naming it (missing, unreadable, not JSON)."""
    from tlrepro.core.paths import relative

    path = Path(path)
    try:
        return json.loads(read_regular(path).decode("utf-8"))
    except FileNotFoundError:
        raise UserError(f"{relative(path)} not found ({what}).") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{relative(path)} is not a readable JSON {what} ({exc}).") from None


def read_metrics(path: Path | str) -> dict[str, Any] | None:
    """A study's metrics file (reports/metrics/<study>.json), None when it is absent; a UserError in one line, naming
    the file and the key, when it has no `results` mapping or holds a text where a figure belongs (which would
    otherwise stop the formatting deep inside a report)."""
    from tlrepro.core.numbers import non_number
    from tlrepro.core.paths import relative

    path = Path(path)
    if not path.is_file():
        return None
    data = read_json(path, "metrics file")
    rerun = f"re-run `dvc repro study@{path.stem.split('.')[0]}`"
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise UserError(f"{relative(path)} has no `results` mapping: {rerun}.")
    if found := non_number(data["results"]):
        key, value = found
        raise UserError(f"{relative(path)}: `{key}` is {json.dumps(value)[:60]}, where a number (or null) belongs: "
                        f"{rerun}, or restore the file.")
    return data
