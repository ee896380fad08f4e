"""What the runner reads from and writes into run directories, and the outcome of one run.

``result.json`` is the source of truth for a run's state (``docs/run-format.md``); the runner adds
``study.json`` and, for runs it decides without a notebook result, its own ``result.json``.
"""

from __future__ import annotations

from dataclasses import dataclass

from medssl_utils.rundir import now, read_json_object, write_json
from medssl_utils.study.spec import Run, Study

STATES = ("complete", "failed", "skipped", "running", "pending", "unreadable")


@dataclass(frozen=True)
class Outcome:
    """What happened to one run: ``done``, ``already complete``, ``skipped``, ``failed``,
    ``not selected`` (a conditional run of a sweep whose combination lost the selection: nothing
    executed or written) (dry run: ``would run``, ``already complete``, ``would skip``, ``not
    selected``, ``after selection`` — would run if its combination wins on validation).

    ``seconds``: the wall time of the notebook execution as the executor measured it (0 when
    nothing was executed); ``train_s``: ``timings.train_s`` of the run's ``result.json`` after an
    execution (None when it has none); ``job``: the SLURM job id of a run executed by SLURM.
    """

    run: Run
    outcome: str
    error: str | None = None
    seconds: float = 0.0
    train_s: float | None = None
    job: str | None = None

    @property
    def executed(self) -> bool:
        """True for runs whose notebook was executed in this invocation (done or failed)."""
        return self.outcome in ("done", "failed")


def read_result(run: Run) -> dict | None:
    """The run's ``result.json`` as a dict, or None when missing or unreadable."""
    return load_result(run)[0]


def load_result(run: Run) -> tuple[dict | None, str | None]:
    """``(result, None)``, ``(None, None)`` when there is no ``result.json``, or ``(None, problem)``
    when it cannot be used: not UTF-8 JSON (e.g. truncated), not an object, or no known status."""
    path = run.run_dir / "result.json"
    result, why = read_json_object(path)
    if why:
        return None, f"{path}: unreadable (the file {why}; truncated or damaged?)"
    if result is None:
        return None, None
    if result.get("status") not in STATES or result.get("status") in ("pending", "unreadable"):
        return None, (f"{path}: unreadable (status {result.get('status')!r}; expected one of complete, failed, "
                      "skipped, running)")
    return result, None


def read_state(run: Run) -> tuple[str, str | None]:
    """``(state, error)`` of a run from its ``result.json``: one of :data:`STATES`. ``unreadable``
    (with the problem as error): the file exists but cannot be used (see :func:`load_result`)."""
    result, problem = load_result(run)
    if problem:
        return "unreadable", problem
    if result is None:
        return "pending", None
    return result["status"], result.get("error")


def training_seconds(run: Run) -> float | None:
    """``timings.train_s`` of the run's ``result.json`` (seconds spent in training steps), or None."""
    timings = (read_result(run) or {}).get("timings")
    value = timings.get("train_s") if isinstance(timings, dict) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _meta(run: Run) -> dict:
    """What a result.json written by the runner says about the run besides its status."""
    keys = ("datasets", "method", "epochs") if run.kind == "pretrain" else \
        ("dataset", "labelled_slices", "labelled_fraction", "seed")
    return {"kind": run.kind, "init": run.params["init"], **{k: run.params.get(k) for k in keys}}


def cell_seeds(study: Study, run: Run) -> list[int]:
    """The seeds of the run's cell (task, strategy, budget) in the study's order (``[run.seed]`` if it has no cell)."""
    seeds: list[int] = []
    for r in study.runs:
        if r.kind == run.kind and r.cell == run.cell and r.seed not in seeds:
            seeds.append(r.seed)
    return seeds or [run.seed]


def write_study_json(study: Study, run: Run, gpus: list[str] | None = None) -> None:
    """``study.json``: which study, stage / strategy, task, budget, seed and init made this run, the
    GPUs its kernel was given (``gpus``: ids as in ``CUDA_VISIBLE_DEVICES``, e.g. ``["2"]``; None
    when nothing restricted them); for
    fine-tuning also its sweep combination (``combo``, ``sweep``: its values; None / {} without a
    sweep), the cell's ``grid`` (combination labels in study order), ``selection_seeds`` and ``seeds``,
    from which the analysis recomputes the selection (:mod:`medssl_utils.selection`)."""
    doc = {"study": study.name, "study_file": str(study.path), "run_id": run.id, "kind": run.kind,
           "stage" if run.kind == "pretrain" else "strategy": run.name, "task": run.task, "budget": run.budget,
           "seed": run.seed, "init": run.init, "depends_on": list(run.deps),
           "gpus": None if gpus is None else [str(g) for g in gpus]}
    if run.kind == "finetune":
        doc.update({"combo": run.combo, "sweep": dict(run.sweep), "grid": list(run.grid),
                    "selection_seeds": list(run.selection_seeds), "seeds": cell_seeds(study, run)})
    write_json(run.run_dir / "study.json", doc)


def write_result(run: Run, result: dict) -> None:
    """A ``result.json`` written by the runner (atomically), with ``written_by`` and ``finished``."""
    write_json(run.run_dir / "result.json", {**_meta(run), **result, "written_by": "study runner",
                                             "finished": now()})


def one_line(exc: BaseException) -> str:
    """A papermill or other exception as one line: ``Name: first line of the message``."""
    ename, evalue = getattr(exc, "ename", None), getattr(exc, "evalue", None)
    if ename:
        text = f"{ename}: {evalue}" if evalue else str(ename)
        cell = getattr(exc, "exec_count", None)
        return first_line(text) + (f" (notebook cell [{cell}])" if cell else "")
    return first_line(f"{type(exc).__name__}: {exc}")


def first_line(text: str, limit: int = 500) -> str:
    line = next((ln.strip() for ln in str(text).splitlines() if ln.strip()), "")
    return line if len(line) <= limit else line[: limit - 3] + "..."
