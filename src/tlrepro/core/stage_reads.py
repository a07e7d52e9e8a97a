"""Which settings and which of our modules a stage's processes read, so a test can check dvc.yaml against them.

DVC reruns a stage when a parameter or file it declares changes; a setting or module the code reads but the
stage does not declare would change results without a rerun. With `TLREPRO_READS_LOG=<file>` set,
`config.load_params` returns the validated params behind a read-recording view, and at exit the process appends
one JSON line, `{"stage": $TLREPRO_STAGE, "reads": [dotted keys], "modules": [src/tlrepro/... files]}`, to that
file. The CLI names its stage (`split@lin2024`, `study@kumar2022`, ...); a study's notebook kernel inherits it.

Reading a scalar or a list records its key; reading a section or a map whole (iterating it, `model_dump`)
records the key of the whole; `key in section` records nothing (it reads which keys exist, not their values).
Methods of the schema's own classes run on the view, so what they read is recorded too.
"""

from __future__ import annotations

import atexit
import inspect
import json
import os
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel

LOG_ENV = "TLREPRO_READS_LOG"
STAGE_ENV = "TLREPRO_STAGE"
_reads: set[str] = set()


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _view(value: Any, path: str) -> Any:
    if isinstance(value, BaseModel):
        return _ModelView(value, path)
    if isinstance(value, dict):
        return _MapView(value, path)
    _reads.add(path)
    return value


class _ModelView:
    __slots__ = ("_target", "_path")

    def __init__(self, target: BaseModel, path: str) -> None:
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_path", path)

    def __getattr__(self, name: str) -> Any:
        cls = type(self._target)
        if name in cls.model_fields:
            field = cls.model_fields[name]
            return _view(getattr(self._target, name), _join(self._path, field.alias or name))
        static = inspect.getattr_static(cls, name, None)
        ours = any(name in vars(k) for k in cls.__mro__ if k.__module__.startswith("tlrepro."))
        if ours and isinstance(static, property):
            return static.fget(self)
        if ours and inspect.isfunction(static):
            return lambda *args, **kwargs: static(self, *args, **kwargs)
        _reads.add(self._path)  # pydantic's own API (model_dump, ...) reads the whole object
        return getattr(self._target, name)


class _MapView:
    __slots__ = ("_target", "_path")

    def __init__(self, target: dict, path: str) -> None:
        self._target, self._path = target, path

    def __getitem__(self, key: Any) -> Any:
        return _view(self._target[key], _join(self._path, key))

    def get(self, key: Any, default: Any = None) -> Any:
        return self[key] if key in self._target else default

    def __contains__(self, key: Any) -> bool:
        return key in self._target

    def _whole(self) -> dict:
        _reads.add(self._path)
        return self._target

    def __iter__(self):
        return iter(self._whole())

    def __len__(self) -> int:
        return len(self._whole())

    def keys(self):
        return self._whole().keys()

    def items(self):
        return [(k, _view(v, _join(self._path, k))) for k, v in self._whole().items()]

    def values(self):
        return [v for _, v in self.items()]


def _modules() -> list[str]:
    """The files of every tlrepro module this process imported, relative to the source root (src/)."""
    root = Path(__file__).resolve().parents[2]
    files = {Path(m.__file__).resolve() for name, m in list(sys.modules.items())
             if name.split(".")[0] == "tlrepro" and getattr(m, "__file__", None)}
    return sorted(str(f.relative_to(root.parent)) for f in files if f.is_relative_to(root))


def _write() -> None:
    if log := os.environ.get(LOG_ENV):
        line = json.dumps({"stage": os.environ.get(STAGE_ENV, ""), "reads": sorted(_reads),
                           "modules": _modules()}) + "\n"
        with open(log, "a") as handle:  # one short append per process
            handle.write(line)


def recording(params: Any) -> Any:
    """`params` behind a read-recording view when TLREPRO_PARAMS_LOG is set, else `params` itself."""
    if not os.environ.get(LOG_ENV):
        return params
    if not getattr(recording, "registered", False):
        atexit.register(_write)
        recording.registered = True
    return _ModelView(params, "")
