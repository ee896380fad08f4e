"""Executors: how the runs of a study are executed (this machine, a SLURM cluster), by name.

An executor is a subclass of :class:`Executor` — the interface the scheduler
(:mod:`medssl_utils.study.runner`) drives — registered in :data:`EXECUTORS`. Adding one (say,
a cloud batch service) is one module with its class plus one entry here. What executes a single
notebook inside an executor is a *notebook engine* (:data:`medssl_utils.study.local.NotebookEngine`,
papermill by default): one word for each.
"""

from __future__ import annotations

import abc
import importlib
from collections.abc import Mapping

from medssl_utils.errors import ParameterError
from medssl_utils.study.records import Outcome
from medssl_utils.study.spec import Run, Study

#: name (``medssl study run --executor NAME``) -> (module, class)
EXECUTORS: dict[str, tuple[str, str]] = {
    "local": ("medssl_utils.study.local", "LocalExecutor"),
    "slurm": ("medssl_utils.study.slurm", "SlurmExecutor"),
}


class Executor(abc.ABC):
    """What the scheduler needs from an executor.

    ``capacity``: how many runs may be in flight at once. ``adopt(study, runs)``: the runs among
    ``runs`` that are still executing from an earlier invocation (queued or running SLURM jobs);
    they count as in flight and are waited for, never started again. ``start(study, runs,
    force)``: begin executing these runs (never more than the free capacity). ``wait()``: block
    until at least one run in flight ends; return their outcomes, each already recorded in its
    ``result.json``. ``interrupt()``: called on Ctrl-C; returns a line for the user or None.
    ``close()``: release threads / files. :meth:`from_options` builds one from the command's
    options, refusing those that belong to another executor; :meth:`plan_lines` adds the
    executor's own lines to ``--dry-run``'s plan (the SLURM resources of each group of jobs).
    """

    name: str = ""
    capacity: int = 1

    @classmethod
    @abc.abstractmethod
    def from_options(cls, study: Study, *, workers: int | None, execute, options: Mapping | None,
                     warm_kernels: bool) -> "Executor": ...

    @abc.abstractmethod
    def adopt(self, study: Study, runs: list[Run]) -> list[Run]: ...

    @abc.abstractmethod
    def start(self, study: Study, runs: list[Run], force: bool) -> None: ...

    @abc.abstractmethod
    def wait(self) -> list[Outcome]: ...

    @classmethod
    def plan_lines(cls, study: Study, runs: list[Run], options: Mapping) -> list[str]:
        """Lines ``--dry-run`` prints after the plan about how these runs would be executed."""
        return []

    def interrupt(self) -> str | None:
        return None

    def close(self) -> None:
        return None


def executor_class(name: str) -> type[Executor]:
    """The executor class registered as ``name`` (imported on use: slurm's needs submitit)."""
    if name not in EXECUTORS:
        raise ParameterError(f"executor={name!r}: expected one of {list(EXECUTORS)}")
    module, cls = EXECUTORS[name]
    return getattr(importlib.import_module(module), cls)
