"""Checks of single values, shared by every layer: numbers, keyword options, values against
type annotations (dataset specs: :func:`medssl_utils.data.specs.check_spec`; augmentation keywords:
:func:`medssl_utils.data.transforms.check_augment`). At the bottom of the package (it imports only
:mod:`medssl_utils.errors` at module level); every check raises
:class:`~medssl_utils.errors.ParameterError` whose message starts with the parameter's name and
says what is allowed. :mod:`medssl_utils.params` (the notebooks' declaration) and the config
classes use them.
"""

from __future__ import annotations

import math
import numbers
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import fields

from medssl_utils.errors import ParameterError, close_matches


# ============================================================================ single checks
def check_int(name: str, value, lo: int | None = None, hi: int | None = None) -> int:
    """A whole number (Python or numpy integer, not a bool) in ``lo..hi``; returned as an ``int``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ParameterError(f"{name}={value!r}: expected a whole number"
                             + (f" in {lo}..{hi}" if lo is not None and hi is not None else "")
                             + _text_hint(value))
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        rng = f">= {lo}" if hi is None else f"in {lo}..{hi}"
        raise ParameterError(f"{name}={value}: expected a whole number {rng}")
    return int(value)


def check_bool(name: str, value) -> bool:
    """``True`` or ``False`` (not 0/1, not the text ``"false"``)."""
    if not isinstance(value, bool):
        raise ParameterError(f"{name}={value!r}: expected True or False")
    return value


def check_number(name: str, value, lo: float | None = None, hi: float | None = None, *, low_open: bool = False,
                 what: str | None = None) -> float:
    """A finite real number (not a bool) in ``[lo, hi]`` (``(lo, hi]`` with ``low_open``)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and lo is not None:
        ok = value > lo if low_open else value >= lo
    if ok and hi is not None:
        ok = value <= hi
    if not ok:
        if what is None:
            what = "a finite number" + ("" if lo is None else f" {'>' if low_open else '>='} {lo}") + (
                "" if hi is None else f" and <= {hi}")
        raise ParameterError(f"{name}={value!r}: expected {what}{_text_hint(value)}")
    return float(value)


def _text_hint(value) -> str:
    """For a number given as text: say so (YAML 1.1 reads ``1e-4``, without a '.', as a string)."""
    if not isinstance(value, str):
        return ""
    try:
        float(value)
    except ValueError:
        return ""
    if re.fullmatch(r"\s*[-+]?\d+[eE][-+]?\d+\s*", value):
        return f" (this is the text {value!r}: YAML reads a number like 1e-4 without a '.' as text; write 1.0e-4)"
    return f" (this is the text {value!r}, not a number: remove the quotes)"


def unknown_name(name: str, known, what: str) -> str:
    """``"not a parameter of 02_finetune; did you mean eval_every?"`` (or the list of what exists)."""
    close = close_matches(name, known)
    hint = f"did you mean {' or '.join(close)}?" if close else f"expected one of {', '.join(sorted(known))}"
    return f"not {what}; {hint}"


def check_keywords(name: str, options, target: Callable, *, set_by: Mapping[str, str] | None = None,
                   what: str | None = None) -> dict:
    """``options`` (a dict of keyword arguments for ``target``) checked against ``target``'s signature.

    The names must be keyword parameters of ``target`` that have a default (the others the code
    passes itself), not in ``set_by`` (``{option: what sets it instead}``), and each value must
    fit the parameter's annotation. Returns ``options`` as a dict.
    """
    import inspect

    if not isinstance(options, Mapping):
        raise ParameterError(f"{name}={options!r}: expected a mapping of {what or target.__name__} options")
    accepted = {p.name: p for p in inspect.signature(target).parameters.values()
                if p.default is not inspect.Parameter.empty
                and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    set_by = dict(set_by or {})
    for key, value in options.items():
        if key in set_by:
            raise ParameterError(f"{name}.{key}: not settable here: {set_by[key]}")
        if key not in accepted:
            raise ParameterError(f"{name}.{key}: " + unknown_name(key, [k for k in accepted if k not in set_by],
                                                                  f"an option of {what or target.__name__}"))
        annotation = accepted[key].annotation
        if isinstance(annotation, str):
            check_type(f"{name}.{key}", value, annotation)
    return dict(options)


# ============================================================================ types from annotations
_BASE: dict[str, tuple[Callable[[object], bool], str, str]] = {
    # annotation: (test, "a ...", plural)
    "None": (lambda v: v is None, "None", "None"),
    "str": (lambda v: isinstance(v, str), "a string", "strings"),
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "a whole number", "whole numbers"),
    "float": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number", "numbers"),
    "bool": (lambda v: isinstance(v, bool), "True or False", "True/False values"),
    "dict": (lambda v: isinstance(v, Mapping), "a mapping", "mappings"),
    "list": (lambda v: isinstance(v, (list, tuple)), "a list", "lists"),
    "tuple": (lambda v: isinstance(v, (list, tuple)), "a list", "lists"),
    "os.PathLike": (lambda v: isinstance(v, os.PathLike), "a path", "paths"),
}


def _split(text: str, sep: str) -> list[str]:
    """``text`` split at ``sep`` outside brackets."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch == "["
        depth -= ch == "]"
        if ch == sep and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    return parts + [text[start:].strip()]


def _parse(annotation: str) -> tuple[str, list]:
    """``"list[int]"`` → ``("list", ["int"])``; raises ``TypeError`` for what this module cannot check."""
    text = annotation.strip()
    base, _, rest = text.partition("[")
    base = base.strip()
    args = _split(rest[:-1], ",") if rest else []
    if base not in _BASE or (args and base not in ("list", "tuple", "dict")):
        raise TypeError(f"annotation {annotation!r}: not a type medssl_utils.params can check")
    return base, args


def matches_type(value, annotation: str) -> bool:
    """Whether ``value`` fits the annotation text (``int``, ``float | None``, ``list[str]``,
    ``tuple[int, ...]``, ``tuple[float, float]``, ``dict``, ``str | os.PathLike`` ...). A ``float``
    accepts whole numbers; ``int`` and ``float`` never accept ``True`` / ``False``."""
    alternatives = _split(annotation, "|")
    if len(alternatives) > 1:
        return any(matches_type(value, a) for a in alternatives)
    base, args = _parse(annotation)
    if not _BASE[base][0](value):
        return False
    if not args:
        return True
    if base == "dict":
        return all(matches_type(k, args[0]) and matches_type(v, args[1]) for k, v in value.items())
    if base == "list" or (len(args) == 2 and args[1] == "..."):
        return all(matches_type(v, args[0]) for v in value)
    return len(value) == len(args) and all(matches_type(v, a) for v, a in zip(value, args))


def describe_type(annotation: str) -> str:
    """The annotation in words: ``"float | None"`` → ``"a number or None"``."""
    alternatives = _split(annotation, "|")
    if len(alternatives) > 1:
        return " or ".join(describe_type(a) for a in alternatives)
    base, args = _parse(annotation)
    if not args:
        return _BASE[base][1]
    if base == "dict":
        return f"a mapping of {_plural(args[0])} to {_plural(args[1])}"
    if base == "list" or (len(args) == 2 and args[1] == "..."):
        return f"a list of {_plural(args[0])}"
    if len(set(args)) == 1:
        return f"a list of {len(args)} {_plural(args[0])}"
    return "a list (" + ", ".join(describe_type(a) for a in args) + ")"


def _plural(annotation: str) -> str:
    base, args = _parse(annotation)
    return _BASE[base][2] if not args else describe_type(annotation)


def check_type(name: str, value, annotation: str) -> None:
    """Raise ``ParameterError("name=value: expected <type in words>")`` unless ``value`` fits."""
    if not matches_type(value, annotation):
        wants_number = any(a in ("int", "float") for a in _split(annotation, "|"))
        hint = _text_hint(value) if wants_number else ""
        raise ParameterError(f"{name}={_show(value)}: expected {describe_type(annotation)}{hint}")


def check_field_types(obj) -> None:
    """Every init field of the dataclass instance ``obj`` checked against its annotation."""
    for f in fields(obj):
        if f.init:
            check_type(f.name, getattr(obj, f.name), f.type if isinstance(f.type, str) else f.type.__name__)


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
