"""The slurm executor: ``medssl study run STUDY.yaml --executor slurm``.

Each run (one papermill notebook execution) becomes one SLURM job, submitted with submitit;
ready runs that share their resources go in one job array. The submitting process stays in
charge of the order: a run is submitted when the stages it starts from have completed, at most
``max_jobs`` runs are queued or running at once, and it waits (polling ``sacct`` through
submitit) until every run has ended. Inside the job, :func:`run_job` executes the notebook
exactly as the local executor does (:func:`~medssl_utils.study.local.execute_run`), with
``cpus_per_task`` CPU threads.

Records (nothing is kept only in memory):

- ``<run_dir>/slurm.json``: the run's job id, job name, log paths, submission time, and once the
  job has ended its final SLURM state. Written right after ``sbatch`` returns.
- ``<results>/slurm/<batch>/``: submitit's folder for one submission (the sbatch script, the
  pickled call, the job's stdout/stderr ``<jobid>_<task>_log.out/err`` and result pickle), and,
  while ``sbatch`` is being called, ``submitting.json`` naming the runs and the job name; if the
  submitter dies between ``sbatch`` and writing ``slurm.json``, the next invocation finds the
  jobs by that name with ``squeue`` and records them instead of submitting them again.

A rerun (after Ctrl-C, a lost login session or a crash) first adopts the runs whose jobs are
still queued or running, then submits only what is missing. A job that ends without its run
complete (cancelled, timed out, preempted and not requeued, out of memory, node failure, a
failing notebook) is recorded in ``result.json`` as ``failed`` with the SLURM state and the log
path, and the rest go on; a job still running after its run's failure came back is cancelled.
``devices: N > 1`` runs as one job with N tasks on one node (and N
GPUs when GPUs are asked for): every task executes the notebook, lightning Fabric finds its rank
from SLURM's environment, and only rank 0 writes the run directory (the other ranks' executed
notebooks go to ``<run_dir>/rank<k>/``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

from medssl_utils.errors import MedsslError, ParameterError
from medssl_utils.rundir import now, write_json
from medssl_utils.study.executor import Executor
from medssl_utils.study.local import PapermillEngine, execute_run
from medssl_utils.study.records import Outcome, first_line, read_state, write_result
from medssl_utils.study.jobs import (ACTIVE, INTENT_FILE, _sacct_elapsed, _squeue_active, _state_word, _write_job,
                                    read_job)
from medssl_utils.study.resources import RESOURCE_KEYS, check_resources, merge_resources
from medssl_utils.study.spec import Run, Study

#: The keys of a study file's ``slurm`` sections (and the flags of ``study run --executor slurm``).
def _flag_error(key: str, what: str) -> ParameterError:
    name = key.rsplit(".", 1)[-1]
    return ParameterError(f"{name} (--{name.replace('_', '-')}): {what}")


def job_parameters(run: Run, overrides: Mapping | None = None) -> dict:
    """The submitit ``SlurmExecutor.update_parameters`` keywords of one run: its study-file
    resources with ``overrides`` (the command line's) on top, plus tasks for ``devices > 1``."""
    res = merge_resources(run.slurm, overrides or {})
    if "time" not in res:
        raise ParameterError(f"slurm.time: required to run on SLURM ({run.id} has none): "
                             f"{RESOURCE_KEYS['time']}; set it in the study file's slurm section or with --time")
    devices = run.params.get("devices", 1)
    tasks = devices if isinstance(devices, int) and not isinstance(devices, bool) and devices > 1 else 1
    gpus = res.get("gpus_per_node", 0)
    if tasks > 1 and gpus not in (0, tasks):
        raise ParameterError(f"slurm.gpus_per_node: {run.id} has devices={tasks}, which runs as one job with {tasks} "
                             f"tasks and needs {tasks} GPUs (one per task), or 0 for CPU processes; got {gpus}")
    params = {"time": res["time"], "nodes": 1, "ntasks_per_node": tasks, "cpus_per_task": res.get("cpus_per_task"),
              "gpus_per_node": gpus or None, "mem": res.get("mem"), "partition": res.get("partition"),
              "account": res.get("account"), "qos": res.get("qos"), "constraint": res.get("constraint"),
              "additional_parameters": res.get("sbatch") or None, "setup": res.get("setup") or None}
    return {k: v for k, v in params.items() if v is not None}


def _describe(params: Mapping) -> str:
    """Job parameters as the sbatch options they become."""
    parts = []
    for k, v in params.items():
        if k == "additional_parameters":
            parts += [f"--{n}" if val is True else f"--{n}={val}" for n, val in v.items()]
        elif k == "setup":
            parts.append(f"(setup: {'; '.join(v)})")
        elif k == "time":
            parts.append(f"--time={v}")
        else:
            parts.append(f"--{k.replace('_', '-')}={v}")
    return " ".join(parts)


def _groups(runs: list[Run], params: Mapping[str, dict]) -> list[list[Run]]:
    """Runs with identical job parameters together (first-seen order): each group can be one array."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(json.dumps(params[run.id], sort_keys=True), []).append(run)
    return list(groups.values())


def describe_jobs(study: Study, runs: list[Run], options: Mapping) -> list[str]:
    """Dry-run lines: the sbatch resources of each group of runs that would be submitted."""
    options = dict(options)
    max_jobs = _check_max_jobs(options.pop("max_jobs", 100))
    options.pop("poll_s", None)
    overrides = check_resources(options, "", _flag_error)
    params = {r.id: job_parameters(r, overrides) for r in study.runs}
    lines = [f"slurm: {len(runs)} runs would be submitted (at most {max_jobs} queued or running at once; "
             "ready runs with the same resources go in one job array):"]
    for group in _groups(runs, params):
        more = f" and {len(group) - 1} more" if len(group) > 1 else ""
        lines.append(f"  {len(group)} run{'s' if len(group) > 1 else ''} ({group[0].id}{more}): "
                     f"{_describe(params[group[0].id])}")
    return lines


def _check_max_jobs(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ParameterError(f"max_jobs (--max-jobs): {value!r}: expected a whole number >= 1")
    return value


# ============================================================================ in the job
class RunJob:
    """The call a SLURM job executes (pickled by submitit): :func:`run_job`.

    It is *checkpointable* in submitit's sense: when the job is about to reach its time limit
    (SLURM signals it 90 s before) or is preempted, submitit calls :meth:`checkpoint` and
    requeues the job (same job id) instead of letting it die; the notebook then resumes from
    ``checkpoints/last.pt`` (saved every epoch when pretraining, at every evaluation when
    fine-tuning). A run that times out more than 3 times is recorded as failed.
    """

    def __call__(self, study: Study, run: Run, force: bool) -> Outcome | None:
        return run_job(study, run, force)

    def checkpoint(self, study: Study, run: Run, force: bool):
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, study, run, False)  # resume, never start over (force) again


def run_job(study: Study, run: Run, force: bool) -> Outcome | None:
    """What a SLURM job executes (pickled by submitit): the run's notebook, on this node.

    Task 0 executes and records the run like the local executor and returns its
    :class:`Outcome`. With ``devices: N`` the job has N tasks; tasks 1..N-1 execute the same
    notebook (Fabric joins them into rank 0's process group; they write nothing in the run
    directory) into ``<run_dir>/rank<k>/notebook.ipynb`` and return None.
    """
    rank = int(os.environ.get("SLURM_PROCID", "0") or 0)
    per_task = os.environ.get("SLURM_CPUS_PER_TASK")
    threads = int(per_task) if per_task else max(1, int(os.environ.get("SLURM_CPUS_ON_NODE", "1") or 1)
                                                 // max(1, int(os.environ.get("SLURM_NTASKS", "1") or 1)))
    executor = PapermillEngine(threads=threads)
    if rank == 0:
        return execute_run(study, run, force=force, execute=executor)
    out = run.run_dir / f"rank{rank}"
    out.mkdir(parents=True, exist_ok=True)
    params = {**run.params, **({"overwrite": True} if force else {})}
    executor(study.notebooks[run.kind], out / "notebook.ipynb", params, run.run_dir)
    return None


# ============================================================================ the executor
class SlurmExecutor(Executor):
    """Submits runs as SLURM jobs with submitit and waits for them (the scheduler's executor
    interface: :class:`medssl_utils.study.executor.Executor`).

    Args:
        study: the study (its results folder holds ``slurm/`` and every run's ``slurm.json``).
        max_jobs: runs queued or running at once (``--max-jobs``).
        poll_s: seconds between two ``sacct`` polls while waiting (``--poll``).
        **overrides: resource keys (:data:`RESOURCE_KEYS`) that replace the study file's for every run.
    """

    name = "slurm"

    @classmethod
    def plan_lines(cls, study: Study, runs: list[Run], options: Mapping) -> list[str]:
        return describe_jobs(study, runs, options)

    @classmethod
    def from_options(cls, study: Study, *, workers: int | None = None, execute=None, options=None,
                     warm_kernels: bool = True) -> "SlurmExecutor":
        if workers not in (None, 1):
            raise ParameterError(f"workers={workers!r}: only for executor 'local'; with 'slurm' use max_jobs "
                                 "(--max-jobs) to limit the jobs in flight")
        return cls(study, **dict(options or {}))

    def __init__(self, study: Study, *, max_jobs: int = 100, poll_s: float = 15.0, **overrides):
        self.capacity = _check_max_jobs(max_jobs)
        if isinstance(poll_s, bool) or not isinstance(poll_s, (int, float)) or not poll_s > 0:
            raise ParameterError(f"poll_s (--poll): {poll_s!r}: expected seconds > 0")
        self.poll_s = float(poll_s)
        self.overrides = check_resources(overrides, "", _flag_error)
        self.params = {r.id: job_parameters(r, self.overrides) for r in study.runs}
        missing = [c for c in ("sbatch", "srun", "sacct", "squeue") if shutil.which(c) is None]
        if missing:
            raise MedsslError(f"--executor slurm: {', '.join(missing)} not found; run the study from a SLURM login "
                              "node (on this machine: sudo tests/slurm/start.sh starts a single-node test SLURM)")
        try:
            import submitit
        except ImportError:
            raise MedsslError("--executor slurm needs submitit: pip install 'medssl[cluster]' "
                              "(or pip install submitit)") from None
        self._submitit = submitit
        self.folder = study.results_dir / "slurm"
        self._jobs: dict[str, tuple[Run, object]] = {}  # run id -> (run, submitit job of task 0)
        self._preempted: dict[str, float] = {}  # job id -> when PREEMPTED was first seen
        self._last_poll = float("-inf")

    # ---------------------------------------------------------------- scheduler interface
    def adopt(self, study: Study, runs: list[Run]) -> list[Run]:
        """Runs among ``runs`` whose job (from an earlier invocation) is still queued or running."""
        self._recover_submissions(study)
        records = {r.id: (r, rec) for r in runs if (rec := read_job(r)) and not rec.get("ended")}
        if not records:
            return []
        for run, rec in records.values():
            self._track(run, rec)
        self._poll()
        adopted = []
        for rid, (run, rec) in records.items():
            job = self._jobs[rid][1]
            state = self._state(job)
            if state == "UNKNOWN" and rec["job_id"] not in self._squeue_ids(rec):
                state = "LOST"  # neither accounting nor the queue knows it any more
            if state in ACTIVE:
                adopted.append(run)
            else:  # it ended while nobody watched: its result.json says what happened; the run is redone
                del self._jobs[rid]
                _write_job(run, {**rec, "state": state, "ended": now()})
        return adopted

    def start(self, study: Study, runs: list[Run], force: bool) -> None:
        for group in _groups(runs, self.params):
            self._submit(study, group, force)

    def wait(self) -> list[Outcome]:
        while True:
            if time.monotonic() - self._last_poll >= self.poll_s:
                self._poll()
            ended = []
            for rid, (run, job) in list(self._jobs.items()):
                if job.paths.result_pickle.exists():
                    ended.append(self._finish(run, job, self._state(job)))
                else:
                    state = self._state(job)
                    if self._ended(job.job_id, state):
                        ended.append(self._finish(run, job, state))
            if ended:
                return ended
            time.sleep(min(1.0, self.poll_s))

    def interrupt(self) -> str | None:
        ids = sorted(job.job_id for _, job in self._jobs.values())
        if not ids:
            return None
        shown = " ".join(ids[:10]) + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")
        return (f"{len(ids)} SLURM job{'s' if len(ids) > 1 else ''} still queued or running ({shown}) go on "
                "without this command; run the same command again to wait for them and submit what is "
                f"missing (`medssl study status` lists them), or stop them with scancel")

    def close(self) -> None:
        self._jobs.clear()

    # ---------------------------------------------------------------- submission
    def _submit(self, study: Study, group: list[Run], force: bool) -> None:
        token = uuid.uuid4().hex[:10]
        job_name = f"medssl-{study.name}-{token}"
        folder = self.folder / token
        folder.mkdir(parents=True, exist_ok=True)
        intent = folder / INTENT_FILE
        write_json(intent, {"job_name": job_name, "folder": str(folder), "submitted": now(),
                            "runs": [r.id for r in group]})
        from submitit.core.utils import FailedJobError

        ex = self._submitit.SlurmExecutor(folder=folder)
        ex.update_parameters(job_name=job_name, **self.params[group[0].id])
        for run in group:
            run.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            if len(group) == 1:
                jobs = [ex.submit(RunJob(), study, group[0], force)]
            else:
                with ex.batch():
                    jobs = [ex.submit(RunJob(), study, run, force) for run in group]
        except FailedJobError as exc:  # sbatch said no: no job was made
            intent.unlink(missing_ok=True)
            lines = [ln for ln in str(exc).splitlines() if ln.strip()]
            said = next((ln for ln in reversed(lines) if "error" in ln.lower()), lines[-1] if lines else str(exc))
            raise MedsslError(f"sbatch refused {len(group)} run{'s' if len(group) > 1 else ''} ({group[0].id}"
                              f"{' ...' if len(group) > 1 else ''}): {said.strip()} — check the study's slurm "
                              f"section and the flags ({_describe(self.params[group[0].id])})") from None
        for run, job in zip(group, jobs):
            self._record(run, job.job_id, job_name, folder)
        intent.unlink()

    def _record(self, run: Run, job_id: str, job_name: str, folder: Path) -> None:
        rec = {"job_id": str(job_id), "job_name": job_name, "folder": str(folder), "submitted": now(),
               "stdout": str(folder / f"{job_id}_0_log.out"), "stderr": str(folder / f"{job_id}_0_log.err"),
               "state": None, "ended": None}
        _write_job(run, rec)
        self._track(run, rec)

    def _recover_submissions(self, study: Study) -> None:
        """Record the jobs of a submission interrupted between ``sbatch`` and ``slurm.json``."""
        if not self.folder.is_dir():
            return
        for intent in sorted(self.folder.glob(f"*/{INTENT_FILE}")):
            try:
                info = json.loads(intent.read_text(encoding="utf-8"))
                names = list(info["runs"])
                job_name, folder = info["job_name"], Path(info["folder"])
            except (OSError, ValueError, KeyError, TypeError):
                raise MedsslError(f"{intent}: unreadable record of an interrupted submission; look for its jobs "
                                  "with squeue, then delete the file") from None
            for job_id in _squeue_active(job_name):
                main, _, index = job_id.partition("_")
                i = int(index) if index.isdigit() else 0
                if i < len(names):
                    try:
                        run = study.run(names[i])
                    except KeyError:
                        continue
                    rec = read_job(run)
                    if not rec or rec.get("job_name") != job_name:
                        self._record(run, job_id, job_name, folder)
            intent.unlink()

    # ---------------------------------------------------------------- polling
    def _track(self, run: Run, rec: dict) -> None:
        job = self._submitit.SlurmJob(folder=rec["folder"], job_id=str(rec["job_id"]))
        self._jobs[run.id] = (run, job)

    def _poll(self) -> None:
        if self._jobs:
            self._submitit.SlurmJob.watcher.update()
        self._last_poll = time.monotonic()

    def _state(self, job) -> str:
        return _state_word(self._submitit.SlurmJob.watcher.get_state(job.job_id, mode="cache"))

    def _squeue_ids(self, rec: dict) -> list[str]:
        return _squeue_active(rec["job_name"]) if rec.get("job_name") else []

    def _ended(self, job_id: str, state: str) -> bool:
        """Whether a job without a result has ended. PREEMPTED counts once it persisted over a
        poll interval (a preempted job that SLURM or submitit requeues goes back to PENDING)."""
        if state == "PREEMPTED":
            first = self._preempted.setdefault(job_id, time.monotonic())
            return time.monotonic() - first > self.poll_s
        self._preempted.pop(job_id, None)
        return state not in ACTIVE

    def _finish(self, run: Run, job, state: str) -> Outcome:
        """The outcome of a run whose job has ended (or whose task 0 has returned), recorded."""
        del self._jobs[run.id]
        rec = read_job(run) or {}
        log = rec.get("stderr") or str(job.paths.stderr)
        deadline = time.monotonic() + 15  # a shared file system may show the result pickle late
        while state == "COMPLETED" and not job.paths.result_pickle.exists() and time.monotonic() < deadline:
            time.sleep(1)
        returned, trace = None, None
        if job.paths.result_pickle.exists():
            try:
                returned = job.result()
            except Exception as exc:  # noqa: BLE001 - the job's own exception, reported below
                trace = _last_error_line(str(exc))
        ok = isinstance(returned, Outcome) and returned.outcome == "done"
        deadline = time.monotonic() + 10
        while not ok and state in ACTIVE and time.monotonic() < deadline:  # a failure: wait for SLURM's final state
            time.sleep(1)
            self._poll()
            state = self._state(job)
        final = state not in ACTIVE  # else task 0 has returned and the job is still finishing
        where = f"SLURM job {job.job_id}{' ' + state if final else ''}; log {log}"
        if not ok and not final and returned is not None:
            # the run's failure is recorded, yet the job lingers (a kernel left behind, other ranks waiting
            # for rank 0): it would hold its CPUs/GPUs until its time limit
            job.cancel(check=False)
            where = f"SLURM job {job.job_id}, cancelled: it went on after the run had failed; log {log}"
        if isinstance(returned, Outcome):
            outcome = dataclasses.replace(returned, run=run, job=job.job_id)
            if outcome.outcome == "failed":
                why = _explain(outcome.error, self.params[run.id])
                outcome = dataclasses.replace(outcome, error=f"{why} [{where}]")
                write_result(run, {"status": "failed", "error": outcome.error})
        else:
            seconds = _sacct_elapsed(job.job_id)
            if read_state(run)[0] == "complete":  # the notebook finished; the job died afterwards
                outcome = Outcome(run, "done", None, seconds, job=job.job_id)
            else:
                what = f"the job failed: {_explain(trace, self.params[run.id])}" if trace else \
                    "the job ended without the run completing"
                error = f"{what} [{where}]"
                write_result(run, {"status": "failed", "error": error})
                outcome = Outcome(run, "failed", error, seconds, job=job.job_id)
        _write_job(run, {**rec, "state": state if final else "returned", "ended": now()})
        return outcome


def _explain(error: str, params: Mapping) -> str:
    """submitit's words for a run stopped at its time limit, in the study's terms."""
    if "timed-out" in error and "not requeued" in error.lower():
        return (f"the run reached its time limit ({params.get('time')} min, slurm.time / --time) on every attempt "
                f"(submitit requeues a timed-out job up to 3 times); raise the limit and run the study again: the "
                f"run resumes from checkpoints/last.pt ({error})")
    return error


def _last_error_line(text: str) -> str:
    """The exception line of a traceback submitit reports (``Name: message``)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not set(ln.strip()) <= {"-"}]
    errors = [ln for ln in lines if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b", ln)]
    return first_line(errors[-1] if errors else (lines[0] if lines else text))


