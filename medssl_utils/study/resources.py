"""The SLURM resource schema of a study file (``slurm:`` sections and command-line overrides):
which keys exist, what each accepts, how the sections merge. Imports nothing of the study package,
so the study file's parser can check resources before any executor exists."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping



RESOURCE_KEYS = {
    "partition": "a partition name",
    "time": "the time limit of one run: minutes (120) or '[D-]HH:MM[:SS]' ('2:00:00', '1-12:00:00')",
    "cpus_per_task": "CPU cores per task (and the notebook's CPU threads), a whole number >= 1",
    "gpus_per_node": "GPUs per run, a whole number >= 0 (a run with devices: N > 1 needs N, one per task)",
    "mem": "memory per run with a unit: '32G', '8000M'",
    "account": "the account to charge",
    "qos": "a quality of service",
    "constraint": "node features, e.g. 'a100'",
    "sbatch": "other sbatch options as a list of '--name=value' or '--flag' strings",
    "setup": "shell lines run in the job before the notebook, e.g. ['module load cuda/12.4']",
}
#: sbatch options the executor sets itself (or that have their own key), refused in ``sbatch``.
OWNED_OPTIONS = {"array": "the executor makes job arrays", "job-name": "the executor names jobs",
                 "output": "logs go to <results>/slurm", "error": "logs go to <results>/slurm",
                 "ntasks": "set devices: N (one task per device)", "ntasks-per-node": "set devices: N",
                 "nodes": "a run uses one node", "open-mode": "set by submitit", "signal": "set by submitit",
                 "wrap": "the job runs the notebook"}
#: SLURM job states of a job that has not ended (sacct / squeue), plus submitit's UNKNOWN
#: (not yet in the accounting database).


# ============================================================================ resources
def _time_minutes(value) -> int | None:
    """sbatch's time formats as whole minutes (seconds round up); None when not a time."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value if value >= 1 else None
    if not isinstance(value, str):
        return None
    m = re.fullmatch(r"\s*(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?\s*", value)
    if not m:
        return None
    days, a, b, c = (int(x) if x is not None else None for x in m.groups())
    if days is not None:  # D-H, D-H:M, D-H:M:S
        hours, minutes, seconds = a, b or 0, c or 0
    elif c is not None:  # H:M:S
        hours, minutes, seconds = a, b, c
    else:  # M or M:S
        hours, minutes, seconds = 0, a, b or 0
    total = ((days or 0) * 24 + hours) * 60 + minutes + (1 if seconds else 0)
    return total if total >= 1 else None


def _sbatch_options(value, key: str, error) -> dict:
    lines = [value] if isinstance(value, str) else value
    if not isinstance(lines, list) or not all(isinstance(v, str) for v in lines):
        raise error(key, f"expected a list of sbatch options like '--reservation=gpu-week', got {value!r}")
    out = {}
    for line in lines:
        text = line.strip().removeprefix("#SBATCH").strip()
        m = re.fullmatch(r"--([A-Za-z][A-Za-z0-9-]*)(?:=(.+))?", text)
        if not m:
            raise error(key, f"{line!r}: expected the long form '--name=value' or '--flag'")
        name, val = m.group(1), m.group(2)
        own = name.replace("-", "_")
        if own in RESOURCE_KEYS:
            raise error(key, f"{line!r}: give it as slurm.{own} instead")
        if name in OWNED_OPTIONS:
            raise error(key, f"{line!r}: not settable ({OWNED_OPTIONS[name]})")
        out[name] = True if val is None else val.strip()
    return out


def check_resources(resources: Mapping, key: str, error: Callable[[str, str], Exception]) -> dict:
    """A ``slurm`` section validated and normalised (``time`` in minutes, ``sbatch`` as a dict).

    ``error(key, what)`` makes the exception for a bad value; ``key`` is where the section sits
    (e.g. ``finetune.slurm``). Unknown keys are errors.
    """
    out = {}
    for k, v in resources.items():
        where = f"{key}.{k}" if key else k
        if k not in RESOURCE_KEYS:
            raise error(where, f"unknown key; expected one of {list(RESOURCE_KEYS)}")
        if k == "time":
            out[k] = _time_minutes(v)
            if out[k] is None:
                raise error(where, f"{v!r} is not a time limit; expected {RESOURCE_KEYS['time']}")
        elif k in ("cpus_per_task", "gpus_per_node"):
            low = 1 if k == "cpus_per_task" else 0
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise error(where, f"{v!r}: expected a whole number >= {low}")
            out[k] = v
        elif k == "mem":
            m = re.fullmatch(r"\s*(\d+)\s*([KMGT])B?\s*", str(v), re.IGNORECASE) if isinstance(v, str) else None
            if not m:
                raise error(where, f"{v!r}: expected memory with a unit, e.g. '32G' or '8000M'")
            out[k] = f"{m.group(1)}{m.group(2).upper()}"
        elif k == "sbatch":
            out[k] = _sbatch_options(v, where, error)
        elif k == "setup":
            lines = [v] if isinstance(v, str) else v
            if not isinstance(lines, list) or not all(isinstance(x, str) for x in lines):
                raise error(where, f"expected a list of shell lines, got {v!r}")
            out[k] = list(lines)
        else:
            if not isinstance(v, str) or not v.strip():
                raise error(where, f"expected {RESOURCE_KEYS[k]} (a string), got {v!r}")
            out[k] = v.strip()
    return out


def merge_resources(base: Mapping, over: Mapping) -> dict:
    """``over`` on top of ``base``; ``sbatch`` options are merged option by option."""
    merged = {**base, **over}
    if "sbatch" in base and "sbatch" in over:
        merged["sbatch"] = {**base["sbatch"], **over["sbatch"]}
    return merged
