"""The columns of the tidy tables, and the value coercions every part of :mod:`medssl_utils.results` shares."""

from __future__ import annotations

import json
import math

import pandas as pd

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


def as_float(value) -> float:
    """A JSON value as float (NaN for null, missing or non-numeric)."""
    if isinstance(value, bool):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def json_text(value) -> str:
    return json.dumps(value)


def finetune_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Rows of ``runs`` that are complete fine-tuning runs."""
    return runs[(runs["kind"] == "finetune") & (runs["status"] == "complete")].copy()


def sorted_budgets(table: pd.DataFrame) -> pd.DataFrame:
    """Distinct budgets of ``table``, slice budgets first, each in increasing order."""
    budgets = table[["budget_kind", "budget_value", "budget"]].drop_duplicates()
    return budgets.sort_values(["budget_kind", "budget_value"], ascending=[False, True]).reset_index(drop=True)


def empty_table(columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
