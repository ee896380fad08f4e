"""The course as a website: ``medssl site`` (``make docs``, ``make docs-student``).

The site is built with Sphinx (myst-nb, sphinx-book-theme; ``docs/conf.py``) from a copy of the
sources made at build time in ``OUT/src/`` (mirroring the repository: ``README.md``, ``docs/``):

* the pages of ``docs/`` as they are;
* ``docs/tutorials/``: the four notebooks **as executed by** ``make study`` (never executed here,
  ``nb_execution_mode = "off"``), found in its results folder by :func:`tutorial_sources`;
* ``docs/api/``: one page per module group of ``medssl_utils``, its docstrings through autodoc.

A **student** build drops every cell tagged ``solution`` from the copies (its source, outputs and the
page source Sphinx publishes alike). Every build runs with warnings as errors and ends with
:func:`check_links`: every relative ``href`` / ``src`` and ``#anchor`` of the built HTML must resolve
inside the site (nothing is requested from the network).

Only the standard library and :mod:`medssl_utils.selection` are imported at the top (the ``medssl``
command stays light); Sphinx runs in a subprocess, papermill only in :func:`execute_toy_notebooks`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

from medssl_utils import selection
from medssl_utils.errors import DataError, ParameterError

REPO = Path(__file__).resolve().parents[1]
#: The tutorial pages, in order: page name -> where its executed notebook lies in a results folder.
TUTORIALS = ("00_explore_data", "01_pretrain", "02_finetune", "03_analysis")
#: The pretraining run whose notebook is the 01 page, and the arm whose fine-tuning run is the 02 page.
PRETRAIN_STAGE = "byol-cardiac"
FINETUNE_ARM = "byol-cardiac"
FINETUNE_SEED = 0
SOLUTION = "solution"
HINT = "run `make study` first (or pass RESULTS=<the study's results folder>)"


# ------------------------------------------------------------------------------ executed notebooks

def _read_executed(path: Path) -> dict:
    """An executed notebook's JSON; one-line errors for a missing, unreadable, unexecuted or failed one."""
    if not path.is_file():
        raise DataError(f"{path}: missing; {HINT}")
    try:
        nb = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not a readable notebook ({exc.__class__.__name__}: {exc})") from None
    code = [c for c in nb.get("cells", []) if c.get("cell_type") == "code"]
    if not any(c.get("outputs") for c in code):
        raise DataError(f"{path}: has no outputs, so it was never executed; {HINT}")
    if (nb.get("metadata", {}).get("papermill") or {}).get("exception"):
        raise DataError(f"{path}: its execution failed (papermill recorded an exception); fix the run, then "
                        "run `make study` again")
    return nb


def _pick_combo(cell: Path) -> str:
    """The combination of a swept cell the study picked on validation Dice (``medssl_utils.selection``,
    recomputed from the selection runs' ``result.json`` with the grid and seeds their ``study.json`` give)."""
    combos = sorted(p.name for p in cell.iterdir() if p.is_dir() and not p.name.startswith("."))
    study = next((cell / c / f"seed{FINETUNE_SEED}" / "study.json" for c in combos
                  if (cell / c / f"seed{FINETUNE_SEED}" / "study.json").is_file()), None)
    if study is None:
        raise DataError(f"{cell}: no seed{FINETUNE_SEED}/ and no combination folder with "
                        f"seed{FINETUNE_SEED}/study.json; {HINT}")
    info = json.loads(study.read_text(encoding="utf-8"))
    grid, seeds = info.get("grid") or combos, info.get("selection_seeds") or [FINETUNE_SEED]

    def score(combo, seed):
        path = cell / combo / f"seed{seed}" / "result.json"
        return selection.validation_score(json.loads(path.read_text(encoding="utf-8"))) if path.is_file() else None

    won = selection.pick([{"combo": c, "order": i, "scores": [score(c, k) for k in seeds]} for i, c in enumerate(grid)])
    if won["combo"] is None:
        raise DataError(f"{cell}: no combination has a validation Dice yet (selection unfinished); {HINT}")
    return won["combo"]


def tutorial_sources(results: str | os.PathLike) -> dict[str, Path]:
    """Where the executed notebook of each tutorial page lies in ``results`` (a study's results folder):

    * ``00_explore_data``, ``03_analysis``: ``notebooks/<name>.ipynb`` (``make study`` runs them with papermill);
    * ``01_pretrain``: ``pretrain/byol-cardiac/notebook.ipynb``, the study's pretraining run;
    * ``02_finetune``: ``finetune/byol-cardiac/<budget>/[<combo>/]seed0/notebook.ipynb``: the BYOL arm's
      fine-tuning run at seed 0 with the setting the study picked on validation data (the cell must hold one
      budget).

    Raises :class:`DataError` (one line naming the file, saying to run ``make study``) for anything missing.
    """
    root = Path(results).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: no such results folder; {HINT}")
    arm = root / "finetune" / FINETUNE_ARM
    budgets = sorted(p for p in arm.iterdir() if p.is_dir()) if arm.is_dir() else []
    if len(budgets) != 1:
        found = ", ".join(p.name for p in budgets) or "none"
        raise DataError(f"{arm}: expected one budget folder with the {FINETUNE_ARM} arm's fine-tuning runs, found "
                        f"{found}; {HINT}")
    cell = budgets[0]
    run = cell / f"seed{FINETUNE_SEED}"
    if not run.is_dir():
        run = cell / _pick_combo(cell) / f"seed{FINETUNE_SEED}"
    return {"00_explore_data": root / "notebooks" / "00_explore_data.ipynb",
            "01_pretrain": root / "pretrain" / PRETRAIN_STAGE / "notebook.ipynb",
            "02_finetune": run / "notebook.ipynb",
            "03_analysis": root / "notebooks" / "03_analysis.ipynb"}


def without_solutions(nb: dict) -> dict:
    """``nb`` without its cells tagged ``solution`` (the student site's pages)."""
    return {**nb, "cells": [c for c in nb["cells"] if SOLUTION not in c.get("metadata", {}).get("tags", [])]}


# ------------------------------------------------------------------------------ the source copy

def _write_if_changed(path: Path, text: str) -> None:
    """Write ``text`` unless the file already holds it (so Sphinx rebuilds only what changed)."""
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def _api_groups() -> dict[str, list[str]]:
    """Module groups of the API reference: one per top-level module or sub-package of medssl_utils,
    each listing its modules (the package first), found from the files without importing them."""
    pkg = REPO / "medssl_utils"
    groups: dict[str, list[str]] = {}
    for path in sorted(pkg.iterdir()):
        if path.suffix == ".py" and path.stem not in ("__init__", "__main__"):
            groups[f"medssl_utils.{path.stem}"] = [f"medssl_utils.{path.stem}"]
        elif path.is_dir() and (path / "__init__.py").is_file():
            mods = []
            for f in sorted(path.rglob("*.py")):
                parts = f.relative_to(pkg.parent).with_suffix("").parts
                mods.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
            groups[f"medssl_utils.{path.name}"] = sorted(mods, key=lambda m: (m.count("."), m))
    return groups


def _api_pages(out: Path) -> None:
    """``out/index.rst`` and one reStructuredText page per group (autodoc's output is reStructuredText)."""
    groups = _api_groups()

    def title(text):
        return [text, "=" * len(text), ""]

    index = [*title("API reference"),
             "Every module of ``medssl_utils``, from its docstrings (the layers: :doc:`../design`).", "",
             ".. toctree::", "   :maxdepth: 1", "", *(f"   {g}" for g in groups), ""]
    _write_if_changed(out / "index.rst", "\n".join(index))
    for name, modules in groups.items():
        lines = title(f"``{name}``")
        for mod in modules:
            if mod != name:
                lines += [f"``{mod}``", "-" * (len(mod) + 4), ""]
            # a package's own members only: what its __all__ re-exports is documented in its submodule
            lines += [f".. automodule:: {mod}", *(["   :ignore-module-all:"] if mod == name and len(modules) > 1
                                                  else []), ""]
        _write_if_changed(out / f"{name}.rst", "\n".join(lines))
    for stale in out.iterdir():
        if stale.stem not in groups and stale.name != "index.rst":
            stale.unlink()


def prepare_source(results: str | os.PathLike, src: str | os.PathLike, *, student: bool = False) -> Path:
    """Write the site's Sphinx source into ``src`` (``src/docs`` is the source folder); return it.

    Every executed notebook is checked first, so a missing one fails before anything is written."""
    nbs = {name: _read_executed(path) for name, path in tutorial_sources(results).items()}
    src = Path(src)
    docs = src / "docs"
    docs.mkdir(parents=True, exist_ok=True)
    shutil.copy2(REPO / "README.md", src / "README.md")
    generated = ("tutorials", "api")
    pages = [p for p in (REPO / "docs").iterdir() if p.name not in ("conf.py", *generated) and not
             p.name.startswith((".", "_"))]
    for stale in docs.iterdir():  # a page deleted from docs/ leaves the site too
        if stale.name not in generated and stale.name not in {p.name for p in pages}:
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    for path in pages:
        target = docs / path.name
        if path.is_dir():
            shutil.copytree(path, target, dirs_exist_ok=True, copy_function=shutil.copy2)
        else:
            shutil.copy2(path, target)
    for name, nb in nbs.items():
        page = without_solutions(nb) if student else nb
        _write_if_changed(docs / "tutorials" / f"{name}.ipynb", json.dumps(page, indent=1, ensure_ascii=False))
    _api_pages(docs / "api")
    return docs


# ------------------------------------------------------------------------------ link check

class _Links(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.refs: list[tuple[str, str]] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for key in ("id", "name") if tag == "a" else ("id",):
            if a.get(key):
                self.ids.add(a[key])
        for key in ("href", "src"):
            if a.get(key) is not None:
                self.refs.append((tag, a[key]))
        if a.get("srcset"):
            self.refs += [(tag, part.split()[0]) for part in a["srcset"].split(",") if part.strip()]


def check_links(html: str | os.PathLike) -> list[str]:
    """Problems of the built site ``html``: one ``"<page>: <link>: <why>"`` line per relative ``href``
    or ``src`` whose file is not in the site, or whose ``#anchor`` is no ``id`` of its page (pages: every
    ``.html`` outside ``_static/``, which holds the theme's template macros, and ``_sources/``).
    External links (a scheme or ``//``) are not followed; an absolute path (``/x``) is a problem."""
    root = Path(html).resolve()
    pages = sorted(p for p in root.rglob("*.html") if p.relative_to(root).parts[0] not in ("_static", "_sources"))
    if not pages:
        return [f"{root}: no HTML pages"]
    parsed: dict[Path, _Links] = {}

    def parse(path: Path) -> _Links:
        if path not in parsed:
            p = _Links()
            p.feed(path.read_text(encoding="utf-8", errors="replace"))
            parsed[path] = p
        return parsed[path]

    problems = []
    for page in pages:
        for _tag, ref in parse(page).refs:
            parts = urlsplit(ref)
            if parts.scheme or parts.netloc or ref.startswith(("//", "javascript:")):
                continue
            where = f"{page.relative_to(root)}: {ref}"
            if parts.path.startswith("/"):
                problems.append(f"{where}: an absolute path (the site must work from any folder)")
                continue
            target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
            if target.is_dir():
                target = target / "index.html"
            if root not in target.parents and target != root:
                problems.append(f"{where}: points outside the site")
            elif not target.is_file():
                problems.append(f"{where}: no such file in the site")
            elif parts.fragment and target.suffix == ".html" and unquote(parts.fragment) not in parse(target).ids:
                problems.append(f"{where}: no id {unquote(parts.fragment)!r} in {target.relative_to(root)}")
    return problems


# ------------------------------------------------------------------------------ build

def build(results: str | os.PathLike, out: str | os.PathLike, *, student: bool = False,
          jobs: str | int = 1, quiet: bool = True) -> Path:
    """Build the site from the executed notebooks in ``results`` into ``out/html`` (source copy in
    ``out/src``): Sphinx with warnings as errors (``-W --keep-going``) and a fresh environment (``-E``:
    autodoc cannot tell when a docstring changed), then :func:`check_links`.
    Returns the HTML folder; raises :class:`DataError` with Sphinx's warnings or the broken links."""
    out = Path(out).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise ParameterError(f"--out {out}: is a file; expected a folder for the site")
    docs = prepare_source(results, out / "src", student=student)
    html = out / "html"
    cmd = [sys.executable, "-m", "sphinx", "-b", "html", "-c", str(REPO / "docs"), "-d", str(out / "doctrees"),
           "-E", "-W", "--keep-going", "-j", str(jobs), str(docs), str(html)]
    if quiet:
        cmd.insert(3, "-q")
    if student:
        cmd[3:3] = ["-t", "student"]
    env = {**os.environ, "MPLBACKEND": "Agg"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        lines = [x for x in (r.stderr + r.stdout).splitlines() if x.strip()]
        raise DataError(f"sphinx-build failed ({len(lines)} line(s) of output; the site is in {html}):\n"
                        + "\n".join(lines[-60:]))
    problems = check_links(html)
    if problems:
        raise DataError(f"{html}: {len(problems)} broken link(s):\n" + "\n".join(problems[:60]))
    return html


# ------------------------------------------------------------------------------ toy notebooks (CI, tests)

#: Toy sizes (tests/notebooks/test_notebooks.py's): an executed notebook of each page in about a minute each.
TOY = dict(encoder="test_resnet", image_size=32, decoder_channels=[16, 8, 8, 8, 8], device="cpu", probe_slices=8,
           probe_val_slices=8, probe_steps=10)
TOY_DATA = "phantom:cardiac?cases=4"


def execute_toy_notebooks(out: str | os.PathLike, notebooks: str | os.PathLike | None = None) -> Path:
    """Execute the four notebooks at toy size with papermill into ``out``, in the layout of a study's
    results folder (:func:`tutorial_sources` finds them): 00; one BYOL pretraining run; fine-tuning from it
    and from random init (seed 0, 6 labelled slices); 03 over those runs. For CI and the site's test, where
    no ``make study`` output exists; the figures are toy-sized, not results."""
    import papermill as pm  # papermill and its kernel: this function only

    src = Path(notebooks) if notebooks else REPO / "notebooks"
    out = Path(out).expanduser().resolve()
    (out / "notebooks").mkdir(parents=True, exist_ok=True)

    def run(name, output, **parameters):
        t0 = time.perf_counter()
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        pm.execute_notebook(str(src / f"{name}.ipynb"), str(output), parameters=parameters, cwd=str(out),
                            kernel_name="python3", progress_bar=False)
        print(f"{name:16s} {time.perf_counter() - t0:6.1f} s  {output}", flush=True)

    run("00_explore_data", out / "notebooks" / "00_explore_data.ipynb", dataset=TOY_DATA, image_size=32, n_views=2,
        gallery=[TOY_DATA, "phantom:brain-mr?cases=2", "natural?quadrants=0"])
    pre = out / "pretrain" / PRETRAIN_STAGE
    run("01_pretrain", pre / "notebook.ipynb", method="byol", datasets=[TOY_DATA], epochs=2, batch_size=48,
        save_epochs=[1], method_options={"hidden_dim": 64, "predictor_hidden_dim": 64, "projection_dim": 16},
        optimizer="adamw", run_dir=str(pre), probe_seeds=1, **TOY)
    for arm, init in (("random", "random"), (FINETUNE_ARM, str(pre / "checkpoints" / "final.pt"))):
        ft = out / "finetune" / arm / "n6" / f"seed{FINETUNE_SEED}"
        run("02_finetune", ft / "notebook.ipynb", dataset=TOY_DATA, init=init, labelled_slices=6, max_steps=6,
            eval_every=3, batch_size=4, lr=1e-3, seed=FINETUNE_SEED, run_dir=str(ft), **TOY)
    run("03_analysis", out / "notebooks" / "03_analysis.ipynb", results_dir=str(out),
        out_dir=str(out / "notebooks" / "report"))
    return out


# ------------------------------------------------------------------------------ command line

def add_cli(sub) -> None:
    """``medssl site build|toy-notebooks|check-links`` (registered by :mod:`medssl_utils.cli`)."""
    site = sub.add_parser("site", help="the course as a website (Sphinx): build it from a study's executed "
                                       "notebooks (make docs)").add_subparsers(dest="site_cmd", required=True)
    b = site.add_parser("build", help="build the site (warnings are errors), then check its links",
                        description="Tutorial pages: the notebooks as executed by `make study` (never executed "
                                    "here); with the instructor's guide, the how-to pages and the API reference.")
    b.add_argument("results", metavar="RESULTS", help="the study's results folder (make study: results/quick)")
    b.add_argument("--out", default=None, help="output folder (default build/docs, build/docs-student with "
                                               "--student); the site is OUT/html/index.html")
    b.add_argument("--student", action="store_true", help="leave out every cell tagged 'solution'")
    b.add_argument("--jobs", "-j", default="1", help="Sphinx's parallel jobs (a number or 'auto'; default 1)")
    b.set_defaults(func=_cmd_build)
    t = site.add_parser("toy-notebooks", help="execute the four notebooks at toy size into OUT (for CI and "
                                              "previews: a site without `make study`; toy figures)")
    t.add_argument("out", metavar="OUT")
    t.set_defaults(func=lambda a: print(execute_toy_notebooks(a.out)) or 0)
    c = site.add_parser("check-links", help="check that every relative link and #anchor of a built site resolves")
    c.add_argument("html", metavar="HTML_DIR")
    c.set_defaults(func=_cmd_check_links)


def _cmd_build(args) -> int:
    out = args.out or REPO / "build" / ("docs-student" if args.student else "docs")
    t0 = time.perf_counter()
    html = build(args.results, out, student=args.student, jobs=args.jobs)
    print(f"site: {html / 'index.html'} ({'student' if args.student else 'instructor'} edition, "
          f"{time.perf_counter() - t0:.0f} s, links checked)")
    return 0


def _cmd_check_links(args) -> int:
    problems = check_links(args.html)
    for p in problems:
        print(p)
    print(f"{args.html}: {len(problems)} broken link(s)", file=sys.stderr)
    return 1 if problems else 0
