"""Notebook parameters: what each notebook takes, and the checks behind its validation cell.

The declaration
---------------
:func:`declared` gives every parameter of a notebook with its type:

- ``01_pretrain`` and ``02_finetune``: the fields of
  :class:`~medssl_utils.training.PretrainConfig` / :class:`~medssl_utils.training.FinetuneConfig`
  (type = the field's annotation; allowed values = what the config checks when it is made);
- ``00_explore_data`` and ``03_analysis``: the small table :data:`NOTEBOOK_ONLY` below (type and
  check of each parameter).

Each notebook's parameters cell lists exactly these names, with the config class's defaults value
for value (one set of defaults; :data:`NOTEBOOK_DEFAULTS` names the exceptions and why;
``tests/test_hostile_inputs.py`` fails when they disagree), and its validation cell is ``params.check_notebook(NAME, globals())``, so a
value from the cell, from ``papermill -p`` or from a study file goes through the same checks.
The study runner applies the same declaration to a study file before any run starts
(:func:`medssl_utils.study.checks.check_parameters`): an unknown name (with close matches) or a
value of the wrong type or out of range is one line naming the file and key.

Every check raises :class:`~medssl_utils.errors.ParameterError` whose message starts with the
parameter's name and says what is allowed.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
import dataclasses
from dataclasses import dataclass, fields
from pathlib import Path

from medssl_utils.errors import ParameterError, close_matches


# ============================================================================ single checks
def check_int(name: str, value, lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ParameterError(f"{name}={value!r}: expected a whole number"
                             + (f" in {lo}..{hi}" if lo is not None and hi is not None else "")
                             + _text_hint(value))
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        rng = f">= {lo}" if hi is None else f"in {lo}..{hi}"
        raise ParameterError(f"{name}={value}: expected a whole number {rng}")
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


def check_spec(name: str, value):
    """A dataset spec string (see :mod:`medssl_utils.data.specs`); returns the parsed spec."""
    from medssl_utils.data.specs import parse_spec

    try:
        return parse_spec(value)
    except ParameterError as exc:
        raise ParameterError(f"{name}: {exc}") from None


def check_specs(name: str, values) -> list:
    if isinstance(values, str) or not isinstance(values, (list, tuple)) or not values:
        raise ParameterError(f"{name}={values!r}: expected a non-empty list of dataset specs")
    return [check_spec(f"{name}[{i}]", v) for i, v in enumerate(values)]


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


# ============================================================================ the declaration
@dataclass(frozen=True)
class Param:
    """One notebook parameter: its name, type (annotation text), what it means, and — for the
    notebooks without a config — the check of its value (returns the checked value)."""

    name: str
    type: str
    doc: str = ""
    check: Callable | None = None


def _results_dirs(value) -> list:
    dirs = [value] if isinstance(value, str) else list(value)
    if not dirs or not all(isinstance(d, str) and d.strip() for d in dirs):
        raise ParameterError(f"results_dir={value!r}: expected a folder or a non-empty list of folders")
    return dirs


def _fraction(name: str):
    return lambda v: check_number(name, v, 0, 1, low_open=True, what="a fraction in (0, 1]")


#: Parameters of the notebooks that have no config class (their parameters cells list exactly these).
NOTEBOOK_ONLY: dict[str, tuple[Param, ...]] = {
    "00_explore_data": (
        Param("dataset", "str", "the dataset to browse (a dataset spec)", lambda v: check_spec("dataset", v)),
        Param("gallery", "list[str]", "datasets shown side by side", lambda v: check_specs("gallery", v)),
        Param("image_size", "int", "slice size in pixels", lambda v: check_int("image_size", v, 16, 1024)),
        Param("seed", "int", "seed of the examples and augmentations", lambda v: check_int("seed", v, 0)),
        Param("n_views", "int", "augmented views per example", lambda v: check_int("n_views", v, 1, 16)),
    ),
    "03_analysis": (
        Param("results_dir", "str | list[str]", "results folder(s) holding run directories", _results_dirs),
        Param("target", "float", "fraction of the best final validation Dice that counts as converged",
              _fraction("target")),
        Param("reference", "str | None", "strategy the speed-ups are relative to (None: the default)"),
        Param("out_dir", "str | None", "where the report goes (None: <results_dir>/report)"),
    ),
}
#: Notebooks whose parameters are the fields of a config class (``medssl_utils.training``).
CONFIG_NOTEBOOKS = {"01_pretrain": "PretrainConfig", "02_finetune": "FinetuneConfig"}
NOTEBOOKS = ("00_explore_data", "01_pretrain", "02_finetune", "03_analysis")
#: Parameters whose notebook default differs from the config class's on purpose (and why); every
#: other default of a config notebook equals the class's, value for value (:func:`cell_disagreements`).
NOTEBOOK_DEFAULTS = {"run_dir": "the config has none (a run from Python names its folder); "
                                "the notebook writes to a demo folder under runs/"}


def notebook_name(notebook: str | os.PathLike) -> str:
    """``"02_finetune"`` for ``"02_finetune"``, ``"02_finetune.ipynb"`` or a path to it."""
    name = Path(str(notebook)).name.removesuffix(".ipynb")
    if name not in NOTEBOOKS:
        raise ParameterError(f"notebook {str(notebook)!r}: expected one of {list(NOTEBOOKS)}")
    return name


def config_class(notebook: str | os.PathLike) -> type | None:
    """The config class whose fields are the notebook's parameters (None for 00 and 03)."""
    name = CONFIG_NOTEBOOKS.get(notebook_name(notebook))
    if name is None:
        return None
    from medssl_utils.training import config

    return getattr(config, name)


def declared(notebook: str | os.PathLike) -> dict[str, Param]:
    """``{name: Param}``: every parameter of the notebook, in order."""
    cls = config_class(notebook)
    if cls is None:
        return {p.name: p for p in NOTEBOOK_ONLY[notebook_name(notebook)]}
    return {f.name: Param(f.name, f.type if isinstance(f.type, str) else f.type.__name__)
            for f in fields(cls) if f.init}


def check_notebook(notebook: str | os.PathLike, namespace: Mapping):
    """A notebook's validation cell: every declared parameter read from ``namespace`` (the
    notebook's ``globals()``) and checked. Returns the run's config (``01_pretrain``,
    ``02_finetune``) or ``{name: checked value}`` (``00_explore_data``: dataset specs parsed;
    ``03_analysis``: ``results_dir`` as a list)."""
    name = notebook_name(notebook)
    params = declared(name)
    missing = [p for p in params if p not in namespace]
    if missing:
        raise ParameterError(f"{name}: the parameters cell lacks {', '.join(missing)} (every parameter of the "
                             "notebook is set there; see medssl_utils.params)")
    values = {p: namespace[p] for p in params}
    cls = config_class(name)
    if cls is not None:
        return cls(**values)
    out = {}
    for p in params.values():
        check_type(p.name, values[p.name], p.type)
        out[p.name] = p.check(values[p.name]) if p.check else values[p.name]
    return out


def check_augment(augment, which: str, image_size: int, base: Mapping | None = None) -> dict:
    """``augment`` (keyword arguments of :class:`~medssl_utils.data.transforms.SSLAugment` or
    ``SegAugment``, named by ``which``) checked by name and type, then by building the
    augmentation as the training loop does (over ``base``, the method's defaults). Returns it."""
    from medssl_utils.data import transforms

    cls = getattr(transforms, which)
    augment = check_keywords("augment", augment, cls, what=which,
                             set_by={"output_size": f"image_size ({image_size}) sets it; change image_size"})
    try:
        cls(output_size=image_size, **{**(base or {}), **augment})
    except ParameterError as exc:
        raise ParameterError(f"augment.{exc}") from None
    return augment


#: A parameters-cell default that is not a Python literal (:func:`read_cell`).
NOT_LITERAL = type("NotLiteral", (), {"__repr__": lambda self: "<not a literal>"})()


def read_cell(notebook_path: str | os.PathLike) -> tuple[dict, list[str]]:
    """``({name: default}, problems)`` of a notebook's parameters cell, read with ``ast``
    (a default that is not a literal is :data:`NOT_LITERAL`). ``problems``: no parameters cell,
    or lines that are not ``name = value``. Raises :class:`ParameterError` when the file is not
    a readable notebook."""
    import ast

    import nbformat

    path = Path(notebook_path)
    try:
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
    except Exception as exc:  # noqa: BLE001 - JSON / nbformat errors: the file is not a notebook
        raise ParameterError(f"notebook {path}: cannot be read as a Jupyter notebook "
                             f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    index = next((i for i, c in enumerate(code) if "parameters" in c.metadata.get("tags", [])), None)
    if index is None:
        return {}, [f"{path.name}: no cell tagged 'parameters'"]
    cell, problems = {}, []
    try:
        body = ast.parse(code[index].source).body
    except SyntaxError as exc:
        return {}, [f"{path.name}: the parameters cell is not valid Python (line {exc.lineno})"]
    for node in body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            problems.append(f"{path.name}: the parameters cell holds more than 'name = value' lines "
                            f"(line {node.lineno})")
            continue
        try:
            cell[node.targets[0].id] = ast.literal_eval(node.value)
        except ValueError:
            cell[node.targets[0].id] = NOT_LITERAL
    return cell, problems


def _same(a, b) -> bool:
    """Equal as defaults: a list and a tuple of the same items are the same; types count otherwise
    (``True`` is not ``1``, ``1`` is not ``1.0``)."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def cell_disagreements(notebook_path: str | os.PathLike) -> list[str]:
    """How a notebook's parameters cell disagrees with :func:`declared` (empty when it agrees):
    names missing or extra, default values that are not literals, fail the checks or differ from
    the config class's (``01_pretrain``, ``02_finetune``; :data:`NOTEBOOK_DEFAULTS` aside), and a
    validation cell (the next code cell) that does not call :func:`check_notebook` with the
    notebook's name."""
    import nbformat

    path = Path(notebook_path)
    name = notebook_name(path)
    cell, problems = read_cell(path)
    params = declared(name)
    problems += [f"{path.name}: parameter {p} has no literal default" for p, v in cell.items() if v is NOT_LITERAL]
    problems += [f"{path.name}: parameter {p} is declared but not in the parameters cell" for p in params
                 if p not in cell]
    problems += [f"{path.name}: parameter {p} is in the parameters cell but not declared" for p in cell
                 if p not in params]
    if not problems:
        try:
            check_notebook(name, cell)
        except ParameterError as exc:
            problems.append(f"{path.name}: the parameters cell's defaults fail the checks: {exc}")
    cls = config_class(name)
    if cls is not None:  # one set of defaults: the config class's
        defaults = {f.name: (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
                    for f in fields(cls) if f.init}
        for p, v in cell.items():
            if p in defaults and p not in NOTEBOOK_DEFAULTS and v is not NOT_LITERAL and not _same(v, defaults[p]):
                problems.append(f"{path.name}: parameter {p} defaults to {v!r} in the parameters cell but to "
                                f"{defaults[p]!r} in {cls.__name__} (one set of defaults: change the class, "
                                "then the cell)")
    code = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    index = next((i for i, c in enumerate(code) if "parameters" in c.metadata.get("tags", [])), len(code))
    check = code[index + 1].source if index + 1 < len(code) else ""
    if f'check_notebook("{name}", globals())' not in check:
        problems.append(f"{path.name}: the cell after the parameters cell does not call "
                        f'params.check_notebook("{name}", globals())')
    return problems
