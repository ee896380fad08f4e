"""Gather finished run directories into tidy tables, and compute the study's derived quantities.

:func:`gather` walks one or several results folders for run directories (see
``docs/run-format.md``), reads each one's ``params.json``, ``result.json``, ``history.csv`` and
``test_metrics.csv``, and returns a :class:`Results` of tidy DataFrames. A broken run (unreadable
JSON, missing history, status ``failed`` / ``running``) never stops the analysis: it is listed in
``Results.problems`` with the reason, and runs the study skipped on purpose (e.g. ImageNet arms
offline) are listed in ``Results.skipped``.

Every derived quantity is a pure function of those DataFrames; :func:`analyse` runs them all.
Only fine-tuning runs whose status is ``complete`` enter them. The definitions a reader checks:

**Budget.** A fine-tuning run's label budget is what its parameters asked for:
``labelled_fraction`` (shown ``"5%"``; ``budget_kind == "fraction"``) or ``labelled_slices``
(shown ``"15 slices"``; ``"slices"``); neither means all labels (``"100%"``). A *cell* is one
(dataset, budget, strategy); its runs differ only in the seed.

**Strategy.** The study runner names it: ``study.json``'s ``strategy`` (``stage`` for pretraining),
else the layout ``…/finetune/<strategy>/<budget>/seed<k>/``; otherwise ``params["strategy"]``, else
the run's ``lineage_name``, else its ``init``.

**Steps to target (claim A1)** — :func:`steps_to_target`, :func:`steps_summary`.
A run's *final validation Dice* is the ``val_dice`` (mean foreground Dice on the validation
patients' slices) of its last evaluation row in ``history.csv``. For each (dataset, budget),
``best_final_dice`` D* is the maximum over strategies of the mean over seeds of the final
validation Dice, and the threshold is ``target_dice = target × D*`` (the same threshold for every
strategy at that budget, so their steps compare). A run's ``steps_to_target`` is the first
evaluation step whose ``val_dice ≥ target_dice``; a run that never gets there has NaN and is
counted (``n_runs − n_reached``). Step = optimiser step as logged in ``history.csv``.

**Speed-up.** Against a reference strategy R chosen per dataset (default: supervised ImageNet —
a lineage that is only an ImageNet start — when it has complete runs on that dataset, else random
init; see :func:`choose_references`): for each seed k where both reached the target at the same
dataset and
budget, ``ratio_k = steps_R(k) / steps_S(k)`` (> 1: S is faster). ``speedup_mean`` ±
``speedup_std`` (sample SD, ddof=1) over those ``n_pairs`` seeds; ``speedup_of_means`` is
``steps_mean(R) / steps_mean(S)``, the ratio of the per-strategy means over seeds that reached.

**Pretraining epochs (claim A2)** — :func:`speedup_vs_epochs`. A strategy named ``NAME@<E>ep``
(e.g. ``byol-cardiac@1ep``) belongs to family ``NAME`` with E epochs; otherwise its family is its
name (a lineage name loses its last ``", E ep"``) and E is the ``epochs`` of the last
pretraining stage of its lineage. Families seen with at least two epoch values form the table.

**Error vs labelled slices (claim A3)** — :func:`error_vs_slices`, :func:`power_law_fits`.
Error is ``1 − test mean Dice`` (mean over test volumes and foreground structures of per-volume
Dice) and ``1 − test mean IoU`` (mean over foreground structures of the per-2D-slice IoU,
Work A's evaluation); per cell, mean ± SD over seeds; x = the mean number of labelled slices the
runs actually used. The power law ``err = a · n^(−b)`` is fitted per (dataset, strategy) by least
squares of ``log err = log a − b log n`` on the cell means (each budget weighs the same; points
with err ≤ 0 are left out and counted); ``r2`` is R² of that fit in log–log space, NaN with fewer
than 3 points.

**HSSL table (claims B1–B3)** — :func:`hssl_table`. Test mean Dice per (task = dataset,
strategy, labelled fraction; tasks with a fraction below 1 only), mean ± SD over seeds (n), and
``diff_vs_scratch`` =
100 × (mean − the scratch strategy's mean at the same task and fraction), in Dice points.

**Per structure** — :func:`per_structure_table`. Per run and structure: mean over test volumes of
per-volume Dice, mean of HD95 (mm) over volumes where it is defined, missed volumes (structure in
the ground truth, prediction empty); then per cell mean ± SD over seeds, with the pooled
per-volume SD, and per-slice IoU (from ``result.json``) mean ± SD over seeds.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from medssl_utils import selection as sel
from medssl_utils.claims import claims_table, effects_table
from medssl_utils.errors import DataError, ParameterError
from medssl_utils.rundir import read_json_object
from medssl_utils.stats import fit_power_law, t_interval

RESULT_FILE = "result.json"
PARAMS_FILE = "params.json"
STUDY_FILE = "study.json"  # written by the study runner (medssl_utils.study): strategy / stage, budget, seed
#: Folders inside a run directory (or a results tree) that never hold runs.
_PRUNE = {"checkpoints", "predictions", "__pycache__", ".ipynb_checkpoints"}
#: Lineage start stages (not pretraining).
_START_METHODS = {"random", "timm", "file"}
_EPOCH_SUFFIX = re.compile(r"^(?P<family>.+?)\s*@\s*(?P<epochs>\d+(?:\.\d+)?)\s*ep(?:ochs?)?$", re.IGNORECASE)
_LINEAGE_EPOCHS = re.compile(r",\s*(?P<epochs>\d+(?:\.\d+)?) ep\)$")
_SEED_DIR = re.compile(r"seed[-_]?\d+", re.IGNORECASE)

CELL = ["dataset", "budget_kind", "budget_value", "budget", "strategy"]
BUDGET = ["dataset", "budget_kind", "budget_value", "budget"]

RUN_COLUMNS = [
    "run_id", "kind", "status", "error", "strategy", "lineage_name", "pretraining", "role", "pretrain_family",
    "pretrain_epochs", "init", "dataset", "budget_kind", "budget_value", "budget", "labelled_slices",
    "labelled_fraction", "seed", "steps", "epochs", "val_final_dice", "val_best_dice", "test_mean_dice",
    "test_mean_iou", "test_work_a_iou", "total_s", "train_s", "eval_s", "images_per_s",
    "combo", "sweep", "grid", "selection_seeds", "encoder_shift", "init_probe_dice", "probe_dice", "probe_first_dice",
    "stage", "stage_epoch", "run_dir",
]
RUN_KEYS = ["run_id", "kind", "strategy", "dataset", "budget", "seed"]
SKIPPED_COLUMNS = ["run_id", "kind", "strategy", "dataset", "budget", "seed", "reason", "run_dir"]
PROBLEM_COLUMNS = ["run_id", "kind", "strategy", "status", "problem", "run_dir"]
STRUCTURE_COLUMNS = ["run_id", "name", "dice_mean", "dice_std", "hd95_mean", "n", "n_missed", "n_undefined_hd",
                     "slice_iou"]


# =============================================================================== gathering
@dataclass
class Results:
    """Tidy tables of every run found under ``roots``.

    Attributes:
        runs: one row per run directory (:data:`RUN_COLUMNS`); ``status`` is ``complete``,
            ``failed``, ``skipped``, ``running`` or ``unreadable`` (``result.json`` missing or
            not valid JSON). Dice/IoU are fractions in [0, 1]; timings in seconds.
        history: ``history.csv`` rows (wide, one per logged step) with :data:`RUN_KEYS` in front.
        test: ``test_metrics.csv`` rows (one per test volume × structure) with the run keys;
            ``hd``/``hd95`` in mm.
        structures: per run × structure summaries from ``result.json`` (``test.per_label`` and
            ``test.slice_iou``).
        skipped: runs with status ``skipped`` and the reason.
        problems: runs that could not be used in full, with what is wrong (failed, still running,
            unreadable files, missing history or test metrics).
        roots: the folders searched.
    """

    runs: pd.DataFrame
    history: pd.DataFrame
    test: pd.DataFrame
    structures: pd.DataFrame
    skipped: pd.DataFrame
    problems: pd.DataFrame
    roots: list[Path] = field(default_factory=list)

    def finetune(self) -> pd.DataFrame:
        """Complete fine-tuning runs (the rows every derived quantity uses)."""
        return finetune_runs(self.runs)

    def summary(self) -> str:
        """A few lines: where, how many runs by kind and status, datasets and strategies."""
        counts = self.runs.groupby(["kind", "status"], dropna=False).size()
        parts = [f"{n} {kind} {status}" for (kind, status), n in counts.items()]
        ft = self.finetune()
        lines = [f"{len(self.runs)} run directories under {', '.join(str(r) for r in self.roots)}: "
                 + ", ".join(parts)]
        if len(ft):
            lines.append(f"fine-tuning: datasets {sorted(ft['dataset'].unique())}; "
                         f"strategies {sorted(ft['strategy'].unique())}; "
                         f"budgets {list(_sorted_budgets(ft)['budget'])}; "
                         f"seeds {sorted(int(s) for s in ft['seed'].dropna().unique())}")
        if len(self.skipped):
            lines.append(f"{len(self.skipped)} skipped (see .skipped)")
        if len(self.problems):
            lines.append(f"{len(self.problems)} with problems (see .problems)")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Results({self.summary()})"


def gather(dirs: str | os.PathLike | Iterable[str | os.PathLike]) -> Results:
    """Read every run directory (a folder holding ``result.json``) under ``dirs``.

    Args:
        dirs: one results folder or several (a run directory itself is fine too). A folder with
            ``params.json`` but no ``result.json`` counts as a run that never finished.

    Returns:
        :class:`Results`. Bad runs are reported in ``problems`` / ``skipped``, never raised.

    Raises:
        DataError: a folder does not exist, or no run directory is found under any of them.
    """
    roots = [Path(dirs)] if isinstance(dirs, (str, os.PathLike)) else [Path(d) for d in dirs]
    if not roots:
        raise ParameterError("dirs: expected one results folder or a list of them; got an empty list")
    for root in roots:
        if not root.is_dir():
            raise DataError(f"{root}: results folder does not exist (or is not a folder)")
    seen, parts = set(), []
    for root in roots:
        for run_dir in find_run_dirs(root):
            key = run_dir.resolve()
            if key not in seen:
                seen.add(key)
                parts.append(_read_run(run_dir, _run_id(run_dir, root, len(roots) > 1)))
    if not parts:
        raise DataError(f"no run directories (folders with {RESULT_FILE}) under {', '.join(map(str, roots))}")
    return Results(
        runs=pd.DataFrame([p["row"] for p in parts], columns=RUN_COLUMNS),
        history=_concat([p["history"] for p in parts]),
        test=_concat([p["test"] for p in parts]),
        structures=pd.DataFrame([r for p in parts for r in p["structures"]], columns=STRUCTURE_COLUMNS),
        skipped=pd.DataFrame([p["skipped"] for p in parts if p["skipped"]], columns=SKIPPED_COLUMNS),
        problems=pd.DataFrame([q for p in parts for q in p["problems"]], columns=PROBLEM_COLUMNS),
        roots=roots,
    )


def find_run_dirs(root: str | os.PathLike) -> list[Path]:
    """Run directories under ``root`` (``root`` included), sorted: folders with ``result.json``
    or ``params.json``. Runs do not nest, so a run directory's sub-folders are not searched."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        if RESULT_FILE in filenames or PARAMS_FILE in filenames:
            found.append(Path(dirpath))
            dirnames[:] = []
        else:
            dirnames[:] = sorted(d for d in dirnames if d not in _PRUNE and not d.startswith("."))
    return sorted(found)


def _run_id(run_dir: Path, root: Path, prefix_root: bool) -> str:
    rel = run_dir.relative_to(root).as_posix()
    rel = run_dir.name if rel == "." else rel
    return f"{root.name}/{rel}" if prefix_root else rel


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    frames = [f for f in frames if f is not None and len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=RUN_KEYS)


def _read_json(path: Path) -> tuple[dict | None, str | None]:
    """``(object, None)`` or ``(None, problem)`` for a missing / unreadable / non-object file."""
    obj, why = read_json_object(path)
    if obj is None and why is None:
        why = "is missing"
    return obj, (f"{path.name} {why}" if why else None)


def _read_csv(path: Path, required: tuple[str, ...]) -> tuple[pd.DataFrame | None, str | None]:
    if not path.is_file():
        return None, f"{path.name} is missing"
    try:
        table = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError) as exc:  # EmptyDataError is a ValueError
        return None, f"{path.name} is unreadable ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
    missing = [c for c in required if c not in table.columns]
    if missing:
        return None, f"{path.name} lacks columns {missing}"
    return table, None


def _read_run(run_dir: Path, run_id: str) -> dict:
    """One run directory → its runs row, history, test rows, structure rows, skip and problems."""
    params, params_problem = _read_json(run_dir / PARAMS_FILE)
    result, result_problem = _read_json(run_dir / RESULT_FILE)
    study, study_problem = _read_json(run_dir / STUDY_FILE)
    study = study or {}
    row = _run_row(run_dir, run_id, params or {}, result, study)
    problems = []

    def problem(text):
        problems.append({"run_id": run_id, "kind": row["kind"], "strategy": row["strategy"],
                         "status": row["status"], "problem": text, "run_dir": str(run_dir)})

    if result_problem:
        hint = " (the run never finished writing it: interrupted or crashed)" if result is None and \
            not (run_dir / RESULT_FILE).exists() else ""
        problem(result_problem + hint)
    elif row["status"] == "failed":
        problem(f"failed: {row['error'] or 'no error message recorded'}")
    elif row["status"] == "running":
        problem("status is 'running': still running, or interrupted before it finished")
    elif row["status"] not in ("complete", "skipped"):
        problem(f"unknown status {row['status']!r} (expected running/complete/failed/skipped)")
    if params_problem and row["status"] == "complete":
        problem(params_problem)
    if study_problem and (run_dir / STUDY_FILE).exists():
        problem(study_problem + " (strategy, budget and seed taken from the folder layout)")
    if result is not None:
        for text in _non_numbers(result):
            problem(text)

    history = test = None
    structures = []
    if row["status"] == "complete":
        history, text = _read_csv(run_dir / "history.csv", ("step",))
        if text:
            problem(text)
        else:
            history, text = _numeric(history, "history.csv", list(history.columns))
            if text:
                problem(text)
            history = _with_keys(history, row)
        if row["kind"] == "finetune":
            test, text = _read_csv(run_dir / "test_metrics.csv", ("name", "dice"))
            if text:
                problem(text)
            else:
                test, text = _numeric(test, "test_metrics.csv", [c for c in ("dice", "hd", "hd95") if c in test])
                if text:
                    problem(text)
                test = _with_keys(_clean_test(test), row)
            structures = _structure_rows(run_id, (result or {}).get("test"))
    skipped = None
    if row["status"] == "skipped":
        skipped = {k: row[k] for k in SKIPPED_COLUMNS if k in row} | {"reason": row["error"] or "no reason recorded"}
    return {"row": row, "history": history, "test": test, "structures": structures, "skipped": skipped,
            "problems": problems}


def _numeric(table: pd.DataFrame, name: str, columns: list[str]) -> tuple[pd.DataFrame, str | None]:
    """``table`` with ``columns`` made numbers, and a problem naming the values that were not
    numbers (they become NaN; an empty cell is NaN without a problem)."""
    out = table.copy()
    bad_cells = []
    for col in columns:
        numbers = pd.to_numeric(table[col], errors="coerce")
        bad = numbers.isna() & table[col].notna()
        bad_cells += [(pos, col) for pos in np.flatnonzero(bad.to_numpy())]
        out[col] = numbers
    if not bad_cells:
        return out, None
    pos, col = min(bad_cells)
    n = len(bad_cells)
    cols = sorted({c for _, c in bad_cells})
    return out, (f"{name}: {n} value{'s' if n > 1 else ''} that {'are' if n > 1 else 'is'} not a number, read as NaN "
                 f"(column{'s' if len(cols) > 1 else ''} {', '.join(cols)}; first on line {pos + 2}: "
                 f"{col}={table[col].iloc[pos]!r})")


#: Numbers of result.json the tables use (dotted paths); null means "not measured", anything else must be a number.
RESULT_NUMBERS = ("labelled_slices", "labelled_fraction", "seed", "steps", "epochs", "val_final_dice", "val_best_dice",
                  "test.mean_dice", "test.slice_iou.work_a_mean_iou", "timings.total_s", "timings.train_s",
                  "timings.eval_s", "timings.images_per_s")


def _non_numbers(result: Mapping) -> list[str]:
    """Problems for values of :data:`RESULT_NUMBERS` in ``result`` that are not null and do not read as a
    number (``"0.7"`` reads as 0.7; ``"high"`` or a list do not)."""
    out = []
    for path in RESULT_NUMBERS:
        value = result
        for part in path.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        if value is not None and math.isnan(_num(value)) and not (isinstance(value, float) and math.isnan(value)):
            out.append(f"{RESULT_FILE}: {path} is {value!r}, not a number (read as NaN)")
    return out


def _with_keys(table: pd.DataFrame, row: Mapping) -> pd.DataFrame:
    keys = pd.DataFrame({k: [row[k]] * len(table) for k in RUN_KEYS}, index=table.index)
    return pd.concat([keys, table.drop(columns=[c for c in RUN_KEYS if c in table.columns])], axis=1)


def _clean_test(test: pd.DataFrame) -> pd.DataFrame:
    test = test.copy()
    for col in ("dice", "hd", "hd95"):
        if col in test.columns:
            test[col] = pd.to_numeric(test[col], errors="coerce")
    for col in ("gt_empty", "pred_empty"):
        if col in test.columns:
            test[col] = test[col].astype(str).str.strip().str.lower().isin(["true", "1", "1.0", "yes"])
    test["name"] = test["name"].astype(str)
    return test


def _num(value) -> float:
    """A JSON value as float (NaN for null, missing or non-numeric)."""
    if isinstance(value, bool):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _run_row(run_dir: Path, run_id: str, params: Mapping, result: Mapping | None, study: Mapping) -> dict:
    res = result or {}
    lineage = [s for s in (res.get("lineage") or []) if isinstance(s, Mapping)]
    lineage_name = res.get("lineage_name") or None
    init = res.get("init", params.get("init"))
    layout_kind, layout_name = _layout(run_dir)
    kind = res.get("kind") or params.get("kind") or study.get("kind") or layout_kind or "unknown"
    strategy = study.get("strategy") or study.get("stage") or layout_name or params.get("strategy") \
        or lineage_name or (str(init) if init is not None else None) or run_dir.name
    strategy = str(strategy)
    family, epochs = _pretrain_epochs(strategy, lineage)
    budget_kind, budget_value, budget = _budget(params, res) if kind == "finetune" else (None, math.nan, None)
    test = res.get("test") if isinstance(res.get("test"), Mapping) else {}
    timings = res.get("timings") if isinstance(res.get("timings"), Mapping) else {}
    slice_iou = test.get("slice_iou") if isinstance(test.get("slice_iou"), Mapping) else {}
    status = str(res.get("status") or "unknown") if result is not None else "unreadable"
    init_probe = res.get("init_probe") if isinstance(res.get("init_probe"), Mapping) else {}
    probe = res.get("probe") if isinstance(res.get("probe"), Mapping) else {}
    first = probe.get("first") if isinstance(probe.get("first"), Mapping) else {}
    stage, stage_epoch = _stage_checkpoint(init)
    return {
        "run_id": run_id, "kind": kind, "status": status, "error": res.get("error") or None,
        "strategy": strategy, "lineage_name": lineage_name, "pretraining": _pretraining(lineage, init),
        "role": role_of(lineage, init, _dataset(res, params)) if kind == "finetune" else None,
        "pretrain_family": family, "pretrain_epochs": epochs, "init": None if init is None else str(init),
        "dataset": _dataset(res, params) or "unknown", "budget_kind": budget_kind, "budget_value": budget_value,
        "budget": budget,
        "labelled_slices": _num(res.get("labelled_slices", params.get("labelled_slices"))),
        "labelled_fraction": _num(res.get("labelled_fraction", params.get("labelled_fraction"))),
        "seed": _num(res.get("seed", params.get("seed"))), "steps": _num(res.get("steps")),
        "epochs": _num(res.get("epochs")), "val_final_dice": _num(res.get("val_final_dice")),
        "val_best_dice": _num(res.get("val_best_dice")), "test_mean_dice": _num(test.get("mean_dice")),
        "test_mean_iou": _foreground_iou(slice_iou, test.get("per_label")),
        "test_work_a_iou": _num(slice_iou.get("work_a_mean_iou")),
        **{k: _num(timings.get(k)) for k in ("total_s", "train_s", "eval_s", "images_per_s")},
        "combo": study.get("combo") or None,
        "sweep": _json_text(study.get("sweep")) if study.get("sweep") else None,
        "grid": _json_text(study.get("grid")) if study.get("grid") else None,
        "selection_seeds": _json_text(study.get("selection_seeds")) if study.get("selection_seeds") else None,
        "encoder_shift": _num(res.get("encoder_shift")), "init_probe_dice": _num(init_probe.get("dense_dice")),
        "probe_dice": _num(probe.get("dense_dice")), "probe_first_dice": _num(first.get("dense_dice")),
        "stage": stage, "stage_epoch": stage_epoch,
        "run_dir": str(run_dir),
    }


def _json_text(value) -> str:
    import json

    return json.dumps(value)


def _stage_checkpoint(init) -> tuple[str | None, float]:
    """``(stage, epoch)`` of an init that is a study stage's checkpoint (``…/pretrain/<stage>/checkpoints/
    epoch_<E>.pt`` or ``final.pt``, epoch NaN for final); ``(None, NaN)`` otherwise."""
    if not isinstance(init, str) or not init.endswith(".pt"):
        return None, math.nan
    path = Path(init[5:] if init.startswith("file:") else init)
    if path.parent.name != "checkpoints" or path.parent.parent.parent.name != "pretrain":
        return None, math.nan
    match = re.fullmatch(r"epoch_(\d+)\.pt", path.name)
    return path.parent.parent.name, float(match[1]) if match else math.nan


def _layout(run_dir: Path) -> tuple[str | None, str | None]:
    """``(kind, name)`` from the study runner's layout: ``…/finetune/<strategy>/<budget>/seed<k>``
    or ``…/pretrain/<stage>``; ``(None, None)`` otherwise."""
    parts = run_dir.resolve().parts
    if len(parts) >= 4 and parts[-4] == "finetune" and _SEED_DIR.fullmatch(parts[-1]):
        return "finetune", parts[-3]
    if len(parts) >= 5 and parts[-5] == "finetune" and _SEED_DIR.fullmatch(parts[-1]):  # .../<budget>/<combo>/seedK
        return "finetune", parts[-4]
    if len(parts) >= 2 and parts[-2] == "pretrain":
        return "pretrain", parts[-1]
    return None, None


def _dataset(result: Mapping, params: Mapping) -> str | None:
    for source in (result, params):
        value = source.get("dataset") or source.get("datasets")
        if isinstance(value, (list, tuple)):
            return "+".join(str(v) for v in value) or None
        if value:
            return str(value)
    return None


def _budget(params: Mapping, result: Mapping) -> tuple[str, float, str]:
    """``(budget_kind, budget_value, label)`` from what the run asked for (params, else result)."""
    for source in (params, result):
        fraction, slices = _num(source.get("labelled_fraction")), _num(source.get("labelled_slices"))
        if source is params and not math.isnan(fraction):
            return "fraction", fraction, f"{100 * fraction:g}%"
        if not math.isnan(slices):
            return "slices", slices, f"{slices:g} slices"
        if not math.isnan(fraction):
            return "fraction", fraction, f"{100 * fraction:g}%"
    return "fraction", 1.0, "100%"


def _pretraining(lineage: list[Mapping], init) -> str:
    """Category of the encoder start: scratch, ImageNet (supervised), external weights,
    single-domain SSL or multi-domain SSL (last pretraining stage on more than one dataset)."""
    stages = [s for s in lineage if str(s.get("method", "")).lower() not in _START_METHODS]
    if stages:
        data = stages[-1].get("data") or []
        return "multi-domain SSL" if isinstance(data, (list, tuple)) and len(data) > 1 else "single-domain SSL"
    start = str(lineage[0].get("method")).lower() if lineage else str(init or "").lower()
    if start.startswith("file"):
        start = "file"
    return {"random": "scratch", "timm": "ImageNet (supervised)", "file": "external weights"}.get(start, "unknown")


#: What an encoder initialisation is in Work A's / Work B's terms (:func:`role_of`).
ROLES = {
    "scratch": "random init",
    "imagenet": "supervised ImageNet",
    "generalist-ssl": "SSL on other data (e.g. BYOL ImageNet, or natural photographs as its stand-in)",
    "specialist": "SSL on the target domain from random init",
    "hierarchical-supervised": "supervised ImageNet -> SSL on the target domain",
    "hierarchical-ssl": "SSL on other data -> SSL on the target domain",
    "hierarchical-external": "external weights (e.g. a BYOL ImageNet file:) -> SSL on the target domain",
    "multi-domain": "SSL on several domains including the target (HSSL)",
    "external": "external weights",
    "other": "other",
}


def _base_spec(spec) -> str:
    return str(spec).split("?", 1)[0].rstrip("/")


def role_of(lineage: list[Mapping], init, dataset: str | None) -> str:
    """The role (:data:`ROLES`) of a fine-tuning run's initialisation, from its lineage and target dataset.

    SSL stages are the lineage's stages after its start (random / timm / file). The last stage
    decides: on several datasets → ``multi-domain``; on the target dataset (same kind and path,
    options ignored) → ``specialist`` from random, ``hierarchical-supervised`` after supervised
    ImageNet, ``hierarchical-ssl`` after an SSL stage on other data, ``hierarchical-external``
    after a ``file:`` start (e.g. a BYOL ImageNet checkpoint); on other data only →
    ``generalist-ssl``. Without SSL stages: ``scratch``, ``imagenet`` (timm weights tagged
    ImageNet) or ``external`` (a ``file:`` start).
    """
    lineage = [s for s in lineage if isinstance(s, Mapping)]
    start = str(lineage[0].get("method", "")).lower() if lineage else str(init or "").lower()
    stages = [s for s in lineage if str(s.get("method", "")).lower() not in _START_METHODS]
    if not stages:
        if start == "random":
            return "scratch"
        if start == "timm":
            data = lineage[0].get("data") if lineage else None
            return "imagenet" if not data or "imagenet" in [str(d).lower() for d in data] else "external"
        return "external" if start.startswith("file") else "other"
    data = stages[-1].get("data") or []
    data = [data] if isinstance(data, str) else list(data)
    if len(data) > 1:
        return "multi-domain"
    on_target = dataset is not None and bool(data) and _base_spec(data[0]) == _base_spec(dataset)
    if not on_target:
        return "generalist-ssl"
    if len(stages) > 1:
        return "hierarchical-ssl"
    if start == "timm":
        return "hierarchical-supervised"
    if start.startswith("file"):
        return "hierarchical-external"
    return "specialist" if start == "random" else "other"


def _pretrain_epochs(strategy: str, lineage: list[Mapping]) -> tuple[str, float]:
    """``(family, epochs)`` per the module docstring; epochs NaN when unknown."""
    match = _EPOCH_SUFFIX.match(strategy)
    if match:
        return match["family"], float(match["epochs"])
    stages = [s for s in lineage if str(s.get("method", "")).lower() not in _START_METHODS]
    epochs = _num(stages[-1].get("epochs")) if stages else math.nan
    return _LINEAGE_EPOCHS.sub(")", strategy), epochs


def _foreground_iou(slice_iou: Mapping, per_label) -> float:
    """Mean of the per-structure slice IoUs over foreground structures (the ``per_label``
    names when given, else every name except ``background`` and ``work_a_mean_iou``)."""
    names = [n for n in (per_label or {}) if n in slice_iou] if isinstance(per_label, Mapping) else []
    if not names:
        names = [n for n in slice_iou if n not in ("work_a_mean_iou", "n_slices") and n.lower() != "background"]
    values = [_num(slice_iou[n]) for n in names]
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def _structure_rows(run_id: str, test) -> list[dict]:
    if not isinstance(test, Mapping):
        return []
    per_label = test.get("per_label") if isinstance(test.get("per_label"), Mapping) else {}
    slice_iou = test.get("slice_iou") if isinstance(test.get("slice_iou"), Mapping) else {}
    names = list(per_label) + [n for n in slice_iou if n not in per_label and n not in ("work_a_mean_iou", "n_slices")]
    rows = []
    for name in names:
        m = per_label.get(name) if isinstance(per_label.get(name), Mapping) else {}
        rows.append({"run_id": run_id, "name": str(name), "dice_mean": _num(m.get("dice_mean")),
                     "dice_std": _num(m.get("dice_std")), "hd95_mean": _num(m.get("hd95_mean")),
                     "n": _num(m.get("n")), "n_missed": _num(m.get("n_missed")),
                     "n_undefined_hd": _num(m.get("n_undefined_hd")), "slice_iou": _num(slice_iou.get(name))})
    return rows


# =============================================================================== helpers
def finetune_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Rows of ``runs`` that are complete fine-tuning runs."""
    return runs[(runs["kind"] == "finetune") & (runs["status"] == "complete")].copy()


def _sorted_budgets(table: pd.DataFrame) -> pd.DataFrame:
    """Distinct budgets of ``table``, slice budgets first, each in increasing order."""
    budgets = table[["budget_kind", "budget_value", "budget"]].drop_duplicates()
    return budgets.sort_values(["budget_kind", "budget_value"], ascending=[False, True]).reset_index(drop=True)


def _std(values) -> float:
    """Sample SD (ddof=1) of the finite values; NaN with fewer than two."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    return float(values.std(ddof=1)) if len(values) > 1 else math.nan


def _mean(values) -> float:
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    return float(values.mean()) if len(values) else math.nan


def _empty(columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})


def _by_cell(table: pd.DataFrame, keys=CELL):
    return table.groupby(keys, sort=True, dropna=False)


# =============================================================================== A1: steps to target
STEPS_RUN_COLUMNS = [*CELL, "run_id", "seed", "final_dice", "best_final_dice", "target_dice", "steps_to_target",
                     "reached"]
STEPS_COLUMNS = [*CELL, "n_runs", "n_reached", "steps_mean", "steps_std", "steps_min", "steps_max",
                 "final_dice_mean", "final_dice_std", "best_final_dice", "target_dice", "reference",
                 "speedup_mean", "speedup_std", "n_pairs", "speedup_of_means"]


def validation_curves(runs: pd.DataFrame, history: pd.DataFrame) -> pd.DataFrame:
    """Evaluation rows (``val_dice`` present) of complete fine-tuning runs, with their cell keys.

    Returns columns :data:`CELL`, ``run_id``, ``seed``, ``step``, ``val_dice`` (fraction)."""
    ft = finetune_runs(runs)
    if "val_dice" not in history.columns or not len(ft):
        return _empty([*CELL, "run_id", "seed", "step", "val_dice"])
    curves = history.loc[history["val_dice"].notna(), ["run_id", "step", "val_dice"]]
    curves = curves.merge(ft[[*CELL, "run_id", "seed"]], on="run_id", how="inner")
    return curves.sort_values(["run_id", "step"]).reset_index(drop=True)


def steps_to_target(runs: pd.DataFrame, history: pd.DataFrame, target: float = 0.95) -> pd.DataFrame:
    """Per complete fine-tuning run: the first evaluation step with ``val_dice ≥ target × D*``.

    D* (``best_final_dice``) is, per (dataset, budget), the maximum over strategies of the mean
    over seeds of the final validation Dice (the last evaluation in ``history.csv``). Runs with
    no evaluation rows are left out. ``steps_to_target`` is NaN (``reached`` False) for a run
    that never reaches ``target_dice``.

    Args:
        runs, history: from :func:`gather`.
        target: fraction of D* that counts as converged, in (0, 1].
    """
    target = check_target(target)
    curves = validation_curves(runs, history)
    if not len(curves):
        return _empty(STEPS_RUN_COLUMNS)
    final = curves.groupby("run_id", sort=False).tail(1)[[*CELL, "run_id", "seed", "val_dice"]]
    final = final.rename(columns={"val_dice": "final_dice"})
    cell_means = _by_cell(final)["final_dice"].mean().rename("cell_mean").reset_index()
    best = cell_means.groupby(BUDGET, dropna=False)["cell_mean"].max().rename("best_final_dice").reset_index()
    final = final.merge(best, on=BUDGET, how="left")
    final["target_dice"] = target * final["best_final_dice"]
    thresholds = final.set_index("run_id")["target_dice"]
    hits = curves[curves["val_dice"] >= curves["run_id"].map(thresholds)]
    first = hits.groupby("run_id")["step"].min()
    final["steps_to_target"] = final["run_id"].map(first).astype(float)
    final["reached"] = final["steps_to_target"].notna()
    return final[STEPS_RUN_COLUMNS].reset_index(drop=True)


def check_target(target) -> float:
    """``target`` as a float in (0, 1], else :class:`ParameterError`."""
    try:
        value = float(target)
    except (TypeError, ValueError):
        value = math.nan
    if not 0 < value <= 1:
        raise ParameterError(f"target={target!r}: expected the fraction of the best final Dice that counts as "
                             "converged, a number in (0, 1] (e.g. 0.95)")
    return value


def choose_reference(runs: pd.DataFrame, name: str | None = None, *,
                     prefer: tuple[str, ...] = ("ImageNet (supervised)", "scratch")) -> tuple[str | None, str]:
    """The reference strategy among ``runs`` (usually one dataset's), and why it was chosen.

    Args:
        runs: from :func:`gather`; only complete fine-tuning runs are considered.
        name: a strategy name to use; must have complete fine-tuning runs.
        prefer: pretraining categories to look for, in order (default: supervised ImageNet,
            then random init). Within a category the strategy with most runs wins (ties: by name).

    Returns:
        ``(strategy or None, reason)``.
    """
    ft = finetune_runs(runs)
    strategies = sorted(ft["strategy"].unique())
    if name is not None:
        if name not in strategies:
            raise ParameterError(f"reference={name!r} has no complete fine-tuning runs; expected one of {strategies}")
        return name, f"{name} (chosen)"
    for category in prefer:
        counts = ft[ft["pretraining"] == category].groupby("strategy").size()
        if len(counts):
            best = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
            fallback = "" if category == prefer[0] else f"; no complete {prefer[0]} runs"
            return best, f"{best} ({category}{fallback})"
    return None, f"none: no complete runs of a {' or '.join(prefer)} strategy"


REFERENCE_COLUMNS = ["dataset", "reference", "reason"]


def choose_references(runs: pd.DataFrame, name: str | None = None, *,
                      prefer: tuple[str, ...] = ("ImageNet (supervised)", "scratch")) -> pd.DataFrame:
    """:func:`choose_reference` per dataset: columns ``dataset, reference, reason``.

    With ``name``, that strategy is the reference wherever it has runs (None elsewhere); it must
    have complete fine-tuning runs on at least one dataset.
    """
    ft = finetune_runs(runs)
    if name is not None and name not in set(ft["strategy"]):
        choose_reference(ft, name)  # raises, listing the strategies
    rows = []
    for dataset, g in ft.groupby("dataset", sort=True):
        if name is not None and name not in set(g["strategy"]):
            ref, why = None, f"none: {name} has no complete runs on {dataset}"
        else:
            ref, why = choose_reference(g, name, prefer=prefer)
        rows.append({"dataset": dataset, "reference": ref, "reason": why})
    return pd.DataFrame(rows, columns=REFERENCE_COLUMNS)


def _reference_map(references, datasets) -> dict:
    """dataset → reference strategy from a name, None, a mapping or :func:`choose_references`."""
    if isinstance(references, pd.DataFrame):
        return dict(zip(references["dataset"], references["reference"]))
    if isinstance(references, Mapping):
        return dict(references)
    return {d: references for d in datasets}


def steps_summary(per_run: pd.DataFrame, references=None) -> pd.DataFrame:
    """Steps to target per cell (mean ± SD over seeds that reached it) and speed-ups vs the reference.

    See the module docstring for the speed-up definitions.

    Args:
        per_run: from :func:`steps_to_target`.
        references: one strategy name for every dataset, a ``{dataset: name}`` mapping, the
            table of :func:`choose_references`, or None (speed-ups are NaN).
    """
    if not len(per_run):
        return _empty(STEPS_COLUMNS)
    rows = []
    for cell, grp in _by_cell(per_run):
        steps = grp["steps_to_target"]
        rows.append(dict(zip(CELL, cell)) | {
            "n_runs": len(grp), "n_reached": int(grp["reached"].sum()), "steps_mean": _mean(steps),
            "steps_std": _std(steps), "steps_min": steps.min(), "steps_max": steps.max(),
            "final_dice_mean": _mean(grp["final_dice"]), "final_dice_std": _std(grp["final_dice"]),
            "best_final_dice": grp["best_final_dice"].iloc[0], "target_dice": grp["target_dice"].iloc[0],
        })
    table = pd.DataFrame(rows)
    refs = _reference_map(references, table["dataset"].unique())
    return _add_speedups(table, per_run, refs)[STEPS_COLUMNS]


def _add_speedups(table: pd.DataFrame, per_run: pd.DataFrame, refs: dict) -> pd.DataFrame:
    table = table.assign(reference=table["dataset"].map(refs))
    ref_runs = per_run[per_run["strategy"] == per_run["dataset"].map(refs)][[*BUDGET, "seed", "steps_to_target"]]
    paired = per_run.merge(ref_runs.rename(columns={"steps_to_target": "ref_steps"}), on=[*BUDGET, "seed"])
    with np.errstate(divide="ignore", invalid="ignore"):
        paired["ratio"] = paired["ref_steps"] / paired["steps_to_target"].where(paired["steps_to_target"] > 0)
    ratios = _by_cell(paired).agg(speedup_mean=("ratio", _mean), speedup_std=("ratio", _std),
                                  n_pairs=("ratio", "count")).reset_index()
    ref_means = table[table["strategy"] == table["reference"]][[*BUDGET, "steps_mean"]]
    table = table.merge(ratios, on=CELL, how="left").merge(
        ref_means.rename(columns={"steps_mean": "ref_steps_mean"}), on=BUDGET, how="left")
    with np.errstate(divide="ignore", invalid="ignore"):
        table["speedup_of_means"] = table["ref_steps_mean"] / table["steps_mean"].where(table["steps_mean"] > 0)
    table["n_pairs"] = table["n_pairs"].fillna(0).astype(int)
    return table


# =============================================================================== A2: pretraining epochs
EPOCHS_COLUMNS = ["pretrain_family", "pretrain_epochs", *STEPS_COLUMNS]


def speedup_vs_epochs(summary: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """:func:`steps_summary` rows of strategies that belong to a family pretrained for at least
    two different numbers of epochs (see the module docstring), with ``pretrain_family`` and
    ``pretrain_epochs``; sorted by dataset, budget, family, epochs."""
    ft = finetune_runs(runs)
    strat = ft[["strategy", "pretrain_family", "pretrain_epochs"]].dropna(subset=["pretrain_epochs"])
    strat = strat.drop_duplicates("strategy")
    n_epochs = strat.groupby("pretrain_family")["pretrain_epochs"].nunique()
    strat = strat[strat["pretrain_family"].map(n_epochs) >= 2]
    if not len(strat) or not len(summary):
        return _empty(EPOCHS_COLUMNS)
    table = summary.merge(strat, on="strategy", how="inner")
    table = table.sort_values(["dataset", "budget_kind", "budget_value", "pretrain_family", "pretrain_epochs"],
                              ascending=[True, False, True, True, True])
    return table[EPOCHS_COLUMNS].reset_index(drop=True)


# =============================================================================== A3: error vs slices
ERROR_COLUMNS = [*CELL, "labelled_slices", "n", "err_dice_mean", "err_dice_std", "err_iou_mean", "err_iou_std"]
FIT_COLUMNS = ["dataset", "strategy", "metric", "a", "b", "r2", "n_points", "n_excluded", "n_runs"]


def error_vs_slices(runs: pd.DataFrame) -> pd.DataFrame:
    """Test error per cell: ``1 − test mean Dice`` and ``1 − test mean IoU`` (fractions), mean and
    SD over seeds (``n`` runs), and the mean number of labelled slices the runs used."""
    ft = finetune_runs(runs)
    ft = ft[ft["test_mean_dice"].notna()]
    if not len(ft):
        return _empty(ERROR_COLUMNS)
    ft = ft.assign(err_dice=1 - ft["test_mean_dice"], err_iou=1 - ft["test_mean_iou"])
    rows = [dict(zip(CELL, cell)) | {
        "labelled_slices": _mean(g["labelled_slices"]), "n": len(g),
        "err_dice_mean": _mean(g["err_dice"]), "err_dice_std": _std(g["err_dice"]),
        "err_iou_mean": _mean(g["err_iou"]), "err_iou_std": _std(g["err_iou"])} for cell, g in _by_cell(ft)]
    return pd.DataFrame(rows, columns=ERROR_COLUMNS)


def power_law_fits(errors: pd.DataFrame) -> pd.DataFrame:
    """:func:`fit_power_law` per (dataset, strategy) and metric (``dice``, ``iou``) on the cell
    means of :func:`error_vs_slices`; fits that need two distinct budgets are left out."""
    rows = []
    for (dataset, strategy), g in errors.groupby(["dataset", "strategy"], sort=True):
        for metric in ("dice", "iou"):
            fit = fit_power_law(g["labelled_slices"], g[f"err_{metric}_mean"])
            if not math.isnan(fit["b"]):
                rows.append({"dataset": dataset, "strategy": strategy, "metric": metric, **fit,
                             "n_runs": int(g["n"].sum())})
    return pd.DataFrame(rows, columns=FIT_COLUMNS)


# =============================================================================== B1-B3: HSSL table
HSSL_COLUMNS = ["dataset", "strategy", "pretraining", "budget_value", "budget", "n", "dice_mean", "dice_std",
                "scratch", "diff_vs_scratch"]


def hssl_table(runs: pd.DataFrame, scratch: str | None = None) -> pd.DataFrame:
    """Test mean Dice per (task, strategy, labelled fraction) and the gain over scratch.

    Only runs whose budget is a labelled fraction enter, on tasks with at least one fraction below
    1 (an ``all``-labels run of a slice-budget study alone makes no HSSL table). ``dice_mean`` / ``dice_std``: mean and
    SD over seeds (``n`` runs), fractions in [0, 1]; ``diff_vs_scratch``: 100 × (dice_mean −
    scratch's dice_mean at the same task and fraction), in Dice points (NaN where scratch has no
    runs). ``scratch``: a strategy name; default, per task, the random-init strategy with most runs.
    """
    ft = finetune_runs(runs)
    ft = ft[(ft["budget_kind"] == "fraction") & ft["test_mean_dice"].notna()]
    partial = ft.loc[ft["budget_value"] < 1, "dataset"].unique()
    ft = ft[ft["dataset"].isin(partial)]
    if not len(ft):
        return _empty(HSSL_COLUMNS)
    scratch_of = _reference_map(choose_references(ft, scratch, prefer=("scratch",)), [])
    keys = ["dataset", "strategy", "budget_value", "budget"]
    table = ft.groupby(keys, sort=True).agg(
        pretraining=("pretraining", "first"), n=("test_mean_dice", "size"),
        dice_mean=("test_mean_dice", "mean"), dice_std=("test_mean_dice", _std)).reset_index()
    table["scratch"] = table["dataset"].map(scratch_of)
    base = table[table["strategy"] == table["scratch"]][["dataset", "budget_value", "dice_mean"]]
    table = table.merge(base.rename(columns={"dice_mean": "_scratch"}), on=["dataset", "budget_value"], how="left")
    table["diff_vs_scratch"] = 100 * (table["dice_mean"] - table["_scratch"])
    return table[HSSL_COLUMNS]


# =============================================================================== per structure
STRUCTURE_TABLE_COLUMNS = [*CELL, "label", "name", "n_seeds", "n_volumes", "dice_mean", "dice_std",
                           "dice_std_volumes", "hd95_mean", "hd95_std", "hd95_std_volumes", "n_hd95_undefined",
                           "n_missed", "slice_iou_mean", "slice_iou_std"]


def per_structure_table(runs: pd.DataFrame, test: pd.DataFrame, structures: pd.DataFrame) -> pd.DataFrame:
    """Per cell and structure: per-volume Dice and HD95 (mm) mean ± SD over seeds, the pooled
    per-volume SDs, volumes where HD95 is undefined, missed volumes (ground truth has the
    structure, prediction empty), and per-slice IoU mean ± SD over seeds."""
    ft = finetune_runs(runs)
    if not len(ft) or "dice" not in test.columns:
        return _empty(STRUCTURE_TABLE_COLUMNS)
    vols = test.drop(columns=[c for c in CELL if c in test.columns]).merge(ft[[*CELL, "run_id"]], on="run_id")
    vols = vols.assign(label=vols["label"] if "label" in vols.columns else math.nan,
                       hd95=vols["hd95"] if "hd95" in vols.columns else math.nan,
                       missed=(~vols["gt_empty"] & vols["pred_empty"]) if {"gt_empty", "pred_empty"} <= set(
                           vols.columns) else False)
    per_run = vols.groupby([*CELL, "run_id", "name"], sort=False, dropna=False).agg(
        label=("label", "first"), n_volumes=("dice", "size"), dice=("dice", "mean"), hd95=("hd95", "mean"),
        n_hd95_undefined=("hd95", lambda s: int(s.isna().sum())), n_missed=("missed", "sum")).reset_index()
    per_run = per_run.merge(structures[["run_id", "name", "slice_iou"]], on=["run_id", "name"], how="left")
    keys = [*CELL, "name"]
    table = per_run.groupby(keys, sort=False, dropna=False).agg(
        label=("label", "first"), n_seeds=("run_id", "nunique"), n_volumes=("n_volumes", "sum"),
        dice_mean=("dice", _mean), dice_std=("dice", _std), hd95_mean=("hd95", _mean), hd95_std=("hd95", _std),
        n_hd95_undefined=("n_hd95_undefined", "sum"), n_missed=("n_missed", "sum"),
        slice_iou_mean=("slice_iou", _mean), slice_iou_std=("slice_iou", _std)).reset_index()
    pooled = vols.groupby(keys, sort=False, dropna=False).agg(
        dice_std_volumes=("dice", _std), hd95_std_volumes=("hd95", _std)).reset_index()
    table = table.merge(pooled, on=keys, how="left")[STRUCTURE_TABLE_COLUMNS]
    return table.sort_values(["dataset", "budget_kind", "budget_value", "strategy", "label", "name"],
                             ascending=[True, False, True, True, True, True]).reset_index(drop=True)


# =============================================================================== selection on validation
SELECTION_COLUMNS = [*CELL, "combo", "order", "sweep", "selection_seeds", "n_selection_runs", "val_dice_mean",
                     "selected", "tied_with", "grid_size", "grid_complete", "rule"]


def _json_list(text) -> list:
    import json

    if not isinstance(text, str) or not text:
        return []
    try:
        value = json.loads(text)
    except ValueError:
        return []
    return value if isinstance(value, list) else []


def selection_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per swept cell (dataset, budget, strategy) and combination of its ``sweep``: the mean **validation**
    Dice (``val_final_dice``) of its complete selection runs, and which combination won.

    The winner is :func:`medssl_utils.selection.pick` of those means — the study runner's own rule and
    function, so the report selects what the runner ran: the highest mean over the selection seeds,
    compared at 3 decimals, ties to the combination listed first in the study file. Test metrics are
    not an input. ``grid_complete`` is False when a combination of the cell's grid has no complete
    selection run (then the winner is chosen among those that have one, and the table says so).
    Cells without a sweep have no rows.
    """
    ft = runs[(runs["kind"] == "finetune") & runs["combo"].notna()]
    if not len(ft):
        return _empty(SELECTION_COLUMNS)
    rows = []
    for cell, g in _by_cell(ft):
        grid = next((x for x in (_json_list(t) for t in g["grid"]) if x), sorted(g["combo"].unique()))
        seeds = next((x for x in (_json_list(t) for t in g["selection_seeds"]) if x), sorted(g["seed"].dropna()))
        done = g[(g["status"] == "complete") & g["seed"].isin(seeds)]
        cands = [{"combo": c, "order": i, "scores": list(done.loc[done["combo"] == c, "val_final_dice"])}
                 for i, c in enumerate(grid)]
        won = sel.pick(cands)
        complete = all(len(c["scores"]) == len(seeds) for c in cands)
        for i, c in enumerate(cands):
            sweep = g.loc[g["combo"] == c["combo"], "sweep"]
            rows.append(dict(zip(CELL, cell)) | {
                "combo": c["combo"], "order": i, "sweep": sweep.iloc[0] if len(sweep) else None,
                "selection_seeds": _json_text(seeds), "n_selection_runs": len(c["scores"]),
                "val_dice_mean": sel.mean_score(c["scores"]), "selected": c["combo"] == won["combo"],
                "tied_with": ", ".join(won["tied"]) if c["combo"] == won["combo"] and won["tied"] else None,
                "grid_size": len(grid), "grid_complete": complete, "rule": won["rule"]})
    return pd.DataFrame(rows, columns=SELECTION_COLUMNS)


def selected_runs(runs: pd.DataFrame, selection: pd.DataFrame) -> pd.Series:
    """True for the runs the analysis uses: every run without a sweep, and in a swept cell the runs
    (every seed) of the combination :func:`selection_table` picked."""
    keep = pd.Series(True, index=runs.index)
    swept = (runs["kind"] == "finetune") & runs["combo"].notna()
    if not swept.any():
        return keep
    won = selection[selection["selected"]][[*CELL, "combo"]].assign(_won=True)
    merged = runs.loc[swept, [*CELL, "combo"]].reset_index().merge(won, on=[*CELL, "combo"], how="left")
    keep.loc[merged["index"]] = merged["_won"].fillna(False).astype(bool).to_numpy()
    return keep


# =============================================================================== probes, encoder shift
PROBE_COLUMNS = ["dataset", "strategy", "role", "lineage_name", "n", "dense_dice_mean", "dense_dice_sd", "ci_low",
                 "ci_high", "source"]
SHIFT_COLUMNS = ["dataset", "strategy", "budget_kind", "budget_value", "budget", "n", "finetune_shift_mean",
                 "finetune_shift_sd", "pretrain_shift", "init_probe_dice_mean"]
CURVE_COLUMNS = ["stage", "dataset", "step", "epoch", "n", "probe_dice_mean", "probe_dice_sd", "ci_low", "ci_high"]
CURVE_FT_COLUMNS = ["stage", "dataset", "budget", "strategy", "step", "epoch", "n", "test_dice_mean", "test_dice_sd",
                    "ci_low", "ci_high"]


def _t_ci(values) -> tuple[float, float, float, float]:
    """(mean, sd, low, high) with a Student's t 95 % interval (NaN bounds with fewer than 2 values)."""
    values = [float(v) for v in values if np.isfinite(v)]
    if not values:
        return math.nan, math.nan, math.nan, math.nan
    mean, low, high = t_interval(values)
    return mean, _std(values), low, high


def probe_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Dense-probe Dice of every init fine-tuned from, per (dataset, strategy): mean, SD and t 95 % CI over
    seeds of the fine-tuning runs' ``init_probe`` (the probe of the starting encoder; seed = the run's
    seed, so for random init each seed is another random encoder, for a checkpoint another draw of the
    probe's training slices). One value per seed: the same init and seed give the same probe at every
    budget and combination."""
    ft = finetune_runs(runs)
    ft = ft[ft["init_probe_dice"].notna()]
    if not len(ft):
        return _empty(PROBE_COLUMNS)
    rows = []
    for (dataset, strategy), g in ft.groupby(["dataset", "strategy"], sort=True):
        per_seed = g.drop_duplicates("seed")
        mean, sd, low, high = _t_ci(per_seed["init_probe_dice"])
        rows.append({"dataset": dataset, "strategy": strategy, "role": g["role"].iloc[0],
                     "lineage_name": g["lineage_name"].iloc[0], "n": len(per_seed), "dense_dice_mean": mean,
                     "dense_dice_sd": sd, "ci_low": low, "ci_high": high, "source": "fine-tuning runs' init_probe"})
    return pd.DataFrame(rows, columns=PROBE_COLUMNS)


def encoder_shift_table(runs: pd.DataFrame) -> pd.DataFrame:
    """How far each arm's encoder moved: per (dataset, strategy, budget) the fine-tuning runs'
    ``encoder_shift`` (median over conv weights of |W - W0| / |W0|, from the init), mean and SD over
    seeds, beside the shift of the pretraining stage the init came from (from its own start)."""
    ft = finetune_runs(runs)
    ft = ft[ft["encoder_shift"].notna()]
    if not len(ft):
        return _empty(SHIFT_COLUMNS)
    stages = runs[(runs["kind"] == "pretrain") & (runs["status"] == "complete")].set_index("strategy")["encoder_shift"]
    rows = []
    for (dataset, strategy, kind, value, budget), g in ft.groupby(
            ["dataset", "strategy", "budget_kind", "budget_value", "budget"], sort=True):
        stage = g["stage"].dropna()
        rows.append({"dataset": dataset, "strategy": strategy, "budget_kind": kind, "budget_value": value,
                     "budget": budget, "n": len(g), "finetune_shift_mean": _mean(g["encoder_shift"]),
                     "finetune_shift_sd": _std(g["encoder_shift"]),
                     "pretrain_shift": float(stages.get(stage.iloc[0], math.nan)) if len(stage) and
                     stage.iloc[0] in stages.index else (0.0 if g["role"].iloc[0] in ("scratch", "imagenet")
                                                        else math.nan),
                     "init_probe_dice_mean": _mean(g.drop_duplicates("seed")["init_probe_dice"])})
    table = pd.DataFrame(rows, columns=SHIFT_COLUMNS)
    return table.sort_values(["dataset", "budget_kind", "budget_value", "strategy"],
                             ascending=[True, False, True, True]).reset_index(drop=True)


def read_probe_files(runs: pd.DataFrame) -> pd.DataFrame:
    """The ``probes.csv`` rows of every complete pretraining run (``stage`` = its name), or an empty table."""
    frames = []
    for r in runs[(runs["kind"] == "pretrain") & (runs["status"] == "complete")].itertuples(index=False):
        path = Path(r.run_dir) / "probes.csv"
        table, why = _read_csv(path, ("step", "seed", "dataset", "dense_dice")) if path.is_file() else (None, None)
        if table is not None:
            frames.append(table.assign(stage=r.strategy))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["stage", "step", "seed",
                                                                                      "dataset", "dense_dice"])


def pretraining_curve(runs: pd.DataFrame, probes: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The pretraining-length curve of every stage: (probe curve, fine-tuned curve).

    Probe curve: per stage, dataset and probed step, the dense-probe Dice mean, SD and t 95 % CI over
    the probe seeds (``probes.csv``). Fine-tuned curve: per stage, budget and checkpoint the runs were
    fine-tuned from (``stage:NAME@E`` → epoch E; ``stage:NAME`` → the stage's last step; the stage's own
    start — random init, ImageNet, or in a chain the previous stage's checkpoint — at step 0 when an arm
    fine-tuned from it exists), test Dice mean, SD and t 95 % CI over seeds.
    """
    curve = []
    for (stage, dataset, step), g in probes.groupby(["stage", "dataset", "step"], sort=True):
        mean, sd, low, high = _t_ci(g.groupby("seed")["dense_dice"].mean())
        curve.append({"stage": stage, "dataset": dataset, "step": step,
                      "epoch": float(g["epoch"].iloc[0]) if "epoch" in g else math.nan,
                      "n": g["seed"].nunique(), "probe_dice_mean": mean, "probe_dice_sd": sd, "ci_low": low,
                      "ci_high": high})
    pre = runs[(runs["kind"] == "pretrain") & (runs["status"] == "complete")].set_index("strategy")
    ft = finetune_runs(runs)
    rows = []
    for stage, srow in pre.iterrows():
        steps, epochs = srow["steps"], srow["epochs"]
        per_epoch = steps / epochs if epochs and np.isfinite(epochs) and epochs > 0 else math.nan
        mine = ft[ft["stage"] == stage].copy()
        if not len(mine):
            continue
        mine["epoch"] = mine["stage_epoch"].fillna(epochs)
        mine["step"] = (mine["epoch"] * per_epoch).round()
        start = str(srow["init"] or "").strip()
        for dataset, here in mine.groupby("dataset", sort=True):
            # step 0: the arm fine-tuned from what the stage started from (random init, ImageNet, or the
            # checkpoint of the stage before it in a chain)
            if start.lower() == "random":
                base = ft[(ft["role"] == "scratch") & (ft["dataset"] == dataset)]
            elif start.lower() in ("imagenet", "timm"):
                base = ft[(ft["role"] == "imagenet") & (ft["dataset"] == dataset)]
            else:
                base = ft[(ft["init"] == start) & (ft["dataset"] == dataset)]
            if len(base):
                here = pd.concat([here, base.assign(epoch=0.0, step=0.0)])
            for (budget, step), g in here.groupby(["budget", "step"], sort=True):
                mean, sd, low, high = _t_ci(g["test_mean_dice"])
                rows.append({"stage": stage, "dataset": dataset, "budget": budget,
                             "strategy": ", ".join(sorted(g["strategy"].unique())), "step": step,
                             "epoch": g["epoch"].iloc[0], "n": len(g), "test_dice_mean": mean, "test_dice_sd": sd,
                             "ci_low": low, "ci_high": high})
    return pd.DataFrame(curve, columns=CURVE_COLUMNS), pd.DataFrame(rows, columns=CURVE_FT_COLUMNS)


# =============================================================================== everything
@dataclass
class Analysis:
    """Every derived table of one :class:`Results` (see the module docstring for definitions).

    ``results`` holds the runs the tables use — every run, except that in a swept cell only the runs of
    the combination picked on validation data are kept (:func:`selection_table`); ``gathered`` is
    everything :func:`gather` found (``tables/runs.csv``, with a ``selected`` column).
    """

    results: Results
    target: float
    references: pd.DataFrame
    steps_runs: pd.DataFrame
    steps: pd.DataFrame
    epochs: pd.DataFrame
    errors: pd.DataFrame
    fits: pd.DataFrame
    hssl: pd.DataFrame
    per_structure: pd.DataFrame
    curves: pd.DataFrame
    claims: pd.DataFrame = field(default_factory=pd.DataFrame)
    effects: pd.DataFrame = field(default_factory=pd.DataFrame)
    gathered: Results | None = None
    selection: pd.DataFrame = field(default_factory=lambda: _empty(SELECTION_COLUMNS))
    probes: pd.DataFrame = field(default_factory=lambda: _empty(PROBE_COLUMNS))
    shifts: pd.DataFrame = field(default_factory=lambda: _empty(SHIFT_COLUMNS))
    probe_curve: pd.DataFrame = field(default_factory=lambda: _empty(CURVE_COLUMNS))
    finetune_curve: pd.DataFrame = field(default_factory=lambda: _empty(CURVE_FT_COLUMNS))

    @property
    def reference_text(self) -> str:
        """The speed-up reference of each dataset and why, in one line."""
        if not len(self.references):
            return "no reference (no complete fine-tuning runs)"
        return "; ".join(f"{r.dataset}: {r.reason}" for r in self.references.itertuples(index=False))

    def tables(self) -> dict[str, pd.DataFrame]:
        """Name → table, as written to ``tables/<name>.csv``."""
        r = self.results
        every = self.gathered or r
        runs = every.runs.assign(selected=every.runs["run_id"].isin(set(r.runs["run_id"])))
        return {"claims": self.claims, "effects_vs_scratch": self.effects, "runs": runs,
                "selection": self.selection, "probe": self.probes, "encoder_shift": self.shifts,
                "pretraining_curve_probe": self.probe_curve, "pretraining_curve_finetune": self.finetune_curve,
                "steps_to_target": self.steps, "steps_to_target_runs": self.steps_runs,
                "speedup_vs_epochs": self.epochs, "error_vs_slices": self.errors, "power_law_fits": self.fits,
                "hssl": self.hssl, "per_structure": self.per_structure, "references": self.references,
                "skipped": r.skipped,
                "problems": r.problems}


def analyse(results: Results, target: float = 0.95, reference: str | None = None,
            scratch: str | None = None) -> Analysis:
    """Run every derived quantity on ``results``.

    Args:
        results: from :func:`gather`.
        target: fraction of the best final validation Dice that counts as converged (A1).
        reference: strategy the speed-ups are relative to (default per dataset: :func:`choose_references`).
        scratch: strategy the HSSL table's differences are relative to (default: random init).
    """
    target = check_target(target)
    gathered = results
    selection = selection_table(results.runs)
    keep = selected_runs(results.runs, selection)
    if not keep.all():  # only the picked combination of each swept cell enters the tables
        ids = set(results.runs.loc[keep, "run_id"])
        results = Results(runs=results.runs[keep].copy(), history=_only(results.history, ids),
                          test=_only(results.test, ids), structures=_only(results.structures, ids),
                          skipped=results.skipped, problems=results.problems, roots=results.roots)
    refs = choose_references(results.runs, reference)
    per_run = steps_to_target(results.runs, results.history, target)
    steps = steps_summary(per_run, refs)
    errors = error_vs_slices(results.runs)
    an = Analysis(
        results=results, target=target, references=refs, steps_runs=per_run, steps=steps,
        epochs=speedup_vs_epochs(steps, results.runs), errors=errors, fits=power_law_fits(errors),
        hssl=hssl_table(results.runs, scratch),
        per_structure=per_structure_table(results.runs, results.test, results.structures),
        curves=validation_curves(results.runs, results.history), gathered=gathered, selection=selection,
        probes=probe_table(results.runs), shifts=encoder_shift_table(results.runs))
    an.probe_curve, an.finetune_curve = pretraining_curve(results.runs, read_probe_files(results.runs))
    an.claims = claims_table(an)
    an.effects = effects_table(an)
    return an


def _only(table: pd.DataFrame, ids: set) -> pd.DataFrame:
    return table[table["run_id"].isin(ids)].copy() if "run_id" in table.columns else table
