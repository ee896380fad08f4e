"""``docs/reference.md``, generated from the declarations the code already has: the dataset kinds and
their options (the reader registry), every notebook parameter with its type and default (the config
classes and :mod:`medssl_utils.params`), the keys a study file may use where (:mod:`medssl_utils.study.spec`)
and the claims (:mod:`medssl_utils.claims`). ``medssl reference`` prints it; ``make reference`` writes
it; a test fails when the committed page differs from what the code says.
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

from medssl_utils import claims, params
from medssl_utils.data.readers import READERS
from medssl_utils.data.readers.base import TAG_OPTIONS
from medssl_utils.fileio import atomic_write
from medssl_utils.study import spec

NOTEBOOKS = ("00_explore_data", "01_pretrain", "02_finetune", "03_analysis")
ROOT = Path(__file__).resolve().parents[1]


def _cell(text) -> str:
    """Markdown table cell text: one line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _value(value) -> str:
    if value is params.NOT_LITERAL:
        return "(computed)"
    return f"`{value!r}`"


def _field_comments(cls) -> dict[str, str]:
    """``{field: comment}`` from a dataclass's source: the comment on the field's line, else the
    comment lines right above it (what the notebooks' parameters cells repeat)."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        lines, start = inspect.getsourcelines(klass)
        above: list[str] = []
        for raw in lines:
            text = raw.strip()
            if text.startswith("#"):
                above.append(text.lstrip("# "))
                continue
            name = text.split(":", 1)[0].strip() if ":" in text and not text.startswith(("def ", "class ", "@")) else ""
            if name.isidentifier() and "#" in raw:
                out[name] = raw.split("#", 1)[1].strip()
            elif name.isidentifier() and above:
                out[name] = " ".join(above)
            if text:
                above = []
    return out


def _datasets() -> list[str]:
    out = ["## Dataset specs", "",
           "A dataset is named by a spec `KIND:TARGET?option=value&...` ([data.md](data.md) explains each kind). "
           f"Every kind also takes the tag options {', '.join(f'`{o.name}`' for o in TAG_OPTIONS)} "
           "(the labels HSSL's task and group levels use).", ""]
    for kind, reader in READERS.items():
        target = {"path": "a path", "name": "a name", None: "no target"}[reader.target]
        names = f" ({', '.join(f'`{n}`' for n in reader.names())})" if reader.names else ""
        out += [f"### `{kind}:`", "", _cell(reader.doc).rstrip(".") + f". Target: {target}{names}."
                + (f" Example: `{reader.example}`." if reader.example else ""), ""]
        if reader.options:
            out += ["| option | type | default | allowed | meaning |", "|---|---|---|---|---|"]
            out += [f"| `{o.name}` | {o.type} | {_value(o.default)} | {_cell(o.expected())} | {_cell(o.doc)} |"
                    for o in reader.options]
            out.append("")
    return out


def _notebooks() -> list[str]:
    out = ["## Notebook parameters", "",
           "Each notebook's first code cell (tagged `parameters`) holds these names with these defaults; "
           "papermill `-p NAME VALUE`, a study file's `params` or the cell itself may change them, and the "
           "notebook's next cell checks them all ([errors.md](errors.md)). The meaning is the config class's "
           "comment where it has one; the notebook's own text explains each parameter.", ""]
    for nb in NOTEBOOKS:
        declared = params.declared(nb)
        cls = params.config_class(nb)
        cell, _ = params.read_cell(ROOT / "notebooks" / f"{nb}.ipynb")
        comments = _field_comments(cls) if cls is not None else {}
        defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                    for f in dataclasses.fields(cls)} if cls is not None else {}
        out += [f"### `{nb}.ipynb`" + (f" (`{cls.__module__}.{cls.__name__}`)" if cls else ""), "",
                "| parameter | type | default | meaning |", "|---|---|---|---|"]
        for name, p in declared.items():
            default = cell[name] if name in cell else defaults.get(name, params.NOT_LITERAL)
            out.append(f"| `{name}` | `{_cell(p.type)}` | {_value(default)} | "
                       f"{_cell(p.doc or comments.get(name, ''))} |")
        out.append("")
    return out


def _study_keys() -> list[str]:
    rows = [("top level", spec.TOP_KEYS), ("`pretrain:`", spec.PRETRAIN_KEYS),
            ("`finetune:` (one grid)", spec.GRID_KEYS), ("`finetune.tasks.<name>:`", spec.TASK_KEYS),
            ("`finetune.strategies.<name>:` (when a mapping)", spec.STRATEGY_GRID_KEYS)]
    out = ["## Study-file keys", "",
           "What each key means and how a study is written: [study.md](study.md). Where each may appear:", "",
           "| where | keys |", "|---|---|"]
    out += [f"| {where} | {', '.join(f'`{k}`' for k in keys)} |" for where, keys in rows]
    out += ["", "Notebook parameters the runner sets itself, and where a study gives them instead:", "",
            "| parameter | instead |", "|---|---|"]
    out += [f"| `{k}` | {_cell(v)} |" for k, v in spec.RUNNER_OWNED.items()]
    return out + [""]


def _claims() -> list[str]:
    out = ["## Claims", "",
           "The report's claims table (`tables/claims.csv`; how each effect is computed: [results.md](results.md)). "
           "Verdict: " + _cell(inspect.getdoc(claims.verdict) or "").replace("``", "`"), "",
           "| claim | the paper's statement |", "|---|---|"]
    out += [f"| {k} | {_cell(v)} |" for k, v in claims.STATEMENTS.items()]
    return out + [""]


def reference() -> str:
    """The whole page, as Markdown."""
    head = ["# Reference", "",
            "Generated from the code by `medssl reference` (`make reference` writes this file); "
            "do not edit by hand: a test compares it with the code.", ""]
    return "\n".join(head + _datasets() + _notebooks() + _study_keys() + _claims()).rstrip() + "\n"


def run_cli(args) -> int:
    """``medssl reference [--out FILE]``."""
    text = reference()
    if args.out:
        atomic_write(args.out, text)
        print(f"wrote {args.out}")
    else:
        print(text, end="")
    return 0
