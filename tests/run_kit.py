"""Synthetic run directories whose answers are known by hand, for the analysis tests
(tests/unit/test_results.py, test_claims.py, test_hostile_inputs.py); docs/run-format.md is the format."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

CARDIAC = "phantom:cardiac"
ABDOMEN = "phantom:abdomen-ct"
STRUCTURES = {1: "RV", 2: "MYO", 3: "LV"}
SKIP_REASON = "ImageNet weights unavailable offline (no timm cache, no file:PATH)"
FAIL_REASON = "RuntimeError: CUDA out of memory"

# Work A part: strategy -> (lineage, {seed: (step where val Dice jumps, final val Dice)})
LINEAGES = {
    "imagenet": [{"method": "timm", "weights": "resnet18.a1_in1k", "data": ["imagenet"]}],
    "random": [{"method": "random"}],
    "byol-cardiac": [{"method": "random"}, {"method": "byol", "data": [CARDIAC], "epochs": 400}],
    "byol-cardiac@1ep": [{"method": "random"}, {"method": "byol", "data": [CARDIAC], "epochs": 1}],
    "byol-cardiac@5ep": [{"method": "random"}, {"method": "byol", "data": [CARDIAC], "epochs": 5}],
}
CURVES = {
    # seed 0 of imagenet ends at 0.775: above 0.95 × 0.81 (mean-then-max D*), below 0.95 × 0.825 (max of runs)
    "imagenet": {0: (80, 0.775), 1: (100, 0.825)},
    "random": {0: (30, 0.70), 1: (30, 0.70)},  # never reaches the threshold
    "byol-cardiac": {0: (20, 0.81), 1: (40, 0.81)},  # D* = 0.81 comes from here
    "byol-cardiac@1ep": {0: (40, 0.80), 1: (50, 0.80)},
    "byol-cardiac@5ep": {0: (20, 0.80), 1: (25, 0.80)},  # evaluated every 10 steps: reaches at step 30
}
BUDGETS = (3, 30, 300)
POWER_A, POWER_B = 0.6, 0.5  # byol-cardiac's test error = 0.6 · n^-0.5 (seed errors ×0.9 and ×1.1)
# Work B part: strategy -> (lineage, {fraction: test Dice}); seeds get ±0.01
HSSL_LINEAGES = {
    "scratch": [{"method": "random"}],
    "ssl-single": [{"method": "random"}, {"method": "simclr", "data": [ABDOMEN], "epochs": 3}],
    "hssl-multi": [{"method": "random"}, {"method": "hssl", "data": [CARDIAC, ABDOMEN, "phantom:brain"],
                                          "epochs": 3}],
}
HSSL_DICE = {"scratch": {0.05: 0.50, 0.1: 0.60, 1.0: 0.80}, "ssl-single": {0.05: 0.55, 0.1: 0.65, 1.0: 0.82},
             "hssl-multi": {0.05: 0.60, 0.1: 0.70, 1.0: 0.83}}


# ------------------------------------------------------------------------------- writing runs
def _lineage_name(lineage):
    from medssl_utils.models.checkpoints import describe_lineage
    return describe_lineage(lineage)


def write_run(run_dir: Path, *, params: dict, result: dict, history: pd.DataFrame | None = None,
              test: pd.DataFrame | None = None) -> Path:
    run_dir.mkdir(parents=True)
    (run_dir / "params.json").write_text(json.dumps(params))
    (run_dir / "result.json").write_text(json.dumps(result))
    if history is not None:
        history.to_csv(run_dir / "history.csv", index=False)
    if test is not None:
        test.to_csv(run_dir / "test_metrics.csv", index=False)
    return run_dir


def step_history(jump: int, final: float, last: int = 100) -> pd.DataFrame:
    """Logged every 5 steps; evaluated every 10: val Dice 0.1 before ``jump``, ``final`` from it on."""
    rows = []
    for step in range(0, last + 1, 5):
        row = {"step": step, "epoch": step // 50, "time_s": step * 0.1, "loss": 1 / (1 + step), "lr": 1e-4,
               "images_per_s": 100.0, "val_dice": None}
        if step % 10 == 0:
            row["val_dice"] = 0.1 if step < jump else final
            for name in STRUCTURES.values():
                row[f"val_dice_{name}"] = row["val_dice"]
        rows.append(row)
    return pd.DataFrame(rows)


def volume_rows(dice: float, missed: bool = False) -> pd.DataFrame:
    """Two test volumes (ED, ES) × three structures; LV of ES is missed when ``missed``."""
    rows = []
    for vol, phase in enumerate(("ED", "ES")):
        for label, name in STRUCTURES.items():
            miss = missed and phase == "ES" and name == "LV"
            d = 0.0 if miss else dice + (0.02 if phase == "ED" else -0.02)
            rows.append({"volume_id": vol, "case_id": "patient101", "phase": phase, "label": label, "name": name,
                         "dice": d, "hd": None if miss else 4.0, "hd95": None if miss else 3.0 + label,
                         "gt_empty": False, "pred_empty": miss})
    return pd.DataFrame(rows)


def finetune_result(*, strategy_lineage, dataset, seed, test_dice, val_final, slices=None, fraction=None,
                    status="complete", error=None, slice_iou=0.5):
    return {
        "status": status, "kind": "finetune", "error": error, "dataset": dataset, "init": "random",
        "lineage": strategy_lineage, "lineage_name": _lineage_name(strategy_lineage), "steps": 100, "epochs": 2,
        "labelled_slices": slices if slices is not None else int(round(200 * fraction)),
        "labelled_fraction": fraction if fraction is not None else slices / 200, "seed": seed,
        "timings": {"total_s": 12.5, "train_s": 10.0, "eval_s": 2.5, "images_per_s": 100.0},
        "test": {"mean_dice": test_dice,
                 "per_label": {n: {"dice_mean": test_dice, "dice_std": 0.02, "hd_mean": 4.0, "hd95_mean": 4.0,
                                   "n": 2, "n_missed": 0, "n_undefined_hd": 0} for n in STRUCTURES.values()},
                 "slice_iou": {**{n: slice_iou for n in STRUCTURES.values()}, "background": 0.99,
                               "work_a_mean_iou": 0.7}},
        "val_final_dice": val_final, "val_best_dice": val_final,
    }


def params_for(dataset, seed, slices=None, fraction=None, init="random"):
    return {"kind": "finetune", "dataset": dataset, "init": init, "labelled_slices": slices,
            "labelled_fraction": fraction, "seed": seed, "max_steps": 100, "eval_every": 10,
            "medssl_version": "0.1.0", "started": "2025-01-01T00:00:00+00:00"}
