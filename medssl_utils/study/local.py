"""Executing runs on this machine: the notebook engine (:data:`NotebookEngine`; papermill's,
:class:`PapermillEngine`), one run executed and recorded (:func:`execute_run`, also what a SLURM job
runs) and the thread-pool executor behind ``medssl study run --executor local``
(:class:`LocalExecutor`, the default), with each run on its own GPUs when given ``--gpus``
(:mod:`medssl_utils.study.gpus`)."""

from __future__ import annotations

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
from medssl_utils.study.gpus import GpuSlots, parse_gpus, run_devices
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


#: A notebook engine: ``engine(notebook, output, parameters, cwd)`` executes one notebook. When
#: the executor assigns GPUs it also passes ``env={"CUDA_VISIBLE_DEVICES": "2"}``: variables the
#: notebook's kernel must get on top of this process's environment.
NotebookEngine = Callable[..., None]


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

    def __call__(self, notebook: Path, output: Path, parameters: dict, cwd: Path,
                 env: dict[str, str] | None = None) -> None:
        import papermill as pm

        started: list = []
        try:
            pm.execute_notebook(str(notebook), str(output), parameters=parameters, kernel_name=self.kernel_name,
                                progress_bar=False, log_output=False, request_save_on_cell_execute=True,
                                kernel_manager_class=self._manager_class(Path(output).parent / "kernel.log", started,
                                                                         env or {}),
                                resources={"metadata": {"path": str(cwd)}})
        finally:
            with self._lock:
                self._live.difference_update(started)

    def kernel_env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The environment of a kernel: this process's, its CPU threads, and ``extra`` (its GPUs)."""
        env = dict(os.environ)
        if self.threads:
            n = str(self.threads)
            env.update({"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n})
        env.update(extra or {})
        return env

    def _manager_class(self, log_path: Path, started: list, extra_env: dict[str, str]):
        """A kernel manager class whose kernels log to ``log_path``, get :meth:`kernel_env` and are
        known to :meth:`interrupt`."""
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
                    if executor.threads or extra_env:
                        kw.setdefault("env", executor.kernel_env(extra_env))
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




def execute_run(study: Study, run: Run, *, force: bool = False, execute: NotebookEngine | None = None,
                gpus: list[str] | None = None) -> Outcome:
    """Execute one run's notebook and record what happened; never raises for a failing notebook.

    ``gpus``: the GPU ids this run was given; its kernel gets them as ``CUDA_VISIBLE_DEVICES`` and
    ``study.json`` records them (``gpus``). Without, ``study.json`` records what the kernel
    inherits (``CUDA_VISIBLE_DEVICES`` of this process, as SLURM sets it in a job; None: unset).

    A stale ``failed`` / ``skipped`` / ``running`` ``result.json`` is removed first, so the one
    found afterwards was written by this execution. A papermill error, or a notebook that ends
    without ``status: complete``, gives a ``failed`` result.json with a one-line error (the
    notebook's own error when it wrote one).
    """
    t0 = time.perf_counter()
    run.run_dir.mkdir(parents=True, exist_ok=True)
    inherited = os.environ.get("CUDA_VISIBLE_DEVICES")
    write_study_json(study, run, gpus=gpus if gpus is not None else
                     None if inherited is None else [g.strip() for g in inherited.split(",") if g.strip()])
    if read_state(run)[0] in ("failed", "skipped", "running", "unreadable"):
        (run.run_dir / "result.json").unlink(missing_ok=True)
    params = {**run.params, **({"overwrite": True} if force else {})}
    error = None
    try:
        extra = {"env": {"CUDA_VISIBLE_DEVICES": ",".join(gpus)}} if gpus is not None else {}
        (execute or PapermillEngine())(study.notebooks[run.kind], run.run_dir / "notebook.ipynb", params,
                                         run.run_dir, **extra)
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

    ``gpus`` (ids, or ``"all"``; :func:`medssl_utils.study.gpus.parse_gpus`): every run gets its own
    GPU through its kernel's ``CUDA_VISIBLE_DEVICES`` (``runs_per_gpu`` runs may share one; a run
    with ``devices: N`` gets N). ``workers`` then defaults to the slots, ``len(gpus) x
    runs_per_gpu``, and may not exceed them; a run waits until the GPUs it needs are free (in
    the order the scheduler hands them over). Without ``gpus`` nothing about GPUs is set: every
    kernel sees the GPUs this process sees.

    ``warm_kernels`` (default on, for the default executor): kernels are forked from one process
    that imported torch, timm, smp, lightning_fabric, matplotlib, pandas … once
    (:mod:`medssl_utils.warmkernel`), instead of every kernel importing them again (about 7
    CPU-seconds per run). It starts with the first run and stops with the executor; if it cannot
    start, the runner says why and uses ordinary kernels (the results are the same).
    """

    name = "local"
    OPTIONS = ("gpus", "runs_per_gpu")

    @classmethod
    def from_options(cls, study: Study, *, workers: int | None = None, execute=None, options=None,
                     warm_kernels: bool = True) -> "LocalExecutor":
        options = dict(options or {})
        unknown = sorted(k for k in options if k not in cls.OPTIONS)
        if unknown:
            raise ParameterError(f"{', '.join(unknown)}: only for executor 'slurm', not 'local'")
        gpus = options.get("gpus")
        runs_per_gpu = options.get("runs_per_gpu")
        if gpus is None:
            if runs_per_gpu is not None:
                raise ParameterError("runs_per_gpu (--runs-per-gpu): only with gpus (--gpus IDS or --gpus all)")
            return cls(1 if workers is None else workers, execute, warm_kernels=warm_kernels)
        slots = GpuSlots(parse_gpus(gpus), 1 if runs_per_gpu is None else runs_per_gpu)
        wide = [(r.id, n) for r in study.runs if (n := run_devices(r.params)) > len(slots.gpus)]
        if wide:
            raise ParameterError(f"gpus: {wide[0][0]} has devices={wide[0][1]}, more than the {len(slots.gpus)} GPUs "
                                 f"given ({','.join(slots.gpus)})")
        if workers is not None and workers > slots.slots:
            share = "" if slots.runs_per_gpu > 1 else "; --runs-per-gpu K lets K runs share one"
            raise ParameterError(f"workers={workers}: only {slots.slots} runs fit on gpus {','.join(slots.gpus)} "
                                 f"with {slots.runs_per_gpu} run(s) per GPU{share}")
        return cls(slots.slots if workers is None else workers, execute, warm_kernels=warm_kernels, gpus=slots)

    @classmethod
    def plan_lines(cls, study: Study, runs: list[Run], options) -> list[str]:
        """With ``gpus``: the GPUs the runs are spread over (the options checked as for a real run)."""
        if not options or options.get("gpus") is None:
            return []
        slots = GpuSlots(parse_gpus(options["gpus"]), options.get("runs_per_gpu") or 1)
        wide = sum(run_devices(r.params) > 1 for r in runs)
        return [f"GPUs {','.join(slots.gpus)}, {slots.runs_per_gpu} run(s) per GPU: up to {slots.slots} runs at once, "
                f"each kernel given its GPU as CUDA_VISIBLE_DEVICES" + (f"; {wide} run(s) with devices > 1 get "
                                                                         "several" if wide else "")]

    def __init__(self, workers: int = 1, execute: NotebookEngine | None = None, warm_kernels: bool = True, out=None,
                 gpus: GpuSlots | None = None):
        check_int("workers", workers, 1)
        self.capacity = workers
        self.execute = execute or PapermillEngine(threads=max(1, available_cores() // workers))
        self.warm_kernels = bool(warm_kernels) and hasattr(self.execute, "warm")  # a PapermillEngine
        self.warm = None
        self.warm_note = "off" if not self.warm_kernels else "not started"
        self.gpus = gpus
        self._out = out
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="medssl-study")
        self._running: dict = {}  # future -> (run, its GPU ids or None)
        self._queue: list[tuple[Run, bool]] = []  # handed over, waiting for GPUs: (run, force)
        self._study: Study | None = None

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
        self._study = study
        self._queue.extend((run, force) for run in runs)
        self._dispatch()

    def _dispatch(self) -> None:
        """Start the waiting runs, first come first served, while the GPUs the next one needs are free."""
        while self._queue:
            run, force = self._queue[0]
            gpus = None
            if self.gpus is not None:
                gpus = self.gpus.take(run_devices(run.params))
                if gpus is None:
                    return
            self._queue.pop(0)
            fut = self._pool.submit(execute_run, self._study, run, force=force, execute=self.execute, gpus=gpus)
            self._running[fut] = (run, gpus)

    def wait(self) -> list[Outcome]:
        done, _ = wait(self._running, return_when=FIRST_COMPLETED)
        for fut in done:
            _, gpus = self._running.pop(fut)
            if gpus is not None:
                self.gpus.give(gpus)
        outcomes = [fut.result() for fut in done]
        self._dispatch()
        return outcomes

    def interrupt(self) -> str | None:
        if hasattr(self.execute, "interrupt"):
            self.execute.interrupt()  # the running notebooks stop; their runs are retried next time
        return None

    def close(self) -> None:
        self._queue.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self.warm is not None:
            self.warm.stop()
            self.warm = None
            self.execute.warm = None
