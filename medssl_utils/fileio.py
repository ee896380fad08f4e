"""Atomic writes: a temporary sibling, then one ``os.replace``, so a crash leaves no half file.

Every medssl writer that must not leave a partial file or folder behind goes through here: run
files (:mod:`medssl_utils.rundir`), training states and checkpoints, NIfTI volumes, the slice and
phantom caches, report files. At the bottom of the package: it imports only the standard library.

- :func:`atomic_write` writes bytes or text in one call.
- :func:`atomic_file` hands a temporary path to a writer that wants a file name (``torch.save``,
  ``nibabel.save``) and renames it into place when the block ends without an error.
- :func:`atomic_folder` does the same for a folder built file by file; when another process
  placed the same folder first, theirs is kept (both built the same content).

Temporary names start with a dot and hold ``.tmp-<pid>`` (:func:`temp_sibling`), so they never
look like results and show which process left them. A writer killed mid-write (``kill -9``, a
preempted job) leaves its temporary behind; :func:`stale_temps` finds those whose process is no
longer alive on this machine and :func:`remove_stale_temps` deletes them (never a live writer's).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TEMP_MARK = ".tmp-"
_TEMP_NAME = re.compile(r"^\..+\.tmp-(?P<pid>\d+)(?:\.[A-Za-z0-9.]+)?$")


def temp_sibling(path: str | os.PathLike, suffix: str = "") -> Path:
    """The temporary name for ``path`` in its own folder: ``.<name>.tmp-<pid>``.

    With ``suffix`` (e.g. ``".nii.gz"``) and a name that ends in it, the suffix is kept at the end
    (``.<stem>.tmp-<pid>.nii.gz``), for writers that choose the format by the file name.
    """
    path = Path(path)
    name = path.name
    if suffix and name.endswith(suffix):
        return path.with_name(f".{name[: -len(suffix)]}{TEMP_MARK}{os.getpid()}{suffix}")
    return path.with_name(f".{name}{TEMP_MARK}{os.getpid()}")


@contextmanager
def atomic_file(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` when the block succeeds.

    The parent folder is created. On an error (or when the writer wrote nothing) the temporary
    file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path, suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` (bytes, or text as UTF-8) to ``path`` atomically; returns ``path``."""
    with atomic_file(path) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
    return Path(path)


@contextmanager
def atomic_folder(final: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``final``; rename it to ``final`` when the block succeeds.

    If ``final`` appeared meanwhile (another process built it), the temporary folder is removed
    and theirs is kept. On an error the temporary folder is removed and the error propagates.
    """
    final = Path(final)
    tmp = temp_sibling(final)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        try:
            os.replace(tmp, final)
        except OSError:
            if not final.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def discard_folder(path: str | os.PathLike) -> None:
    """Remove a broken folder (a cache entry to rebuild): renamed away first, so no reader picks it up
    while it is deleted; nothing happens when another process discarded it first."""
    path = Path(path)
    gone = path.with_name(f".{path.name}.broken-{os.getpid()}")
    try:
        os.replace(path, gone)
    except FileNotFoundError:
        return
    shutil.rmtree(gone, ignore_errors=True)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (a process of another user counts as alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:
        return False
    return True


def stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Temporary files and folders (``.<name>.tmp-<pid>[suffix]``) under ``folder`` whose writing
    process is no longer alive, sorted. A pid that is alive (perhaps reused by another process) is
    left alone: a live writer's temporary is never reported."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in [*filenames, *dirnames]:
            m = _TEMP_NAME.match(name)
            if m and not _alive(int(m["pid"])):
                found.append(Path(dirpath) / name)
        dirnames[:] = [d for d in dirnames if not _TEMP_NAME.match(d)]  # a temporary folder is one item
    return sorted(found)


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete :func:`stale_temps` of ``folder``; returns what was removed."""
    removed = []
    for path in stale_temps(folder):
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:
            continue  # another process cleaned it first
        removed.append(path)
    return removed


def size_text(paths) -> str:
    """Total size of files / folders, as ``"12.3 MB"``."""
    total = 0
    for p in paths:
        p = Path(p)
        if p.is_dir():
            total += sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        elif p.exists():
            total += p.stat().st_size
    return f"{total / 1e6:.1f} MB"
