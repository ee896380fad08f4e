"""Study sweeps: the grid of hyperparameter combinations, its layout, validation, and the two-phase
execution that selects each cell's combination on validation Dice (never on test metrics).

A stand-in fine-tuning notebook writes ``val_final_dice`` (and a ``test`` block) taken from tables
given as parameters, keyed by the run's combination folder, so a test decides which combination
wins; runs execute in-process (:func:`test_study.in_process`).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import textwrap
from pathlib import Path

import nbformat
import pytest

from medssl_utils import selection
from medssl_utils import study as st
from medssl_utils.errors import ParameterError
from medssl_utils.study import checks
from study_kit import in_process, log_lines, make_study, write_notebook

SWEEP_BODY = """
import json, os, pathlib
run = pathlib.Path(run_dir)
run.mkdir(parents=True, exist_ok=True)
combo = run.parent.name
with open(log, "a") as f:
    f.write(f"finetune {run_dir} lr={lr} els={encoder_lr_scale} fes={freeze_encoder_steps}\\n")
if fail_marker and os.path.exists(fail_marker) and f"{combo}/{run.name}" in fail_on:
    raise ValueError(f"boom in {combo}/{run.name}")
if init not in ("random", "timm"):
    if not pathlib.Path(init[5:] if init.startswith("file:") else init).is_file():
        raise FileNotFoundError(init)
tables = {"val": val or {}, "test": test or {}}
def score(which):
    t = tables[which]
    return t.get(f"{combo}/{run.name}", t.get(combo, 0.5))
(run / "result.json").write_text(json.dumps({
    "status": "complete", "kind": "finetune", "error": None, "val_final_dice": score("val"),
    "test": {"mean_dice": score("test")}}))
(run / "seen.json").write_text(json.dumps({"lr": lr, "encoder_lr_scale": encoder_lr_scale, "seed": seed,
                                           "freeze_encoder_steps": freeze_encoder_steps, "init": init}))
"""


def write_sweep_notebook(path: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "Python 3"}
    params = nbformat.v4.new_code_cell(textwrap.dedent("""\
        run_dir = None
        init = "random"
        log = None
        overwrite = False
        seed = 0
        dataset = None
        labelled_slices = None
        labelled_fraction = None
        lr = 0.001
        encoder_lr_scale = 1.0
        freeze_encoder_steps = 0
        val = None
        test = None
        fail_marker = None
        fail_on = []
        """))
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(SWEEP_BODY)]
    nbformat.write(nb, path)
    return path


@pytest.fixture
def nbs(tmp_path) -> dict:
    d = tmp_path / "nbs"
    d.mkdir()
    return {"pretrain": str(write_notebook(d / "pre.ipynb", "pretrain")),
            "finetune": str(write_sweep_notebook(d / "fine.ipynb"))}


def executed(tmp_path: Path, results: str = "results") -> list[str]:
    """The run folders the stand-ins executed, relative to the results folder, in execution order."""
    root = tmp_path / results
    return [Path(ln.split()[1]).relative_to(root).as_posix() for ln in log_lines(tmp_path)
            if Path(ln.split()[1]).is_relative_to(root)]


def ft(**over) -> dict:
    """A one-strategy, one-budget grid sweeping lr over two values; seeds 0-2, seed 0 selects."""
    grid = {"dataset": "phantom:cardiac", "labelled_slices": [4], "seeds": [0, 1, 2], "selection_seeds": [0],
            "sweep": {"lr": [1.0e-2, 3.0e-3]}, "strategies": {"random": "random"}}
    return {**grid, **over}


A, B = "finetune/random/n4/lr-0.01", "finetune/random/n4/lr-0.003"


# ============================================================================ labels and pick
def test_combo_label_formats_values():
    assert selection.combo_label({"lr": 0.01, "encoder_lr_scale": 1.0}) == "lr-0.01+encoder_lr_scale-1"
    assert selection.combo_label({"lr": 1.0e-3}) == "lr-0.001"
    assert selection.combo_label({"lr": 1e-5, "x": 3e-3}) == "lr-0.00001+x-0.003"
    assert selection.combo_label({"freeze_encoder_steps": 50, "flag": True, "off": False}) == \
        "freeze_encoder_steps-50+flag-true+off-false"
    assert selection.combo_label({"loss": "dice_ce", "recipe": "paper@v2", "w": None}) == \
        "loss-dice_ce+recipe-paper@v2+w-null"
    assert selection.combo_label({"x": 100.0, "y": 0.5}) == "x-100+y-0.5"
    for bad in ("a/b", "..", "a b", "", "x+y"):
        with pytest.raises(ParameterError, match="folder name"):
            selection.combo_label({"loss": bad})


def test_pick_uses_only_validation_scores():
    # the input is validation Dice only: there is no field a test metric could come in by
    cands = [{"combo": "a", "order": 0, "scores": [0.70, 0.72]},
             {"combo": "b", "order": 1, "scores": [0.80, float("nan"), None]},
             {"combo": "c", "order": 2, "scores": []}]
    out = selection.pick(cands)
    assert out["combo"] == "b" and out["score"] == pytest.approx(0.80)
    assert [c for c, _ in out["ranking"]] == ["b", "a", "c"] and math.isnan(out["ranking"][2][1])
    assert out["tied"] == [] and out["rule"] == selection.RULE and "validation" in out["rule"]
    # means equal to 3 decimals: the combination listed first (lowest order) wins, whatever the input order
    tie = selection.pick([{"combo": "late", "order": 3, "scores": [0.7004]},
                          {"combo": "early", "order": 1, "scores": [0.7001]},
                          {"combo": "worse", "order": 0, "scores": [0.69]}])
    assert tie["combo"] == "early" and tie["tied"] == ["late"]
    # no finite score anywhere: no winner; a scoreless candidate never beats a scored one
    none = selection.pick([{"combo": "a", "order": 0, "scores": [None]}, {"combo": "b", "order": 1, "scores": []}])
    assert none["combo"] is None and math.isnan(none["score"]) and none["tied"] == []
    assert selection.pick([{"combo": "a", "order": 0, "scores": [None]},
                           {"combo": "b", "order": 1, "scores": [0.1]}])["combo"] == "b"
    assert selection.validation_score({"val_final_dice": 0.5, "test": {"mean_dice": 0.9}}) == 0.5
    assert selection.validation_score({"test": {"mean_dice": 0.9}}) is None


def test_selection_module_is_a_leaf():
    text = Path(selection.__file__).read_text()
    imports = re.findall(r"^\s*(?:from|import) ([\w.]+)", text, re.M)
    assert {i for i in imports if i.startswith("medssl_utils")} == {"medssl_utils.errors"}
    assert not {"torch", "pandas", "numpy"} & {i.split(".")[0] for i in imports}


# ============================================================================ grid and layout
def test_grid_layout_order_and_levels(tmp_path, nbs):
    path = make_study(tmp_path, nbs, pretrain={"stages": {"byol": {"method": "byol", "datasets": ["natural"]}}},
                      finetune={"dataset": "phantom:cardiac", "labelled_slices": [4], "seeds": [0, 1],
                                "selection_seeds": [0], "params": {"lr": 0.5},
                                "sweep": {"lr": [1.0e-2, 3.0e-3], "encoder_lr_scale": [1.0, 0.1]},
                                "strategies": {
                                    "random": "random",
                                    "byol": {"init": "stage:byol", "selection_seeds": 2,
                                             "sweep": {"freeze_encoder_steps": [0, 50], "lr": [1.0e-3]}}}})
    study = st.load_study(path)
    res = tmp_path / "results"
    rnd = [r for r in study.runs if r.name == "random"]
    combos = ["lr-0.01+encoder_lr_scale-1", "lr-0.01+encoder_lr_scale-0.1", "lr-0.003+encoder_lr_scale-1",
              "lr-0.003+encoder_lr_scale-0.1"]  # the product, first key slowest
    # the cell's selection runs come first, then its conditional runs
    assert [r.id for r in rnd] == [f"finetune/random/n4/{c}/seed0" for c in combos] + \
        [f"finetune/random/n4/{c}/seed1" for c in combos]
    r = study.run("finetune/random/n4/lr-0.003+encoder_lr_scale-0.1/seed1")
    assert r.run_dir == res / "finetune/random/n4/lr-0.003+encoder_lr_scale-0.1/seed1"
    assert r.params["lr"] == 0.003 and r.params["encoder_lr_scale"] == 0.1 and r.params["seed"] == 1  # sweep wins
    assert r.combo == "lr-0.003+encoder_lr_scale-0.1" and r.sweep == {"lr": 0.003, "encoder_lr_scale": 0.1}
    assert r.grid == tuple(combos) and r.selection_seeds == (0,) and r.cell == "finetune/random/n4"
    assert r.selection == tuple(f"finetune/random/n4/{c}/seed0" for c in combos)
    assert r.sources["lr"] == "finetune.sweep.lr" and r.sources["encoder_lr_scale"] == "finetune.sweep.encoder_lr_scale"
    sel = study.run("finetune/random/n4/lr-0.01+encoder_lr_scale-1/seed0")
    assert sel.selection == () and sel.deps == ()
    # a strategy's sweep replaces lr's list (keeping its place) and adds a key; both its seeds select
    byol = [r for r in study.runs if r.name == "byol" and r.kind == "finetune"]
    assert byol[0].grid == ("lr-0.001+encoder_lr_scale-1+freeze_encoder_steps-0",
                            "lr-0.001+encoder_lr_scale-1+freeze_encoder_steps-50",
                            "lr-0.001+encoder_lr_scale-0.1+freeze_encoder_steps-0",
                            "lr-0.001+encoder_lr_scale-0.1+freeze_encoder_steps-50")
    assert len(byol) == 8 and all(r.selection == () and r.selection_seeds == (0, 1) for r in byol)
    assert all(r.deps == ("pretrain/byol",) for r in byol)  # deps: stages only
    b = study.run("finetune/byol/n4/lr-0.001+encoder_lr_scale-0.1+freeze_encoder_steps-50/seed1")
    assert b.params["freeze_encoder_steps"] == 50 and b.params["lr"] == 0.001
    assert b.sources["freeze_encoder_steps"] == "finetune.strategies.byol.sweep.freeze_encoder_steps"
    assert b.sources["lr"] == "finetune.strategies.byol.sweep.lr"
    assert b.sources["encoder_lr_scale"] == "finetune.sweep.encoder_lr_scale"


def test_task_sweeps_and_cells_without_a_sweep_keep_the_old_layout(tmp_path, nbs):
    path = make_study(tmp_path, nbs, finetune={
        "labelled_fraction": [0.1], "seeds": [0, 1], "strategies": {"scratch": "random"},
        "tasks": {"cardiac": {"dataset": "phantom:cardiac", "sweep": {"lr": [0.01, 0.001]}, "selection_seeds": [1],
                              "strategies": {"wide": {"init": "random", "sweep": {"lr": [0.1, 0.01, 0.001]}}}},
                  "prostate": {"dataset": "phantom:prostate-mr"}}})
    study = st.load_study(path)
    ids = [r.id for r in study.runs]
    assert [i for i in ids if i.startswith("prostate/")] == ["prostate/finetune/scratch/f0.1/seed0",
                                                             "prostate/finetune/scratch/f0.1/seed1"]
    old = study.run("prostate/finetune/scratch/f0.1/seed1")
    assert old.run_dir == tmp_path / "results/prostate/finetune/scratch/f0.1/seed1"
    assert (old.combo, old.sweep, old.grid, old.selection_seeds, old.selection) == (None, {}, (), (), ())
    assert [i for i in ids if i.startswith("cardiac/finetune/scratch/")] == [
        "cardiac/finetune/scratch/f0.1/lr-0.01/seed1", "cardiac/finetune/scratch/f0.1/lr-0.001/seed1",
        "cardiac/finetune/scratch/f0.1/lr-0.01/seed0", "cardiac/finetune/scratch/f0.1/lr-0.001/seed0"]
    cond = study.run("cardiac/finetune/scratch/f0.1/lr-0.001/seed0")
    assert cond.selection == ("cardiac/finetune/scratch/f0.1/lr-0.01/seed1",
                              "cardiac/finetune/scratch/f0.1/lr-0.001/seed1")
    assert cond.sources["lr"] == "finetune.tasks.cardiac.sweep.lr"
    wide = study.run("cardiac/finetune/wide/f0.1/lr-0.1/seed0")
    assert wide.grid == ("lr-0.1", "lr-0.01", "lr-0.001") and wide.sources["lr"] == \
        "finetune.tasks.cardiac.strategies.wide.sweep.lr"
    # execution order: a conditional run after its cell's selection runs
    order = [r.id for r in st.execution_order(study.runs)]
    assert all(order.index(s) < order.index(r.id) for r in study.runs for s in r.selection)


# ============================================================================ validation
@pytest.mark.parametrize("over, key, message", [
    ({"sweep": [1, 2]}, "finetune.sweep", "expected a mapping"),
    ({"sweep": {"lr": []}}, "finetune.sweep.lr", "non-empty list"),
    ({"sweep": {"lr": 0.01}}, "finetune.sweep.lr", "non-empty list"),
    ({"sweep": {"lr": [0.01, 0.003, 0.01]}}, "finetune.sweep.lr", "repeats"),
    ({"sweep": {"seed": [0, 1]}}, "finetune.sweep.seed", "not sweepable"),
    ({"strategies": {"r": {"init": "random", "sweep": {"init": ["random", "timm"]}}}},
     "finetune.strategies.r.sweep.init", "not sweepable"),
    ({"sweep": {"slurm": [1]}}, "finetune.sweep.slurm", "SLURM"),
    ({"selection_seeds": [0, 5]}, "finetune.selection_seeds", "not among the seeds [0, 1, 2]"),
    ({"selection_seeds": []}, "finetune.selection_seeds", "non-empty"),
    ({"strategies": {"r": {"init": "random", "seeds": [1], "sweep": {"lr": [0.1]}}}},
     "finetune.selection_seeds", "not among the seeds [1]"),
    ({"sweep": {"encoder_lr_scale": [1, 1.0]}}, "finetune.sweep.encoder_lr_scale", "same folder label"),
    ({"sweep": {"loss": ["dice", "dice/ce"]}}, "finetune.sweep.loss", "folder name"),
])
def test_sweep_errors_name_file_and_key(tmp_path, nbs, over, key, message):
    path = make_study(tmp_path, nbs, finetune=ft(**over))
    with pytest.raises(ParameterError) as info:
        st.load_study(path)
    text = str(info.value)
    assert text.startswith(f"{path}: {key}: ") and message in text and "\n" not in text


@pytest.mark.parametrize("over, key, message", [
    ({"sweep": {"lrr": [0.1]}}, "finetune.sweep.lrr", "did you mean lr"),
    ({"strategies": {"r": {"init": "random", "sweep": {"lr": [0.1, -1.0]}}}}, "finetune.strategies.r.sweep.lr",
     "positive"),
])
def test_sweep_parameters_are_checked_like_any_parameter(tmp_path, nbs, over, key, message):
    path = make_study(tmp_path, nbs, finetune=ft(**over))
    study = st.load_study(path)
    with pytest.raises(ParameterError) as info:
        checks.check_parameters(study)
    text = str(info.value)
    assert text.startswith(f"{path}: {key}: ") and message in text and "\n" not in text


# ============================================================================ two-phase execution
def test_only_the_winner_runs_at_the_other_seeds_and_test_metrics_are_ignored(tmp_path, nbs, capsys):
    # lr-0.003 is better on validation, lr-0.01 on test: validation decides
    path = make_study(tmp_path, nbs, finetune=ft(params={"val": {"lr-0.01": 0.61, "lr-0.003": 0.8},
                                                         "test": {"lr-0.01": 0.95, "lr-0.003": 0.40}}))
    summary = st.run_study(path, progress=False, execute=in_process)
    out = capsys.readouterr().out
    assert summary.exit_code == 0 and summary.counts == {"done": 4, "not selected": 2}
    assert executed(tmp_path) == [f"{A}/seed0", f"{B}/seed0", f"{B}/seed1", f"{B}/seed2"]
    res = tmp_path / "results"
    assert not (res / A / "seed1").exists() and not (res / A / "seed2").exists()
    assert {o.run.id: o.outcome for o in summary.outcomes}[f"{A}/seed2"] == "not selected"
    assert "selected finetune/random/n4: lr-0.003 (val Dice 0.800 over seeds [0]; 2 combinations)" in out
    assert re.search(r"\n  not selected +2\n", out)
    [cell] = summary.selections
    assert cell.winner == "lr-0.003" and [c for c, _ in cell.pick["ranking"]] == ["lr-0.003", "lr-0.01"]
    assert json.loads((res / B / "seed2/seen.json").read_text())["lr"] == 0.003

    # nothing more to do next time; the losers stay unexecuted
    again = st.run_study(path, progress=False, execute=in_process)
    assert again.counts == {"already complete": 4, "not selected": 2} and len(log_lines(tmp_path)) == 4

    # changing nothing but the test numbers in result.json changes nothing
    for run_dir in res.glob("finetune/random/n4/*/seed0"):
        r = json.loads((run_dir / "result.json").read_text())
        r["test"] = {"mean_dice": 1.0 - r["test"]["mean_dice"], "per_label": {"LV": {"dice_mean": 0.99}}}
        (run_dir / "result.json").write_text(json.dumps(r))
    study = st.load_study(path)
    [after] = st.cell_selections(study)
    assert after.pick == cell.pick


def test_a_tie_goes_to_the_combination_listed_first(tmp_path, nbs, capsys):
    path = make_study(tmp_path, nbs, finetune=ft(seeds=[0, 1], selection_seeds=[0, 1], params={
        "val": {"lr-0.01/seed0": 0.7004, "lr-0.01/seed1": 0.7000, "lr-0.003/seed0": 0.7010,
                "lr-0.003/seed1": 0.6996}}))  # means 0.7002 vs 0.7003: equal to 3 decimals
    summary = st.run_study(path, progress=False, execute=in_process)
    assert summary.counts == {"done": 4}  # every seed selects: every combination runs at every seed
    [cell] = summary.selections
    assert cell.winner == "lr-0.01" and cell.pick["tied"] == ["lr-0.003"]
    assert "selected finetune/random/n4: lr-0.01 (val Dice 0.700 over seeds [0, 1]; 2 combinations; tied with " \
           "lr-0.003: the first listed wins)" in capsys.readouterr().out


def test_failed_selection_run_skips_the_conditional_runs_without_writing_them(tmp_path, nbs, capsys):
    marker = tmp_path / "fail-now"
    marker.write_text("")
    path = make_study(tmp_path, nbs, finetune=ft(params={"val": {"lr-0.01": 0.6, "lr-0.003": 0.8},
                                                         "fail_marker": str(marker),
                                                         "fail_on": ["lr-0.003/seed0"]}))
    summary = st.run_study(path, progress=False, execute=in_process)
    out = capsys.readouterr().out
    assert summary.exit_code == 1 and summary.counts == {"done": 1, "failed": 1, "skipped": 4}
    reason = f"selection of finetune/random/n4 incomplete: {B}/seed0 is failed"
    skipped = [o for o in summary.outcomes if o.outcome == "skipped"]
    assert {o.error for o in skipped} == {reason}
    res = tmp_path / "results"
    for o in skipped:
        assert not o.run.run_dir.exists()  # nothing written for them
    assert reason in out and "not yet selected finetune/random/n4 (1 of 2 selection runs complete over seeds [0]" in out
    assert executed(tmp_path) == [f"{A}/seed0", f"{B}/seed0"]
    rows = {r["run_id"]: r for r in st.study_status(path)}
    assert rows[f"{B}/seed1"]["state"] == "awaits selection" and rows[f"{A}/seed1"]["state"] == "awaits selection"

    # the next run retries the failed selection run, then runs the winner's other seeds
    marker.unlink()
    again = st.run_study(path, progress=False, execute=in_process)
    assert again.exit_code == 0 and again.counts == {"done": 3, "already complete": 1, "not selected": 2}
    assert executed(tmp_path)[2:] == [f"{B}/seed0", f"{B}/seed1", f"{B}/seed2"]
    assert not (res / A / "seed1").exists()


def test_workers_do_not_change_what_runs(tmp_path, nbs):
    grid = ft(seeds=[0, 1, 2, 3], selection_seeds=[0, 1], labelled_slices=[4, 8],
              sweep={"lr": [1.0e-2, 3.0e-3], "encoder_lr_scale": [1.0, 0.1]},
              strategies={"random": "random", "other": {"init": "random", "sweep": {"freeze_encoder_steps": [0, 50]}}},
              params={"val": {"lr-0.003+encoder_lr_scale-0.1": 0.9,
                              "lr-0.01+encoder_lr_scale-1+freeze_encoder_steps-50": 0.7}})
    path = make_study(tmp_path, nbs, finetune=grid)
    one = st.run_study(path, workers=1, results_dir=tmp_path / "one", progress=False, execute=in_process)
    two = st.run_study(path, workers=2, results_dir=tmp_path / "two", progress=False, execute=in_process)
    assert {o.run.id: o.outcome for o in one.outcomes} == {o.run.id: o.outcome for o in two.outcomes}
    assert sorted(executed(tmp_path, "one")) == sorted(executed(tmp_path, "two"))
    assert one.counts == {"done": 2 * ((4 * 2 + 2) + (8 * 2 + 2)), "not selected": 2 * (3 * 2 + 7 * 2)}
    assert {s.cell: s.winner for s in one.selections} == {
        "finetune/random/n4": "lr-0.003+encoder_lr_scale-0.1", "finetune/random/n8": "lr-0.003+encoder_lr_scale-0.1",
        "finetune/other/n4": "lr-0.01+encoder_lr_scale-1+freeze_encoder_steps-50",
        "finetune/other/n8": "lr-0.01+encoder_lr_scale-1+freeze_encoder_steps-50"}


def test_force_reruns_the_selection_first_and_follows_it(tmp_path, nbs):
    path = make_study(tmp_path, nbs, finetune=ft(params={"val": {"lr-0.01": 0.6, "lr-0.003": 0.8}}))
    st.run_study(path, progress=False, execute=in_process)
    # the winner flips on validation: without force the old results stand, with force the new ones decide
    path = make_study(tmp_path, nbs, finetune=ft(params={"val": {"lr-0.01": 0.9, "lr-0.003": 0.8}}))
    assert st.run_study(path, progress=False, execute=in_process).counts == {"already complete": 4,
                                                                              "not selected": 2}
    n = len(log_lines(tmp_path))
    forced = st.run_study(path, force=True, progress=False, execute=in_process)
    assert forced.counts == {"done": 4, "not selected": 2}
    assert executed(tmp_path)[n:] == [f"{A}/seed0", f"{B}/seed0", f"{A}/seed1", f"{A}/seed2"]
    outcomes = {o.run.id: o.outcome for o in forced.outcomes}
    assert outcomes[f"{B}/seed1"] == "not selected"
    # the old winner's earlier results are still on disk: status says complete, not "not selected"
    rows = {r["run_id"]: r["state"] for r in st.study_status(path)}
    assert rows[f"{B}/seed1"] == "complete" and rows[f"{A}/seed1"] == "complete"


# ============================================================================ dry run, status, study.json
def test_dry_run_and_status_before_and_after_selection(tmp_path, nbs, capsys):
    def must_not_run(*args):
        raise AssertionError("dry run executed a notebook")

    path = make_study(tmp_path, nbs, finetune=ft(params={"val": {"lr-0.01": 0.6, "lr-0.003": 0.8}}))
    plan = st.run_study(path, dry_run=True, execute=must_not_run)
    out = capsys.readouterr().out
    assert plan.counts == {"would run": 2, "after selection": 4}
    assert f"after selection  {A}/seed1  [init random]" in out
    assert "would run 2, already complete 0, would skip 0, not selected 0, after selection 4" in out
    assert "not yet selected finetune/random/n4 (0 of 2 selection runs complete over seeds [0]; 2 combinations)" in out
    rows = {r["run_id"]: r["state"] for r in st.study_status(path)}
    assert rows[f"{A}/seed0"] == "pending" and rows[f"{A}/seed1"] == "awaits selection"

    st.run_study(path, progress=False, execute=in_process)
    capsys.readouterr()
    res = tmp_path / "results"
    (res / B / "seed1/result.json").unlink()  # the winner's seed 1 is to do again
    plan = st.run_study(path, dry_run=True, execute=must_not_run)
    out = capsys.readouterr().out
    outcomes = {o.run.id: o.outcome for o in plan.outcomes}
    assert outcomes == {f"{A}/seed0": "already complete", f"{B}/seed0": "already complete",
                        f"{A}/seed1": "not selected", f"{A}/seed2": "not selected",
                        f"{B}/seed1": "would run", f"{B}/seed2": "already complete"}
    assert "selected finetune/random/n4: lr-0.003 (val Dice 0.800 over seeds [0]; 2 combinations)" in out
    # a forced dry run re-runs the selection first: the conditional runs wait for it
    forced = st.run_study(path, dry_run=True, force=True, execute=must_not_run)
    assert forced.counts == {"would run": 2, "after selection": 4}
    capsys.readouterr()

    rows = {r["run_id"]: r for r in st.study_status(path)}
    assert rows[f"{A}/seed1"]["state"] == "not selected" and rows[f"{B}/seed1"]["state"] == "pending"
    assert rows[f"{B}/seed2"]["state"] == "complete" and rows[f"{A}/seed1"]["combo"] == "lr-0.01"
    parser = argparse.ArgumentParser()
    st.add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["study", "status", str(path)])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "6 runs: 3 complete, 0 failed, 0 skipped, 0 running, 1 pending, 0 awaits selection, 2 not selected" in out
    assert re.search(r"\n  finetune/random +3 complete, 2 not selected, 1 pending\n", out)


def test_dry_run_of_a_skipped_selection_says_so(tmp_path, nbs, capsys):
    path = make_study(tmp_path, nbs, finetune=ft(strategies={"imagenet": "timm"}))
    plan = st.run_study(path, dry_run=True, check_timm=lambda e: (False, "offline (test)"))
    assert plan.counts == {"would skip": 6}
    assert "selection of finetune/imagenet/n4 incomplete: finetune/imagenet/n4/lr-0.01/seed0 would be skipped" \
        in capsys.readouterr().out


def test_study_json_carries_the_sweep(tmp_path, nbs):
    path = make_study(tmp_path, nbs, finetune=ft(params={"val": {"lr-0.01": 0.9}}))
    st.run_study(path, progress=False, execute=in_process)
    res = tmp_path / "results"
    meta = json.loads((res / A / "seed2/study.json").read_text())
    assert meta["combo"] == "lr-0.01" and meta["sweep"] == {"lr": 0.01} and meta["grid"] == ["lr-0.01", "lr-0.003"]
    assert meta["selection_seeds"] == [0] and meta["seeds"] == [0, 1, 2] and meta["depends_on"] == []
    assert meta["run_id"] == f"{A}/seed2" and meta["budget"] == "n4" and meta["seed"] == 2
    assert json.loads((res / B / "seed0/study.json").read_text())["sweep"] == {"lr": 0.003}
    # without a sweep: the old layout, and the keys say so
    plain = make_study(tmp_path, nbs, name="plain", finetune={k: v for k, v in ft().items() if k != "sweep"})
    st.run_study(plain, progress=False, execute=in_process, results_dir=tmp_path / "plain")
    meta = json.loads((tmp_path / "plain/finetune/random/n4/seed1/study.json").read_text())
    assert (meta["combo"], meta["sweep"], meta["grid"], meta["selection_seeds"], meta["seeds"]) == \
        (None, {}, [], [], [0, 1, 2])
