"""SLURM job records of a study's runs (``slurm.json`` beside each run) and the job states that
``squeue`` / ``sacct`` report: what the slurm executor writes and what the local executor and
``study status`` read (the local executor refuses runs that a SLURM job still holds)."""

from __future__ import annotations

import json
import shutil
import subprocess

from medssl_utils.errors import MedsslError
from medssl_utils.rundir import write_json
from medssl_utils.study.records import first_line
from medssl_utils.study.spec import Run

ACTIVE = frozenset({"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD",
                    "RESIZING", "SUSPENDED", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD", "SPECIAL_EXIT",
                    "UNKNOWN"})
QUEUED = frozenset({"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD",
                    "SPECIAL_EXIT", "UNKNOWN"})
JOB_FILE = "slurm.json"
INTENT_FILE = "submitting.json"


# ============================================================================ records
def read_job(run: Run) -> dict | None:
    """The run's ``slurm.json`` (its latest SLURM job), or None."""
    try:
        record = json.loads((run.run_dir / JOB_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("job_id") else None


def _write_job(run: Run, record: dict) -> None:
    write_json(run.run_dir / JOB_FILE, record)


def _state_word(state: str | None) -> str:
    """``CANCELLED`` of sacct's ``CANCELLED by 0``; ``UNKNOWN`` for nothing."""
    return (state or "UNKNOWN").split()[0].upper() if (state or "").strip() else "UNKNOWN"


def _squeue_active(job_name: str) -> list[str]:
    """Ids of the queued / running jobs (array tasks expanded) named ``job_name``."""
    out = subprocess.run(["squeue", "-h", "-r", "-n", job_name, "-o", "%i"], capture_output=True, text=True,
                         timeout=60)
    if out.returncode:
        raise MedsslError(f"squeue failed while looking for jobs named {job_name}: {first_line(out.stderr)}")
    return [ln.strip() for ln in out.stdout.splitlines() if ln.strip()]


def _sacct_elapsed(job_id: str) -> float:
    """The job's elapsed seconds from sacct (0 when sacct cannot tell)."""
    try:
        out = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID,ElapsedRaw", "-j", job_id],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return 0.0
    for line in out.stdout.splitlines():
        jid, _, elapsed = line.partition("|")
        if jid.strip() == job_id and elapsed.strip().isdigit():
            return float(elapsed)
    return 0.0


def active_jobs(runs: list[Run]) -> dict[str, tuple[str, str]]:
    """``{run id: (job id, state)}`` for runs whose recorded SLURM job is queued or running now
    (a state in :data:`ACTIVE`), or cannot be checked here (state ``unknown: <why>``: no ``sacct``
    or no submitit on this machine). One ``sacct`` call for every run whose ``slurm.json`` is not
    marked ended."""
    records = {r.id: rec for r in runs if (rec := read_job(r)) and not rec.get("ended")}
    if not records:
        return {}
    if shutil.which("sacct") is None:
        return {rid: (rec["job_id"], "unknown: sacct not found on this machine") for rid, rec in records.items()}
    try:
        from submitit.slurm.slurm import SlurmInfoWatcher
    except ImportError:
        return {rid: (rec["job_id"], "unknown: submitit is not installed") for rid, rec in records.items()}
    watcher = SlurmInfoWatcher()
    for rec in records.values():
        watcher.register_job(str(rec["job_id"]))
    watcher.update()
    out = {}
    for rid, rec in records.items():
        state = _state_word(watcher.get_state(str(rec["job_id"]), mode="cache"))
        if state in ACTIVE:
            out[rid] = (rec["job_id"], state)
    return out
