"""Executing runs on this machine: the notebook engine (:data:`NotebookEngine`; papermill's,
:class:`PapermillEngine`), one run executed and recorded (:func:`execute_run`, also what a SLURM job
runs) and the thread-pool executor behind ``medssl study run --executor local``
(:class:`LocalExecutor`, the default)."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

from medssl_utils.errors import MedsslError, ParameterError
from medssl_utils.validate import check_int
from medssl_utils.study.records import Outcome, one_line, read_state, write_result, write_study_json
from medssl_utils.study.executor import Executor
from medssl_utils.study.jobs import ACTIVE, active_jobs
from medssl_utils.study.spec import Run, Study
from medssl_utils.warmkernel import WarmKernelError, WarmKernels


def available_cores() -> int:
    """The CPU cores this process may use: its affinity mask (taskset, SLURM, a test worker's
    share), else ``os.cpu_count()``."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


#: A notebook engine: ``engine(notebook, output, parameters, cwd)`` executes one notebook.
NotebookEngine = Callable[[Path, Path, dict, Path], None]


class PapermillEngine:
    """``engine(notebook, output, parameters, cwd)``: one papermill execution, safe in threads.

    papermill's own ``cwd`` changes this process's working directory, which races between
    threads; here the kernel is started in ``cwd`` instead. The kernel process's own
    stdout / stderr (not cell output, which the notebook keeps) go to ``kernel.log`` beside
    ``output`` (the run directory's, for a study run), so
    kernel start-up warnings do not garble the progress bar. :meth:`interrupt` sends SIGINT to
    every kernel this executor has running, so Ctrl-C stops a study at once.
    """

    def __init__(self, kernel_name: str = "python3", threads: int | None = None, warm=None):
        self.kernel_name = kernel_name
        # CPU threads per kernel: with several kernels at once each gets its share of the cores,
        # since OpenMP threads spin-waiting on oversubscribed cores make torch many times slower.
        self.threads = threads
        # a running medssl_utils.warmkernel.WarmKernels: kernels are forked from it (imports done once)
        self.warm = warm
        self._live: set = set()
        self._lock = threading.Lock()

    def __call__(self, notebook: Path, output: Path, parameters: dict, cwd: Path) -> None:
        import papermill as pm

        _quiet_papermill_inference()
        started: list = []
        try:
            pm.execute_notebook(str(notebook), str(output), parameters=parameters, kernel_name=self.kernel_name,
                                progress_bar=False, log_output=False, request_save_on_cell_execute=True,
                                kernel_manager_class=self._manager_class(Path(output).parent / "kernel.log", started),
                                resources={"metadata": {"path": str(cwd)}})
        finally:
            with self._lock:
                self._live.difference_update(started)

    def _manager_class(self, log_path: Path, started: list):
        """A kernel manager class whose kernels log to ``log_path`` and are known to :meth:`interrupt`."""
        from jupyter_client.manager import AsyncKernelManager

        executor = self

        class RunKernelManager(AsyncKernelManager):
            def format_kernel_cmd(self, extra_arguments=None):
                if executor.warm is not None:
                    return executor.warm.kernel_cmd(self.connection_file)
                return super().format_kernel_cmd(extra_arguments)

            async def start_kernel(self, **kw):
                with open(log_path, "ab") as log:  # the kernel process keeps its own descriptor
                    kw.setdefault("stdout", log)
                    kw.setdefault("stderr", log)
                    if executor.threads:
                        n = str(executor.threads)
                        kw.setdefault("env", {**os.environ, "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n})
                    await super().start_kernel(**kw)
                with executor._lock:
                    executor._live.add(self)
                started.append(self)

        return RunKernelManager

    def interrupt(self) -> None:
        """Send SIGINT to the kernels of the executions still running (each then fails fast)."""
        with self._lock:
            pids = [getattr(km.provisioner, "pid", None) for km in self._live if km.provisioner is not None]
        for pid in pids:
            if pid:
                try:
                    os.kill(pid, signal.SIGINT)
                except ProcessLookupError:
                    pass




class _InferenceNoise(logging.Filter):
    """Drops papermill's parameter-inference warnings. Its inspection of a parameters cell cannot
    read a line with two ``=`` (``dataset = "phantom:cardiac?cases=32"``), warns "Unable to parse
    line", then calls the parameter "unknown" although the notebook has it. The runner checks every
    parameter against the notebooks' own declaration before any run starts (``medssl_utils.params``),
    so these warnings only hid real messages in a study's log."""

    _NOISE = ("Unable to parse line ", "Passed unknown parameter: ")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(self._NOISE)


def _quiet_papermill_inference() -> None:
    for name in ("papermill", "papermill.translators"):  # a logger's filters see only its own records
        log = logging.getLogger(name)
        if not any(isinstance(f, _InferenceNoise) for f in log.filters):
            log.addFilter(_InferenceNoise())


def execute_run(study: Study, run: Run, *, force: bool = False, execute: NotebookEngine | None = None) -> Outcome:
    """Execute one run's notebook and record what happened; never raises for a failing notebook.

    A stale ``failed`` / ``skipped`` / ``running`` ``result.json`` is removed first, so the one
    found afterwards was written by this execution. A papermill error, or a notebook that ends
    without ``status: complete``, gives a ``failed`` result.json with a one-line error (the
    notebook's own error when it wrote one).
    """
    t0 = time.perf_counter()
    run.run_dir.mkdir(parents=True, exist_ok=True)
    write_study_json(study, run)
    if read_state(run)[0] in ("failed", "skipped", "running", "unreadable"):
        (run.run_dir / "result.json").unlink(missing_ok=True)
    params = {**run.params, **({"overwrite": True} if force else {})}
    error = None
    try:
        (execute or PapermillEngine())(study.notebooks[run.kind], run.run_dir / "notebook.ipynb", params,
                                         run.run_dir)
    except Exception as exc:  # noqa: BLE001 - any failure of one run is recorded, the study goes on
        error = one_line(exc)
    state, nb_error = read_state(run)
    seconds = time.perf_counter() - t0
    if error is None and state == "complete":
        return Outcome(run, "done", None, seconds)
    if state == "failed" and nb_error:
        error = nb_error
    elif error is None:
        error = ("the notebook finished without writing result.json" if state == "pending" else
                 f"the notebook finished but result.json says status {state!r}, not 'complete'")
    write_result(run, {"status": "failed", "error": error})
    return Outcome(run, "failed", error, seconds)


class LocalExecutor(Executor):
    """Runs executed on this machine, ``workers`` at once, each by a thread driving papermill
    (every run in its own kernel process). The scheduler's executor interface: see
    :class:`medssl_utils.study.executor.Executor`.

    ``execute(notebook, output, parameters, cwd)`` executes one notebook (default a
    :class:`PapermillEngine` giving each kernel ``cores / workers`` CPU threads).

    ``warm_kernels`` (default on, for the default executor): kernels are forked from one process
    that imported torch, timm, smp, lightning_fabric, matplotlib, pandas … once
    (:mod:`medssl_utils.warmkernel`), instead of every kernel importing them again (about 7
    CPU-seconds per run). It starts with the first run and stops with the executor; if it cannot
    start, the runner says why and uses ordinary kernels (the results are the same).
    """

    name = "local"

    @classmethod
    def from_options(cls, study: Study, *, workers: int | None = None, execute=None, options=None,
                     warm_kernels: bool = True) -> "LocalExecutor":
        if options:
            raise ParameterError(f"{', '.join(sorted(options))}: only for executor 'slurm', not 'local'")
        return cls(1 if workers is None else workers, execute, warm_kernels=warm_kernels)

    def __init__(self, workers: int = 1, execute: NotebookEngine | None = None, warm_kernels: bool = True, out=None):
        check_int("workers", workers, 1)
        self.capacity = workers
        self.execute = execute or PapermillEngine(threads=max(1, available_cores() // workers))
        self.warm_kernels = bool(warm_kernels) and hasattr(self.execute, "warm")  # a PapermillEngine
        self.warm = None
        self.warm_note = "off" if not self.warm_kernels else "not started"
        self._out = out
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="medssl-study")
        self._running: dict = {}

    def adopt(self, study: Study, runs: list[Run]) -> list[Run]:
        """Nothing executes here between invocations: an interrupted run is simply run again. Runs
        that SLURM jobs (``--executor slurm``) are still executing are refused, not run twice."""
        busy = {rid: job for rid, (job, state) in active_jobs(runs).items() if state in ACTIVE}
        if busy:
            shown = ", ".join(f"{rid} (job {job})" for rid, job in list(busy.items())[:3])
            more = f" and {len(busy) - 3} more" if len(busy) > 3 else ""
            raise MedsslError(f"{len(busy)} runs have SLURM jobs queued or running: {shown}{more}; running them "
                              "here too would do them twice: wait for them (medssl study run --executor slurm "
                              "adopts them) or scancel them first")
        return []

    def _start_warm(self) -> None:
        if not self.warm_kernels or self.warm is not None or self.warm_note.startswith("failed"):
            return
        import sys

        try:
            self.warm = WarmKernels().start()
        except WarmKernelError as exc:
            self.warm_note = f"failed ({exc}); ordinary kernels are used"
            print(f"medssl: warm kernels {self.warm_note}", file=self._out or sys.stderr)
            return
        self.execute.warm = self.warm
        self.warm_note = f"on (zygote started in {self.warm.start_s:.1f} s)"

    def start(self, study: Study, runs: list[Run], force: bool) -> None:
        if runs:
            self._start_warm()
        for run in runs:
            self._running[self._pool.submit(execute_run, study, run, force=force, execute=self.execute)] = run

    def wait(self) -> list[Outcome]:
        done, _ = wait(self._running, return_when=FIRST_COMPLETED)
        for fut in done:
            self._running.pop(fut)
        return [fut.result() for fut in done]

    def interrupt(self) -> str | None:
        if hasattr(self.execute, "interrupt"):
            self.execute.interrupt()  # the running notebooks stop; their runs are retried next time
        return None

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self.warm is not None:
            self.warm.stop()
            self.warm = None
            self.execute.warm = None
