"""Study files: parsing and validation into :class:`Study` / :class:`Run` objects, and their order.

The study-file format is described in the package docstring (:mod:`medssl_utils.study`).
Nothing here executes anything or reads beyond the study file.
"""

from __future__ import annotations

import functools
import heapq
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from medssl_utils.errors import MedsslError, ParameterError
from medssl_utils.models.init_spec import parse_init
from medssl_utils.selection import combo_label, format_value
from medssl_utils.study.resources import check_resources

KINDS = ("pretrain", "finetune")
TOP_KEYS = ("name", "description", "results_dir", "notebooks", "defaults", "slurm", "pretrain", "finetune")
PRETRAIN_KEYS = ("params", "slurm", "stages")
BUDGET_KEYS = ("labelled_slices", "labelled_fraction")
SWEEP_KEYS = ("sweep", "selection_seeds")
GRID_KEYS = ("dataset", "tasks", "strategies", *BUDGET_KEYS, "seeds", *SWEEP_KEYS, "params", "slurm")
TASK_KEYS = ("dataset", "strategies", *BUDGET_KEYS, "seeds", *SWEEP_KEYS, "params", "slurm")
STRATEGY_GRID_KEYS = ("init", *BUDGET_KEYS, "seeds", *SWEEP_KEYS, "slurm")
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
def path_kinds() -> tuple[str, ...]:
    """Dataset kinds whose target is a path (the reader registry's; imported lazily: the data layer imports torch)."""
    from medssl_utils.data.readers import PATH_KINDS  # the data layer imports torch: study status stays light

    return PATH_KINDS


NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]*")
NOTEBOOK_FILES = {"pretrain": "01_pretrain.ipynb", "finetune": "02_finetune.ipynb"}


# ============================================================================ data model
@dataclass(frozen=True)
class Run:
    """One notebook execution of a study.

    ``params`` are the papermill parameters (``init`` resolved to a path for ``stage:`` inits,
    ``run_dir`` included); ``init`` is the init as the study wrote it; ``deps`` the ids of the
    stages this run starts from; ``slurm`` the run's SLURM resources from the study file's
    ``slurm`` sections, merged and validated (used by the slurm executor only); ``sources`` where in
    the study file each parameter was set (``{"lr": "finetune.params.lr", ...}``, for error messages).

    Fine-tuning runs of a cell (task, strategy, budget) with a ``sweep``: ``combo`` the label of
    this run's combination (its folder), ``sweep`` its values (also in ``params``), ``grid`` the
    cell's combination labels in grid order, ``selection_seeds`` the seeds every combination runs
    at. ``selection``: on a *conditional* run (seed not a selection seed) the ids of the cell's
    selection runs (every combination x selection seed), which must be complete before it is
    decided whether this run's combination won (:mod:`medssl_utils.selection`); ``()`` on selection
    runs and runs without a sweep.
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
    slurm: dict = field(default_factory=dict)
    sources: dict = field(default_factory=dict, compare=False)
    combo: str | None = None
    sweep: dict = field(default_factory=dict)
    grid: tuple[str, ...] = ()
    selection_seeds: tuple[int, ...] = ()
    selection: tuple[str, ...] = ()

    @property
    def cell(self) -> str:
        """``[<task>/]finetune/<strategy>/<budget>`` of a fine-tuning run (the run id of a stage)."""
        if self.kind != "finetune":
            return self.id
        return f"{self.task + '/' if self.task else ''}finetune/{self.name}/{self.budget}"


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
    slurm = _slurm(ctx, top.get("slurm"), "slurm")
    pre = ctx.mapping(top.get("pretrain"), "pretrain", PRETRAIN_KEYS)
    stages, stage_slurm = _stages(ctx, pre, defaults, slurm)
    stage_runs = [_stage_run(ctx, n, p, stages, results, stage_slurm[n]) for n, p in stages.items()]
    _check_acyclic(ctx, stage_runs)
    fine = _finetune_runs(ctx, top.get("finetune"), "finetune" in top, defaults, stages, results, slurm)
    runs = stage_runs + fine
    if not runs:
        raise ctx.error("", "the study has no runs; give pretrain.stages and/or finetune")
    return Study(path=path, name=name, description=str(top.get("description") or "").strip(),
                 results_dir=results, notebooks=notebooks, runs=runs)


def _read_yaml(path: Path):
    """The study file's YAML, loaded strictly: UTF-8 text, one document, no key twice in a mapping."""
    import yaml

    if path.is_dir():
        raise MedsslError(f"study file {path} is a folder; expected a YAML file such as studies/quick.yaml")
    if not path.is_file():
        raise MedsslError(f"study file {path} does not exist")
    try:
        data = path.read_bytes()
        text = data.decode("utf-8")
    except OSError as exc:
        raise MedsslError(f"study file {path}: cannot be read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise ParameterError(f"{path}:{line}: not UTF-8 text (byte {data[exc.start]:#04x} at offset {exc.start}); "
                             "save the study file as UTF-8") from None
    try:
        return yaml.load(text, Loader=_strict_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem, context = getattr(exc, "problem", None), getattr(exc, "context", None)
        if problem and context and problem.startswith("but "):  # "expected a single document ..., but found ..."
            problem = f"{context}, {problem}"
        first = " ".join(str(problem or exc).split())
        what = "" if getattr(exc, "duplicate_key", False) else "not valid YAML: "
        raise ParameterError(f"{where}: {what}{first}") from None


@functools.lru_cache(maxsize=1)
def _strict_loader():
    """A yaml SafeLoader that refuses a key given twice in one mapping (YAML would keep the last
    silently). Keys merged in with ``<<: *anchor`` may be overridden, as YAML defines."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
                seen: dict = {}
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        continue
                    key = self.construct_object(key_node, deep=True)
                    try:
                        first = seen.get(key)
                    except TypeError:  # an unhashable key: SafeLoader's own error says so
                        continue
                    if first is not None:
                        exc = yaml.constructor.ConstructorError(
                            None, None, f"key {key!r} appears twice in one mapping (first on line {first}); "
                                        "give each key once (YAML would keep only the last)",
                            key_node.start_mark)
                        exc.duplicate_key = True
                        raise exc
                    seen[key] = key_node.start_mark.line + 1
            return super().construct_mapping(node, deep=deep)

    return StrictLoader


def _notebooks(ctx: _Ctx, value) -> dict[str, Path]:
    given = ctx.mapping(value, "notebooks", KINDS)
    default_dir = Path(__file__).resolve().parents[2] / "notebooks"
    out = {}
    for kind in KINDS:
        if given.get(kind) is None:
            out[kind] = default_dir / NOTEBOOK_FILES[kind]
        elif isinstance(given[kind], str) and given[kind].strip():
            out[kind] = ctx.resolve(given[kind])
        else:
            raise ctx.error(f"notebooks.{kind}", f"expected the path of a notebook, got {_show(given[kind])}")
    return out


class _Params(dict):
    """Notebook parameters from the study file, with ``where`` each was set (``{name: key path}``)."""

    def __init__(self, values=(), where: dict | None = None):
        super().__init__(values)
        self.where = dict(where or {})


def _merge(*blocks: Mapping) -> _Params:
    """Parameter blocks merged, later wins (and so does its ``where``)."""
    out = _Params()
    for block in blocks:
        out.update(block)
        out.where.update(getattr(block, "where", {}))
    return out


def _params(ctx: _Ctx, value, key: str, block: str) -> _Params:
    """A block of notebook parameters; runner-owned keys the block may not set are errors."""
    params = _Params(ctx.mapping(value, key))
    params.where = {k: f"{key}.{k}" for k in params}
    for k in params:
        if k in RUNNER_OWNED and k not in ALLOWED_OWNED[block]:
            raise ctx.error(f"{key}.{k}", f"not settable here: {RUNNER_OWNED[k]}")
        if k == "slurm":
            raise ctx.error(f"{key}.slurm", "not a notebook parameter: SLURM resources go in a 'slurm' section "
                                            "(top level, pretrain, finetune, a task, a stage or a strategy)")
    return params


def _slurm(ctx: _Ctx, value, key: str, base: dict | None = None) -> dict:
    """A ``slurm`` section validated (see :mod:`medssl_utils.study.slurm`), over ``base``."""

    own = check_resources(ctx.mapping(value, key), key, ctx.error) if value is not None else {}
    return {**(base or {}), **own}


def _specs(ctx: _Ctx, value, key: str) -> list[str]:
    """Dataset spec(s) validated, with relative dataset paths made absolute."""
    from medssl_utils.data.specs import DatasetSpec, parse_spec  # torch: only when a study file is loaded

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
        if spec.kind in path_kinds():
            spec = DatasetSpec(spec.kind, str(ctx.resolve(spec.target)), spec.options)
        out.append(str(spec))
    return out


# ---------------------------------------------------------------------------- stages
def _stages(ctx: _Ctx, pre: dict, defaults: dict, slurm: dict) -> tuple[dict[str, dict], dict[str, dict]]:
    """``({stage: notebook parameters}, {stage: SLURM resources})``."""
    common = _merge(defaults, _params(ctx, pre.get("params"), "pretrain.params", "pretrain.params"))
    common_slurm = _slurm(ctx, pre.get("slurm"), "pretrain.slurm", slurm)
    stages = ctx.mapping(pre.get("stages"), "pretrain.stages")
    out, resources = {}, {}
    for name, value in stages.items():
        key = f"pretrain.stages.{name}"
        ctx.name(name, key)
        value = ctx.mapping(value, key)
        resources[name] = _slurm(ctx, value.pop("slurm", None), f"{key}.slurm", common_slurm)
        params = _merge(common, _params(ctx, value, key, "stage"))
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
    return out, resources


def _stage_run(ctx: _Ctx, name: str, params: dict, stages: dict, results: Path, slurm: dict) -> Run:
    run_dir = results / "pretrain" / name
    init = params["init"]
    resolved, deps = _resolve_init(ctx, init, f"pretrain.stages.{name}.init", stages, results)
    _check_same_encoder(ctx, params, deps, stages, f"pretrain.stages.{name}")
    key = f"pretrain.stages.{name}"
    return Run(id=f"pretrain/{name}", kind="pretrain", name=name, run_dir=run_dir,
               params={**params, "init": resolved, "run_dir": str(run_dir)}, init=str(init), deps=deps,
               seed=params.get("seed"), slurm=slurm,
               sources={"init": f"{key}.init", "run_dir": "results_dir", **params.where})


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
    try:
        kind, path = parse_init(text)
    except ParameterError as exc:
        raise ctx.error(key, f"{exc} or 'stage:NAME[@EPOCH]'") from None
    if kind != "path":
        return text.lower(), ()  # random / timm / imagenet as written ("imagenet" also checks the tag)
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
def _finetune_runs(ctx: _Ctx, value, present: bool, defaults: dict, stages: dict, results: Path,
                   slurm: dict) -> list[Run]:
    if not present:
        return []
    grid = ctx.mapping(value, "finetune", GRID_KEYS, required=True)
    grid["slurm"] = _slurm(ctx, grid.get("slurm"), "finetune.slurm", slurm)
    if "tasks" in grid and "dataset" in grid:
        raise ctx.error("finetune", "give either 'dataset' (one downstream dataset) or 'tasks', not both")
    if "tasks" not in grid and "dataset" not in grid:
        raise ctx.error("finetune.dataset", "required: the dataset spec to fine-tune on (or 'tasks')")
    sweep = _sweep(ctx, grid.get("sweep"), "finetune.sweep")
    selection = _selection_seeds(ctx, grid, "finetune")
    if "tasks" not in grid:
        grid["params"] = _params(ctx, grid.get("params"), "finetune.params", "finetune.params")
        return _grid_runs(ctx, grid, None, "finetune", defaults, stages, results, sweep, selection)
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
                  "params": _merge(_params(ctx, grid.get("params"), "finetune.params", "finetune.params"),
                                   _params(ctx, t.get("params"), f"{key}.params", "finetune.params")),
                  "strategies": _merge_strategies(ctx, grid.get("strategies"), t.get("strategies"), key),
                  "slurm": _slurm(ctx, t.get("slurm"), f"{key}.slurm", grid["slurm"])}
        if any(k in t for k in BUDGET_KEYS):  # a task's budget replaces the grid's, whichever kind
            for k in BUDGET_KEYS:
                if k not in t:
                    merged.pop(k, None)
        own_sweep = {**sweep, **_sweep(ctx, t.get("sweep"), f"{key}.sweep")}
        own_selection = _selection_seeds(ctx, t, key) or selection
        runs += _grid_runs(ctx, merged, task, key, defaults, stages, results, own_sweep, own_selection)
    return runs


def _merge_strategies(ctx: _Ctx, common, own, key: str) -> dict:
    merged = {**ctx.mapping(common, "finetune.strategies"), **ctx.mapping(own, f"{key}.strategies")}
    return {k: v for k, v in merged.items() if v is not None}


def _sweep(ctx: _Ctx, value, key: str) -> dict[str, tuple[list, str]]:
    """A ``sweep`` section validated: ``{parameter: (values, key path)}`` in the order written."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ctx.error(key, f"expected a mapping of notebook parameter -> list of values, got {_show(value)}")
    out = {}
    for name, values in ctx.mapping(value, key).items():
        where = f"{key}.{name}"
        if name in RUNNER_OWNED:
            raise ctx.error(where, f"not sweepable: the runner sets it ({RUNNER_OWNED[name]})")
        if name == "slurm":
            raise ctx.error(where, "not a notebook parameter: SLURM resources go in a 'slurm' section")
        if not name.isidentifier():
            raise ctx.error(where, "not a notebook parameter name")
        if not isinstance(values, list) or not values:
            raise ctx.error(where, f"expected a non-empty list of values, got {_show(values)}")
        labels: dict[str, object] = {}
        for v in values:
            try:
                label = format_value(v)
            except ParameterError as exc:
                raise ctx.error(where, str(exc)) from None
            if label in labels:
                first = labels[label]
                if type(first) is type(v) and first == v:
                    raise ctx.error(where, f"value {_show(v)} repeats in {_show(values)}")
                raise ctx.error(where, f"values {_show(first)} and {_show(v)} give the same folder label "
                                       f"{name}-{label}; give each value once")
            labels[label] = v
        out[name] = (list(values), where)
    return out


def _selection_seeds(ctx: _Ctx, block: dict, key: str) -> tuple[list[int], str] | None:
    """``(seeds, key path)`` of a block's ``selection_seeds`` (a list or a count, like ``seeds``), or None."""
    if "selection_seeds" not in block:
        return None
    where = f"{key}.selection_seeds"
    return _seeds(ctx, block["selection_seeds"], where), where


def _combinations(sweep: dict[str, tuple[list, str]]) -> list[tuple[str, dict]]:
    """``[(label, {parameter: value})]``: the product of the sweep's lists, first key slowest."""
    import itertools


    keys = list(sweep)
    out = []
    for values in itertools.product(*(sweep[k][0] for k in keys)):
        combo = dict(zip(keys, values))
        out.append((combo_label(combo), combo))
    return out


def _grid_runs(ctx: _Ctx, grid: dict, task: str | None, key: str, defaults: dict, stages: dict,
               results: Path, sweep: dict | None = None, selection: tuple[list[int], str] | None = None) -> list[Run]:
    """The runs of one fine-tuning grid (one downstream dataset): strategies x budgets [x sweep
    combinations] x seeds; in a swept cell its selection runs first, then its conditional runs."""
    root = results / task / "finetune" if task else results / "finetune"
    dataset = _specs(ctx, grid["dataset"], f"{key}.dataset")
    if len(dataset) != 1:
        raise ctx.error(f"{key}.dataset", "expected one dataset spec")
    common = _merge(defaults, grid.get("params", {}))
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
        resources = _slurm(ctx, s.get("slurm"), f"{skey}.slurm", grid["slurm"])
        init, deps = _resolve_init(ctx, s["init"], f"{skey}.init", stages, results)
        _check_same_encoder(ctx, {**common, **extra}, deps, stages, skey)
        budget_key = skey if any(k in s for k in BUDGET_KEYS) else key
        sources = {**common.where, **extra.where, "dataset": f"{key}.dataset", "init": f"{skey}.init",
                   "run_dir": "results_dir", "seed": f"{skey if 'seeds' in s else key}.seeds",
                   "labelled_slices": f"{budget_key}.labelled_slices",
                   "labelled_fraction": f"{budget_key}.labelled_fraction"}
        own_sweep = {**(sweep or {}), **_sweep(ctx, s.get("sweep"), f"{skey}.sweep")}
        own_selection = _selection_seeds(ctx, s, skey) or selection
        combos = _combinations(own_sweep) if own_sweep else [(None, {})]
        chosen: tuple[int, ...] = ()
        if own_sweep:
            chosen = tuple(own_selection[0]) if own_selection else tuple(own_seeds)
            missing = [x for x in chosen if x not in own_seeds]
            if missing:
                raise ctx.error(own_selection[1], f"selection seeds {missing} are not among the seeds {own_seeds} "
                                                  f"of {skey}; give a non-empty subset of them")
        grid_labels = tuple(c for c, _ in combos if c is not None)
        for values in (v for _, v in combos if v):
            _check_same_encoder(ctx, {**common, **extra, **values}, deps, stages, skey)
        prefix = f"{task + '/' if task else ''}finetune/{name}"
        for label, slices, fraction in own_budgets:
            picks = tuple(f"{prefix}/{label}/{c}/seed{k}" for c in grid_labels for k in chosen)
            cell: list[Run] = []
            for combo, values in combos:
                where = {**sources, **{k: own_sweep[k][1] for k in values}}
                for seed in own_seeds:
                    folder = root / name / label if combo is None else root / name / label / combo
                    run_dir = folder / f"seed{seed}"
                    rid = f"{prefix}/{label}/{combo + '/' if combo else ''}seed{seed}"
                    params = {**common, **extra, **values, "dataset": dataset[0], "init": init,
                              "labelled_slices": slices, "labelled_fraction": fraction, "seed": seed,
                              "run_dir": str(run_dir)}
                    cell.append(Run(id=rid, kind="finetune", name=name, run_dir=run_dir, params=params,
                                    init=str(s["init"]).strip(), deps=deps, task=task, budget=label, seed=seed,
                                    slurm=resources, sources=where, combo=combo, sweep=dict(values),
                                    grid=grid_labels, selection_seeds=chosen,
                                    selection=picks if combo is not None and seed not in chosen else ()))
            runs += sorted(cell, key=lambda r: bool(r.selection))  # a cell's selection runs first (stable)
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
    """Runs sorted so that every run comes after the stages it starts from and, a conditional run of a
    sweep, after its cell's selection runs; otherwise file order."""
    index = {r.id: i for i, r in enumerate(runs)}
    waiting_on = {r.id: set(r.deps) | {s for s in r.selection if s in index} for r in runs}
    dependants: dict[str, list[str]] = {}
    for r in runs:
        for d in waiting_on[r.id]:
            dependants.setdefault(d, []).append(r.id)
    ready = [index[r.id] for r in runs if not waiting_on[r.id]]
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


