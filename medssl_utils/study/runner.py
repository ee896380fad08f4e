"""The scheduler behind ``medssl study run``: which runs need executing, in what order, handed to
an executor (:mod:`~medssl_utils.study.local` or :mod:`~medssl_utils.study.slurm`), and the summary.

An executor is a subclass of :class:`~medssl_utils.study.executor.Executor`, registered by name in
:data:`~medssl_utils.study.executor.EXECUTORS`; a new executor is one file plus one entry there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from medssl_utils import selection as selection_rule
from medssl_utils.errors import MedsslError
from medssl_utils.fileio import stale_temps
from medssl_utils.progress import progress as progress_bar
from medssl_utils.rundir import read_json_object
from medssl_utils.validate import check_int
from medssl_utils.study.formatting import format_plan, format_summary
from medssl_utils.study.checks import blocked_runs, check_parameters, preflight_problems
from medssl_utils.study.executor import Executor, executor_class
from medssl_utils.study.jobs import ACTIVE, QUEUED, active_jobs
from medssl_utils.study.local import NotebookEngine
from medssl_utils.study.records import (Outcome, read_result, read_state, training_seconds, write_result,
                                        write_study_json)
from medssl_utils.study.spec import Run, Study, execution_order, load_study


@dataclass
class StudySummary:
    """The result of :func:`run_study`; ``str()`` gives the table the command prints."""

    study: Study
    outcomes: list[Outcome] = field(default_factory=list)
    dry_run: bool = False
    seconds: float = 0.0
    executor: str = "local"
    kernels: str = ""  # local executor: warm kernels on / off / failed, and the zygote's start time
    selections: list[CellSelection] = field(default_factory=list)  # one per swept cell, in study order

    @property
    def counts(self) -> Counter:
        return Counter(o.outcome for o in self.outcomes)

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.outcome == "failed"]

    @property
    def exit_code(self) -> int:
        """1 when any run failed, else 0 (skipped runs are reported, not errors)."""
        return 1 if self.failed else 0

    @property
    def worker_seconds(self) -> float:
        """Wall time of every notebook executed in this invocation, summed (as the executor measured it)."""
        return sum(o.seconds for o in self.outcomes if o.executed)

    @property
    def train_seconds(self) -> float:
        """``timings.train_s`` of the runs executed in this invocation, summed."""
        return sum(o.train_s or 0.0 for o in self.outcomes if o.executed)

    @property
    def training_share(self) -> float | None:
        """train_seconds / worker_seconds: how much of the workers' time went into training steps
        (the rest: kernel start, imports, data preparation, evaluation); None when nothing executed."""
        worker = self.worker_seconds
        return self.train_seconds / worker if worker > 0 else None

    def __str__(self) -> str:
        return format_summary(self)


@dataclass(frozen=True)
class CellSelection:
    """The hyperparameter selection of one swept cell (task, strategy, budget), from its selection runs.

    ``runs``: the selection run ids (every combination x selection seed); ``complete``: how many of
    them are complete; ``blocker``: ``(run id, state)`` of the first that is not (None when all
    are); ``pick``: :func:`medssl_utils.selection.pick`'s result once all are complete, else None.
    """

    cell: str
    grid: tuple[str, ...]
    seeds: tuple[int, ...]
    runs: tuple[str, ...]
    complete: int
    blocker: tuple[str, str] | None = None
    pick: dict | None = None

    @property
    def decided(self) -> bool:
        """Every selection run is complete (the winner may still be None: no validation Dice at all)."""
        return self.pick is not None

    @property
    def winner(self) -> str | None:
        return self.pick["combo"] if self.pick else None

    @property
    def problem(self) -> str | None:
        """Why the cell's conditional runs cannot run: the selection is incomplete or found no winner."""
        if self.blocker is not None:
            return f"selection of {self.cell} incomplete: {self.blocker[0]} is {self.blocker[1]}"
        if self.pick is not None and self.winner is None:
            return (f"selection of {self.cell}: none of its {len(self.runs)} selection runs has a validation Dice "
                    f"({selection_rule.SCORE_KEY}) to select on")
        return None


def _selection_runs(run: Run, index: Mapping[str, Run]) -> tuple[str, ...]:
    """The selection run ids of a swept run's cell (every combination x selection seed)."""
    if run.selection:
        return run.selection
    prefix = run.cell
    return tuple(rid for c in run.grid for k in run.selection_seeds if (rid := f"{prefix}/{c}/seed{k}") in index)


def select_cell(run: Run, index: Mapping[str, Run], states: Mapping[str, str] | None = None) -> CellSelection:
    """The selection of ``run``'s cell, read from its selection runs' ``result.json`` files.

    ``index``: ``{run id: Run}`` of the study; ``states``: run id -> state overriding what
    ``result.json`` says (the dry run: a selection run that would execute is not complete yet).
    Only ``val_final_dice`` is read from each result (:func:`medssl_utils.selection.validation_score`).
    """
    ids = _selection_runs(run, index)
    blocker, complete, scores = None, 0, {c: [] for c in run.grid}
    for rid in ids:
        other = index[rid]
        state = (states or {}).get(rid) or read_state(other)[0]
        if state != "complete":
            blocker = blocker or (rid, "not run" if state == "pending" else state)
            continue
        complete += 1
        scores[other.combo].append(selection_rule.validation_score(read_result(other)))
    pick = None
    if blocker is None:
        pick = selection_rule.pick([{"combo": c, "order": i, "scores": scores[c]} for i, c in enumerate(run.grid)])
    return CellSelection(run.cell, tuple(run.grid), tuple(run.selection_seeds), ids, complete, blocker, pick)


def cell_selections(study: Study, states: Mapping[str, str] | None = None) -> list[CellSelection]:
    """The selection of every swept cell of the study, in study order (see :func:`select_cell`)."""
    index = {r.id: r for r in study.runs}
    out: dict[str, CellSelection] = {}
    for run in study.runs:
        if run.combo is not None and run.cell not in out:
            out[run.cell] = select_cell(run, index, states)
    return list(out.values())


def _selection_gate(run: Run, outcomes: dict[str, Outcome], decided: dict[str, CellSelection],
                    index: Mapping[str, Run], dry_run: bool) -> Outcome | None | bool:
    """For a conditional run (one with ``selection``): False while a selection run is unsettled; an
    outcome when it will not run (``skipped`` — the selection is incomplete —, ``not selected``, and
    in a dry run ``after selection`` / ``would skip``), recorded nowhere; None when its combination won."""
    if not run.selection:
        return None
    if any(rid not in outcomes for rid in run.selection):
        return False
    if dry_run:
        pending = [outcomes[rid] for rid in run.selection if outcomes[rid].outcome != "already complete"]
        skipped = next((o for o in pending if o.outcome == "would skip"), None)
        if skipped is not None:
            return Outcome(run, "would skip", f"selection of {run.cell} incomplete: {skipped.run.id} would be "
                                              f"skipped")
        if pending:
            return Outcome(run, "after selection")
    if run.cell not in decided:
        decided[run.cell] = select_cell(run, index)
    cell = decided[run.cell]
    if cell.problem:
        return Outcome(run, "would skip" if dry_run else "skipped", cell.problem)
    if cell.winner != run.combo:
        return Outcome(run, "not selected", f"selection of {run.cell}: {cell.winner} won")
    return None


def skip_run(study: Study, run: Run, reason: str) -> Outcome:
    """Record a run that cannot run: ``result.json`` with status ``skipped`` and the reason."""
    run.run_dir.mkdir(parents=True, exist_ok=True)
    write_study_json(study, run)
    write_result(run, {"status": "skipped", "error": reason})
    return Outcome(run, "skipped", reason)


def _dependency_problem(run: Run, outcomes: dict[str, Outcome]) -> str | None | bool:
    """False while a stage this run needs is unsettled; a skip reason if one did not complete; None if ready."""
    for dep in run.deps:
        if dep not in outcomes:
            return False
    for dep in run.deps:
        o = outcomes[dep]
        if o.outcome in ("failed", "skipped", "would skip"):
            word = "failed" if o.outcome == "failed" else "skipped"
            return f"depends on {word} stage {dep.split('/', 1)[1]}: {o.error}"
    return None


def _settle(run: Run, outcomes: dict[str, Outcome], blocked: dict[str, str], force: bool,
            dry_run: bool) -> Outcome | None | bool:
    """The outcome of a run that needs no execution, None if it must execute, False if it must wait."""
    state, _ = read_state(run)
    if state == "complete" and not force:
        return Outcome(run, "already complete")
    skip = "would skip" if dry_run else "skipped"
    if run.id in blocked:
        return Outcome(run, skip, blocked[run.id])
    problem = _dependency_problem(run, outcomes)
    if problem is False or problem is None:
        return problem
    return Outcome(run, skip, problem)


def make_executor(kind: str | Executor, study: Study, *, workers: int | None = None,
                  execute: NotebookEngine | None = None, options: Mapping | None = None,
                  warm_kernels: bool = True) -> Executor:
    """The executor named ``kind`` (:data:`~medssl_utils.study.executor.EXECUTORS`: ``local``,
    ``slurm``) for ``study``; an executor object is returned as is.

    ``workers`` and ``execute`` (the notebook engine) belong to ``local``; ``options`` to ``slurm``
    (see :class:`medssl_utils.study.slurm.SlurmExecutor`). Giving one to the other executor is an error.
    """
    if not isinstance(kind, str):
        return kind
    return executor_class(kind).from_options(study, workers=workers, execute=execute, options=options,
                                             warm_kernels=warm_kernels)


def run_study(path: str | os.PathLike, workers: int | None = None, dry_run: bool = False, force: bool = False, *,
              results_dir: str | os.PathLike | None = None, progress: bool | str = "auto",
              execute: NotebookEngine | None = None, check_timm: Callable[[str], tuple[bool, str]] | None = None,
              out=None, executor: str | Executor = "local", executor_options: Mapping | None = None,
              warm_kernels: bool = True) -> StudySummary:
    """Run a study file: every run not yet complete, in dependency order; print the summary.

    Args:
        path: the study YAML file.
        workers: local executor: runs executed at once (each in its own kernel process; default 1).
        dry_run: print the plan (order, resolved inits, what would be skipped; for slurm the
            sbatch resources of each run group); execute nothing.
        force: re-run complete runs too (the notebooks get ``overwrite=True``).
        results_dir: overrides the study's ``results_dir``.
        progress: the progress bar over runs (True / False / ``"auto"``).
        execute: local executor: ``execute(notebook, output, parameters, cwd)``; default a
            :class:`~medssl_utils.study.local.PapermillEngine`.
        check_timm: ``check_timm(encoder) -> (ok, reason)``; default
            :func:`~medssl_utils.study.checks.timm_weights_available`.
        out: where the plan / summary is printed (default stdout).
        executor: ``"local"`` (this machine, the default), ``"slurm"`` (one SLURM job per run, via
            submitit), or an object with the :class:`Executor` interface.
        executor_options: options of the local executor: ``gpus`` (ids or ``"all"``) and
            ``runs_per_gpu`` (:class:`~medssl_utils.study.local.LocalExecutor`); of the slurm
            executor: resource overrides (``partition``, ``time``, ``cpus_per_task``,
            ``gpus_per_node``, ``mem``, ``account``, ``qos``, ``constraint``, ``sbatch``,
            ``setup``), ``max_jobs``, ``poll_s``.
        warm_kernels: local executor with the default ``execute``: fork every kernel from one
            process that imported the libraries once (:mod:`medssl_utils.warmkernel`); False
            starts every kernel from scratch.

    Returns a :class:`StudySummary`; its ``exit_code`` is 1 when a run failed. Only one
    ``run_study`` at a time may work on one results folder (a lock file says which process has it).
    """
    out = out or sys.stdout
    if workers is not None:
        check_int("workers", workers, 1)
    t0 = time.perf_counter()
    study = load_study(path, results_dir)
    check_parameters(study)  # every notebook parameter, before anything runs (dry runs too)
    order = execution_order(study.runs)
    todo = [r for r in order if force or read_state(r)[0] != "complete"]
    problems = preflight_problems(study, todo)
    if problems and not dry_run:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise MedsslError(f"study {study.path}: {problems[0]}{more}")
    name = executor if isinstance(executor, str) else getattr(executor, "name", type(executor).__name__)
    unreadable = [f"{error}: {r.id} is executed again and replaces it" for r in todo
                  if (error := _unreadable(r)) is not None]
    if dry_run:
        return _dry_run(study, order, todo, problems + unreadable, force, check_timm, out, name, executor,
                        executor_options)
    for line in unreadable:
        print(f"note: {line}", file=out)
    blocked = blocked_runs(study, todo, check_timm)
    summary = StudySummary(study, executor=name)
    with _study_lock(study.results_dir):
        runner = make_executor(executor, study, workers=workers, execute=execute, options=executor_options,
                               warm_kernels=warm_kernels)
        outcomes = _schedule(study, order, blocked, runner, force=force, progress=progress)
    summary.kernels = getattr(runner, "warm_note", "")
    summary.outcomes = [outcomes[r.id] for r in order]
    summary.selections = cell_selections(study)
    summary.seconds = time.perf_counter() - t0
    print(str(summary), file=out)
    return summary


def _unreadable(run: Run) -> str | None:
    state, error = read_state(run)
    return error if state == "unreadable" else None


def _dry_run(study, order, todo, problems, force, check_timm, out, name, executor, options) -> StudySummary:
    blocked = blocked_runs(study, todo, check_timm)
    summary = StudySummary(study, dry_run=True, executor=name)
    outcomes: dict[str, Outcome] = {}
    index = {r.id: r for r in study.runs}
    decided: dict[str, CellSelection] = {}
    for run in order:  # a run's stages and selection runs come before it (execution order, file order)
        gate = _selection_gate(run, outcomes, decided, index, dry_run=True)
        if gate is False:  # cannot happen in execution order; say what the run waits for
            gate = Outcome(run, "after selection")
        settled = gate or _settle(run, outcomes, blocked, force, dry_run=True)
        outcomes[run.id] = settled or Outcome(run, "would run")
    summary.outcomes = [outcomes[r.id] for r in order]
    summary.selections = cell_selections(study, {o.run.id: o.outcome for o in summary.outcomes
                                                 if o.outcome != "already complete"})
    extra = []
    if isinstance(executor, str):  # the executor's own lines about the runs it would start
        extra = executor_class(name).plan_lines(study, [o.run for o in summary.outcomes if o.outcome == "would run"],
                                                options or {})
    print(format_plan(summary, problems, extra), file=out)
    return summary


def _schedule(study: Study, order: list[Run], blocked: dict[str, str], executor: Executor, *, force: bool,
              progress: bool | str) -> dict[str, Outcome]:
    """Hand runs to ``executor`` as soon as the stages they need are settled, ``executor.capacity`` at a time.

    A conditional run of a sweep (``run.selection``) also waits for its cell's selection runs; then
    it runs only if its combination won (:func:`_selection_gate`), whatever the number of workers."""
    outcomes: dict[str, Outcome] = {}
    index = {r.id: r for r in study.runs}
    decided: dict[str, CellSelection] = {}
    waiting = list(order)
    bar = progress_bar(len(order), desc=f"study {study.name}", enabled=progress)

    def settle(outcome: Outcome) -> None:
        if outcome.executed:
            outcome = dataclasses.replace(outcome, train_s=training_seconds(outcome.run))
        outcomes[outcome.run.id] = outcome
        counts = Counter(o.outcome for o in outcomes.values())
        bar.set_postfix_str(", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
        bar.update(1)

    interrupted = False
    try:
        todo = [r for r in order if force or read_state(r)[0] != "complete"]
        in_flight = {r.id for r in executor.adopt(study, todo)}
        waiting = [r for r in waiting if r.id not in in_flight]
        while waiting or in_flight:
            ready = []
            for run in list(waiting):
                gate = _selection_gate(run, outcomes, decided, index, dry_run=False)
                if gate is False:
                    continue
                if gate is not None:  # lost, or its selection is incomplete: nothing is written for it
                    waiting.remove(run)
                    settle(gate)
                    continue
                settled = _settle(run, outcomes, blocked, force, dry_run=False)
                if settled is False or (settled is None and len(in_flight) + len(ready) >= executor.capacity):
                    continue
                waiting.remove(run)
                if settled is None:
                    ready.append(run)
                else:
                    if settled.outcome == "skipped":
                        settled = skip_run(study, run, settled.error)
                    settle(settled)
            if ready:
                executor.start(study, ready, force)
                in_flight.update(r.id for r in ready)
            if in_flight:
                for outcome in executor.wait():
                    in_flight.discard(outcome.run.id)
                    settle(outcome)
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        note = executor.interrupt() if interrupted else None
        executor.close()
        bar.close()
        if note:
            print(f"medssl: {note}", file=sys.stderr)
    return outcomes


@contextlib.contextmanager
def _study_lock(results: Path):
    """Hold ``<results>/.study-run.lock`` (an exclusive flock) while a study runs into ``results``, so
    that a second ``medssl study run`` on the same results cannot start the same runs again."""
    import fcntl

    results.mkdir(parents=True, exist_ok=True)
    path = results / ".study-run.lock"
    with open(path, "a+", encoding="utf-8") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise MedsslError(f"{results} is in use by another `medssl study run` ({holder}); wait for it to "
                              f"end or stop it, then run again") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def study_status(study: Study | str | os.PathLike, results_dir: str | os.PathLike | None = None) -> list[dict]:
    """The state of every run of a study (a :class:`Study` or a study file), in execution order.

    Each row: ``run_id``, ``kind``, ``name`` (stage / strategy), ``combo`` (a swept run's
    combination, else None), ``state`` (complete, failed, skipped, queued — a SLURM job waiting —,
    running — executing, or interrupted —, pending, and for a conditional run of a sweep without
    its own result.json: ``awaits selection`` — its cell's selection runs are not all complete — or
    ``not selected`` — they are and another combination won), ``error``, ``run_dir``, and ``job`` /
    ``job_state`` (the SLURM job id and state) for runs that have a SLURM job queued or running, and
    ``stale_temps`` (temporary files of killed writers in the run directory) where there are any,
    and ``gpus`` (what ``study.json`` says the run's kernel was given) for a running run.
    Read from the run directories (and, when runs were submitted to SLURM, one ``sacct`` call):
    nothing is executed and no weights are checked.
    """
    if not isinstance(study, Study):
        study = load_study(study, results_dir)
    order = execution_order(study.runs)
    jobs = active_jobs(order)
    index = {r.id: r for r in study.runs}
    decided: dict[str, CellSelection] = {}
    rows = []
    for run in order:
        state, error = read_state(run)
        if run.selection and state == "pending":
            if run.cell not in decided:
                decided[run.cell] = select_cell(run, index)
            cell = decided[run.cell]
            if cell.winner is None:
                state, error = "awaits selection", cell.problem
            elif cell.winner != run.combo:
                state, error = "not selected", f"selection of {run.cell}: {cell.winner} won"
        row = {"run_id": run.id, "kind": run.kind, "name": run.name, "combo": run.combo, "state": state,
               "error": error, "run_dir": str(run.run_dir)}
        if state == "running":
            meta, _ = read_json_object(run.run_dir / "study.json")
            if meta and meta.get("gpus"):
                row["gpus"] = [str(g) for g in meta["gpus"]]
        stale = stale_temps(run.run_dir)
        if stale:
            row["stale_temps"] = [str(p) for p in stale]
        if run.id in jobs and state != "complete":
            row["job"], row["job_state"] = jobs[run.id]
            if row["job_state"] in ACTIVE:  # else "unknown: <why>": the state stays what result.json says
                row["state"] = "queued" if row["job_state"] in QUEUED else "running"
        rows.append(row)
    return rows
