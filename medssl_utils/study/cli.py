"""What ``medssl study run`` / ``medssl study status`` print, and their command-line options."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from medssl_utils.errors import ParameterError
from medssl_utils.study.records import STATES, Outcome
from medssl_utils.study.runner import EXECUTORS, StudySummary, run_study, study_status
from medssl_utils.study.slurm import RESOURCE_KEYS
from medssl_utils.study.spec import load_study

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


def format_summary(summary: StudySummary) -> str:
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


def _swept(summary: StudySummary) -> bool:
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


def format_plan(summary: StudySummary, problems: list[str] = (), extra: list[str] = ()) -> str:
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
    stage / strategy; queued and running SLURM jobs with their ids; failed and skipped runs with
    their errors."""
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
    shown = rows if every_run else [r for r in rows if r["state"] in ("failed", "skipped", "unreadable")]
    if shown:
        lines.append("runs:" if every_run else "failed, skipped and unreadable runs:")
        for r in shown:
            lines.append(f"  {r['state']:<9s} {r['run_id']}" + (f": {r['error']}" if r["error"] else ""))
    return "\n".join(lines)


# ============================================================================ command line
SLURM_FLAGS = ("max_jobs", "poll_s", *RESOURCE_KEYS)


def _cmd_run(args) -> int:
    options = {k: getattr(args, k) for k in SLURM_FLAGS if getattr(args, k) not in (None, [])}
    if args.executor == "local" and options:
        flags = ", ".join(f"--{'poll' if k == 'poll_s' else k.replace('_', '-')}" for k in options)
        raise ParameterError(f"{flags}: only with --executor slurm")
    if args.executor == "slurm" and args.workers is not None:
        raise ParameterError("--workers: only with --executor local; with --executor slurm, --max-jobs limits "
                             "the jobs queued or running at once")
    if args.executor == "slurm" and args.cold_kernels:
        raise ParameterError("--cold-kernels: only with --executor local (each SLURM job starts its own kernel)")
    summary = run_study(args.study, workers=args.workers, dry_run=args.dry_run, force=args.force,
                        results_dir=args.results_dir, executor=args.executor, executor_options=options,
                        warm_kernels=not args.cold_kernels)
    return summary.exit_code


def _cmd_status(args) -> int:
    study = load_study(args.study, args.results_dir)
    if study.description:
        print(study.description)
    print(format_status(study_status(study), study.name, every_run=args.runs))
    return 0


def add_cli(subparsers) -> None:
    """Register ``study run`` and ``study status`` on an argparse ``add_subparsers()`` object.

    Each sub-command sets ``func(args) -> exit status``.
    """
    study = subparsers.add_parser("study", help="run a study (YAML grid of notebook runs) or show its status")
    sub = study.add_subparsers(dest="study_cmd", required=True)
    run = sub.add_parser("run", help="execute the study's notebooks with papermill, in dependency order")
    run.add_argument("study", help="study YAML file, e.g. studies/quick.yaml")
    run.add_argument("--executor", choices=EXECUTORS, default="local",
                     help="local: on this machine (default); slurm: one SLURM job per run, via submitit")
    run.add_argument("--workers", type=int, default=None, metavar="N", help="local: runs executed at once (default 1)")
    run.add_argument("--dry-run", action="store_true", help="print the plan (with slurm: each job's resources); "
                                                            "execute nothing")
    run.add_argument("--force", action="store_true", help="re-run runs that are already complete")
    run.add_argument("--results-dir", default=None, metavar="DIR", help="override the study's results_dir")
    run.add_argument("--cold-kernels", action="store_true",
                     help="local: start every notebook kernel from scratch instead of forking it from one process "
                          "that imported torch & co. once (warm kernels, the default)")
    slurm = run.add_argument_group("slurm executor (override the study file's slurm sections for every run)")
    slurm.add_argument("--max-jobs", type=int, default=None, metavar="N",
                       help="runs queued or running at once (default 100)")
    slurm.add_argument("--poll", dest="poll_s", type=float, default=None, metavar="S",
                       help="seconds between job-state polls with sacct (default 15)")
    slurm.add_argument("--partition", default=None)
    slurm.add_argument("--time", default=None, metavar="T", help="time limit per run: minutes or [D-]HH:MM[:SS]")
    slurm.add_argument("--cpus-per-task", type=int, default=None, metavar="N")
    slurm.add_argument("--gpus-per-node", type=int, default=None, metavar="N",
                       help="GPUs per run (a run with devices: N > 1 needs N)")
    slurm.add_argument("--mem", default=None, help="memory per run, e.g. 32G")
    slurm.add_argument("--account", default=None)
    slurm.add_argument("--qos", default=None)
    slurm.add_argument("--constraint", default=None)
    slurm.add_argument("--sbatch", action="append", default=[], metavar="OPTION",
                       help="another sbatch option, e.g. --sbatch=--reservation=gpu (repeatable)")
    slurm.add_argument("--setup", action="append", default=[], metavar="LINE",
                       help="a shell line run in each job before the notebook (repeatable)")
    run.set_defaults(func=_cmd_run)
    status = sub.add_parser("status", help="list the study's runs: complete / failed / skipped / queued / running / "
                                           "pending, with SLURM job ids")
    status.add_argument("study", help="study YAML file")
    status.add_argument("--runs", action="store_true", help="list every run, not only failed and skipped ones")
    status.add_argument("--results-dir", default=None, metavar="DIR", help="override the study's results_dir")
    status.set_defaults(func=_cmd_status)
