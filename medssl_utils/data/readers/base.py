"""The base types of the reader registry: :class:`Option` and :class:`Reader` (every reader
module declares one ``READER``; :mod:`medssl_utils.data.readers` gathers them into the table).
At the bottom of the data layer: it imports no reader."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from medssl_utils.errors import ParameterError

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
