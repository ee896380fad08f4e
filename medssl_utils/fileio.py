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
look like results and show which process left them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TEMP_MARK = ".tmp-"


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
