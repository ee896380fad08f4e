"""Gathering run directories and the study's derived quantities, on synthetic runs whose answers
are known by hand (docs/run-format.md is the format)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from medssl_utils import report, results, stats  # noqa: E402
from medssl_utils.errors import DataError, ParameterError  # noqa: E402
from run_kit import (ABDOMEN, BUDGETS, CARDIAC, CURVES, FAIL_REASON, HSSL_DICE, HSSL_LINEAGES, LINEAGES,  # noqa: E402
                     POWER_A, POWER_B, SKIP_REASON, finetune_result, params_for, step_history, volume_rows, write_run)


def other_strategy_dice(strategy: str, n: int) -> float:
    return {"imagenet": 0.9, "random": 0.6}.get(strategy, 0.8) - 0.1 / n


def write_study(root: Path) -> Path:
    ft = root / "finetune"
    for strategy, lineage in LINEAGES.items():
        for n in BUDGETS:
            for seed, (jump, final) in CURVES[strategy].items():
                if strategy == "byol-cardiac":
                    err = POWER_A * n ** -POWER_B * (0.9 if seed == 0 else 1.1)
                    dice = 1 - err
                else:
                    dice = other_strategy_dice(strategy, n)
                missed = strategy == "random" and n == 3 and seed == 0
                write_run(ft / strategy / str(n) / f"seed{seed}", params=params_for(CARDIAC, seed, slices=n),
                          result=finetune_result(strategy_lineage=lineage, dataset=CARDIAC, seed=seed,
                                                 test_dice=dice, val_final=final, slices=n,
                                                 slice_iou=0.4 + 0.1 * seed),
                          history=step_history(jump, final), test=volume_rows(dice, missed=missed))
    for strategy, lineage in HSSL_LINEAGES.items():
        for fraction, dice in HSSL_DICE[strategy].items():
            for seed in (0, 1):
                d = dice + (0.01 if seed else -0.01)
                write_run(ft / strategy / f"{fraction:g}" / f"seed{seed}",
                          params=params_for(ABDOMEN, seed, fraction=fraction),
                          result=finetune_result(strategy_lineage=lineage, dataset=ABDOMEN, seed=seed, test_dice=d,
                                                 val_final=d, fraction=fraction),
                          history=step_history(50, d), test=volume_rows(d))
    # a failed, a skipped and a corrupt run, a complete run without history, and a pretraining run
    write_run(ft / "random" / "3" / "seed2", params=params_for(CARDIAC, 2, slices=3),
              result={"status": "failed", "kind": "finetune", "error": FAIL_REASON, "seed": 2})
    for seed in (0, 1):  # as the study runner writes them: no params.json, a study.json
        run = ft / "imagenet-byol" / "n3" / f"seed{seed}"
        run.mkdir(parents=True)
        (run / "result.json").write_text(json.dumps({
            "kind": "finetune", "init": "timm", "dataset": CARDIAC, "labelled_slices": 3, "labelled_fraction": None,
            "seed": seed, "status": "skipped", "error": SKIP_REASON, "written_by": "study runner"}))
        (run / "study.json").write_text(json.dumps({"study": "t", "kind": "finetune", "strategy": "imagenet-byol",
                                                    "budget": "n3", "seed": seed, "init": "timm"}))
    stage = root / "pretrain" / "byol-imagenet"  # a skipped stage: kind from the layout
    stage.mkdir(parents=True)
    (stage / "result.json").write_text(json.dumps({"status": "skipped", "error": SKIP_REASON}))
    corrupt = ft / "byol-cardiac" / "30" / "seed9"
    corrupt.mkdir(parents=True)
    (corrupt / "result.json").write_text('{"status": "complete", "kind": ')
    write_run(ft / "random" / "300" / "seed7", params=params_for(CARDIAC, 7, slices=300),  # no history, no test csv
              result=finetune_result(strategy_lineage=LINEAGES["random"], dataset=CARDIAC, seed=7,
                                     test_dice=other_strategy_dice("random", 300), val_final=0.7, slices=300))
    pre = root / "pretrain" / "byol-cardiac"
    write_run(pre, params={"kind": "pretrain", "method": "byol", "datasets": [CARDIAC], "epochs": 2, "seed": 0},
              result={"status": "complete", "kind": "pretrain", "error": None, "datasets": [CARDIAC],
                      "lineage": LINEAGES["byol-cardiac"], "lineage_name": "random → BYOL(phantom:cardiac, 400 ep)",
                      "steps": 20, "epochs": 2, "seed": 0, "timings": {"total_s": 3.0}, "checkpoint": "x.pt",
                      "checkpoints": {"1": "e1.pt"}},
              history=pd.DataFrame({"step": [10, 20], "epoch": [1, 2], "loss": [1.0, 0.5], "knn_acc": [0.5, 0.6],
                                    "momentum": [0.99, 0.995]}))
    (pre / "checkpoints").mkdir()
    return root


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    return write_study(tmp_path_factory.mktemp("results"))


@pytest.fixture(scope="module")
def res(study) -> results.Results:
    return results.gather(study)


@pytest.fixture(scope="module")
def an(res) -> results.Analysis:
    return results.analyse(res, target=0.95)


def _cell(table, strategy, budget, dataset=CARDIAC):
    hit = table[(table["strategy"] == strategy) & (table["budget"] == budget) & (table["dataset"] == dataset)]
    assert len(hit) == 1, (strategy, budget, len(hit))
    return hit.iloc[0]


# ------------------------------------------------------------------------------- gathering
def test_gather_runs_table(res):
    runs = res.runs
    n_complete_ft = len(LINEAGES) * len(BUDGETS) * 2 + len(HSSL_LINEAGES) * 3 * 2 + 1
    assert len(runs) == n_complete_ft + 1 + 3 + 1 + 1  # + failed, 3 skipped, corrupt, pretrain
    assert len(res.finetune()) == n_complete_ft
    assert runs["status"].value_counts().to_dict() == {"complete": n_complete_ft + 1, "skipped": 3, "failed": 1,
                                                       "unreadable": 1}
    ft = res.finetune()
    assert set(ft["strategy"]) == set(LINEAGES) | set(HSSL_LINEAGES)  # from the finetune/<strategy>/ layout
    row = ft[(ft["strategy"] == "byol-cardiac") & (ft["budget"] == "30 slices") & (ft["seed"] == 1)].iloc[0]
    assert row["lineage_name"] == "random → BYOL(phantom:cardiac, 400 ep)"
    assert row["pretraining"] == "single-domain SSL" and row["pretrain_family"] == "byol-cardiac"
    assert row["pretrain_epochs"] == 400 and row["labelled_slices"] == 30 and row["total_s"] == 12.5
    assert row["test_mean_iou"] == pytest.approx(0.5)  # foreground structures only (background 0.99 left out)
    assert row["test_work_a_iou"] == pytest.approx(0.7)
    at1 = ft[ft["strategy"] == "byol-cardiac@1ep"].iloc[0]
    assert at1["pretrain_family"] == "byol-cardiac" and at1["pretrain_epochs"] == 1
    multi = ft[ft["strategy"] == "hssl-multi"].iloc[0]
    assert multi["pretraining"] == "multi-domain SSL" and multi["budget_kind"] == "fraction"
    assert set(ft[ft["dataset"] == ABDOMEN]["budget"]) == {"5%", "10%", "100%"}
    assert ft[ft["strategy"] == "imagenet"]["pretraining"].unique().tolist() == ["ImageNet (supervised)"]
    pre = runs[runs["kind"] == "pretrain"].iloc[0]
    assert pre["dataset"] == CARDIAC and pre["status"] == "complete"


def test_gather_history_test_structures(res):
    h = res.history
    one = h[h["run_id"] == "finetune/byol-cardiac/30/seed1"]
    assert len(one) == 21 and one["val_dice"].notna().sum() == 11  # empty val_dice on non-eval rows
    assert {"strategy", "seed", "budget", "dataset", "val_dice_LV"} <= set(h.columns)
    assert "knn_acc" in h.columns and h["knn_acc"].notna().sum() == 2
    t = res.test
    assert len(t[t["run_id"] == "finetune/random/3/seed0"]) == 6
    missed = t[t["pred_empty"] & ~t["gt_empty"]]
    assert len(missed) == 1 and missed.iloc[0]["name"] == "LV" and np.isnan(missed.iloc[0]["hd95"])
    s = res.structures
    assert set(s[s["run_id"] == "finetune/random/3/seed0"]["name"]) == {"RV", "MYO", "LV", "background"}


def test_gather_reports_broken_and_skipped_runs(res):
    skipped = res.skipped
    assert len(skipped) == 3 and set(skipped["reason"]) == {SKIP_REASON}
    by_kind = skipped.groupby("kind")["strategy"].unique().to_dict()
    assert list(by_kind["finetune"]) == ["imagenet-byol"] and list(by_kind["pretrain"]) == ["byol-imagenet"]
    assert set(skipped[skipped["kind"] == "finetune"]["budget"]) == {"3 slices"}
    probs = res.problems.set_index("run_id")["problem"]
    assert probs["finetune/random/3/seed2"] == f"failed: {FAIL_REASON}"
    corrupt = res.problems[res.problems["run_id"] == "finetune/byol-cardiac/30/seed9"]
    assert corrupt["problem"].str.startswith("result.json is not valid JSON").any()
    assert corrupt["status"].eq("unreadable").all()
    no_history = res.problems[res.problems["run_id"] == "finetune/random/300/seed7"]["problem"].tolist()
    assert no_history == ["history.csv is missing", "test_metrics.csv is missing"]
    assert "failed" in res.summary() and "skipped" in res.summary()


def test_gather_errors(tmp_path):
    with pytest.raises(DataError, match="no run directories"):
        results.gather(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        results.gather(tmp_path / "nope")
    (tmp_path / "a" / "notes").mkdir(parents=True)
    with pytest.raises(DataError, match=re.escape(str(tmp_path))):
        results.gather([tmp_path / "a"])


def test_gather_several_dirs_and_lineage_strategy(tmp_path, study, res):
    # a run outside the study layout is named by its lineage; a second folder is gathered too
    lineage = LINEAGES["byol-cardiac@5ep"]
    write_run(tmp_path / "extra" / "my-run", params=params_for(CARDIAC, 0, slices=30),
              result=finetune_result(strategy_lineage=lineage, dataset=CARDIAC, seed=0, test_dice=0.8,
                                     val_final=0.8, slices=30), history=step_history(20, 0.8), test=volume_rows(0.8))
    named = write_run(tmp_path / "extra" / "named", params=params_for(CARDIAC, 0, slices=30),
                      result=finetune_result(strategy_lineage=lineage, dataset=CARDIAC, seed=0, test_dice=0.8,
                                             val_final=0.8, slices=30))
    (named / "study.json").write_text(json.dumps({"kind": "finetune", "strategy": "byol@5ep"}))
    both = results.gather([study, tmp_path / "extra", study])  # duplicates are read once
    extra = both.runs[both.runs["run_id"].str.endswith("my-run")].iloc[0]
    assert extra["strategy"] == "random → BYOL(phantom:cardiac, 5 ep)"
    assert extra["pretrain_family"] == "random → BYOL(phantom:cardiac)" and extra["pretrain_epochs"] == 5
    assert both.runs[both.runs["run_id"].str.endswith("named")]["strategy"].tolist() == ["byol@5ep"]
    assert len(both.runs) == len(res.runs) + 2


# ------------------------------------------------------------------------------- A1, A2
def test_steps_to_target_by_hand(an):
    per_run = an.steps_runs.set_index("run_id")
    best, thr = 0.81, 0.95 * 0.81  # mean over seeds, then max over strategies (byol-cardiac)
    for budget in BUDGETS:
        assert per_run.loc[f"finetune/imagenet/{budget}/seed0", "best_final_dice"] == pytest.approx(best)
        assert per_run.loc[f"finetune/imagenet/{budget}/seed0", "target_dice"] == pytest.approx(thr)
    assert per_run.loc["finetune/imagenet/30/seed0", "steps_to_target"] == 80  # 0.775 ≥ 0.7695
    assert per_run.loc["finetune/imagenet/30/seed1", "steps_to_target"] == 100
    assert per_run.loc["finetune/byol-cardiac/30/seed1", "steps_to_target"] == 40
    assert np.isnan(per_run.loc["finetune/random/30/seed0", "steps_to_target"])
    assert not per_run.loc["finetune/random/30/seed0", "reached"]
    assert "finetune/random/300/seed7" not in per_run.index  # no history: left out


def test_steps_summary_and_speedups(an):
    refs = an.references.set_index("dataset")
    assert refs.loc[CARDIAC, "reference"] == "imagenet" and "ImageNet" in refs.loc[CARDIAC, "reason"]
    assert refs.loc[ABDOMEN, "reference"] == "scratch"  # no ImageNet runs on that task: random init
    s = an.steps
    ref = _cell(s, "imagenet", "30 slices")
    assert ref["steps_mean"] == 90 and ref["steps_std"] == pytest.approx(math.sqrt(200))
    assert ref["speedup_mean"] == 1.0 and ref["n_pairs"] == 2
    byol = _cell(s, "byol-cardiac", "30 slices")
    assert byol["steps_mean"] == 30 and byol["n_reached"] == 2 and byol["n_runs"] == 2
    assert byol["speedup_mean"] == pytest.approx((80 / 20 + 100 / 40) / 2)  # paired per seed: 4 and 2.5
    assert byol["speedup_std"] == pytest.approx(np.std([4, 2.5], ddof=1))
    assert byol["speedup_of_means"] == pytest.approx(90 / 30)
    rnd = _cell(s, "random", "3 slices")
    assert rnd["n_reached"] == 0 and rnd["n_runs"] == 2 and np.isnan(rnd["speedup_mean"]) and rnd["n_pairs"] == 0
    assert _cell(s, "hssl-multi", "100%", ABDOMEN)["speedup_mean"] == 1.0  # all reach at step 50
    assert np.isnan(_cell(s, "hssl-multi", "5%", ABDOMEN)["speedup_mean"])  # scratch never reaches at 5%
    at5 = _cell(s, "byol-cardiac@5ep", "300 slices")
    assert at5["steps_mean"] == 25 and at5["speedup_mean"] == pytest.approx((80 / 20 + 100 / 30) / 2)
    # an explicit reference, and a bad one
    other = results.steps_summary(an.steps_runs, "byol-cardiac")
    assert _cell(other, "imagenet", "30 slices")["speedup_mean"] == pytest.approx((20 / 80 + 40 / 100) / 2)
    with pytest.raises(ParameterError, match="reference='imagenet-byol'"):
        results.choose_references(an.results.runs, "imagenet-byol")  # skipped: no complete runs
    chosen = results.choose_references(an.results.runs, "imagenet").set_index("dataset")["reference"]
    assert chosen[CARDIAC] == "imagenet" and pd.isna(chosen[ABDOMEN])


def test_reference_falls_back_to_random_and_target_checked(res):
    runs = res.runs[res.runs["strategy"] != "imagenet"]
    name, why = results.choose_reference(runs)
    assert name == "random" and "no complete ImageNet" in why  # 7 random-init runs beat scratch's 6
    with pytest.raises(ParameterError, match="target"):
        results.steps_to_target(res.runs, res.history, target=1.5)
    loose = results.steps_to_target(res.runs, res.history, target=0.5).set_index("run_id")
    assert loose.loc["finetune/random/30/seed0", "steps_to_target"] == 30  # 0.70 ≥ 0.405


def test_speedup_vs_epochs(an):
    ep = an.epochs
    assert set(ep["pretrain_family"]) == {"byol-cardiac"}  # other strategies have one epoch value at most
    sub = ep[(ep["budget"] == "30 slices")].set_index("pretrain_epochs")
    assert list(sub.index) == [1, 5, 400]
    assert sub["speedup_mean"].tolist() == pytest.approx([2.0, (4 + 10 / 3) / 2, 3.25])


# ------------------------------------------------------------------------------- A3, B, structures
def test_error_vs_slices_and_power_law(an):
    e = an.errors
    row = _cell(e, "byol-cardiac", "30 slices")
    assert row["n"] == 2 and row["labelled_slices"] == 30
    assert row["err_dice_mean"] == pytest.approx(POWER_A * 30 ** -POWER_B)
    assert row["err_dice_std"] == pytest.approx(np.std([0.9, 1.1], ddof=1) * POWER_A * 30 ** -POWER_B)
    assert row["err_iou_mean"] == pytest.approx(1 - 0.45)
    assert _cell(e, "random", "300 slices")["n"] == 3  # the run without history still has a test Dice
    fits = an.fits.set_index(["dataset", "strategy", "metric"])
    fit = fits.loc[(CARDIAC, "byol-cardiac", "dice")]
    assert fit["b"] == pytest.approx(POWER_B) and fit["a"] == pytest.approx(POWER_A)
    assert fit["r2"] == pytest.approx(1.0) and fit["n_points"] == 3 and fit["n_runs"] == 6
    assert fits.loc[(CARDIAC, "imagenet", "dice")]["b"] > 0  # 0.1 − 0.1/n … error falls with n


def test_fit_power_law_exact():
    n = np.array([1, 3, 7, 15, 30, 75, 150])
    fit = stats.fit_power_law(n, 0.6 * n ** -0.45)
    assert fit["a"] == pytest.approx(0.6) and fit["b"] == pytest.approx(0.45) and fit["r2"] == pytest.approx(1.0)
    two = stats.fit_power_law([10, 100, 1000], [0.1, 0.01, 0.0])  # err 0 excluded and counted
    assert two["b"] == pytest.approx(1.0) and two["n_excluded"] == 1 and np.isnan(two["r2"])
    assert np.isnan(stats.fit_power_law([10], [0.1])["b"])


def test_hssl_table(an):
    h = an.hssl
    assert set(h["dataset"]) == {ABDOMEN} and set(h["scratch"]) == {"scratch"}
    assert set(h["budget"]) == {"5%", "10%", "100%"}
    for strategy, dice in HSSL_DICE.items():
        for fraction, value in dice.items():
            row = h[(h["strategy"] == strategy) & (h["budget_value"] == fraction)].iloc[0]
            assert row["n"] == 2 and row["dice_mean"] == pytest.approx(value)
            assert row["dice_std"] == pytest.approx(np.std([-0.01, 0.01], ddof=1))
            assert row["diff_vs_scratch"] == pytest.approx(100 * (value - HSSL_DICE["scratch"][fraction]))
    multi = h[h["strategy"] == "hssl-multi"]
    assert multi["pretraining"].unique().tolist() == ["multi-domain SSL"]
    wide = report.hssl_wide(h).set_index("strategy")
    assert wide.loc["hssl-multi", "Δ vs scratch 5%"] == "+10.0"
    assert wide.loc["hssl-multi", "Dice 5%"] == "60.0 ± 1.4 (n=2)"


def test_per_structure_table(an):
    p = an.per_structure
    lv = p[(p["strategy"] == "random") & (p["budget"] == "3 slices") & (p["name"] == "LV")].iloc[0]
    d = other_strategy_dice("random", 3)
    seed0, seed1 = (d + 0.02 + 0.0) / 2, d  # seed 0 missed LV in ES (Dice 0)
    assert lv["n_seeds"] == 2 and lv["n_volumes"] == 4 and lv["n_missed"] == 1 and lv["n_hd95_undefined"] == 1
    assert lv["dice_mean"] == pytest.approx((seed0 + seed1) / 2)
    assert lv["dice_std"] == pytest.approx(np.std([seed0, seed1], ddof=1))
    assert lv["hd95_mean"] == pytest.approx(6.0) and lv["hd95_std"] == pytest.approx(0.0)
    assert lv["slice_iou_mean"] == pytest.approx(0.45)
    assert list(p[(p["strategy"] == "imagenet") & (p["budget"] == "30 slices")]["name"]) == ["RV", "MYO", "LV"]


# ------------------------------------------------------------------------------- report
def test_figures_return_figures_or_none(an):
    from matplotlib.figure import Figure

    fig = report.fig_convergence(an.curves, an.steps)
    assert isinstance(fig, Figure) and "n = 2" in " ".join(ax.get_title() for ax in fig.axes)
    assert report.fig_hssl(an.hssl.iloc[0:0]) is None
    assert report.fig_speedup_vs_epochs(results.speedup_vs_epochs(an.steps, an.results.runs.iloc[0:0])) is None
    with pytest.raises(ParameterError, match="metric"):
        report.fig_error_vs_slices(an.errors, an.fits, metric="hd")


def test_write_report(res, tmp_path):
    page = report.write_report(res, tmp_path / "out", target=0.95)
    assert page == tmp_path / "out" / "report.html" and page.is_file()
    pngs = {p.stem for p in (tmp_path / "out" / "figures").glob("*.png")}
    assert pngs == {"convergence", "steps_to_target", "speedup_vs_epochs", "error_vs_slices", "hssl",
                    "per_structure"}
    for png in (tmp_path / "out" / "figures").glob("*.png"):
        assert png.read_bytes()[:4] == b"\x89PNG"
    csvs = {p.stem for p in (tmp_path / "out" / "tables").glob("*.csv")}
    assert {"runs", "steps_to_target", "speedup_vs_epochs", "error_vs_slices", "power_law_fits", "hssl",
            "per_structure", "skipped", "problems"} <= csvs
    steps = pd.read_csv(tmp_path / "out" / "tables" / "steps_to_target.csv")
    assert _cell(steps, "byol-cardiac", "30 slices")["speedup_mean"] == pytest.approx(3.25)
    text = page.read_text()
    assert SKIP_REASON in text and FAIL_REASON in text and "not valid JSON" in text
    assert "n = 2 seeds per strategy and budget" in text or "n = 2–3 seeds per strategy and budget" in text
    assert "data:image/png;base64," in text and "imagenet" in text
    assert not list((tmp_path / "out").rglob(".*tmp*"))  # no temp files left


def test_report_without_optional_data_and_cli(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("medssl_utils.report.page.figure_png", lambda fig, **kw: b"\x89PNG stub")  # rendering is tested above; keep this fast
    # one strategy on slice budgets plus "all" labels: no HSSL table, no epochs ablation → notes, not failures
    for seed in (0, 1):
        for n in (3, 30, None):
            write_run(tmp_path / "r" / "finetune" / "random" / (f"n{n}" if n else "all") / f"seed{seed}",
                      params=params_for(CARDIAC, seed, slices=n, fraction=None if n else 1.0),
                      result=finetune_result(strategy_lineage=LINEAGES["random"], dataset=CARDIAC, seed=seed,
                                             test_dice=0.7, val_final=0.7, slices=n or 200),
                      history=step_history(30, 0.7), test=volume_rows(0.7))
    from medssl_utils.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["report", str(tmp_path / "r"), "--target", "0.9"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    page = tmp_path / "r" / "report" / "report.html"
    assert str(page) in out and page.is_file()
    text = page.read_text()
    assert "Not drawn: no task was fine-tuned at a labelled fraction below 100%" in text
    assert "no pretraining-epochs ablation" in text and "No run was skipped" in text
    assert "n = 2 seeds per strategy and budget" in text
    assert not (tmp_path / "r" / "report" / "figures" / "hssl.png").exists()
    # the report folder itself holds no runs, so a second gather is unchanged
    again = results.gather(tmp_path / "r")
    assert len(again.runs) == 6 and set(again.runs["budget"]) == {"3 slices", "30 slices", "100%"}
    with pytest.raises(DataError, match="no run directories"):
        parser.parse_args(["report", str(tmp_path / "r" / "report")]).func(
            parser.parse_args(["report", str(tmp_path / "r" / "report")]))
