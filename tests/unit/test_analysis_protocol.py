"""The analysis side of the protocol (issue 17): per-arm selection on validation (test metrics never
enter it), the tables use only the picked runs; the dense-probe table, encoder displacement and the
pretraining-length curve, on synthetic run directories whose answers are known by hand."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from medssl_utils import report, results  # noqa: E402

CARDIAC = "phantom:cardiac"
GRID = ["encoder_lr_scale-1", "encoder_lr_scale-0.1"]
LINEAGES = {"random": [{"method": "random"}],
            "byol": [{"method": "random"}, {"method": "byol", "data": [CARDIAC], "epochs": 4}],
            "byol@2ep": [{"method": "random"}, {"method": "byol", "data": [CARDIAC], "epochs": 2}],
            "chain": [{"method": "random"}, {"method": "byol", "data": [CARDIAC], "epochs": 4},
                      {"method": "byol", "data": [CARDIAC], "epochs": 1}]}


def write(run_dir: Path, params: dict, result: dict, study: dict, history=None, extra: dict | None = None):
    run_dir.mkdir(parents=True)
    (run_dir / "params.json").write_text(json.dumps(params))
    (run_dir / "result.json").write_text(json.dumps(result))
    (run_dir / "study.json").write_text(json.dumps(study))
    if history is not None:
        history.to_csv(run_dir / "history.csv", index=False)
    for name, table in (extra or {}).items():
        table.to_csv(run_dir / name, index=False)


def finetune_run(root: Path, strategy: str, combo: str | None, seed: int, val: float, test: float, *,
                 init: str = "random", shift: float = 0.3, probe: float = 0.2, budget: int = 8):
    lineage = LINEAGES[strategy]
    sub = f"{strategy}/n{budget}/{combo}/seed{seed}" if combo else f"{strategy}/n{budget}/seed{seed}"
    hist = pd.DataFrame({"step": [0, 10, 20], "val_dice": [0.0, val / 2, val], "loss": [1.0, 0.5, 0.2]})
    tm = pd.DataFrame([{"volume_id": "v1", "case_id": "c1", "phase": "ED", "label": k, "name": n, "dice": test,
                        "hd": 5.0, "hd95": 4.0, "gt_empty": False, "pred_empty": False}
                       for k, n in ((1, "RV"), (2, "MYO"), (3, "LV"))])
    from medssl_utils.models.checkpoints import describe_lineage

    write(root / "finetune" / sub,
          {"dataset": CARDIAC, "labelled_slices": budget, "labelled_fraction": None, "seed": seed, "init": init},
          {"status": "complete", "kind": "finetune", "dataset": CARDIAC, "init": init, "lineage": lineage,
           "lineage_name": describe_lineage(lineage), "steps": 20, "labelled_slices": budget, "seed": seed,
           "val_final_dice": val, "val_best_dice": val, "encoder_shift": shift,
           "init_probe": {"dense_dice": probe, "seed": seed}, "test": {"mean_dice": test, "per_label": {}},
           "timings": {"total_s": 1.0, "train_s": 0.8}},
          {"study": "t", "kind": "finetune", "strategy": strategy, "budget": f"n{budget}", "seed": seed,
           "combo": combo, "sweep": {"encoder_lr_scale": float(combo.split("-")[1])} if combo else {},
           "grid": GRID if combo else [], "selection_seeds": [0] if combo else [], "seeds": [0, 1, 2]},
          hist, {"test_metrics.csv": tm})


def swept_tree(root: Path, flip_test: bool = False):
    """random and byol, each with the 2-combination grid; selection seed 0 only, final seeds 1-2 for the winner.

    On validation ``encoder_lr_scale-0.1`` wins for byol and ``-1`` for random; on test the losers look better
    (and with ``flip_test`` every test number is changed), which must change nothing about the choice."""
    t = (lambda v: 1 - v) if flip_test else (lambda v: v)
    # random: scale 1 wins on validation (0.60 vs 0.50), test says the opposite
    finetune_run(root, "random", GRID[0], 0, 0.60, t(0.40), probe=0.15)
    finetune_run(root, "random", GRID[1], 0, 0.50, t(0.90), probe=0.15)
    for seed, probe in ((1, 0.17), (2, 0.19)):
        finetune_run(root, "random", GRID[0], seed, 0.62, t(0.45), probe=probe)
    ckpt = str(root / "pretrain" / "byol" / "checkpoints" / "final.pt")
    finetune_run(root, "byol", GRID[0], 0, 0.55, t(0.95), init=ckpt, shift=0.4, probe=0.3)
    finetune_run(root, "byol", GRID[1], 0, 0.70, t(0.50), init=ckpt, shift=0.05, probe=0.3)
    for seed, probe in ((1, 0.32), (2, 0.34)):
        finetune_run(root, "byol", GRID[1], seed, 0.71, t(0.52), init=ckpt, shift=0.06, probe=probe)


def test_selection_uses_validation_only_and_tables_use_the_picked_runs(tmp_path):
    swept_tree(tmp_path / "a")
    an = results.analyse(results.gather(tmp_path / "a"))
    sel = an.selection
    won = dict(zip(sel.loc[sel["selected"], "strategy"], sel.loc[sel["selected"], "combo"]))
    assert won == {"random": GRID[0], "byol": GRID[1]}
    assert sel["grid_complete"].all() and set(sel["n_selection_runs"]) == {1}
    ft = an.results.finetune()
    assert len(ft) == 6 and set(ft["combo"]) == set(GRID)  # 3 seeds of each arm's winner, no loser
    assert (ft.groupby("strategy")["combo"].nunique() == 1).all()
    # the effects table compares the picked runs only: byol − random at seeds 0-2 on test
    eff = an.effects[an.effects["strategy"] == "byol"].iloc[0]
    assert eff["diff"] == pytest.approx(100 * (np.mean([0.50, 0.52, 0.52]) - np.mean([0.40, 0.45, 0.45])))
    runs = an.tables()["runs"]
    assert runs["selected"].sum() == 6 and (~runs["selected"]).sum() == 2


def test_test_metrics_never_change_the_selection(tmp_path):
    swept_tree(tmp_path / "a")
    swept_tree(tmp_path / "b", flip_test=True)  # every test Dice replaced by 1 − Dice
    a = results.analyse(results.gather(tmp_path / "a")).selection
    b = results.analyse(results.gather(tmp_path / "b")).selection
    cols = ["strategy", "combo", "val_dice_mean", "selected"]
    pd.testing.assert_frame_equal(a[cols].reset_index(drop=True), b[cols].reset_index(drop=True))


def test_selection_ties_go_to_the_first_listed_and_incomplete_grids_are_flagged(tmp_path):
    finetune_run(tmp_path, "random", GRID[0], 0, 0.6001, 0.5)
    finetune_run(tmp_path, "random", GRID[1], 0, 0.6004, 0.9)  # equal at 3 decimals: the first listed wins
    finetune_run(tmp_path, "byol", GRID[1], 0, 0.7, 0.5)  # byol's scale-1 selection run is missing
    sel = results.analyse(results.gather(tmp_path)).selection
    r = sel[sel["strategy"] == "random"].set_index("combo")
    assert r.loc[GRID[0], "selected"] and r.loc[GRID[0], "tied_with"] == GRID[1]
    b = sel[sel["strategy"] == "byol"]
    assert not b["grid_complete"].any() and b.set_index("combo").loc[GRID[1], "selected"]


def test_probe_table_shift_table_and_the_report(tmp_path):
    swept_tree(tmp_path)
    an = results.analyse(results.gather(tmp_path))
    p = an.probes.set_index("strategy")
    assert p.loc["random", "n"] == 3 and p.loc["random", "dense_dice_mean"] == pytest.approx(np.mean([0.15, .17, .19]))
    assert p.loc["byol", "ci_low"] < p.loc["byol", "dense_dice_mean"] < p.loc["byol", "ci_high"]
    s = an.shifts.set_index("strategy")
    assert s.loc["byol", "finetune_shift_mean"] == pytest.approx(np.mean([0.05, 0.06, 0.06]))
    assert s.loc["random", "pretrain_shift"] == 0.0
    page = report.write_report(results.gather(tmp_path), tmp_path / "report")
    html = page.read_text()
    for text in ("Hyperparameter selection", "validation", "Frozen-encoder probe", "Encoder displacement"):
        assert text in html
    assert (tmp_path / "report" / "tables" / "selection.csv").is_file()
    assert (tmp_path / "report" / "figures" / "probe.png").is_file()


def test_pretraining_length_curve(tmp_path):
    root = tmp_path
    rows = [{"step": step, "epoch": step / 10, "dataset": CARDIAC, "seed": seed, "dense_dice": 0.1 + step / 100 + seed
             / 100, "train_slices": 8, "val_slices": 8} for step in (0, 20, 40) for seed in (0, 1, 2)]
    write(root / "pretrain" / "byol", {"datasets": [CARDIAC]},
          {"status": "complete", "kind": "pretrain", "datasets": [CARDIAC], "init": "random", "lineage": LINEAGES["byol"],
           "lineage_name": "random → BYOL(phantom:cardiac, 4 ep)", "steps": 40, "epochs": 4.0, "encoder_shift": 0.2,
           "probe": {"dense_dice": 0.51}},
          {"study": "t", "kind": "pretrain", "stage": "byol"}, pd.DataFrame({"step": [0, 40], "loss": [1, 0]}),
          {"probes.csv": pd.DataFrame(rows)})
    ck = root / "pretrain" / "byol" / "checkpoints"
    for seed in (0, 1, 2):
        finetune_run(root, "random", None, seed, 0.5, 0.50 + seed / 100)
        finetune_run(root, "byol", None, seed, 0.6, 0.60 + seed / 100, init=str(ck / "final.pt"))
        finetune_run(root, "byol@2ep", None, seed, 0.6, 0.55 + seed / 100, init=str(ck / "epoch_2.pt"))
    an = results.analyse(results.gather(root))
    pc = an.probe_curve
    assert list(pc["step"]) == [0, 20, 40] and list(pc["n"]) == [3, 3, 3]
    assert pc["probe_dice_mean"].tolist() == pytest.approx([0.11, 0.31, 0.51])
    fc = an.finetune_curve.set_index("step")
    assert list(fc.index) == [0, 20, 40]  # random init at 0, epoch 2 of 4 = step 20, final = 40
    assert fc.loc[0, "strategy"] == "random" and fc.loc[20, "strategy"] == "byol@2ep"
    assert fc.loc[40, "test_dice_mean"] == pytest.approx(0.61)
    assert an.shifts.set_index("strategy").loc["byol", "pretrain_shift"] == pytest.approx(0.2)
    # a chain: a stage started from byol's final checkpoint has the byol arm at its step 0
    write(root / "pretrain" / "chain", {"datasets": [CARDIAC]},
          {"status": "complete", "kind": "pretrain", "datasets": [CARDIAC], "init": str(ck / "final.pt"),
           "lineage": LINEAGES["byol"], "lineage_name": "random → BYOL → BYOL", "steps": 10, "epochs": 1.0},
          {"study": "t", "kind": "pretrain", "stage": "chain"}, pd.DataFrame({"step": [0, 10], "loss": [1, 0]}))
    for seed in (0, 1, 2):
        finetune_run(root, "chain", None, seed, 0.6, 0.7, init=str(root / "pretrain" / "chain" / "checkpoints" /
                                                                 "final.pt"))
    chain = results.analyse(results.gather(root)).finetune_curve
    chain = chain[chain["stage"] == "chain"].set_index("step")
    assert chain.loc[0, "strategy"] == "byol" and chain.loc[0, "n"] == 3
    assert chain.loc[10, "strategy"] == "chain" and chain.loc[10, "test_dice_mean"] == pytest.approx(0.7)
    fig = report.fig_pretraining_length(an.probe_curve, an.finetune_curve)
    assert fig is not None
