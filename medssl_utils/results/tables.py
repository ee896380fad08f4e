"""The study's derived tables, each a pure function of the :class:`~medssl_utils.results.gather.Results`
DataFrames (definitions: :mod:`medssl_utils.results`): steps to target and speed-ups (A1), speed-up vs
pretraining epochs (A2), error vs labelled slices and power-law fits (A3), the HSSL table (B1-B3), per
structure, selection on validation, probes, encoder shift and the pretraining-length curve.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from medssl_utils import selection as sel
from medssl_utils.errors import ParameterError
from medssl_utils.results.columns import BUDGET, CELL, empty_table, finetune_runs, json_text
from medssl_utils.results.gather import read_table
from medssl_utils.stats import fit_power_law, t_interval


# =============================================================================== helpers
def _std(values) -> float:
    """Sample SD (ddof=1) of the finite values; NaN with fewer than two."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    return float(values.std(ddof=1)) if len(values) > 1 else math.nan


def _mean(values) -> float:
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    return float(values.mean()) if len(values) else math.nan


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
        return empty_table([*CELL, "run_id", "seed", "step", "val_dice"])
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
        return empty_table(STEPS_RUN_COLUMNS)
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
        return empty_table(STEPS_COLUMNS)
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
        return empty_table(EPOCHS_COLUMNS)
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
        return empty_table(ERROR_COLUMNS)
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
        return empty_table(HSSL_COLUMNS)
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
        return empty_table(STRUCTURE_TABLE_COLUMNS)
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
        return empty_table(SELECTION_COLUMNS)
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
                "selection_seeds": json_text(seeds), "n_selection_runs": len(c["scores"]),
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
        return empty_table(PROBE_COLUMNS)
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
    ``encoder_shift`` (median over conv weights of ``|W - W0| / |W0|``, from the init), mean and SD over
    seeds, beside the shift of the pretraining stage the init came from (from its own start)."""
    ft = finetune_runs(runs)
    ft = ft[ft["encoder_shift"].notna()]
    if not len(ft):
        return empty_table(SHIFT_COLUMNS)
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
        table, why = read_table(path, ("step", "seed", "dataset", "dense_dice")) if path.is_file() else (None, None)
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
