"""The slurm executor: study-file resources and flags (no SLURM needed), and runs through a real
single-node SLURM with accounting (``tests/slurm/start.sh``; skipped, with the reason, only where
it cannot be started: not root, or SLURM not installed).

The SLURM tests use the stand-in notebooks of ``test_study.py`` (a kernel start costs ~2 s) except
one, which executes the real notebooks at toy size through SLURM and locally and compares them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import nbformat
import pytest
import yaml
from study_kit import STUDIES, in_process, log_lines, make_study, result

from medssl_utils import study as st
from medssl_utils.errors import MedsslError, ParameterError
from medssl_utils.study import jobs, resources, runner, slurm
from medssl_utils.study.records import Outcome

ROOT = Path(__file__).resolve().parents[2]
START = ROOT / "tests" / "slurm" / "start.sh"
FT = {"dataset": "phantom:cardiac", "labelled_slices": [2], "seeds": [0], "strategies": {"r": "random"}}
STAGE = {"method": "byol", "datasets": ["phantom:cardiac"]}


# ============================================================================ resources (no SLURM needed)
@pytest.mark.parametrize("value,minutes", [(90, 90), ("90", 90), ("1:30", 2), ("2:00:00", 120), ("1-0", 1440),
                                           ("1-2:30", 1590), ("0-0:0:30", 1), ("1:00:01", 61)])
def test_time_formats(value, minutes):
    assert resources._time_minutes(value) == minutes


@pytest.mark.parametrize("slurm_section,key,message", [
    ({"time": "soon"}, "slurm.time", "not a time limit"),
    ({"time": 0}, "slurm.time", "not a time limit"),
    ({"partitoin": "gpu"}, "slurm.partitoin", "unknown key; expected one of ['partition'"),
    ({"mem": 32}, "slurm.mem", "expected memory with a unit"),
    ({"mem": "32 gigs"}, "slurm.mem", "expected memory with a unit"),
    ({"gpus_per_node": -1}, "slurm.gpus_per_node", "whole number >= 0"),
    ({"cpus_per_task": 0}, "slurm.cpus_per_task", "whole number >= 1"),
    ({"cpus_per_task": True}, "slurm.cpus_per_task", "whole number >= 1"),
    ({"partition": ""}, "slurm.partition", "a partition name"),
    ({"sbatch": ["-A lab"]}, "slurm.sbatch", "the long form"),
    ({"sbatch": ["--partition=gpu"]}, "slurm.sbatch", "give it as slurm.partition"),
    ({"sbatch": ["--array=0-3"]}, "slurm.sbatch", "the executor makes job arrays"),
    ({"sbatch": "--ntasks-per-node=2"}, "slurm.sbatch", "set devices: N"),
    ({"setup": [1]}, "slurm.setup", "list of shell lines"),
])
def test_slurm_section_errors_name_file_and_key(tmp_path, nbs, slurm_section, key, message):
    path = make_study(tmp_path, nbs, slurm=slurm_section, finetune=FT)
    with pytest.raises(ParameterError) as info:
        st.load_study(path)
    text = str(info.value)
    assert text.startswith(f"{path}: {key}") and message in text and "\n" not in text


@pytest.mark.parametrize("sections,key", [
    ({"finetune": {**FT, "strategies": {"r": {"init": "random", "slurm": {"qos": 3}}}}},
     "finetune.strategies.r.slurm.qos"),
    ({"pretrain": {"stages": {"a": {**STAGE, "slurm": {"mem": "1X"}}}}, "finetune": FT}, "pretrain.stages.a.slurm.mem"),
    ({"pretrain": {"slurm": {"time": "x"}, "stages": {"a": STAGE}}}, "pretrain.slurm.time"),
    ({"finetune": {**FT, "tasks": {"t": {"dataset": "phantom:cardiac", "slurm": {"x": 1}}}, "dataset": None}},
     "finetune.tasks.t.slurm.x"),
])
def test_nested_slurm_sections_are_validated(tmp_path, nbs, sections, key):
    if sections.get("finetune", {}).get("dataset", "") is None:
        del sections["finetune"]["dataset"]
    path = make_study(tmp_path, nbs, **sections)
    with pytest.raises(ParameterError, match=rf"^{path}: {key}: "):
        st.load_study(path)


def test_slurm_is_not_a_notebook_parameter(tmp_path, nbs):
    path = make_study(tmp_path, nbs, defaults={"slurm": {"time": 5}}, finetune=FT)
    with pytest.raises(ParameterError, match=r"defaults.slurm: not a notebook parameter"):
        st.load_study(path)


def test_resources_merge_and_become_job_parameters(tmp_path, nbs):
    path = make_study(
        tmp_path, nbs,
        slurm={"partition": "gpu", "time": "1:00:00", "cpus_per_task": 4, "gpus_per_node": 1, "mem": "16g",
               "sbatch": ["--reservation=lab", "#SBATCH --exclusive"], "setup": ["module load cuda"]},
        pretrain={"slurm": {"time": "1-00:00:00"}, "stages": {
            "one": STAGE,
            "four": {**STAGE, "devices": 4, "slurm": {"gpus_per_node": 4, "sbatch": ["--reservation=big"]}}}},
        finetune={**FT, "slurm": {"time": 30}, "strategies": {
            "r": "random", "cpu": {"init": "random", "slurm": {"gpus_per_node": 0, "account": "lab2"}}}})
    study = st.load_study(path)
    one, four = study.run("pretrain/one"), study.run("pretrain/four")
    assert one.slurm["time"] == 1440 and one.slurm["mem"] == "16G" and "slurm" not in one.params
    assert four.slurm["sbatch"] == {"reservation": "big"}  # a section replaces, options merge only across layers
    p = slurm.job_parameters(four)
    assert p["ntasks_per_node"] == 4 and p["gpus_per_node"] == 4 and p["nodes"] == 1 and p["time"] == 1440
    p = slurm.job_parameters(one)
    assert p == {"time": 1440, "nodes": 1, "ntasks_per_node": 1, "cpus_per_task": 4, "gpus_per_node": 1,
                 "mem": "16G", "partition": "gpu", "additional_parameters": {"reservation": "lab", "exclusive": True},
                 "setup": ["module load cuda"]}
    ft = study.run("finetune/cpu/n2/seed0")
    p = slurm.job_parameters(ft, {"time": 5, "sbatch": {"comment": "x"}})  # the command line's on top
    assert p["time"] == 5 and "gpus_per_node" not in p and p["account"] == "lab2"
    assert p["additional_parameters"] == {"reservation": "lab", "exclusive": True, "comment": "x"}
    assert slurm.job_parameters(study.run("finetune/r/n2/seed0"))["time"] == 30


def test_job_parameter_errors(tmp_path, nbs):
    path = make_study(tmp_path, nbs, pretrain={"stages": {"a": {**STAGE, "devices": 2}}},
                      slurm={"gpus_per_node": 1})
    run = st.load_study(path).run("pretrain/a")
    with pytest.raises(ParameterError, match=r"^slurm.time: required to run on SLURM \(pretrain/a has none\)"):
        slurm.job_parameters(run)
    with pytest.raises(ParameterError, match=r"^slurm.gpus_per_node: pretrain/a has devices=2, .* got 1$"):
        slurm.job_parameters(run, {"time": 5})
    assert slurm.job_parameters(run, {"time": 5, "gpus_per_node": 0})["ntasks_per_node"] == 2  # CPU processes


def test_cli_flags_belong_to_their_executor(tmp_path, nbs, capsys):
    from medssl_utils.cli import main

    path = make_study(tmp_path, nbs, finetune=FT)
    assert main(["study", "run", str(path), "--partition", "gpu", "--max-jobs", "3"]) == 2
    assert "medssl: error: --max-jobs, --partition: only with --executor slurm" in capsys.readouterr().err
    assert main(["study", "run", str(path), "--executor", "slurm", "--workers", "2"]) == 2
    assert "--workers: only with --executor local" in capsys.readouterr().err
    assert main(["study", "run", str(path), "--executor", "slurm", "--dry-run", "--time", "5", "--max-jobs", "0"]) == 2
    assert "max_jobs (--max-jobs): 0: expected a whole number >= 1" in capsys.readouterr().err
    assert main(["study", "run", str(path), "--executor", "slurm", "--dry-run", "--mem", "lots", "--time", "5"]) == 2
    assert "mem (--mem): 'lots': expected memory with a unit" in capsys.readouterr().err
    assert main(["study", "run", str(path), "--executor", "slurm", "--dry-run"]) == 2
    assert "slurm.time: required to run on SLURM" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


def test_dry_run_shows_each_job_group(tmp_path, nbs, capsys):
    path = make_study(tmp_path, nbs, slurm={"time": 30, "partition": "gpu"},
                      pretrain={"stages": {"a": {**STAGE, "slurm": {"time": "2:00:00"}}}},
                      finetune={**FT, "seeds": [0, 1], "strategies": {"r": "random", "a": "stage:a"}})
    summary = st.run_study(path, dry_run=True, executor="slurm", executor_options={"sbatch": ["--comment=x"]})
    out = capsys.readouterr().out
    assert summary.counts == {"would run": 5}
    assert "slurm: 5 runs would be submitted (at most 100 queued or running at once" in out
    assert "  1 run (pretrain/a): --time=120 --nodes=1 --ntasks-per-node=1 --partition=gpu --comment=x" in out
    assert "  4 runs (finetune/r/n2/seed0 and 3 more): --time=30 " in out
    assert not (tmp_path / "results").exists()


def test_shipped_paper_study_has_slurm_resources():
    study = st.load_study(STUDIES / "acdc-paper.yaml")
    for run in study.runs:
        p = slurm.job_parameters(run)
        assert p["gpus_per_node"] == 1 and p["time"] >= 60 and p["cpus_per_task"] >= 4
    stage = next(r for r in study.runs if r.kind == "pretrain")
    ft = next(r for r in study.runs if r.kind == "finetune")
    assert stage.slurm["time"] > ft.slurm["time"]


# ============================================================================ the scheduler, with a fake executor
class FakeExecutor:
    """Executes runs in order, pretending each took ``seconds[name]`` and trained ``train[name]`` s."""

    name = "fake"

    def __init__(self, seconds: dict, train: dict, fail: set = frozenset(), capacity: int = 2):
        self.seconds, self.train, self.fail, self.capacity = seconds, train, fail, capacity
        self.started: list[list[str]] = []
        self._queue: list = []

    def adopt(self, study, runs):
        return []

    def start(self, study, runs, force):
        assert len(runs) <= self.capacity
        self.started.append([r.id for r in runs])
        self._queue += runs

    def wait(self):
        run = self._queue.pop(0)
        run.run_dir.mkdir(parents=True, exist_ok=True)
        status = "failed" if run.name in self.fail else "complete"
        timings = {"train_s": self.train[run.name]} if run.name in self.train else {}
        (run.run_dir / "result.json").write_text(json.dumps({"status": status, "timings": timings}))
        if run.kind == "pretrain":
            (run.run_dir / "checkpoints").mkdir(exist_ok=True)
        return [Outcome(run, "failed" if status == "failed" else "done", "boom" if status == "failed" else None,
                        self.seconds[run.name])]

    def interrupt(self):
        return None

    def close(self):
        pass


def test_training_share_sums_train_s_over_worker_seconds(tmp_path, nbs, capsys):
    path = make_study(tmp_path, nbs, pretrain={"stages": {"a": STAGE}},
                      finetune={**FT, "strategies": {"r": "random", "b": "stage:a", "bad": "random",
                                                     "skip": "file:missing.pt"}})
    fake = FakeExecutor(seconds={"a": 100.0, "r": 40.0, "b": 40.0, "bad": 10.0}, train={"a": 80.0, "r": 20.0},
                        fail={"bad"})
    summary = st.run_study(path, executor=fake, progress=False)
    assert summary.counts == {"done": 3, "failed": 1, "skipped": 1}
    assert fake.started[0] == ["pretrain/a", "finetune/r/n2/seed0"]  # capacity 2; finetune/b waits for its stage
    assert summary.worker_seconds == 100 + 40 + 40 + 10  # the stage, r, b and the failed run; not the skipped one
    assert summary.train_seconds == 80 + 20 + 0 + 0  # b wrote no train_s, nor did the failed run: they count 0
    assert summary.training_share == pytest.approx(100 / 190)
    out = capsys.readouterr().out
    assert "training 100 s of 190 worker-s (0.53)" in out and "(fake executor)" in out

    # a second invocation retries only the failed run: only its time counts
    again = st.run_study(path, executor=FakeExecutor({"bad": 5.0}, {}, fail={"bad"}), progress=False)
    assert again.counts == {"already complete": 3, "failed": 1, "skipped": 1}
    assert (again.worker_seconds, again.train_seconds, again.training_share) == (5.0, 0.0, 0.0)
    assert "training 0 s of 5 worker-s (0.00)" in capsys.readouterr().out
    empty = runner.StudySummary(again.study, outcomes=[o for o in again.outcomes if not o.executed])
    assert empty.training_share is None and "worker-s" not in str(empty)


def test_training_share_of_the_local_executor(tmp_path, nbs):
    """The local executor measures each notebook's wall time; train_s comes from result.json."""
    def with_timings(notebook, output, parameters, cwd):
        in_process(notebook, output, parameters, cwd)
        res = Path(parameters["run_dir"]) / "result.json"
        res.write_text(json.dumps({**json.loads(res.read_text()), "timings": {"train_s": 0.25}}))
        time.sleep(0.5)

    path = make_study(tmp_path, nbs, finetune={**FT, "seeds": [0, 1]})
    summary = st.run_study(path, progress=False, execute=with_timings)
    assert [o.train_s for o in summary.outcomes] == [0.25, 0.25]
    assert all(o.seconds >= 0.5 for o in summary.outcomes)
    assert summary.training_share == pytest.approx(0.5 / sum(o.seconds for o in summary.outcomes))
    assert summary.training_share < 0.5


def test_a_second_runner_on_the_same_results_is_refused(tmp_path, nbs):
    path = make_study(tmp_path, nbs, finetune=FT)
    with runner._study_lock(tmp_path / "results"):
        with pytest.raises(MedsslError, match=r"results is in use by another `medssl study run` \(pid \d+ on "):
            st.run_study(path, progress=False, execute=in_process)
    assert st.run_study(path, progress=False, execute=in_process).counts == {"done": 1}


def test_status_where_job_states_cannot_be_checked(tmp_path, nbs, monkeypatch):
    """Results copied off the cluster: a recorded job whose state sacct cannot tell here is shown as such."""
    path = make_study(tmp_path, nbs, finetune={**FT, "seeds": [0, 1]})
    run_dir = tmp_path / "results/finetune/r/n2/seed0"
    run_dir.mkdir(parents=True)
    (run_dir / "slurm.json").write_text(json.dumps({"job_id": "12_0", "job_name": "medssl-s-x", "ended": None}))
    real_which = shutil.which
    monkeypatch.setattr(slurm.shutil, "which", lambda cmd: None if cmd == "sacct" else real_which(cmd))
    rows = {r["run_id"]: r for r in st.study_status(path)}
    assert rows["finetune/r/n2/seed0"]["state"] == "pending"
    assert rows["finetune/r/n2/seed0"]["job_state"] == "unknown: sacct not found on this machine"
    assert "job" not in rows["finetune/r/n2/seed1"]
    text = st.format_status(list(rows.values()), "s")
    assert "  pending   finetune/r/n2/seed0  job 12_0 (unknown: sacct not found on this machine)" in text
    assert "2 runs: 0 complete, 0 failed, 0 skipped, 0 running, 2 pending" in text


def test_error_line_of_a_job_traceback():
    trace = ("Job (task=0) failed during processing with trace:\n----------------------\nTraceback (most recent "
             "call last):\n  File \"x.py\", line 1, in <module>\nsubmitit.core.utils.UncompletedJobError: Job not "
             "requeued because: timed-out and not checkpointable.\n----------------------\nYou can check full logs")
    assert slurm._last_error_line(trace).startswith("submitit.core.utils.UncompletedJobError: Job not requeued")
    assert jobs._state_word("CANCELLED by 0") == "CANCELLED" and jobs._state_word("") == "UNKNOWN"
    why = slurm._explain("UncompletedJobError: Job not requeued because: timed-out too many times.", {"time": 240})
    assert why.startswith("the run reached its time limit (240 min, slurm.time / --time) on every attempt")
    assert why.endswith("(UncompletedJobError: Job not requeued because: timed-out too many times.)")
    assert slurm._explain("ValueError: boom", {"time": 5}) == "ValueError: boom"


# ============================================================================ a real SLURM
def _sinfo_ready() -> bool:
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and out.stdout.split()[:1] in (["idle"], ["mixed"], ["allocated"])


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running SLURM with accounting: the one already up, or the test SLURM started by
    tests/slurm/start.sh. Skips only where it cannot be started here; fails if starting it fails."""
    pytest.importorskip("submitit", reason="submitit is not installed: pip install -e '.[cluster]' (make does)")
    if _sinfo_ready() and shutil.which("sacct"):
        return
    if shutil.which("slurmctld") is None or shutil.which("slurmdbd") is None:
        pytest.skip("SLURM is not installed here and no cluster answers sinfo: install and start the test SLURM "
                    "with `sudo tests/slurm/start.sh --install` (Debian/Ubuntu: slurm-wlm slurmdbd mariadb-server "
                    "munge), as .ci/run does")
    if os.geteuid() != 0:
        pytest.skip("no SLURM answers sinfo and the test SLURM's daemons need root to start: "
                    "run `sudo tests/slurm/start.sh`, then the tests")
    proc = subprocess.run(["bash", str(START)], capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    if proc.returncode != 0 or not _sinfo_ready():
        pytest.fail(f"tests/slurm/start.sh could not start SLURM (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


def _unique(prefix: str) -> str:
    """A study name no earlier test run used (the tests count a study's jobs by name in sacct)."""
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def _sacct_jobs(name_prefix: str) -> list[tuple[str, str, str]]:
    """(job id, job name, state) of every job whose name starts with ``name_prefix``."""
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-S", "now-1days", "-o", "JobID,JobName,State"],
                         capture_output=True, text=True, check=True).stdout
    rows = [tuple(line.split("|")) for line in out.splitlines() if line.strip()]
    return [r for r in rows if r[1].startswith(name_prefix)]


def _jobs_when_ended(name_prefix: str, expected: int) -> list[tuple[str, str, str]]:
    """The jobs of ``_sacct_jobs`` once at least ``expected`` are recorded and none is still active.

    slurmctld hands job records to slurmdbd asynchronously, so sacct can list a job that ended before another
    one (an array element split off its array) is recorded at all: waiting only for "none active" could see
    four jobs of five. The callers assert the exact count afterwards, so a duplicate still fails."""
    seen: list = []

    def ended():
        seen[:] = _sacct_jobs(name_prefix)
        done = len(seen) >= expected and not {j[2].split()[0] for j in seen} & jobs.ACTIVE
        return list(seen) if done else None

    try:
        return _wait_for(ended, 60, f"{expected} jobs {name_prefix}* recorded and ended")
    except AssertionError as e:
        raise AssertionError(f"{e}; sacct shows {seen}") from None


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


TOY = {"encoder": "test_resnet", "image_size": 32, "decoder_channels": [16, 8, 8, 8, 8], "device": "cpu",
       "probe_slices": 8, "probe_val_slices": 8, "probe_steps": 10}
CARDIAC = "phantom:cardiac?cases=4"


@pytest.mark.slurm
@pytest.mark.slow
def test_toy_study_through_slurm_equals_local(tmp_path, slurm_cluster):
    """The real notebooks at toy size: one BYOL stage -> two fine-tuning runs, through SLURM and locally."""
    name = _unique("toy")
    doc = {"name": name, "results_dir": "results", "defaults": TOY,
           "slurm": {"time": 10, "cpus_per_task": 1},
           "pretrain": {"stages": {"byol": {
               "method": "byol", "datasets": [CARDIAC], "epochs": 1, "batch_size": 48, "optimizer": "adamw",
               "probe_seeds": 1,
               "method_options": {"hidden_dim": 64, "predictor_hidden_dim": 64, "projection_dim": 16}}}},
           "finetune": {"dataset": CARDIAC, "labelled_slices": [6], "seeds": [0],
                        "params": {"max_steps": 4, "eval_every": 2, "batch_size": 4, "lr": 0.001},
                        "strategies": {"random": "random", "byol": "stage:byol"}}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    on_slurm = st.run_study(path, executor="slurm", executor_options={"poll_s": 1}, progress=False)
    local = st.run_study(path, results_dir=tmp_path / "local", workers=2, progress=False)
    assert on_slurm.exit_code == 0 and on_slurm.counts == {"done": 3}, str(on_slurm)
    assert local.counts == {"done": 3}
    for o in on_slurm.outcomes:
        rel = o.run.run_dir.relative_to(tmp_path / "results")
        twin = tmp_path / "local" / rel
        a, b = result(o.run.run_dir), result(twin)
        assert a["status"] == b["status"] == "complete"
        keep = ("steps", "epochs", "lineage_name", "test", "val_final_dice", "device", "devices")
        assert {k: a.get(k) for k in keep} == {k: b.get(k) for k in keep}, rel
        files = {p.relative_to(o.run.run_dir).as_posix() for p in o.run.run_dir.rglob("*")} - {"slurm.json"}
        assert files == {p.relative_to(twin).as_posix() for p in twin.rglob("*")}, rel
        job = json.loads((o.run.run_dir / "slurm.json").read_text())
        assert job["job_id"] == o.job and job["ended"] and Path(job["stdout"]).is_file()
        assert o.train_s == a["timings"]["train_s"] > 0
    assert "lineage_name" in result(tmp_path / "results/finetune/byol/n6/seed0")
    assert 0 < on_slurm.training_share < 1
    assert on_slurm.training_share == pytest.approx(on_slurm.train_seconds / on_slurm.worker_seconds)
    jobs = _jobs_when_ended(f"medssl-{name}-", 3)
    assert len(jobs) == 3 and {j[2] for j in jobs} == {"COMPLETED"}


def _study(tmp_path, nbs, name, **sections):
    return make_study(tmp_path, nbs, name=name, slurm={"time": 5, "cpus_per_task": 1}, **sections)


def _executed(tmp_path) -> list[str]:
    """Run directories in the order their notebooks started (each stand-in notebook logs one line)."""
    return [ln.split()[1] for ln in log_lines(tmp_path)]


@pytest.mark.slurm
@pytest.mark.slow
def test_scancelled_job_is_recorded_failed_and_the_rest_finish(tmp_path, nbs, slurm_cluster, capsys):
    path = _study(tmp_path, nbs, "cancel", finetune={**FT, "seeds": [0, 1], "strategies": {
        "quick": "random", "slow": {"init": "random", "sleep": 300, "seeds": [0]}}})
    slow = tmp_path / "results/finetune/slow/n2/seed0"
    cancelled = []

    def cancel_when_running():
        _wait_for(lambda: str(slow) in _executed(tmp_path), 120, "the slow notebook to start")
        job = json.loads((slow / "slurm.json").read_text())["job_id"]
        subprocess.run(["scancel", job], check=True)
        cancelled.append(job)

    thread = threading.Thread(target=cancel_when_running, daemon=True)
    thread.start()
    t0 = time.monotonic()
    summary = st.run_study(path, executor="slurm", executor_options={"poll_s": 1}, progress=False)
    thread.join(5)
    assert cancelled and time.monotonic() - t0 < 120
    assert summary.exit_code == 1
    assert {o.run.id: o.outcome for o in summary.outcomes} == {
        "finetune/quick/n2/seed0": "done", "finetune/quick/n2/seed1": "done", "finetune/slow/n2/seed0": "failed"}
    r = result(slow)
    job = json.loads((slow / "slurm.json").read_text())
    assert r["status"] == "failed" and r["written_by"] == "study runner"
    # the kernel is killed with the job: papermill reports a dead kernel (or, killed first, the job says nothing)
    assert r["error"].endswith(f" [SLURM job {cancelled[0]} CANCELLED; log {job['stderr']}]"), r["error"]
    assert job["state"] == "CANCELLED" and job["ended"] and Path(job["stderr"]).is_file()
    out = capsys.readouterr().out
    assert f"SLURM job {cancelled[0]} CANCELLED" in out and str(slow) in out
    assert st.study_status(path)[-1]["state"] == "failed"  # nothing queued any more


@pytest.mark.slurm
@pytest.mark.slow
def test_a_job_lingering_after_its_run_failed_is_cancelled(tmp_path, slurm_cluster):
    """Rank 0 of a devices: 2 run fails while rank 1 waits (as DDP ranks wait for a dead rank 0): the job
    would hold its CPUs/GPUs until its time limit; the runner cancels it once the failure is recorded."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "Python 3"}
    params = nbformat.v4.new_code_cell("run_dir = None\ndevices = 1")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(
        "import os, time\nif os.environ['SLURM_PROCID'] == '0':\n    raise ValueError('broke')\ntime.sleep(300)")]
    nbformat.write(nb, tmp_path / "linger.ipynb")
    name = _unique("linger")
    path = make_study(tmp_path, {"pretrain": str(tmp_path / "linger.ipynb"), "finetune": str(tmp_path / "linger.ipynb")},
                      name=name, slurm={"time": 5, "cpus_per_task": 1}, defaults={},
                      finetune={**FT, "params": {"devices": 2}})
    t0 = time.monotonic()
    summary = st.run_study(path, executor="slurm", executor_options={"poll_s": 1}, progress=False)
    error = summary.outcomes[0].error
    assert summary.counts == {"failed": 1} and error.startswith("ValueError: broke (notebook cell [3]) [SLURM job ")
    assert ", cancelled: it went on after the run had failed; log " in error
    jobs = _jobs_when_ended(f"medssl-{name}-", 1)
    assert [j[2].split()[0] for j in jobs] == ["CANCELLED"] and time.monotonic() - t0 < 120


@pytest.mark.slurm
@pytest.mark.slow
def test_interrupted_submitter_neither_loses_nor_duplicates_runs(tmp_path, nbs, slurm_cluster):
    name = _unique("intr")
    path = _study(tmp_path, nbs, name, pretrain={"stages": {"a": {**STAGE, "sleep": 20}}},
                  finetune={**FT, "seeds": [0, 1], "strategies": {"r": "random", "a": "stage:a"}})
    stage = tmp_path / "results/pretrain/a"
    cmd = [sys.executable, "-m", "medssl_utils", "study", "run", str(path), "--executor", "slurm", "--poll", "1"]
    # SIGINT as a terminal delivers it, even when this test runs in a background job (which ignores SIGINT,
    # and Python then installs no KeyboardInterrupt handler)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        _wait_for(lambda: str(stage) in _executed(tmp_path), 120, "the stage's notebook to start")
        proc.send_signal(signal.SIGINT)  # Ctrl-C of the submitting process
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    stage_job = json.loads((stage / "slurm.json").read_text())["job_id"]
    assert "still queued or running" in err and stage_job in err and "medssl: interrupted" in err

    # status shows the job that is still running, with its id (once accounting has recorded its start)
    def stage_running():
        rows = {r["run_id"]: r for r in st.study_status(path)}
        return rows if rows["pretrain/a"]["state"] == "running" else None

    rows = _wait_for(stage_running, 15, "sacct to show the stage's job running")
    assert rows["pretrain/a"]["job"] == stage_job
    text = st.format_status(list(rows.values()), name)
    assert f"running   pretrain/a  job {stage_job} (RUNNING)" in text
    assert rows["finetune/a/n2/seed0"]["state"] == "pending" and "job" not in rows["finetune/a/n2/seed0"]
    with pytest.raises(MedsslError, match=rf"runs have SLURM jobs queued or running: pretrain/a \(job {stage_job}\)"):
        st.run_study(path, progress=False)  # the local executor refuses to run them a second time

    # the same command again: waits for the stage's job (adopted, not resubmitted), then does the rest
    again = st.run_study(path, executor="slurm", executor_options={"poll_s": 1}, progress=False)
    assert again.exit_code == 0
    assert all(result(r.run_dir)["status"] == "complete" for r in again.study.runs)
    executed = _executed(tmp_path)
    assert sorted(executed) == sorted(str(r.run_dir) for r in again.study.runs)  # each run exactly once
    assert again.counts["done"] + again.counts.get("already complete", 0) == 5
    jobs = _jobs_when_ended(f"medssl-{name}-", 5)
    assert len(jobs) == 5 and {j[2] for j in jobs} == {"COMPLETED"}  # one job per run
    assert json.loads((stage / "slurm.json").read_text())["job_id"] == stage_job


@pytest.mark.slurm
@pytest.mark.slow
def test_jobs_submitted_but_not_recorded_are_found_by_name(tmp_path, nbs, slurm_cluster, monkeypatch):
    """The submitter dies between sbatch and writing slurm.json: the next run finds the job in the queue."""
    name = _unique("lost")
    path = _study(tmp_path, nbs, name, finetune={**FT, "strategies": {"r": {"init": "random", "sleep": 8}}})
    run_dir = tmp_path / "results/finetune/r/n2/seed0"

    def die(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(slurm.SlurmExecutor, "_record", die)
        with pytest.raises(KeyboardInterrupt):
            st.run_study(path, executor="slurm", executor_options={"poll_s": 1}, progress=False)
    assert not (run_dir / "slurm.json").exists()
    intents = list((tmp_path / "results/slurm").glob("*/submitting.json"))
    assert len(intents) == 1 and json.loads(intents[0].read_text())["runs"] == ["finetune/r/n2/seed0"]
    again = st.run_study(path, executor="slurm", executor_options={"poll_s": 1}, progress=False)
    assert again.counts == {"done": 1} and result(run_dir)["status"] == "complete"
    assert len(_jobs_when_ended(f"medssl-{name}-", 1)) == 1 and _executed(tmp_path) == [str(run_dir)]
    assert not intents[0].exists() and json.loads((run_dir / "slurm.json").read_text())["job_id"]


# Fabric refuses strategy="ddp" in any interactive interpreter (a notebook kernel sets sys.ps1), even when
# SLURM has started every process and Fabric launches none; the cell lifts that refusal only when SLURM's
# environment is detected (medssl's training loop needs the same to run devices > 1 from a notebook).
DDP_CELL = """
import json, os, pathlib, torch
from medssl_utils.training import make_fabric
fabric = make_fabric("cpu", "32", devices=devices)  # medssl's own: SLURM started the processes, a kernel each
total = fabric.all_reduce(torch.tensor([fabric.global_rank + 1.0]), reduce_op="sum")
run = pathlib.Path(run_dir)
run.mkdir(parents=True, exist_ok=True)
(run / f"rank{fabric.global_rank}.json").write_text(json.dumps({
    "rank": fabric.global_rank, "world": fabric.world_size, "total": float(total[0]),
    "env": type(fabric._connector.cluster_environment).__name__, "procid": os.environ["SLURM_PROCID"]}))
if fabric.global_rank == 0:
    (run / "result.json").write_text(json.dumps({"status": "complete", "timings": {"train_s": 1.0}}))
"""


@pytest.mark.slurm
@pytest.mark.slow
def test_devices_run_as_one_job_with_a_task_per_device(tmp_path, slurm_cluster):
    """devices: 2 -> one job, 2 tasks; Fabric (in each task's notebook kernel) finds its rank from SLURM."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "Python 3"}
    params = nbformat.v4.new_code_cell("run_dir = None\ndevices = 1")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(textwrap.dedent(DDP_CELL))]
    nbformat.write(nb, tmp_path / "ddp.ipynb")
    name = _unique("ddp")
    path = make_study(tmp_path, {"pretrain": str(tmp_path / "ddp.ipynb"), "finetune": str(tmp_path / "ddp.ipynb")},
                      name=name, slurm={"time": 5, "cpus_per_task": 1}, defaults={},
                      finetune={**FT, "params": {"devices": 2}})
    summary = st.run_study(path, executor="slurm", executor_options={"poll_s": 1}, progress=False)
    run_dir = tmp_path / "results/finetune/r/n2/seed0"
    assert summary.exit_code == 0, str(summary)
    ranks = [json.loads((run_dir / f"rank{k}.json").read_text()) for k in (0, 1)]
    assert [(r["rank"], r["world"], r["total"], r["procid"]) for r in ranks] == [(0, 2, 3.0, "0"), (1, 2, 3.0, "1")]
    assert {r["env"] for r in ranks} == {"SLURMEnvironment"}
    assert (run_dir / "notebook.ipynb").is_file() and (run_dir / "rank1" / "notebook.ipynb").is_file()
    assert (run_dir / "kernel.log").is_file() and (run_dir / "rank1" / "kernel.log").is_file()
    jobs = _jobs_when_ended(f"medssl-{name}-", 1)
    assert len(jobs) == 1  # one job for both processes
    script = next((tmp_path / "results/slurm").glob("*/*_submission.sh")).read_text()
    assert "#SBATCH --ntasks-per-node=2" in script and "#SBATCH --nodes=1" in script
