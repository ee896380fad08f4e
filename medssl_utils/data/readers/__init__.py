"""The reader registry: every dataset kind, its target and its options, in one table.

Each reader lives in its own module of this package and declares a :class:`Reader`:
its kind (the word before ``:`` in a dataset spec), what its target is (a path, a name,
or nothing), its options (name, type, allowed values, default, one-line doc) and the
function that reads it. :data:`READERS` is the one table; the spec parser
(:mod:`medssl_utils.data.specs`) validates every spec against it, so a reader never parses
its own options and a bad option is refused before anything is read.

Adding a reader is one file plus one entry in :data:`READERS`::

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

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from medssl_utils.errors import DataError, ParameterError

OPTION_TYPES = ("bool", "int", "str", "list")
TRUE, FALSE = ("1", "true", "yes"), ("0", "false", "no")


@dataclass(frozen=True)
class Option:
    """One option of a reader.

    ``type``: ``bool`` (1/0, true/false, yes/no), ``int`` (within ``min``..``max``), ``str``
    (one of ``choices`` when given) or ``list`` (comma-separated, each item one of
    ``choices`` when given; no empty items, no repeats). ``default`` is the typed value used
    when the option is absent.
    """

    name: str
    type: str
    default: object = None
    doc: str = ""
    choices: tuple = ()
    min: int | None = None
    max: int | None = None

    def __post_init__(self):
        if self.type not in OPTION_TYPES:
            raise ValueError(f"option {self.name}: type {self.type!r} not in {OPTION_TYPES}")

    def expected(self) -> str:
        """What a valid value looks like, in words (used in every error message)."""
        if self.type == "bool":
            return "1 or 0 (also true/false, yes/no)"
        if self.type == "int":
            lo = "" if self.min is None else f"{self.min}"
            hi = "" if self.max is None else f"{self.max}"
            return f"an integer in {lo}..{hi}" if (lo or hi) else "an integer"
        if self.type == "list":
            return ("a comma-separated list of " + ", ".join(self.choices)) if self.choices \
                else "a comma-separated list"
        return ("one of " + ", ".join(self.choices)) if self.choices else "a non-empty string"

    def parse(self, raw: str, spec: str):
        """The typed value of ``raw``; raises ParameterError naming the spec and option."""

        def bad(why: str = "") -> ParameterError:
            return ParameterError(f"dataset spec '{spec}': option {self.name}={raw!r}; expected "
                                  f"{self.expected()}{why}")

        if raw == "":
            raise bad()
        if self.type == "bool":
            if raw.lower() in TRUE:
                return True
            if raw.lower() in FALSE:
                return False
            raise bad()
        if self.type == "int":
            text = raw.strip()
            if not (text.isdigit() or (text[:1] in "+-" and text[1:].isdigit())):
                raise bad()
            value = int(text)
            if (self.min is not None and value < self.min) or (self.max is not None and value > self.max):
                raise bad()
            return value
        if self.type == "list":
            items = [x.strip() for x in raw.split(",")]
            if any(not x for x in items):
                raise bad(" (an item is empty)")
            if len(set(items)) != len(items):
                raise bad(" (an item is repeated)")
            if self.choices and any(x not in self.choices for x in items):
                raise bad()
            return tuple(items)
        if self.choices and raw not in self.choices:
            raise bad()
        return raw


#: Options every kind accepts: the tags multi-domain pretraining attaches to each slice.
TAG_OPTIONS = (
    Option("domain", "str", doc="domain tag (default: from the dataset)"),
    Option("task", "str", doc="task tag (default: from the dataset)"),
    Option("group", "str", doc="group tag, e.g. the modality group (default: from the dataset)"),
)


@dataclass(frozen=True)
class Reader:
    """A dataset kind: see the module docstring.

    ``target`` is ``"path"`` (a file system path, relative paths taken from the current
    folder), ``"name"`` (one of ``names()``) or None (the kind takes no target).
    ``detect(path) -> bool`` lets ``medssl data summary`` recognise a folder of this kind.
    """

    kind: str
    target: str | None
    read: Callable[[str | None, dict, str], object]
    options: tuple[Option, ...] = ()
    doc: str = ""
    example: str = ""
    names: Callable[[], list[str]] | None = None
    detect: Callable[[Path], bool] | None = None
    layout: str = ""

    def option(self, name: str) -> Option | None:
        for opt in self.options + TAG_OPTIONS:
            if opt.name == name:
                return opt
        return None

    @property
    def option_names(self) -> list[str]:
        return [o.name for o in self.options + TAG_OPTIONS]


def _load_table() -> dict[str, Reader]:
    from medssl_utils.data.readers import acdc, dicom, folder, mni, msd, natural, phantom, real

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
