"""Reading inputs safely: only regular files are read, nothing waits on a read, every folder is walked once.

A folder of images may hold anything a file system can: named pipes (FIFOs), sockets, device files, links
to them, broken links, and links that loop back to a folder above them. Opening a FIFO for reading waits
for a writer (forever), reading /dev/zero never ends, and following a looping link never ends either. So
input folders are walked by `walk`, which lists each such entry with the reason it was skipped, and input
files are read by `open_regular` / `read_regular`, which open nothing but a regular file and never wait.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

SPECIAL_KINDS = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
                 (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def kind_of(mode: int) -> str:
    """What a file's mode says it is, in words (for anything but a regular file or a folder)."""
    return next((name for test, name in SPECIAL_KINDS if test(mode)), "not a regular file")


class NotRegularFile(OSError):
    """An input path that is a FIFO, socket or device: it is never read."""

    def __init__(self, path: Path | str, mode: int) -> None:
        super().__init__(errno.EINVAL, f"not a regular file but {kind_of(mode)}", str(path))


def printable(path: str | PurePosixPath) -> str:
    """A path whose name is not valid UTF-8, written so a CSV can hold it (undecodable bytes as \\xNN)."""
    return os.fsencode(str(path)).decode("utf-8", "backslashreplace")


def open_regular(path: Path | str) -> BinaryIO:
    """The file opened for reading in binary, or NotRegularFile / OSError.

    Only a path that stat() calls a regular file is opened at all (opening a device can have effects), and
    then with O_NONBLOCK, so a file swapped for a FIFO in between cannot make the open wait; fstat() on
    the open file confirms it is the regular file."""
    info = os.stat(path)
    if not stat.S_ISREG(info.st_mode):
        raise NotRegularFile(path, info.st_mode)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(path, mode)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: Path | str) -> bytes:
    """A regular file's bytes (see open_regular); anything else is an OSError saying what it is."""
    with open_regular(path) as handle:
        return handle.read()


@dataclass
class Walk:
    """What `walk` found under a folder, every path relative to it, in os.walk's top-down sorted order."""

    files: list[PurePosixPath] = field(default_factory=list)  # regular files (or links to them)
    skipped: list[dict[str, str]] = field(default_factory=list)  # {path, reason}: special files, bad links
    errors: list[dict[str, str]] = field(default_factory=list)  # {path, reason}: what could not be read
    folders: list[PurePosixPath] = field(default_factory=list)  # every folder walked, "." first

    @property
    def problems(self) -> list[dict[str, str]]:
        """Everything under the folder that will not be used, with the reason."""
        return self.skipped + self.errors


def _entry_problem(entry: os.DirEntry, exc: OSError) -> tuple[str, bool]:
    """(reason, is an error rather than a skip) for an entry whose target cannot be stat()ed."""
    if exc.errno == errno.ELOOP:
        return "symlink loop (the link leads back to itself): fix or remove the link", False
    if exc.errno == errno.ENOENT and entry.is_symlink():
        try:
            target = os.readlink(entry.path)
        except OSError:  # the link itself went away meanwhile
            return "vanished while the folder was read: run again", True
        return f"broken link (its target {printable(target)} does not exist): fix or remove it", False
    if exc.errno == errno.ENOENT:
        return "vanished while the folder was read: run again", True
    return f"unreadable: {exc.strerror or exc}", True


def walk(folder: Path | str, *, skip: Callable[[str], bool] = lambda name: False) -> Walk:
    """Every regular file under `folder` (names for which `skip` is true left out), following links to
    files and to folders outside `folder`; special files, broken links and loops are listed, never read.

    A link to a folder inside `folder` is not followed: it either loops back to a folder above it or
    duplicates one that is walked as itself. Nor is a link to a folder that holds `folder`: a loop too."""
    root = Path(folder)
    real_root = os.path.realpath(root)
    found = Walk()
    # (path on disk, path relative to root, (dev, inode) of the folders above it, itself included)
    stack: list[tuple[Path, PurePosixPath, tuple[tuple[int, int], ...]]] = []
    try:
        info = os.stat(root)
        stack.append((root, PurePosixPath("."), ((info.st_dev, info.st_ino),)))
    except OSError as exc:
        found.errors.append({"path": ".", "reason": f"unreadable folder: {exc.strerror or exc}"})
    while stack:
        path, rel, above = stack.pop()
        try:
            with os.scandir(path) as listing:
                entries = sorted(listing, key=lambda e: e.name)
        except OSError as exc:
            found.errors.append({"path": printable(rel), "reason": f"unreadable folder: {exc.strerror or exc}"})
            continue
        found.folders.append(rel)
        subfolders = []
        for entry in entries:
            if skip(entry.name):
                continue
            child = rel / entry.name
            try:
                info = entry.stat()  # follows links
            except OSError as exc:
                reason, is_error = _entry_problem(entry, exc)
                (found.errors if is_error else found.skipped).append({"path": printable(child), "reason": reason})
                continue
            if stat.S_ISREG(info.st_mode):
                found.files.append(child)
            elif stat.S_ISDIR(info.st_mode):
                key = (info.st_dev, info.st_ino)
                target = os.path.realpath(entry.path)
                if key in above or os.path.commonpath([real_root, target]) == target:  # leads back up
                    found.skipped.append({"path": printable(child), "reason": "symlink loop (a link to a folder "
                                          "above it): not followed; remove the link"})
                elif entry.is_symlink() and os.path.commonpath([real_root, target]) == real_root:
                    inside = PurePosixPath(Path(os.path.relpath(target, real_root)).as_posix())
                    found.skipped.append({"path": printable(child), "reason": f"a link to {printable(inside)}, "
                                          f"which is read as itself: not followed twice"})
                else:
                    subfolders.append((Path(entry.path), child, (*above, key)))
            else:
                what = kind_of(info.st_mode)
                link = "a link to " if entry.is_symlink() else ""
                found.skipped.append({"path": printable(child),
                                      "reason": f"not a regular file ({link}{what}): skipped, never read"})
        stack.extend(reversed(subfolders))
    return found
