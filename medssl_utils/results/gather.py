"""Reading run directories: :func:`gather` walks results folders, reads each run's files and returns
the tidy :class:`Results`; broken runs become rows of ``Results.problems``, never exceptions.
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

from medssl_utils.errors import DataError, ParameterError
from medssl_utils.results.columns import (PROBLEM_COLUMNS, RUN_COLUMNS, RUN_KEYS, SKIPPED_COLUMNS, STRUCTURE_COLUMNS,
                                          as_float, finetune_runs, json_text, sorted_budgets)
from medssl_utils.results.lineage import pretrain_epochs, pretraining_category, role_of, stage_checkpoint
from medssl_utils.rundir import read_json_object

RESULT_FILE = "result.json"
PARAMS_FILE = "params.json"
STUDY_FILE = "study.json"  # written by the study runner (medssl_utils.study): strategy / stage, budget, seed
#: Folders inside a run directory (or a results tree) that never hold runs.
_PRUNE = {"checkpoints", "predictions", "__pycache__", ".ipynb_checkpoints"}
_SEED_DIR = re.compile(r"seed[-_]?\d+", re.IGNORECASE)


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
                         f"budgets {list(sorted_budgets(ft)['budget'])}; "
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


def read_table(path: Path, required: tuple[str, ...]) -> tuple[pd.DataFrame | None, str | None]:
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
        history, text = read_table(run_dir / "history.csv", ("step",))
        if text:
            problem(text)
        else:
            history, text = _numeric(history, "history.csv", list(history.columns))
            if text:
                problem(text)
            history = _with_keys(history, row)
        if row["kind"] == "finetune":
            test, text = read_table(run_dir / "test_metrics.csv", ("name", "dice"))
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
        if value is not None and math.isnan(as_float(value)) and not (isinstance(value, float) and math.isnan(value)):
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
    family, epochs = pretrain_epochs(strategy, lineage)
    budget_kind, budget_value, budget = _budget(params, res) if kind == "finetune" else (None, math.nan, None)
    test = res.get("test") if isinstance(res.get("test"), Mapping) else {}
    timings = res.get("timings") if isinstance(res.get("timings"), Mapping) else {}
    slice_iou = test.get("slice_iou") if isinstance(test.get("slice_iou"), Mapping) else {}
    status = str(res.get("status") or "unknown") if result is not None else "unreadable"
    init_probe = res.get("init_probe") if isinstance(res.get("init_probe"), Mapping) else {}
    probe = res.get("probe") if isinstance(res.get("probe"), Mapping) else {}
    first = probe.get("first") if isinstance(probe.get("first"), Mapping) else {}
    stage, stage_epoch = stage_checkpoint(init)
    return {
        "run_id": run_id, "kind": kind, "status": status, "error": res.get("error") or None,
        "strategy": strategy, "lineage_name": lineage_name, "pretraining": pretraining_category(lineage, init),
        "role": role_of(lineage, init, _dataset(res, params)) if kind == "finetune" else None,
        "pretrain_family": family, "pretrain_epochs": epochs, "init": None if init is None else str(init),
        "dataset": _dataset(res, params) or "unknown", "budget_kind": budget_kind, "budget_value": budget_value,
        "budget": budget,
        "labelled_slices": as_float(res.get("labelled_slices", params.get("labelled_slices"))),
        "labelled_fraction": as_float(res.get("labelled_fraction", params.get("labelled_fraction"))),
        "seed": as_float(res.get("seed", params.get("seed"))), "steps": as_float(res.get("steps")),
        "epochs": as_float(res.get("epochs")), "val_final_dice": as_float(res.get("val_final_dice")),
        "val_best_dice": as_float(res.get("val_best_dice")), "test_mean_dice": as_float(test.get("mean_dice")),
        "test_mean_iou": _foreground_iou(slice_iou, test.get("per_label")),
        "test_work_a_iou": as_float(slice_iou.get("work_a_mean_iou")),
        **{k: as_float(timings.get(k)) for k in ("total_s", "train_s", "eval_s", "images_per_s")},
        "combo": study.get("combo") or None,
        "sweep": json_text(study.get("sweep")) if study.get("sweep") else None,
        "grid": json_text(study.get("grid")) if study.get("grid") else None,
        "selection_seeds": json_text(study.get("selection_seeds")) if study.get("selection_seeds") else None,
        "encoder_shift": as_float(res.get("encoder_shift")), "init_probe_dice": as_float(init_probe.get("dense_dice")),
        "probe_dice": as_float(probe.get("dense_dice")), "probe_first_dice": as_float(first.get("dense_dice")),
        "stage": stage, "stage_epoch": stage_epoch,
        "run_dir": str(run_dir),
    }


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
        fraction, slices = as_float(source.get("labelled_fraction")), as_float(source.get("labelled_slices"))
        if source is params and not math.isnan(fraction):
            return "fraction", fraction, f"{100 * fraction:g}%"
        if not math.isnan(slices):
            return "slices", slices, f"{slices:g} slices"
        if not math.isnan(fraction):
            return "fraction", fraction, f"{100 * fraction:g}%"
    return "fraction", 1.0, "100%"


def _foreground_iou(slice_iou: Mapping, per_label) -> float:
    """Mean of the per-structure slice IoUs over foreground structures (the ``per_label``
    names when given, else every name except ``background`` and ``work_a_mean_iou``)."""
    names = [n for n in (per_label or {}) if n in slice_iou] if isinstance(per_label, Mapping) else []
    if not names:
        names = [n for n in slice_iou if n not in ("work_a_mean_iou", "n_slices") and n.lower() != "background"]
    values = [as_float(slice_iou[n]) for n in names]
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
        rows.append({"run_id": run_id, "name": str(name), "dice_mean": as_float(m.get("dice_mean")),
                     "dice_std": as_float(m.get("dice_std")), "hd95_mean": as_float(m.get("hd95_mean")),
                     "n": as_float(m.get("n")), "n_missed": as_float(m.get("n_missed")),
                     "n_undefined_hd": as_float(m.get("n_undefined_hd")), "slice_iou": as_float(slice_iou.get(name))})
    return rows
