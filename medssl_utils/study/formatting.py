"""How the study commands print: the plan (``--dry-run``), a run's summary, ``study status``.

Pure formatting of what the runner returns (``summary``: a :class:`~medssl_utils.study.runner.StudySummary`,
not imported here: the runner imports this module); used by the runner and by the command line.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from medssl_utils.fileio import size_text
from medssl_utils.study.records import STATES, Outcome

#: States ``study status`` shows: result.json's (:data:`STATES`), SLURM's, and a sweep's conditional runs'.
SELECTION_STATES = ("awaits selection", "not selected")
STATUS_STATES = ("complete", "failed", "skipped", "unreadable", "queued", "running", "pending", *SELECTION_STATES)
assert set(STATES) <= set(STATUS_STATES) and not set(SELECTION_STATES) & set(STATES)


# ============================================================================ run summary and plan
def _group_skipped(outcomes: list[Outcome]) -> list[tuple[str, list[str]]]:
    groups: dict[str, list[str]] = {}
    for o in outcomes:
        groups.setdefault(o.error or "no reason recorded", []).append(o.run.id)
    return list(groups.items())


def _ids(ids: list[str], limit: int = 3) -> str:
    return ", ".join(ids[:limit]) + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def format_summary(summary) -> str:
    """The table printed after a study run: counts, the training share of the workers' time,
    skipped runs by reason, failures with errors."""
    if summary.dry_run:
        return format_plan(summary)
    c = summary.counts
    lines = [f"study {summary.study.name}: {len(summary.outcomes)} runs in {summary.seconds:.0f} s "
             f"({summary.executor} executor); results in {summary.study.results_dir}"]
    swept = _swept(summary)
    for key in ("done", "already complete", "skipped", "failed", *(("not selected",) if swept else ())):
        lines.append(f"  {key:<17s}{c.get(key, 0):>5d}")
    share = summary.training_share
    if share is not None:
        lines.append(f"training {summary.train_seconds:.0f} s of {summary.worker_seconds:.0f} worker-s ({share:.2f}) "
                     "in the runs executed now (the rest: kernel start, imports, data, evaluation)")
    if summary.kernels and summary.kernels != "not started":
        lines.append(f"warm kernels: {summary.kernels}")
    skipped = [o for o in summary.outcomes if o.outcome == "skipped"]
    if skipped:
        lines.append("skipped (no random init was substituted):")
        for reason, ids in _group_skipped(skipped):
            lines.append(f"  {len(ids)} run{'s' if len(ids) > 1 else ''} ({_ids(ids)}): {reason}")
    if summary.failed:
        lines.append("failed:")
        for o in summary.failed:
            lines.append(f"  {o.run.run_dir}")
            lines.append(f"      {o.error}")
        lines.append("(each failed run's notebook.ipynb shows the cell that failed; run the study again to "
                     "retry failed runs)")
    lines += format_selections(summary.selections)
    return "\n".join(lines)


def _swept(summary) -> bool:
    return any(o.run.combo is not None for o in summary.outcomes)


def format_selections(selections) -> list[str]:
    """One line per swept cell: its selected combination, or why there is none yet."""
    lines = []
    for s in selections:
        n = len(s.grid)
        combos = f"{n} combination{'s' if n != 1 else ''}"
        if s.winner is not None:
            tied = s.pick["tied"]
            tie = f"; tied with {', '.join(tied)}: the first listed wins" if tied else ""
            lines.append(f"selected {s.cell}: {s.winner} (val Dice {s.pick['score']:.3f} over seeds "
                         f"{list(s.seeds)}; {combos}{tie})")
        elif s.decided:
            lines.append(f"no selection for {s.cell}: none of its {len(s.runs)} selection runs has a validation "
                         f"Dice ({combos})")
        else:
            lines.append(f"not yet selected {s.cell} ({s.complete} of {len(s.runs)} selection runs complete over "
                         f"seeds {list(s.seeds)}; {combos})")
    return lines


def format_plan(summary, problems: list[str] = (), extra: list[str] = ()) -> str:
    """The dry-run plan: every run in execution order with its resolved init and fate;
    skip reasons are numbered and printed once below; ``extra`` lines (the executor's) follow."""
    study = summary.study
    lines = [f"study {study.name} ({study.path}): {len(summary.outcomes)} runs, results in {study.results_dir}",
             "dry run: nothing is executed; in execution order:"]
    reasons: dict[str, int] = {}
    for i, o in enumerate(summary.outcomes, 1):
        init = str(o.run.params["init"])
        if init != o.run.init:
            shown = _relative(init.removeprefix("file:"), study.results_dir)
            init = f"{o.run.init} -> {shown}"
        line = f"{i:5d}  {o.outcome:<16s} {o.run.id}  [init {init}]"
        if o.outcome == "would skip":
            line += f"  (reason {reasons.setdefault(o.error, len(reasons) + 1)})"
        lines.append(line)
    c = summary.counts
    lines.append(f"would run {c.get('would run', 0)}, already complete {c.get('already complete', 0)}, "
                 f"would skip {c.get('would skip', 0)}"
                 + (f", not selected {c.get('not selected', 0)}, after selection {c.get('after selection', 0)} "
                    "(would run if its combination wins on validation)" if _swept(summary) else ""))
    lines += [f"reason {n}: {text}" for text, n in reasons.items()]
    lines += format_selections(summary.selections)
    lines += list(extra)
    lines += [f"warning: {p}" for p in problems]
    return "\n".join(lines)


def _relative(path: str, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return path


# ============================================================================ status
def format_status(rows: list[dict], study_name: str = "", every_run: bool = False) -> str:
    """Counts per state (a swept study's also ``awaits selection`` / ``not selected``), then per
    stage / strategy; queued and running SLURM jobs with their ids; the GPUs of running runs;
    failed and skipped runs with their errors."""
    counts = Counter(r["state"] for r in rows)
    swept = any(r.get("combo") for r in rows)
    optional = ("queued", "unreadable") + (() if swept else SELECTION_STATES)
    shown_states = [s for s in STATUS_STATES if s not in optional or counts.get(s)]
    lines = [f"study {study_name}: {len(rows)} runs: " + ", ".join(f"{counts.get(s, 0)} {s}" for s in shown_states)]
    groups: dict[str, Counter] = {}
    for r in rows:
        key = r["run_id"] if r["kind"] == "pretrain" else r["run_id"].rsplit("/", 3 if r.get("combo") else 2)[0]
        groups.setdefault(key, Counter())[r["state"]] += 1
    width = max(len(k) for k in groups)
    for key, c in groups.items():
        lines.append(f"  {key:<{width}s}  " + ", ".join(f"{n} {s}" for s, n in c.items() if n))
    jobs = [r for r in rows if r.get("job")]
    if jobs:
        lines.append("SLURM jobs queued or running (or whose state cannot be checked here):")
        for r in jobs:
            lines.append(f"  {r['state']:<9s} {r['run_id']}  job {r['job']} ({r['job_state']})")
    held = [r for r in rows if r.get("gpus") and r["state"] == "running"]
    if held:
        lines.append("GPUs held by running runs:")
        for r in held:
            lines.append(f"  GPU {','.join(r['gpus']):<7s} {r['run_id']}")
    shown = rows if every_run else [r for r in rows if r["state"] in ("failed", "skipped", "unreadable")]
    if shown:
        lines.append("runs:" if every_run else "failed, skipped and unreadable runs:")
        for r in shown:
            lines.append(f"  {r['state']:<9s} {r['run_id']}" + (f": {r['error']}" if r["error"] else ""))
    stale = [(r, p) for r in rows for p in r.get("stale_temps") or ()]
    if stale:
        lines.append(f"{len(stale)} temporary file(s) left by writers that are no longer running "
                     f"({size_text(p for _, p in stale)}; no process of that id runs on this machine — on a cluster, "
                     "check the run's job first; starting or resuming an unfinished run removes its own):")
        for r, p in stale:
            where = Path(p).relative_to(r["run_dir"]) if Path(p).is_relative_to(r["run_dir"]) else p
            lines.append(f"  {r['run_id']}: {where}")
    return "\n".join(lines)


# ============================================================================ command line
