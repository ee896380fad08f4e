"""Study files and the study runner: ``medssl study run STUDY.yaml`` / ``medssl study status``.

A *study* is a YAML file naming pretraining *stages* and a fine-tuning *grid*
(strategies × label budgets × seeds). The runner executes ``notebooks/01_pretrain.ipynb`` once
per stage and ``notebooks/02_finetune.ipynb`` once per grid cell with papermill, in dependency
order, and writes each executed notebook into its run directory (``docs/run-format.md``).

Study file
----------
Every relative path in a study file (``results_dir``, ``notebooks``, ``file:`` inits, the paths of
``acdc:`` / ``msd:`` / ``folder:`` dataset specs) is relative to **the folder holding the study
file**, so a study runs the same from any working directory; ``~`` and ``$VARS`` are expanded.
Unknown keys are errors at the top level, in ``pretrain``, ``finetune`` and a task; wherever
*notebook parameters* are expected (``defaults``, ``*.params``, a stage, a strategy mapping),
every key is passed to papermill as is, so any parameter a notebook has can be set::

    name: quick                      # default: the file name without .yaml
    description: one paragraph       # optional, shown by `status`
    results_dir: ../results/quick    # default: results/<name> beside the study file
    notebooks:                       # optional; default: medssl's notebooks/ folder
      pretrain: ../notebooks/01_pretrain.ipynb
      finetune: ../notebooks/02_finetune.ipynb
    defaults:                        # parameters of every run (both notebooks)
      encoder: resnet18
      image_size: 64
    pretrain:
      params: {epochs: 3}            # parameters of every stage
      stages:                        # name -> parameters of 01_pretrain (method, datasets required)
        byol-natural:  {method: byol, datasets: [natural]}
        byol-cardiac:  {method: byol, datasets: ["phantom:cardiac"], save_epochs: [1, 3]}
        byol-nat-card: {method: byol, datasets: ["phantom:cardiac"], init: "stage:byol-natural"}
    finetune:
      dataset: "phantom:cardiac"     # or `tasks:` (below)
      params: {max_steps: 200}       # parameters of every fine-tuning run
      strategies:                    # name -> init, or a mapping {init: ..., <overrides>}
        random: random
        supervised-imagenet: timm
        byol-cardiac: "stage:byol-cardiac"
        byol-cardiac@1ep: {init: "stage:byol-cardiac@1", labelled_slices: [16], seeds: [0]}
      labelled_slices: [4, 16, all]  # or labelled_fraction: [0.05, 0.1, 1.0]; `all` = every label
                                     # (passed as labelled_fraction: 1.0)
      seeds: [0, 1]                  # or a count: `seeds: 10` means 0..9

``init`` (of a stage or a strategy) is ``random``, ``timm`` (the encoder's timm pretrained weights,
e.g. ImageNet), ``file:PATH`` (a weights file), a checkpoint path, or ``stage:NAME`` — the final
checkpoint of stage NAME (``<results>/pretrain/NAME/checkpoints/final.pt``) — or ``stage:NAME@E``,
its epoch-E checkpoint (``epoch_E.pt``; E must be in that stage's ``save_epochs`` as the study
sets it). A run waits for the stages it starts from; stages starting from stages form chains
(natural → cardiac), and a cycle is an error.

A strategy mapping may override the grid's ``labelled_slices`` / ``labelled_fraction`` and
``seeds`` (e.g. a pretraining-epochs ablation at one budget); its other keys are notebook
parameters. The analysis reads a strategy named ``NAME@<E>ep`` as family NAME after E epochs.

Several downstream datasets (Work B): instead of ``dataset``, give ``tasks``, each a mapping with
its own ``dataset`` and optionally ``strategies``, ``labelled_*``, ``seeds``, ``params`` (which
override the grid's; strategies are merged by name, ``null`` drops one)::

    finetune:
      labelled_fraction: [0.05, 0.1, 1.0]
      strategies: {scratch: random, hssl: "stage:hssl-all"}
      tasks:
        cardiac: {dataset: "phantom:cardiac", strategies: {single-domain: "stage:ssl-cardiac"}}
        prostate: {dataset: "phantom:prostate-mr", strategies: {single-domain: "stage:ssl-prostate"}}

Parameters merge in this order (later wins): ``defaults``, ``pretrain.params`` / ``finetune.params``,
the task's ``params``, the stage / strategy. The runner sets ``run_dir``, ``init`` (resolved),
and for fine-tuning ``dataset``, ``seed`` and both ``labelled_slices`` and ``labelled_fraction``
(the unused one ``None``); setting those elsewhere is an error.

Run directories
---------------
``<results>/pretrain/<stage>/`` and ``<results>/finetune/<strategy>/<budget>/seed<k>/``
(``<results>/<task>/finetune/...`` with tasks); ``<budget>`` is ``n16`` (16 labelled slices),
``all`` or ``f0.05`` (5% of labels). Each holds the notebook's files, ``notebook.ipynb`` (the
executed copy, saved after every cell), ``study.json`` (which study, stage / strategy, task,
budget, seed and init as written made this run) and ``kernel.log`` (the kernel process's own
stdout / stderr, e.g. start-up warnings; cell output stays in the notebook).

Runner behaviour
----------------
- A run whose ``result.json`` says ``complete`` is not run again unless ``force`` (then the
  notebook gets ``overwrite=True``). Anything else — no ``result.json``, ``running`` (an
  interrupted run; the notebooks resume from ``checkpoints/last.pt``), ``failed``,
  ``skipped`` — is (re)run.
- ``init: timm`` is checked before anything runs, without downloading: the weights must be in
  the Hugging Face / torch-hub cache, or the hub must be reachable (and ``HF_HUB_OFFLINE`` unset).
  A missing ``file:`` weights file is treated alike. Such a run is **skipped**: its
  ``result.json`` gets status ``skipped`` and the reason as ``error``. Runs depending on a failed
  or skipped stage are skipped with ``depends on failed/skipped stage X``. Random init is never
  substituted.
- A failing notebook is recorded (``result.json`` status ``failed``, one-line ``error``, the
  partly executed ``notebook.ipynb``) and the other runs go on; the summary lists failures and
  :attr:`StudySummary.exit_code` is 1.
- ``workers=N`` executes up to N independent runs at once (threads driving papermill, each run
  in its own kernel process); the results do not depend on N.
- Executed notebooks run with the run directory as working directory. Ctrl-C interrupts the
  running kernels; those runs are recorded as failed and are redone by the next ``run``.
- One progress bar counts runs (a widget in Jupyter, tqdm in a terminal, a few plain lines in
  a log); the summary printed at the end counts done / already complete / skipped / failed,
  groups skipped runs by reason and lists each failed run's folder and error.
"""

from __future__ import annotations

import ast
import heapq
import json
import os
import re
import signal
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from medssl_utils.errors import MedsslError, ParameterError

KINDS = ("pretrain", "finetune")
TOP_KEYS = ("name", "description", "results_dir", "notebooks", "defaults", "pretrain", "finetune")
PRETRAIN_KEYS = ("params", "stages")
BUDGET_KEYS = ("labelled_slices", "labelled_fraction")
GRID_KEYS = ("dataset", "tasks", "strategies", *BUDGET_KEYS, "seeds", "params")
TASK_KEYS = ("dataset", "strategies", *BUDGET_KEYS, "seeds", "params")
STRATEGY_GRID_KEYS = ("init", *BUDGET_KEYS, "seeds")
#: Parameters the runner sets, and where a study sets them instead.
RUNNER_OWNED = {
    "run_dir": "the runner sets it from results_dir",
    "init": "give it per stage, or per strategy in finetune.strategies",
    "dataset": "give it as finetune.dataset (or per task)",
    "datasets": "give it per stage",
    "labelled_slices": "give it as finetune.labelled_slices",
    "labelled_fraction": "give it as finetune.labelled_fraction",
    "seed": "give fine-tuning seeds as finetune.seeds",
}
#: Which runner-owned keys each parameter block may still set.
ALLOWED_OWNED = {"defaults": {"seed"}, "pretrain.params": {"seed", "init", "datasets"},
                 "stage": {"seed", "init", "datasets"}, "finetune.params": set(), "strategy": set()}
PATH_SPEC_KINDS = ("acdc", "msd", "folder")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]*")
NOTEBOOK_FILES = {"pretrain": "01_pretrain.ipynb", "finetune": "02_finetune.ipynb"}
STATES = ("complete", "failed", "skipped", "running", "pending")


# ============================================================================ data model
@dataclass(frozen=True)
class Run:
    """One notebook execution of a study.

    ``params`` are the papermill parameters (``init`` resolved to a path for ``stage:`` inits,
    ``run_dir`` included); ``init`` is the init as the study wrote it; ``deps`` the ids of the
    stages this run starts from.
    """

    id: str
    kind: str
    name: str
    run_dir: Path
    params: dict
    init: str
    deps: tuple[str, ...] = ()
    task: str | None = None
    budget: str | None = None
    seed: int | None = None


@dataclass
class Study:
    """A validated study file: its runs in file order (stages first) and where things go."""

    path: Path
    name: str
    description: str
    results_dir: Path
    notebooks: dict[str, Path]
    runs: list[Run]

    def run(self, run_id: str) -> Run:
        """The run with id ``run_id`` (``KeyError`` if the study has none)."""
        for r in self.runs:
            if r.id == run_id:
                return r
        raise KeyError(f"study {self.name} has no run {run_id!r}")


@dataclass(frozen=True)
class Outcome:
    """What happened to one run: ``done``, ``already complete``, ``skipped``, ``failed``
    (dry run: ``would run``, ``already complete``, ``would skip``)."""

    run: Run
    outcome: str
    error: str | None = None
    seconds: float = 0.0


@dataclass
class StudySummary:
    """The result of :func:`run_study`; ``str()`` gives the table the command prints."""

    study: Study
    outcomes: list[Outcome] = field(default_factory=list)
    dry_run: bool = False
    seconds: float = 0.0

    @property
    def counts(self) -> Counter:
        return Counter(o.outcome for o in self.outcomes)

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.outcome == "failed"]

    @property
    def exit_code(self) -> int:
        """1 when any run failed, else 0 (skipped runs are reported, not errors)."""
        return 1 if self.failed else 0

    def __str__(self) -> str:
        return format_summary(self)


# ============================================================================ loading + validation
class _Ctx:
    """Where in which file a value sits, for one-line error messages."""

    def __init__(self, path: Path):
        self.path = path

    def error(self, key: str, what: str) -> ParameterError:
        return ParameterError(f"{self.path}: {key}: {what}" if key else f"{self.path}: {what}")

    def mapping(self, value, key: str, allowed: tuple[str, ...] | None = None, required: bool = False) -> dict:
        if value is None and not required:
            return {}
        if not isinstance(value, Mapping):
            raise self.error(key, f"expected a mapping, got {_show(value)}")
        out = {str(k): v for k, v in value.items()}
        if allowed is not None:
            unknown = [k for k in out if k not in allowed]
            if unknown:
                raise self.error(f"{key}.{unknown[0]}" if key else unknown[0],
                                 f"unknown key; expected one of {list(allowed)}")
        return out

    def name(self, value: str, key: str) -> str:
        if not NAME_RE.fullmatch(value):
            raise self.error(key, f"name {value!r} must be a folder name: letters, digits and . _ - @ +, "
                                  "starting with a letter or digit")
        return value

    def resolve(self, text: str) -> Path:
        """A path from the study file, relative to the study file's folder."""
        p = Path(os.path.expandvars(os.path.expanduser(str(text))))
        return p if p.is_absolute() else (self.path.parent / p).resolve()


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def load_study(path: str | os.PathLike, results_dir: str | os.PathLike | None = None) -> Study:
    """Read and validate a study file; raises :class:`ParameterError` naming the file and key.

    Nothing is executed and nothing outside the file is read (notebooks, data and weights are
    checked when the study runs). ``results_dir`` overrides the file's ``results_dir``.
    """
    path = Path(path).expanduser().resolve()
    ctx = _Ctx(path)
    doc = _read_yaml(path)
    top = ctx.mapping(doc, "", TOP_KEYS, required=True)
    name = str(top.get("name") or path.stem)
    ctx.name(name, "name")
    results = Path(results_dir).expanduser().resolve() if results_dir is not None else \
        ctx.resolve(top.get("results_dir") or f"results/{name}")
    notebooks = _notebooks(ctx, top.get("notebooks"))
    defaults = _params(ctx, top.get("defaults"), "defaults", "defaults")
    pre = ctx.mapping(top.get("pretrain"), "pretrain", PRETRAIN_KEYS)
    stages = _stages(ctx, pre, defaults)
    stage_runs = [_stage_run(ctx, n, p, stages, results) for n, p in stages.items()]
    _check_acyclic(ctx, stage_runs)
    fine = _finetune_runs(ctx, top.get("finetune"), "finetune" in top, defaults, stages, results)
    runs = stage_runs + fine
    if not runs:
        raise ctx.error("", "the study has no runs; give pretrain.stages and/or finetune")
    return Study(path=path, name=name, description=str(top.get("description") or "").strip(),
                 results_dir=results, notebooks=notebooks, runs=runs)


def _read_yaml(path: Path):
    import yaml

    if not path.is_file():
        raise MedsslError(f"study file {path} does not exist")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        first = " ".join(str(exc).split())
        raise ParameterError(f"{path}: not valid YAML: {first}") from None


def _notebooks(ctx: _Ctx, value) -> dict[str, Path]:
    given = ctx.mapping(value, "notebooks", KINDS)
    default_dir = Path(__file__).resolve().parents[1] / "notebooks"
    out = {}
    for kind in KINDS:
        if given.get(kind) is None:
            out[kind] = default_dir / NOTEBOOK_FILES[kind]
        elif isinstance(given[kind], str) and given[kind].strip():
            out[kind] = ctx.resolve(given[kind])
        else:
            raise ctx.error(f"notebooks.{kind}", f"expected the path of a notebook, got {_show(given[kind])}")
    return out


def _params(ctx: _Ctx, value, key: str, block: str) -> dict:
    """A block of notebook parameters; runner-owned keys the block may not set are errors."""
    params = ctx.mapping(value, key)
    for k in params:
        if k in RUNNER_OWNED and k not in ALLOWED_OWNED[block]:
            raise ctx.error(f"{key}.{k}", f"not settable here: {RUNNER_OWNED[k]}")
    return params


def _specs(ctx: _Ctx, value, key: str) -> list[str]:
    """Dataset spec(s) validated, with relative dataset paths made absolute."""
    from medssl_utils.data.specs import DatasetSpec, parse_spec

    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not values:
        raise ctx.error(key, f"expected a dataset spec or a non-empty list of them, got {_show(value)}")
    out = []
    for i, v in enumerate(values):
        where = key if isinstance(value, str) else f"{key}[{i}]"
        try:
            spec = parse_spec(v)
        except ParameterError as exc:
            raise ctx.error(where, str(exc)) from None
        if spec.kind in PATH_SPEC_KINDS:
            spec = DatasetSpec(spec.kind, str(ctx.resolve(spec.target)), spec.options)
        out.append(str(spec))
    return out


# ---------------------------------------------------------------------------- stages
def _stages(ctx: _Ctx, pre: dict, defaults: dict) -> dict[str, dict]:
    common = {**defaults, **_params(ctx, pre.get("params"), "pretrain.params", "pretrain.params")}
    stages = ctx.mapping(pre.get("stages"), "pretrain.stages")
    out = {}
    for name, value in stages.items():
        key = f"pretrain.stages.{name}"
        ctx.name(name, key)
        params = {**common, **_params(ctx, value, key, "stage")}
        if not isinstance(params.get("method"), str) or not params["method"].strip():
            raise ctx.error(f"{key}.method", "required: the pretraining method (byol, simclr or hssl)")
        if "datasets" not in params:
            raise ctx.error(f"{key}.datasets", "required: the dataset spec(s) to pretrain on")
        params["datasets"] = _specs(ctx, params["datasets"], f"{key}.datasets")
        save = params.get("save_epochs", [])
        if not isinstance(save, list) or not all(isinstance(e, int) and not isinstance(e, bool) for e in save):
            raise ctx.error(f"{key}.save_epochs", f"expected a list of epoch numbers, got {_show(save)}")
        params.setdefault("init", "random")
        out[name] = params
    return out


def _stage_run(ctx: _Ctx, name: str, params: dict, stages: dict, results: Path) -> Run:
    run_dir = results / "pretrain" / name
    init = params["init"]
    resolved, deps = _resolve_init(ctx, init, f"pretrain.stages.{name}.init", stages, results)
    _check_same_encoder(ctx, params, deps, stages, f"pretrain.stages.{name}")
    return Run(id=f"pretrain/{name}", kind="pretrain", name=name, run_dir=run_dir,
               params={**params, "init": resolved, "run_dir": str(run_dir)}, init=str(init), deps=deps,
               seed=params.get("seed"))


def _resolve_init(ctx: _Ctx, init, key: str, stages: dict, results: Path) -> tuple[str, tuple[str, ...]]:
    """``(init passed to the notebook, run ids it depends on)``."""
    if not isinstance(init, str) or not init.strip():
        raise ctx.error(key, f"expected an init string, got {_show(init)}")
    text = init.strip()
    if text.lower().startswith("stage:"):
        stage, _, epoch = text[6:].strip().partition("@")
        stage = stage.strip()
        if stage not in stages:
            raise ctx.error(key, f"{text!r} refers to unknown stage {stage!r}; stages: {sorted(stages)}")
        ckpt = results / "pretrain" / stage / "checkpoints"
        if not epoch:
            return str(ckpt / "final.pt"), (f"pretrain/{stage}",)
        saved = stages[stage].get("save_epochs", [])
        if not epoch.strip().isdigit() or int(epoch) not in saved:
            raise ctx.error(key, f"{text!r}: epoch {epoch.strip()} is not in the save_epochs {saved} of "
                                 f"stage {stage!r}")
        return str(ckpt / f"epoch_{int(epoch)}.pt"), (f"pretrain/{stage}",)
    from medssl_utils.models.init import parse_init

    try:
        kind, path = parse_init(text)
    except ParameterError as exc:
        raise ctx.error(key, f"{exc} or 'stage:NAME[@EPOCH]'") from None
    if kind != "path":
        return kind, ()
    return f"file:{ctx.resolve(str(path))}", ()


def _check_acyclic(ctx: _Ctx, runs: list[Run]) -> None:
    """Raise naming the cycle when stages start from each other in a loop."""
    deps = {r.id: r.deps for r in runs}
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(node: str, trail: list[str]) -> None:
        if state.get(node) == 2:
            return
        if state.get(node) == 1:
            cycle = trail[trail.index(node):] + [node]
            raise ctx.error("pretrain.stages", "stages start from each other in a cycle: "
                            + " -> ".join(c.split("/", 1)[1] for c in cycle))
        state[node] = 1
        for d in deps.get(node, ()):
            visit(d, trail + [node])
        state[node] = 2

    for r in runs:
        visit(r.id, [])


# ---------------------------------------------------------------------------- fine-tuning grid
def _finetune_runs(ctx: _Ctx, value, present: bool, defaults: dict, stages: dict, results: Path) -> list[Run]:
    if not present:
        return []
    grid = ctx.mapping(value, "finetune", GRID_KEYS, required=True)
    if "tasks" in grid and "dataset" in grid:
        raise ctx.error("finetune", "give either 'dataset' (one downstream dataset) or 'tasks', not both")
    if "tasks" not in grid and "dataset" not in grid:
        raise ctx.error("finetune.dataset", "required: the dataset spec to fine-tune on (or 'tasks')")
    if "tasks" not in grid:
        grid["params"] = _params(ctx, grid.get("params"), "finetune.params", "finetune.params")
        return _grid_runs(ctx, grid, None, "finetune", defaults, stages, results)
    tasks = ctx.mapping(grid["tasks"], "finetune.tasks")
    if not tasks:
        raise ctx.error("finetune.tasks", "expected at least one task")
    runs = []
    for task, tvalue in tasks.items():
        key = f"finetune.tasks.{task}"
        ctx.name(task, key)
        if task in KINDS:
            raise ctx.error(key, f"a task may not be called {task!r}")
        t = ctx.mapping(tvalue, key, TASK_KEYS, required=True)
        if "dataset" not in t:
            raise ctx.error(f"{key}.dataset", "required: the dataset spec of this task")
        merged = {**{k: v for k, v in grid.items() if k != "tasks"}, **t,
                  "params": {**_params(ctx, grid.get("params"), "finetune.params", "finetune.params"),
                             **_params(ctx, t.get("params"), f"{key}.params", "finetune.params")},
                  "strategies": _merge_strategies(ctx, grid.get("strategies"), t.get("strategies"), key)}
        if any(k in t for k in BUDGET_KEYS):  # a task's budget replaces the grid's, whichever kind
            for k in BUDGET_KEYS:
                if k not in t:
                    merged.pop(k, None)
        runs += _grid_runs(ctx, merged, task, key, defaults, stages, results)
    return runs


def _merge_strategies(ctx: _Ctx, common, own, key: str) -> dict:
    merged = {**ctx.mapping(common, "finetune.strategies"), **ctx.mapping(own, f"{key}.strategies")}
    return {k: v for k, v in merged.items() if v is not None}


def _grid_runs(ctx: _Ctx, grid: dict, task: str | None, key: str, defaults: dict, stages: dict,
               results: Path) -> list[Run]:
    """The runs of one fine-tuning grid (one downstream dataset): strategies x budgets x seeds."""
    root = results / task / "finetune" if task else results / "finetune"
    dataset = _specs(ctx, grid["dataset"], f"{key}.dataset")
    if len(dataset) != 1:
        raise ctx.error(f"{key}.dataset", "expected one dataset spec")
    common = {**defaults, **grid.get("params", {})}
    common.pop("seed", None)  # fine-tuning seeds come from `seeds`
    strategies = ctx.mapping(grid.get("strategies"), f"{key}.strategies")
    if not strategies:
        raise ctx.error(f"{key}.strategies", "required: at least one strategy (name: init)")
    budgets = _budgets(ctx, grid, key)
    seeds = _seeds(ctx, grid.get("seeds"), f"{key}.seeds")
    runs = []
    for name, value in strategies.items():
        skey = f"{key}.strategies.{name}"
        ctx.name(name, skey)
        s = {"init": value} if isinstance(value, str) else ctx.mapping(value, skey, required=True)
        if "init" not in s:
            raise ctx.error(f"{skey}.init", "required: the encoder init of this strategy")
        extra = _params(ctx, {k: v for k, v in s.items() if k not in STRATEGY_GRID_KEYS}, skey, "strategy")
        own_budgets = _budgets(ctx, s, skey) if any(k in s for k in BUDGET_KEYS) else budgets
        own_seeds = _seeds(ctx, s["seeds"], f"{skey}.seeds") if "seeds" in s else seeds
        init, deps = _resolve_init(ctx, s["init"], f"{skey}.init", stages, results)
        _check_same_encoder(ctx, {**common, **extra}, deps, stages, skey)
        for label, slices, fraction in own_budgets:
            for seed in own_seeds:
                run_dir = root / name / label / f"seed{seed}"
                rid = f"{task + '/' if task else ''}finetune/{name}/{label}/seed{seed}"
                params = {**common, **extra, "dataset": dataset[0], "init": init, "labelled_slices": slices,
                          "labelled_fraction": fraction, "seed": seed, "run_dir": str(run_dir)}
                runs.append(Run(id=rid, kind="finetune", name=name, run_dir=run_dir, params=params,
                                init=str(s["init"]).strip(), deps=deps, task=task, budget=label, seed=seed))
    return runs


def _check_same_encoder(ctx: _Ctx, params: dict, deps: tuple[str, ...], stages: dict, key: str) -> None:
    """A run starting from a stage must build the encoder that stage trained."""
    for dep in deps:
        stage = stages[dep.split("/", 1)[1]]
        if "encoder" in params and "encoder" in stage and _arch(params["encoder"]) != _arch(stage["encoder"]):
            raise ctx.error(f"{key}.encoder", f"{params['encoder']!r} differs from the encoder "
                                              f"{stage['encoder']!r} of the stage it starts from ({dep})")


def _arch(encoder) -> str:
    """``resnet50`` of ``tu-resnet50.tv_in1k``: the architecture, without prefix and weights tag."""
    return str(encoder).strip().removeprefix("tu-").split(".")[0]


def _budgets(ctx: _Ctx, grid: dict, key: str) -> list[tuple[str, int | None, float | None]]:
    """``[(folder label, labelled_slices, labelled_fraction)]`` of a grid or strategy."""
    given = [k for k in BUDGET_KEYS if k in grid]
    if len(given) == 2:
        raise ctx.error(key, "give either labelled_slices or labelled_fraction, not both")
    if not given:
        raise ctx.error(f"{key}.labelled_slices", "required: the label budgets (labelled_slices: [..] "
                                                  "or labelled_fraction: [..])")
    bkey = given[0]
    values = grid[bkey]
    values = values if isinstance(values, list) else [values]
    if not values:
        raise ctx.error(f"{key}.{bkey}", "expected at least one label budget")
    out = []
    for v in values:
        if v is None or (isinstance(v, str) and v.strip().lower() == "all"):  # the notebooks need one of the two
            out.append(("all", None, 1.0) if bkey == "labelled_slices" else ("f1", None, 1.0))
        elif bkey == "labelled_slices" and isinstance(v, int) and not isinstance(v, bool) and v >= 1:
            out.append((f"n{v}", v, None))
        elif bkey == "labelled_fraction" and isinstance(v, (int, float)) and not isinstance(v, bool) \
                and 0 < v <= 1:
            out.append((f"f{float(v):g}", None, float(v)))
        else:
            what = "whole numbers >= 1" if bkey == "labelled_slices" else "fractions in (0, 1]"
            raise ctx.error(f"{key}.{bkey}", f"{_show(v)} is not a budget; expected {what} or 'all'")
    labels = [b[0] for b in out]
    if len(set(labels)) != len(labels):
        raise ctx.error(f"{key}.{bkey}", f"budgets repeat: {values}")
    return out


def _seeds(ctx: _Ctx, value, key: str) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise ctx.error(key, f"a seed count must be >= 1, got {value}")
        return list(range(value))
    if not isinstance(value, list) or not value:
        raise ctx.error(key, f"required: a non-empty list of seeds (or a count), got {_show(value)}")
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in value):
        raise ctx.error(key, f"expected whole numbers >= 0, got {_show(value)}")
    if len(set(value)) != len(value):
        raise ctx.error(key, f"seeds repeat: {value}")
    return list(value)


# ============================================================================ planning
def execution_order(runs: list[Run]) -> list[Run]:
    """Runs sorted so that every run comes after the stages it starts from; otherwise file order."""
    index = {r.id: i for i, r in enumerate(runs)}
    waiting_on = {r.id: set(r.deps) for r in runs}
    dependants: dict[str, list[str]] = {}
    for r in runs:
        for d in r.deps:
            dependants.setdefault(d, []).append(r.id)
    ready = [index[r.id] for r in runs if not r.deps]
    heapq.heapify(ready)
    order = []
    while ready:
        run = runs[heapq.heappop(ready)]
        order.append(run)
        for child in dependants.get(run.id, ()):
            waiting_on[child].discard(run.id)
            if not waiting_on[child]:
                heapq.heappush(ready, index[child])
    if len(order) != len(runs):  # load_study rejects cycles; this guards hand-made run lists
        raise ParameterError("runs depend on each other in a cycle: "
                             + ", ".join(sorted(set(index) - {r.id for r in order})))
    return order


def timm_weights_available(encoder: str) -> tuple[bool, str]:
    """Whether ``init: timm`` can be resolved for ``encoder`` without downloading blindly.

    True when timm's pretrained weights are in the local Hugging Face / torch-hub cache (or
    the pretrained config names an existing file), or, not cached, when ``HF_HUB_OFFLINE`` is
    unset and the host serving them answers within 3 s (the notebook then downloads them).
    Returns ``(available, one-line explanation)``; nothing is downloaded here.
    """
    import timm
    from timm.models import get_pretrained_cfg

    name = encoder.strip().removeprefix("tu-")
    if not timm.is_model_pretrained(name):
        return False, f"init 'timm': timm has no pretrained weights for encoder {name!r}"
    cfg = get_pretrained_cfg(name)
    if cfg is None:
        return False, f"init 'timm': timm has no pretrained config for encoder {name!r}"
    cached = _cached_timm_file(cfg)
    if cached:
        return True, f"timm weights for {name!r} are cached at {cached}"
    source = f"https://huggingface.co/{cfg.hf_hub_id}" if cfg.hf_hub_id else str(cfg.url)
    help_ = ("medssl does not substitute random init; to run this arm offline, cache the weights (README: "
             "ImageNet weights offline) or give init 'file:PATH'")
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False, (f"init 'timm': timm's pretrained weights for encoder {name!r} ({source}) are not in the "
                       f"local cache and HF_HUB_OFFLINE is set; {help_}")
    host = urlparse(source).hostname or ""
    if _reachable(host):
        return True, f"timm weights for {name!r} are not cached; the notebook downloads them from {source}"
    return False, (f"init 'timm': timm's pretrained weights for encoder {name!r} ({source}) are not in the "
                   f"local cache and {host} cannot be reached; {help_}")


def _cached_timm_file(cfg) -> str | None:
    """The local file timm would load for a pretrained config, or None (no network)."""
    if getattr(cfg, "file", None) and Path(cfg.file).is_file():
        return str(cfg.file)
    hub = getattr(cfg, "hf_hub_id", None)
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo, _, revision = hub.partition("@")
        names = [cfg.hf_hub_filename] if getattr(cfg, "hf_hub_filename", None) else \
            ["model.safetensors", "pytorch_model.bin"]
        for fname in names:
            found = try_to_load_from_cache(repo, fname, revision=revision or None)
            if isinstance(found, str):
                return found
    url = getattr(cfg, "url", None)
    if url and (not hub or os.environ.get("TIMM_USE_OLD_CACHE")):
        import torch.hub

        candidate = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name
        if candidate.is_file():
            return str(candidate)
    return None


def _reachable(host: str, timeout: float = 3.0) -> bool:
    if not host:
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _notebook_defaults(notebook: Path) -> dict:
    """The literal default values of a notebook's parameters cell (unreadable ones left out)."""
    import papermill as pm

    out = {}
    for name, info in pm.inspect_notebook(str(notebook)).items():
        try:
            out[name] = ast.literal_eval(info.get("default", ""))
        except (ValueError, SyntaxError):
            continue
    return out


def blocked_runs(study: Study, runs: list[Run] | None = None,
                 check_timm: Callable[[str], tuple[bool, str]] | None = None) -> dict[str, str]:
    """``{run id: reason}`` for runs whose init weights cannot be had (they will be skipped).

    ``init: timm`` is checked with ``check_timm(encoder)`` (default
    :func:`timm_weights_available`, once per encoder); ``file:`` inits need the file to exist.
    Runs depending on these are not listed (the runner skips them as dependants).
    """
    check = check_timm or timm_weights_available
    verdicts: dict[str, tuple[bool, str]] = {}
    defaults: dict[str, dict] = {}
    out = {}
    for run in study.runs if runs is None else runs:
        init = str(run.params["init"])
        if init == "timm":
            encoder = run.params.get("encoder")
            if encoder is None:
                if run.kind not in defaults:
                    defaults[run.kind] = _notebook_defaults(study.notebooks[run.kind])
                encoder = defaults[run.kind].get("encoder", "resnet18")
            if encoder not in verdicts:
                verdicts[encoder] = check(str(encoder))
            ok, reason = verdicts[encoder]
            if not ok:
                out[run.id] = reason
        elif init.startswith("file:") and not Path(init[5:]).exists():
            out[run.id] = (f"init {run.init!r}: weights file {init[5:]} does not exist (download it, or "
                           "edit the path in the study file)")
    return out


def preflight_problems(study: Study, runs: list[Run]) -> list[str]:
    """What stops ``runs`` from executing at all: missing notebooks or dataset folders."""
    problems = []
    for kind in sorted({r.kind for r in runs}):
        if not study.notebooks[kind].is_file():
            problems.append(f"notebooks.{kind}: {study.notebooks[kind]} does not exist")
    seen = set()
    for run in runs:
        specs = run.params.get("datasets") or [run.params.get("dataset")]
        for spec in specs:
            kind, _, target = str(spec).partition(":")
            target = target.split("?", 1)[0]
            if kind in PATH_SPEC_KINDS and target not in seen:
                seen.add(target)
                if not Path(target).exists():
                    problems.append(f"dataset {spec!r} (used by {run.id}): {target} does not exist; "
                                    f"edit the path in {study.path.name}")
    return problems


# ============================================================================ run directories
def read_state(run: Run) -> tuple[str, str | None]:
    """``(state, error)`` of a run from its ``result.json``: one of :data:`STATES`."""
    try:
        result = json.loads((run.run_dir / "result.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "pending", None
    status = result.get("status") if isinstance(result, dict) else None
    if status not in STATES:
        return "pending", None
    return status, result.get("error")


def _meta(run: Run) -> dict:
    """What a result.json written by the runner says about the run besides its status."""
    keys = ("datasets", "method", "epochs") if run.kind == "pretrain" else \
        ("dataset", "labelled_slices", "labelled_fraction", "seed")
    return {"kind": run.kind, "init": run.params["init"], **{k: run.params.get(k) for k in keys}}


def _write_study_json(study: Study, run: Run) -> None:
    from medssl_utils.rundir import write_json

    write_json(run.run_dir / "study.json", {
        "study": study.name, "study_file": str(study.path), "run_id": run.id, "kind": run.kind,
        "stage" if run.kind == "pretrain" else "strategy": run.name, "task": run.task, "budget": run.budget,
        "seed": run.seed, "init": run.init, "depends_on": list(run.deps)})


def _write_result(run: Run, result: dict) -> None:
    from medssl_utils.rundir import now, write_json

    write_json(run.run_dir / "result.json", {**_meta(run), **result, "written_by": "study runner",
                                             "finished": now()})


def _one_line(exc: BaseException) -> str:
    """A papermill or other exception as one line: ``Name: first line of the message``."""
    ename, evalue = getattr(exc, "ename", None), getattr(exc, "evalue", None)
    if ename:
        text = f"{ename}: {evalue}" if evalue else str(ename)
        cell = getattr(exc, "exec_count", None)
        return _first_line(text) + (f" (notebook cell [{cell}])" if cell else "")
    return _first_line(f"{type(exc).__name__}: {exc}")


def _first_line(text: str, limit: int = 500) -> str:
    line = next((ln.strip() for ln in str(text).splitlines() if ln.strip()), "")
    return line if len(line) <= limit else line[: limit - 3] + "..."


# ============================================================================ execution
Executor = Callable[[Path, Path, dict, Path], None]


class PapermillExecutor:
    """``executor(notebook, output, parameters, cwd)``: one papermill execution, safe in threads.

    papermill's own ``cwd`` changes this process's working directory, which races between
    threads; here the kernel is started in ``cwd`` instead. The kernel process's own
    stdout / stderr (not cell output, which the notebook keeps) go to ``cwd/kernel.log``, so
    kernel start-up warnings do not garble the progress bar. :meth:`interrupt` sends SIGINT to
    every kernel this executor has running, so Ctrl-C stops a study at once.
    """

    def __init__(self, kernel_name: str = "python3", threads: int | None = None):
        self.kernel_name = kernel_name
        # CPU threads per kernel: with several kernels at once each gets its share of the cores,
        # since OpenMP threads spin-waiting on oversubscribed cores make torch many times slower.
        self.threads = threads
        self._live: set = set()
        self._lock = threading.Lock()

    def __call__(self, notebook: Path, output: Path, parameters: dict, cwd: Path) -> None:
        import papermill as pm

        started: list = []
        try:
            pm.execute_notebook(str(notebook), str(output), parameters=parameters, kernel_name=self.kernel_name,
                                progress_bar=False, log_output=False, request_save_on_cell_execute=True,
                                kernel_manager_class=self._manager_class(Path(cwd) / "kernel.log", started),
                                resources={"metadata": {"path": str(cwd)}})
        finally:
            with self._lock:
                self._live.difference_update(started)

    def _manager_class(self, log_path: Path, started: list):
        """A kernel manager class whose kernels log to ``log_path`` and are known to :meth:`interrupt`."""
        from jupyter_client.manager import AsyncKernelManager

        executor = self

        class RunKernelManager(AsyncKernelManager):
            async def start_kernel(self, **kw):
                with open(log_path, "ab") as log:  # the kernel process keeps its own descriptor
                    kw.setdefault("stdout", log)
                    kw.setdefault("stderr", log)
                    if executor.threads:
                        n = str(executor.threads)
                        kw.setdefault("env", {**os.environ, "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n})
                    await super().start_kernel(**kw)
                with executor._lock:
                    executor._live.add(self)
                started.append(self)

        return RunKernelManager

    def interrupt(self) -> None:
        """Send SIGINT to the kernels of the executions still running (each then fails fast)."""
        with self._lock:
            pids = [getattr(km.provisioner, "pid", None) for km in self._live if km.provisioner is not None]
        for pid in pids:
            if pid:
                try:
                    os.kill(pid, signal.SIGINT)
                except ProcessLookupError:
                    pass


def execute_run(study: Study, run: Run, *, force: bool = False, execute: Executor | None = None) -> Outcome:
    """Execute one run's notebook and record what happened; never raises for a failing notebook.

    A stale ``failed`` / ``skipped`` / ``running`` ``result.json`` is removed first, so the one
    found afterwards was written by this execution. A papermill error, or a notebook that ends
    without ``status: complete``, gives a ``failed`` result.json with a one-line error (the
    notebook's own error when it wrote one).
    """
    t0 = time.perf_counter()
    run.run_dir.mkdir(parents=True, exist_ok=True)
    _write_study_json(study, run)
    if read_state(run)[0] in ("failed", "skipped", "running"):
        (run.run_dir / "result.json").unlink(missing_ok=True)
    params = {**run.params, **({"overwrite": True} if force else {})}
    error = None
    try:
        (execute or PapermillExecutor())(study.notebooks[run.kind], run.run_dir / "notebook.ipynb", params,
                                         run.run_dir)
    except Exception as exc:  # noqa: BLE001 - any failure of one run is recorded, the study goes on
        error = _one_line(exc)
    state, nb_error = read_state(run)
    seconds = time.perf_counter() - t0
    if error is None and state == "complete":
        return Outcome(run, "done", None, seconds)
    if state == "failed" and nb_error:
        error = nb_error
    elif error is None:
        error = ("the notebook finished without writing result.json" if state == "pending" else
                 f"the notebook finished but result.json says status {state!r}, not 'complete'")
    _write_result(run, {"status": "failed", "error": error})
    return Outcome(run, "failed", error, seconds)


def skip_run(study: Study, run: Run, reason: str) -> Outcome:
    """Record a run that cannot run: ``result.json`` with status ``skipped`` and the reason."""
    run.run_dir.mkdir(parents=True, exist_ok=True)
    _write_study_json(study, run)
    _write_result(run, {"status": "skipped", "error": reason})
    return Outcome(run, "skipped", reason)


def _dependency_problem(run: Run, outcomes: dict[str, Outcome]) -> str | None | bool:
    """False while a stage this run needs is unsettled; a skip reason if one did not complete; None if ready."""
    for dep in run.deps:
        if dep not in outcomes:
            return False
    for dep in run.deps:
        o = outcomes[dep]
        if o.outcome in ("failed", "skipped", "would skip"):
            word = "failed" if o.outcome == "failed" else "skipped"
            return f"depends on {word} stage {dep.split('/', 1)[1]}: {o.error}"
    return None


def _settle(run: Run, outcomes: dict[str, Outcome], blocked: dict[str, str], force: bool,
            dry_run: bool) -> Outcome | None | bool:
    """The outcome of a run that needs no execution, None if it must execute, False if it must wait."""
    state, _ = read_state(run)
    if state == "complete" and not force:
        return Outcome(run, "already complete")
    skip = "would skip" if dry_run else "skipped"
    if run.id in blocked:
        return Outcome(run, skip, blocked[run.id])
    problem = _dependency_problem(run, outcomes)
    if problem is False or problem is None:
        return problem
    return Outcome(run, skip, problem)


def run_study(path: str | os.PathLike, workers: int = 1, dry_run: bool = False, force: bool = False, *,
              results_dir: str | os.PathLike | None = None, progress: bool | str = "auto",
              execute: Executor | None = None, check_timm: Callable[[str], tuple[bool, str]] | None = None,
              out=None) -> StudySummary:
    """Run a study file: every run not yet complete, in dependency order; print the summary.

    Args:
        path: the study YAML file.
        workers: runs executed at once (each in its own kernel process).
        dry_run: print the plan (order, resolved inits, what would be skipped); execute nothing.
        force: re-run complete runs too (the notebooks get ``overwrite=True``).
        results_dir: overrides the study's ``results_dir``.
        progress: the progress bar over runs (True / False / ``"auto"``).
        execute: ``execute(notebook, output, parameters, cwd)``; default a :class:`PapermillExecutor`.
        check_timm: ``check_timm(encoder) -> (ok, reason)``; default :func:`timm_weights_available`.
        out: where the plan / summary is printed (default stdout).

    Returns a :class:`StudySummary`; its ``exit_code`` is 1 when a run failed.
    """
    out = out or sys.stdout
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ParameterError(f"workers={workers!r}: expected a whole number >= 1")
    t0 = time.perf_counter()
    study = load_study(path, results_dir)
    order = execution_order(study.runs)
    todo = [r for r in order if force or read_state(r)[0] != "complete"]
    problems = preflight_problems(study, todo)
    if problems and not dry_run:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise MedsslError(f"study {study.path}: {problems[0]}{more}")
    blocked = blocked_runs(study, todo, check_timm)
    summary = StudySummary(study, dry_run=dry_run)
    if dry_run:
        outcomes: dict[str, Outcome] = {}
        for run in order:
            settled = _settle(run, outcomes, blocked, force, dry_run=True)
            outcomes[run.id] = settled or Outcome(run, "would run")
        summary.outcomes = [outcomes[r.id] for r in order]
        print(format_plan(summary, problems), file=out)
        return summary
    outcomes = _schedule(study, order, blocked, workers=workers, force=force, execute=execute or PapermillExecutor(threads=max(1, (os.cpu_count() or 1) // max(workers, 1))),
                         progress=progress)
    summary.outcomes = [outcomes[r.id] for r in order]
    summary.seconds = time.perf_counter() - t0
    print(format_summary(summary), file=out)
    return summary


def _schedule(study: Study, order: list[Run], blocked: dict[str, str], *, workers: int, force: bool,
              execute: Executor, progress: bool | str) -> dict[str, Outcome]:
    """Execute runs on ``workers`` threads as soon as the stages they need are settled."""
    from medssl_utils.progress import progress as progress_bar

    outcomes: dict[str, Outcome] = {}
    waiting = list(order)
    running: dict = {}
    bar = progress_bar(len(order), desc=f"study {study.name}", enabled=progress)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="medssl-study")

    def settle(outcome: Outcome) -> None:
        outcomes[outcome.run.id] = outcome
        counts = Counter(o.outcome for o in outcomes.values())
        bar.set_postfix_str(", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
        bar.update(1)

    interrupted = False
    try:
        while waiting or running:
            for run in list(waiting):
                settled = _settle(run, outcomes, blocked, force, dry_run=False)
                if settled is False or (settled is None and len(running) >= workers):
                    continue
                waiting.remove(run)
                if settled is None:
                    running[pool.submit(execute_run, study, run, force=force, execute=execute)] = run
                else:
                    if settled.outcome == "skipped":
                        settled = skip_run(study, run, settled.error)
                    settle(settled)
            if running:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    running.pop(fut)
                    settle(fut.result())
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        if interrupted and hasattr(execute, "interrupt"):
            execute.interrupt()  # the running notebooks stop; their runs are retried next time
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    return outcomes


# ============================================================================ reports
def _group_skipped(outcomes: list[Outcome]) -> list[tuple[str, list[str]]]:
    groups: dict[str, list[str]] = {}
    for o in outcomes:
        groups.setdefault(o.error or "no reason recorded", []).append(o.run.id)
    return list(groups.items())


def _ids(ids: list[str], limit: int = 3) -> str:
    return ", ".join(ids[:limit]) + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def format_summary(summary: StudySummary) -> str:
    """The table printed after a study run: counts, skipped runs by reason, failures with errors."""
    if summary.dry_run:
        return format_plan(summary)
    c = summary.counts
    lines = [f"study {summary.study.name}: {len(summary.outcomes)} runs in {summary.seconds:.0f} s; "
             f"results in {summary.study.results_dir}"]
    for key in ("done", "already complete", "skipped", "failed"):
        lines.append(f"  {key:<17s}{c.get(key, 0):>5d}")
    skipped = [o for o in summary.outcomes if o.outcome == "skipped"]
    if skipped:
        lines.append("skipped (no random init was substituted):")
        for reason, ids in _group_skipped(skipped):
            lines.append(f"  {len(ids)} run{'s' if len(ids) > 1 else ''} ({_ids(ids)}): {reason}")
    if summary.failed:
        lines.append("failed:")
        for o in summary.failed:
            lines.append(f"  {o.run.run_dir}")
            lines.append(f"      {o.error}")
        lines.append("(each failed run's notebook.ipynb shows the cell that failed; run the study again to "
                     "retry failed runs)")
    return "\n".join(lines)


def format_plan(summary: StudySummary, problems: list[str] = ()) -> str:
    """The dry-run plan: every run in execution order with its resolved init and fate;
    skip reasons are numbered and printed once below."""
    study = summary.study
    lines = [f"study {study.name} ({study.path}): {len(summary.outcomes)} runs, results in {study.results_dir}",
             "dry run: nothing is executed; in execution order:"]
    reasons: dict[str, int] = {}
    for i, o in enumerate(summary.outcomes, 1):
        init = str(o.run.params["init"])
        if init != o.run.init:
            shown = _relative(init.removeprefix("file:"), study.results_dir)
            init = f"{o.run.init} -> {shown}"
        line = f"{i:5d}  {o.outcome:<16s} {o.run.id}  [init {init}]"
        if o.outcome == "would skip":
            line += f"  (reason {reasons.setdefault(o.error, len(reasons) + 1)})"
        lines.append(line)
    c = summary.counts
    lines.append(f"would run {c.get('would run', 0)}, already complete {c.get('already complete', 0)}, "
                 f"would skip {c.get('would skip', 0)}")
    lines += [f"reason {n}: {text}" for text, n in reasons.items()]
    lines += [f"warning: {p}" for p in problems]
    return "\n".join(lines)


def _relative(path: str, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return path


def study_status(study: Study | str | os.PathLike, results_dir: str | os.PathLike | None = None) -> list[dict]:
    """The state of every run of a study (a :class:`Study` or a study file), in execution order.

    Each row: ``run_id``, ``kind``, ``name`` (stage / strategy), ``state`` (complete, failed,
    skipped, running — still running or interrupted —, pending), ``error``, ``run_dir``.
    Read from the run directories only: nothing is executed and no weights are checked.
    """
    if not isinstance(study, Study):
        study = load_study(study, results_dir)
    rows = []
    for run in execution_order(study.runs):
        state, error = read_state(run)
        rows.append({"run_id": run.id, "kind": run.kind, "name": run.name, "state": state, "error": error,
                     "run_dir": str(run.run_dir)})
    return rows


def format_status(rows: list[dict], study_name: str = "", every_run: bool = False) -> str:
    """Counts per state, then per stage / strategy; failed and skipped runs with their errors."""
    counts = Counter(r["state"] for r in rows)
    lines = [f"study {study_name}: {len(rows)} runs: "
             + ", ".join(f"{counts.get(s, 0)} {s}" for s in STATES)]
    groups: dict[str, Counter] = {}
    for r in rows:
        key = r["run_id"] if r["kind"] == "pretrain" else r["run_id"].rsplit("/", 2)[0]
        groups.setdefault(key, Counter())[r["state"]] += 1
    width = max(len(k) for k in groups)
    for key, c in groups.items():
        lines.append(f"  {key:<{width}s}  " + ", ".join(f"{n} {s}" for s, n in c.items() if n))
    shown = rows if every_run else [r for r in rows if r["state"] in ("failed", "skipped")]
    if shown:
        lines.append("runs:" if every_run else "failed and skipped runs:")
        for r in shown:
            lines.append(f"  {r['state']:<9s} {r['run_id']}" + (f": {r['error']}" if r["error"] else ""))
    return "\n".join(lines)


# ============================================================================ command line
def _cmd_run(args) -> int:
    summary = run_study(args.study, workers=args.workers, dry_run=args.dry_run, force=args.force,
                        results_dir=args.results_dir)
    return summary.exit_code


def _cmd_status(args) -> int:
    study = load_study(args.study, args.results_dir)
    if study.description:
        print(study.description)
    print(format_status(study_status(study), study.name, every_run=args.runs))
    return 0


def add_cli(subparsers) -> None:
    """Register ``study run`` and ``study status`` on an argparse ``add_subparsers()`` object.

    Each sub-command sets ``func(args) -> exit status``.
    """
    study = subparsers.add_parser("study", help="run a study (YAML grid of notebook runs) or show its status")
    sub = study.add_subparsers(dest="study_cmd", required=True)
    run = sub.add_parser("run", help="execute the study's notebooks with papermill, in dependency order")
    run.add_argument("study", help="study YAML file, e.g. studies/quick.yaml")
    run.add_argument("--workers", type=int, default=1, metavar="N", help="runs executed at once (default 1)")
    run.add_argument("--dry-run", action="store_true", help="print the plan; execute nothing")
    run.add_argument("--force", action="store_true", help="re-run runs that are already complete")
    run.add_argument("--results-dir", default=None, metavar="DIR", help="override the study's results_dir")
    run.set_defaults(func=_cmd_run)
    status = sub.add_parser("status", help="list the study's runs: complete / failed / skipped / pending")
    status.add_argument("study", help="study YAML file")
    status.add_argument("--runs", action="store_true", help="list every run, not only failed and skipped ones")
    status.add_argument("--results-dir", default=None, metavar="DIR", help="override the study's results_dir")
    status.set_defaults(func=_cmd_status)
