"""One run per GPU on a workstation (``medssl study run --gpus``), checked without a GPU: the ids the
runner accepts, how slots are handed out, and the CUDA_VISIBLE_DEVICES each run's kernel receives."""

from __future__ import annotations

import json
import os
import stat

import pytest
from study_kit import make_study, nbs  # noqa: F401 - nbs is a fixture

from medssl_utils import study as st
from medssl_utils.cli import main
from medssl_utils.errors import ParameterError
from medssl_utils.study.gpus import GpuSlots, parse_gpus, visible_gpus
from medssl_utils.study.local import LocalExecutor, PapermillEngine
from medssl_utils.study.records import write_study_json


def test_visible_gpus_come_from_cuda_visible_devices_else_nvidia_smi(tmp_path):
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "4, 5"})[0] == ["4", "5"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""})[0] == []  # set but empty: no GPU
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\nprintf '0\\n1\\n2\\n'\n")
    smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    assert visible_gpus({}, nvidia_smi=str(smi)) == (["0", "1", "2"], "nvidia-smi")
    assert visible_gpus({}, nvidia_smi=None)[0] == []
    broken = tmp_path / "broken-smi"
    broken.write_text("#!/bin/sh\nexit 9\n")
    broken.chmod(broken.stat().st_mode | stat.S_IEXEC)
    ids, why = visible_gpus({}, nvidia_smi=str(broken))
    assert ids == [] and "nvidia-smi failed" in why


def test_parse_gpus_accepts_ids_all_and_uuids_and_names_what_is_wrong():
    env = {"CUDA_VISIBLE_DEVICES": "0,1,2,3"}
    assert parse_gpus("all", env) == ["0", "1", "2", "3"]
    assert parse_gpus("2,0", env) == ["2", "0"]
    assert parse_gpus(["1"], env) == ["1"]
    assert parse_gpus("GPU-8f2e,MIG-1a/2", {}, nvidia_smi=None) == ["GPU-8f2e", "MIG-1a/2"]  # nothing to check against
    with pytest.raises(ParameterError, match=r"gpus='0,7': 7 not among the GPUs visible here \(0, 1, 2, 3"):
        parse_gpus("0,7", env)
    with pytest.raises(ParameterError, match="given twice"):
        parse_gpus("1,1", env)
    with pytest.raises(ParameterError, match="'x' is not a GPU index"):
        parse_gpus("0,x", env)
    with pytest.raises(ParameterError, match="expected 'all' or GPU ids"):
        parse_gpus("0,,1", env)
    with pytest.raises(ParameterError, match="gpus=all: no GPU visible here"):
        parse_gpus("all", {}, nvidia_smi=None)
    with pytest.raises(ParameterError, match=r"not among the GPUs visible here \(none"):
        parse_gpus("0", {"CUDA_VISIBLE_DEVICES": ""})


def test_slots_spread_runs_over_gpus_before_sharing_and_give_a_wide_run_distinct_gpus():
    slots = GpuSlots(["0", "1", "2"], runs_per_gpu=2)
    assert slots.slots == 6
    assert [slots.take(1) for _ in range(3)] == [["0"], ["1"], ["2"]]  # spread first
    assert slots.take(2) == ["0", "1"]  # two different GPUs, the least loaded
    assert slots.take(2) is None  # only GPU 2 has a free slot left
    assert slots.take(1) == ["2"]
    assert slots.take(1) is None
    slots.give(["0", "1"])
    assert slots.take(2) == ["0", "1"]
    with pytest.raises(ParameterError, match="runs_per_gpu"):
        GpuSlots(["0"], runs_per_gpu=0)


def _study(tmp_path, nbs, **strategies):  # noqa: F811 - nbs is the fixture
    return make_study(tmp_path, nbs, finetune={"dataset": "phantom:cardiac", "labelled_slices": [2], "seeds": [0],
                                               "strategies": strategies})


def test_options_are_checked_before_anything_runs(tmp_path, nbs, monkeypatch, capsys):  # noqa: F811
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    study = st.load_study(_study(tmp_path, nbs, a="random", wide={"init": "random", "devices": 3}))
    with pytest.raises(ParameterError, match=r"gpus: finetune/wide/n2/seed0 has devices=3, more than the 2 GPUs"):
        LocalExecutor.from_options(study, options={"gpus": "all"})
    study = st.load_study(_study(tmp_path, nbs, a="random"))
    with pytest.raises(ParameterError, match="workers=3: only 2 runs fit on gpus 0,1 with 1 run.*--runs-per-gpu"):
        LocalExecutor.from_options(study, workers=3, options={"gpus": "0,1"})
    with pytest.raises(ParameterError, match=r"runs_per_gpu \(--runs-per-gpu\): only with gpus"):
        LocalExecutor.from_options(study, options={"runs_per_gpu": 2})
    ex = LocalExecutor.from_options(study, options={"gpus": "all", "runs_per_gpu": 2}, warm_kernels=False)
    try:
        assert ex.capacity == 4 and ex.execute.threads == max(1, (len(os.sched_getaffinity(0))) // 4)
    finally:
        ex.close()
    assert main(["study", "run", str(tmp_path / "s.yaml"), "--executor", "slurm", "--gpus", "0"]) == 2
    assert "--gpus: only with --executor local" in capsys.readouterr().err


def test_each_kernel_gets_its_own_gpu_and_study_json_records_it(tmp_path, nbs, monkeypatch):  # noqa: F811
    """Four runs on two GPUs, two workers (real papermill kernels): at any moment each GPU holds one
    run, every kernel saw exactly the GPU study.json names, and a run with devices: 2 got both."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")  # what the runner may hand out (no GPU needed)
    path = _study(tmp_path, nbs, **{f"r{i}": {"init": "random", "sleep": 1.5} for i in range(4)},
                  wide={"init": "random", "devices": 2, "sleep": 0.5})
    summary = st.run_study(path, progress=False, warm_kernels=False, executor_options={"gpus": "all"})
    assert summary.exit_code == 0 and summary.counts == {"done": 5}
    spans = []
    for o in summary.outcomes:
        seen = json.loads((o.run.run_dir / "seen.json").read_text())
        given = json.loads((o.run.run_dir / "study.json").read_text())["gpus"]
        assert seen["cuda_visible_devices"] == ",".join(given)
        assert len(given) == seen["devices"]
        spans += [(g, seen["started"], seen["ended"], o.run.id) for g in given]
    assert sorted({g for g, *_ in spans}) == ["0", "1"]
    for g, a0, a1, rid in spans:  # never two runs on one GPU at once
        clash = [r for h, b0, b1, r in spans if h == g and r != rid and b0 < a1 and a0 < b1]
        assert not clash, f"{rid} and {clash} held GPU {g} at the same time"


def test_runs_per_gpu_lets_runs_share_and_without_gpus_nothing_is_set(tmp_path, nbs, monkeypatch):  # noqa: F811
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5")
    seen: dict = {}

    def engine(notebook, output, parameters, cwd, env=None):
        seen[parameters["run_dir"]] = env

    path = _study(tmp_path, nbs, a="random", b="random")
    study = st.load_study(path)
    ex = LocalExecutor.from_options(study, execute=engine, options={"gpus": "5", "runs_per_gpu": 2})
    assert ex.capacity == 2
    ex.start(study, study.runs, force=False)
    while ex._running:
        ex.wait()
    ex.close()
    assert sorted(e["CUDA_VISIBLE_DEVICES"] for e in seen.values()) == ["5", "5"]

    # without --gpus an engine is called as before (four arguments) and study.json records what
    # the kernel inherits from the runner
    calls = []
    plain = st.run_study(path, results_dir=tmp_path / "plain", progress=False,
                         execute=lambda nb, out, params, cwd: calls.append(params["run_dir"]))
    assert len(calls) == 2
    for o in plain.outcomes:
        assert json.loads((o.run.run_dir / "study.json").read_text())["gpus"] == ["5"]


def test_kernel_env_keeps_this_process_environment_and_adds_threads_and_gpus(monkeypatch):
    monkeypatch.setenv("MEDSSL_KEEP", "yes")
    env = PapermillEngine(threads=3).kernel_env({"CUDA_VISIBLE_DEVICES": "1"})
    assert env["MEDSSL_KEEP"] == "yes" and env["OMP_NUM_THREADS"] == "3" and env["CUDA_VISIBLE_DEVICES"] == "1"


def test_status_shows_which_running_run_holds_which_gpu(tmp_path, nbs, capsys):  # noqa: F811
    path = _study(tmp_path, nbs, a="random", b="random")
    study = st.load_study(path)
    for run, gpus in zip(study.runs, (["2"], ["0", "3"])):
        run.run_dir.mkdir(parents=True)
        write_study_json(study, run, gpus=gpus)
        (run.run_dir / "result.json").write_text(json.dumps({"status": "running", "kind": "finetune"}))
    rows = st.study_status(study)
    assert [r.get("gpus") for r in rows] == [["2"], ["0", "3"]]
    assert main(["study", "status", str(path)]) == 0
    out = capsys.readouterr().out
    assert "GPUs held by running runs:" in out
    assert "GPU 2       finetune/a/n2/seed0" in out and "GPU 0,3     finetune/b/n2/seed0" in out


def test_dry_run_names_the_gpus_and_checks_them(tmp_path, nbs, monkeypatch, capsys):  # noqa: F811
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    path = _study(tmp_path, nbs, a="random")
    assert main(["study", "run", str(path), "--dry-run", "--gpus", "all", "--runs-per-gpu", "2"]) == 0
    assert "GPUs 0,1, 2 run(s) per GPU: up to 4 runs at once" in capsys.readouterr().out
    assert main(["study", "run", str(path), "--dry-run", "--gpus", "3"]) == 2
    assert "3 not among the GPUs visible here" in capsys.readouterr().err
