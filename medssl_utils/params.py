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
``tests/unit/test_hostile_inputs.py`` fails when they disagree), and its validation cell is
``params.check_notebook(NAME, globals())``, so a
value from the cell, from ``papermill -p`` or from a study file goes through the same checks.
The study runner applies the same declaration to a study file before any run starts
(:func:`medssl_utils.study.checks.check_parameters`): an unknown name (with close matches) or a
value of the wrong type or out of range is one line naming the file and key.

Every check raises :class:`~medssl_utils.errors.ParameterError` whose message starts with the
parameter's name and says what is allowed.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path

from medssl_utils.errors import ParameterError
from medssl_utils.validate import check_int, check_number, check_type


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


def _specs():
    """:mod:`medssl_utils.data.specs`, imported on use: it loads every reader (and numpy, scipy)."""
    from medssl_utils.data import specs  # every reader, numpy, scipy, torch: not for the light commands

    return specs


def _fraction(name: str):
    return lambda v: check_number(name, v, 0, 1, low_open=True, what="a fraction in (0, 1]")


#: Parameters of the notebooks that have no config class (their parameters cells list exactly these).
NOTEBOOK_ONLY: dict[str, tuple[Param, ...]] = {
    "00_explore_data": (
        Param("dataset", "str", "the dataset to browse (a dataset spec)", lambda v: _specs().check_spec("dataset", v)),
        Param("gallery", "list[str]", "datasets shown side by side", lambda v: _specs().check_specs("gallery", v)),
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
    from medssl_utils.training import config  # torch: not for the light commands

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


def papermill_annotation(type_text: str) -> str:
    """The annotation a parameters cell writes for a declared type, in the form papermill's own
    parameter reader accepts (``papermill --help-notebook``; its pattern allows word characters,
    brackets, commas and spaces, optionally in quotes — no ``|``, no dots):
    ``int | None`` → ``"Optional[int]"``, ``bool | str`` → ``"Union[bool, str]"``,
    ``tuple[int, ...]`` → ``list[int]`` (the cell holds a list), ``str | os.PathLike`` → ``str``
    (a notebook is given a path as text). A cell whose annotations use ``Optional`` / ``Union``
    imports them from ``typing`` on its first line (papermill passes over that line)."""
    import re

    parts = [p.strip() for p in type_text.split("|")]
    parts = [re.sub(r"^tuple\[(\w+), \.\.\.\]$", r"list[\1]", p) for p in parts if p != "os.PathLike"]
    rest = [p for p in parts if p != "None"]
    core = rest[0] if len(rest) == 1 else f"Union[{', '.join(rest)}]"
    if len(rest) < len(parts):
        core = f"Optional[{core}]"
    return core


#: A parameters-cell default that is not a Python literal (:func:`read_cell`).
NOT_LITERAL = type("NotLiteral", (), {"__repr__": lambda self: "<not a literal>"})()


def read_cell(notebook_path: str | os.PathLike, *, annotations: dict | None = None) -> tuple[dict, list[str]]:
    """``({name: default}, problems)`` of a notebook's parameters cell, read with ``ast``
    (a default that is not a literal is :data:`NOT_LITERAL`). ``problems``: no parameters cell,
    or lines that are not ``name: TYPE = value`` (or ``name = value``; ``from typing import …`` is
    allowed). ``annotations``, when
    given, receives ``{name: annotation text}`` (quotes kept; ``None`` for a line without one).
    Raises :class:`ParameterError` when the file is not a readable notebook."""
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
    source = code[index].source
    for node in body:
        if isinstance(node, ast.ImportFrom) and node.module == "typing":
            continue  # the Optional / Union of the annotations
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            target, annotation = node.targets[0].id, None
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            target, annotation = node.target.id, ast.get_source_segment(source, node.annotation)
        else:
            problems.append(f"{path.name}: the parameters cell holds more than 'name: TYPE = value' lines "
                            f"(line {node.lineno})")
            continue
        if annotations is not None:
            annotations[target] = annotation
        try:
            cell[target] = ast.literal_eval(node.value)
        except ValueError:
            cell[target] = NOT_LITERAL
    return cell, problems


def papermill_reading(notebook_path: str | os.PathLike) -> tuple[list, list[str]]:
    """What papermill's own parameter reader (``papermill --help-notebook``, and the check behind its
    "Passed unknown parameter" warning) finds in a notebook's parameters cell: ``(parameters,
    warnings)``, each parameter with ``name``, ``inferred_type_name``, ``default`` and ``help``."""
    import logging

    import nbformat
    from papermill.translators import PythonTranslator

    nb = nbformat.read(Path(notebook_path), as_version=4)
    cell = next((c for c in nb.cells if "parameters" in c.metadata.get("tags", [])), None)
    if cell is None:
        return [], []
    caught: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: caught.append(record.getMessage())
    logger = logging.getLogger("papermill")
    logger.addHandler(handler)
    try:
        found = PythonTranslator.inspect(cell)
    finally:
        logger.removeHandler(handler)
    return found, caught


def papermill_disagreements(notebook_path: str | os.PathLike, cell: dict) -> list[str]:
    """How papermill's reading of the parameters cell differs from Python's (``cell``, from
    :func:`read_cell`): its warnings, parameters it does not see, and defaults or types it reads
    otherwise (a line holding a second ``=`` is skipped by papermill — write ``\\x3d`` inside a
    string)."""
    import ast

    path = Path(notebook_path)
    found, warnings = papermill_reading(path)
    problems = [f"{path.name}: papermill warns: {w}" for w in warnings]
    seen = {p.name: p for p in found}
    for name, value in cell.items():
        if name not in seen:
            problems.append(f"{path.name}: papermill does not see parameter {name} in the parameters cell")
            continue
        try:
            same = _same(ast.literal_eval(seen[name].default), value)
        except (ValueError, SyntaxError):
            same = False
        if value is not NOT_LITERAL and not same:
            problems.append(f"{path.name}: papermill reads the default of {name} as {seen[name].default!r}")
        if seen[name].inferred_type_name == "None":
            problems.append(f"{path.name}: papermill reads no type for parameter {name} (annotate it)")
    return problems


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
    annotations: dict = {}
    cell, problems = read_cell(path, annotations=annotations)
    params = declared(name)
    for p, annotation in annotations.items():
        if p in params and annotation != papermill_annotation(params[p].type):
            problems.append(f"{path.name}: parameter {p} is annotated {annotation} in the parameters cell; expected "
                            f"{papermill_annotation(params[p].type)} (its declared type {params[p].type} in the form "
                            "papermill reads)")
    if not problems:
        problems += papermill_disagreements(path, cell)
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
