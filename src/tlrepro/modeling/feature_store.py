"""A store of frozen-network outputs, one entry per image and view: computed once, shared by every split, fold,
protocol and row that runs the same frozen part over the same image.

A store is a folder named by the frozen part's fingerprint (tlrepro.modeling.frozen_cache.fingerprint: the
decoding code, the architecture up to the cut, and the value of every weight there). Entries are keyed by the
image's content (sha256 of its bytes) and view, so a file renamed or copied keeps its features, and a frame in
any order reads the same values. Each computation adds one chunk: `<chunk>.x<i>.npy` (one array per tensor
crossing the cut) and `<chunk>.keys.npy`, written last, each aside then renamed. A chunk without its keys file
is unfinished and ignored; a damaged chunk is deleted and its entries recomputed. Several processes may fill one
store at once (e.g. on shared storage, `TLREPRO_FEATURE_CACHE`): chunks never overwrite each other, and entries
computed twice are equal, so whichever is read is right. Arrays are read through memory maps, so a frame costs
the memory of its own rows only.

The store is an optimisation: when a chunk cannot be written (a read-only folder, a full disk), its partial files
are removed, one line on stderr names the cache folder and why, and the caller uses what it computed (`write`
returns False); later writes to the same cache are not tried again in this process.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tlrepro.core import fileio
from tlrepro.core.errors import UserError

KEYS = ".keys.npy"
_unwritable: dict[Path, str] = {}  # cache folder -> why it could not be written (said once per process)


def _why(exc: BaseException) -> str:
    """The operating system's reason behind a failed write (fileio wraps it in a UserError)."""
    cause = exc if isinstance(exc, OSError) else exc.__cause__ or exc.__context__
    if isinstance(cause, OSError):
        return cause.strerror or str(cause)
    return str(exc)


def skip_cache(cache: Path, exc: BaseException) -> None:
    """Stop writing to the cache folder `cache` for the rest of this process, saying so in one line."""
    if cache in _unwritable:
        return
    _unwritable[cache] = _why(exc)
    print(f"feature cache {cache} cannot be written ({_unwritable[cache]}): skipped, features are computed without "
          f"it for this run (results are the same; set TLREPRO_FEATURE_CACHE to a writable folder to keep them).",
          file=sys.stderr, flush=True)


class FeatureStore:
    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._index: dict[str, tuple[str, int]] | None = None

    def _chunks(self) -> list[str]:
        if not self.folder.is_dir():
            return []
        return sorted(p.name.removesuffix(KEYS) for p in self.folder.glob(f"*{KEYS}"))

    def _arrays(self, chunk: str) -> list[Path]:
        return sorted(self.folder.glob(f"{chunk}.x*.npy"), key=lambda p: int(p.name.rsplit(".x", 1)[1][:-4]))

    def _drop(self, chunk: str) -> None:
        for path in self.folder.glob(f"{chunk}.*"):
            path.unlink(missing_ok=True)
        self._index = None

    def index(self) -> dict[str, tuple[str, int]]:
        """key -> (chunk, row) over every finished chunk (the first chunk, in name order, holding a key wins)."""
        if self._index is None:
            found: dict[str, tuple[str, int]] = {}
            for chunk in self._chunks():
                try:
                    keys = np.load(self.folder / f"{chunk}{KEYS}", allow_pickle=False)
                except (OSError, ValueError, EOFError):
                    self._drop(chunk)
                    continue
                for row, key in enumerate(keys.tolist()):
                    found.setdefault(key, (chunk, row))
            self._index = found
        return self._index

    def missing(self, keys: Sequence[str]) -> list[str]:
        """The distinct keys without an entry, in first-seen order."""
        have = self.index()
        return [k for k in dict.fromkeys(keys) if k not in have]

    def write(self, keys: Sequence[str], arrays: list[np.ndarray]) -> bool:
        """A new chunk holding `arrays` (row i belongs to keys[i]); the keys file last, so readers see it whole.
        False when the cache cannot be written (see the module docstring): nothing of the chunk is left."""
        cache = self.folder.parent
        if cache in _unwritable:
            return False
        chunk = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        try:
            for i, array in enumerate(arrays):
                with fileio.atomic_path(self.folder / f"{chunk}.x{i}.npy", suffix=".npy") as tmp:
                    np.save(tmp, np.ascontiguousarray(array), allow_pickle=False)
            with fileio.atomic_path(self.folder / f"{chunk}{KEYS}", suffix=".npy") as tmp:
                np.save(tmp, np.asarray(list(keys), dtype=str), allow_pickle=False)
        except (OSError, UserError) as exc:
            try:
                self._drop(chunk)
            except OSError:
                pass
            skip_cache(cache, exc)
            return False
        self._index = None
        return True

    def read(self, keys: Sequence[str]) -> list[np.ndarray] | None:
        """The entries of `keys`, in order, as one array per crossing tensor; None when some entry is missing or a
        chunk turns out damaged (it is then deleted, so the caller recomputes)."""
        index = self.index()
        if any(k not in index for k in keys):
            return None
        by_chunk: dict[str, tuple[list[int], list[int]]] = {}
        for position, key in enumerate(keys):
            chunk, row = index[key]
            positions, rows = by_chunk.setdefault(chunk, ([], []))
            positions.append(position)
            rows.append(row)
        out: list[np.ndarray] | None = None
        for chunk, (positions, rows) in by_chunk.items():
            try:
                stored = [np.load(p, mmap_mode="r", allow_pickle=False) for p in self._arrays(chunk)]
                if not stored or any(len(a) <= max(rows) for a in stored):
                    raise ValueError("short chunk")
                if out is None:
                    out = [np.empty((len(keys), *a.shape[1:]), dtype=a.dtype) for a in stored]
                for target, array in zip(out, stored, strict=True):
                    target[positions] = array[rows]
            except (OSError, ValueError, EOFError):
                self._drop(chunk)
                return None
        return out if out is not None else []
