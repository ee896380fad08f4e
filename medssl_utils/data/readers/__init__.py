"""The reader registry: every dataset kind, its target and its options, in one table.

Each reader lives in its own module of this package and declares a :class:`Reader`:
its kind (the word before ``:`` in a dataset spec), what its target is (a path, a name,
or nothing), its options (name, type, allowed values, default, one-line doc) and the
function that reads it. :data:`READERS` is the one table; the spec parser
(:mod:`medssl_utils.data.specs`) validates every spec against it, so a reader never parses
its own options and a bad option is refused before anything is read.

Adding a reader is one file plus one entry in :func:`_load_table`'s list (the base types live in
:mod:`~medssl_utils.data.readers.base`, so a reader module never imports this one)::

    # medssl_utils/data/readers/mine.py
    READER = Reader(kind="mine", target="path", read=read_mine, doc="...",
                    options=(Option("level", "int", default=1, min=1, max=9, doc="..."),))

    def read_mine(target: str, opts: dict, spec: str) -> VolumeSet: ...

``read`` receives the target (a string, or None), a dict with a typed value for every
declared option (defaults filled in) and the spec string (for the VolumeSet and for
error messages). The tag options ``domain``, ``task`` and ``group`` belong to every kind
and are applied by :func:`medssl_utils.data.specs.load_dataset`.
"""

from __future__ import annotations

from pathlib import Path

from medssl_utils.data.readers import acdc, dicom, folder, mni, msd, natural, phantom, real
from medssl_utils.data.readers.base import OPTION_TYPES, TAG_OPTIONS, Option, Reader  # noqa: F401 - the registry's face
from medssl_utils.errors import DataError, ParameterError

def _load_table() -> dict[str, Reader]:
    table = {}
    for module in (acdc, msd, folder, phantom, mni, natural, dicom, real):
        reader = module.READER
        if reader.kind in table:
            raise RuntimeError(f"reader kind {reader.kind!r} registered twice")
        table[reader.kind] = reader
    return table


READERS: dict[str, Reader] = _load_table()
KINDS = tuple(READERS)
#: Kinds whose target is a file system path (a study file resolves these relative to itself).
PATH_KINDS = tuple(k for k, r in READERS.items() if r.target == "path")


def get_reader(kind: str) -> Reader:
    if kind not in READERS:
        raise ParameterError(f"unknown dataset kind {kind!r}; expected one of {list(KINDS)}")
    return READERS[kind]


def detect_format(root: Path) -> str:
    """The kind of a downloaded dataset folder (``msd``, ``acdc``, ``folder`` or ``dicom``), else raise."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: path does not exist")
    if not root.is_dir():
        raise DataError(f"{root}: expected a dataset folder, got a file")
    for reader in READERS.values():
        if reader.detect is not None and reader.detect(root):
            return reader.kind
    layouts = "; ".join(r.layout for r in READERS.values() if r.detect is not None)
    raise DataError(f"{root}: unrecognised layout; supported: {layouts}")
