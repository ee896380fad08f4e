"""Warm notebook kernels: fork each kernel from a process that already imported the heavy libraries.

Every run of a study is one notebook executed by papermill in a fresh Jupyter kernel. A fresh
kernel spends about 7 CPU-seconds importing torch, timm, segmentation_models_pytorch,
lightning_fabric (which imports torchmetrics), matplotlib, pandas, scipy and nibabel before the
first training step — the same work in every run, a large share of a short CPU run. A *zygote*
(as in Android or Chromium) does that work once: :class:`WarmKernels` starts one server process
that imports the libraries and then waits; each kernel the study needs is a ``fork()`` of it
(copy-on-write, milliseconds), which then becomes an ordinary ipykernel. Runs stay isolated:
every kernel is its own process, started from the same clean, freshly imported state, and
nothing a run does reaches the zygote or the next run.

How a kernel starts. Jupyter starts kernels by running the kernel spec's command. Here that
command is the small *launcher* ``python -m medssl_utils.warmkernel launch SOCKET -- ARGS``,
which imports nothing heavy: it connects to the zygote's Unix socket and passes its standard
streams (file descriptors, ``SCM_RIGHTS``), environment, working directory and ipykernel
arguments. The zygote forks; the child takes over those streams, environment and directory,
sets torch's thread count from ``OMP_NUM_THREADS`` and runs ipykernel with the arguments. The
launcher stays alive as the kernel's stand-in for Jupyter: it forwards SIGINT (interrupt),
SIGTERM, SIGHUP and SIGQUIT to the child and exits with the child's exit code. If the launcher
is killed, the zygote kills the child; if the zygote's parent (the study runner) dies, the
zygote kills its children and exits.

Safety. ``fork()`` copies only the calling thread, so the zygote must not run other threads or
initialise CUDA or OpenMP before forking: it imports modules and computes nothing, starts with
one thread per library (``OMP_NUM_THREADS=1`` etc. until a child sets its own torch threads) and
refuses to serve if an import left a thread running or initialised CUDA. GPU kernels initialise
CUDA in the child, after the fork, as a fresh process would — after taking the launcher's
environment, so the ``CUDA_VISIBLE_DEVICES`` the study runner gave that kernel (``--gpus``)
decides which GPUs it sees.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

#: What the zygote imports once (what a medssl notebook kernel imports anyway).
PRELOAD = (
    "numpy", "pandas", "scipy.ndimage", "nibabel", "matplotlib", "matplotlib.pyplot", "torch", "timm",
    "segmentation_models_pytorch", "lightning_fabric", "IPython", "ipykernel.kernelapp", "ipykernel.ipkernel",
    "medssl_utils.training", "medssl_utils.plots", "medssl_utils.data", "medssl_utils.models.unet",
)
_SINGLE_THREAD = {k: "1" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                   "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")}
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


class WarmKernelError(RuntimeError):
    """The zygote could not be started or did not answer."""


# ============================================================================ the study runner's side
class WarmKernels:
    """A running zygote and the command that starts a kernel from it (use as a context manager).

    ``kernel_cmd(connection_file)`` is what Jupyter's kernel manager runs instead of
    ``python -m ipykernel_launcher -f CONNECTION_FILE``.
    """

    def __init__(self, preload: tuple[str, ...] = PRELOAD, python: str = sys.executable, timeout: float = 120.0):
        self.preload, self.python, self.timeout = tuple(preload), python, timeout
        self.proc: subprocess.Popen | None = None
        self._dir: tempfile.TemporaryDirectory | None = None
        self.socket_path: Path | None = None
        self.start_s: float | None = None

    def start(self) -> WarmKernels:
        t0 = time.perf_counter()
        self._dir = tempfile.TemporaryDirectory(prefix="medssl-zygote-")
        self.socket_path = Path(self._dir.name) / "zygote.sock"
        env = {**os.environ, **_SINGLE_THREAD}
        self.proc = subprocess.Popen([self.python, "-m", "medssl_utils.warmkernel", "serve", str(self.socket_path),
                                      ",".join(self.preload)], env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        ready, _, _ = select.select([self.proc.stdout], [], [], self.timeout)
        line = self.proc.stdout.readline() if ready else ""
        if line.strip() != "ready":
            err = ""
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().strip().splitlines()[-1:] or [""]
                err = err[0]
            self.stop()
            raise WarmKernelError(f"the kernel zygote did not start ({line.strip() or 'no answer'}"
                                  f"{'; ' + err if err else ''})")
        self.start_s = time.perf_counter() - t0
        return self

    def kernel_cmd(self, connection_file: str) -> list[str]:
        if self.proc is None or self.proc.poll() is not None:
            raise WarmKernelError("the kernel zygote is not running")
        return [self.python, "-m", "medssl_utils.warmkernel", "launch", str(self.socket_path), "--",
                "-f", str(connection_file)]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None:
            for stream in (self.proc.stdout, self.proc.stderr):
                if stream:
                    stream.close()
        self.proc = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> WarmKernels:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# ============================================================================ messages
def _send(conn: socket.socket, obj: dict, fds: list[int] = ()) -> None:
    data = (json.dumps(obj) + "\n").encode()
    if fds:
        socket.send_fds(conn, [data], list(fds))
    else:
        conn.sendall(data)


def _recv_line(conn: socket.socket, buf: bytearray) -> dict | None:
    while b"\n" not in buf:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        buf.extend(chunk)
    line, _, rest = bytes(buf).partition(b"\n")
    buf[:] = rest
    return json.loads(line)


# ============================================================================ the launcher (kernel command)
def launch(socket_path: str, argv: list[str]) -> int:
    """Ask the zygote for a kernel with ``argv``; stand in for it until it exits; return its exit code."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(socket_path)
    except OSError as exc:
        print(f"medssl warm kernel: cannot reach the zygote at {socket_path}: {exc}", file=sys.stderr)
        return 1
    _send(conn, {"argv": argv, "env": dict(os.environ), "cwd": os.getcwd()}, [0, 1, 2])
    buf = bytearray()
    reply = _recv_line(conn, buf)
    if not reply or "pid" not in reply:
        print(f"medssl warm kernel: the zygote did not start a kernel ({reply})", file=sys.stderr)
        return 1
    child = int(reply["pid"])

    def forward(signum, _frame):
        try:
            os.kill(child, signum)
        except ProcessLookupError:
            pass

    for sig in _FORWARDED:
        signal.signal(sig, forward)
    while True:
        try:
            msg = _recv_line(conn, buf)
        except InterruptedError:
            continue
        if msg is None:  # the zygote went away: take the kernel with us
            forward(signal.SIGKILL, None)
            return 1
        if "exit" in msg:
            return int(msg["exit"])


# ============================================================================ the zygote
def _child(conn: socket.socket, listener: socket.socket, request: dict, fds: list[int]) -> None:
    """In the forked child: become an ipykernel with the launcher's streams, environment and directory."""
    listener.close()
    conn.close()
    for sig in (signal.SIGTERM, signal.SIGCHLD, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for target, fd in zip((0, 1, 2), fds):
        os.dup2(fd, target)
        os.close(fd)
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    threads = request["env"].get("OMP_NUM_THREADS")
    if threads and threads.isdigit():
        import torch

        torch.set_num_threads(int(threads))
    if "" in sys.path:  # as ipykernel_launcher: the kernel's imports do not see the launch directory first
        sys.path.remove("")
    sys.argv = ["ipykernel_launcher", *request["argv"]]
    code = 0
    try:
        from ipykernel import kernelapp

        kernelapp.launch_new_instance()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - reported on the kernel's stderr, like a normal kernel
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve(socket_path: str, preload: list[str]) -> int:
    """The zygote: import ``preload``, then fork a kernel for every launcher that connects."""
    import importlib

    for name in preload:
        importlib.import_module(name)
    if threading.active_count() != 1:
        names = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
        print(f"refused: importing the preload left threads running ({names}); fork would lose them", flush=True)
        return 1
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        print("refused: importing the preload initialised CUDA; a forked kernel could not use the GPUs its "
              "CUDA_VISIBLE_DEVICES names", flush=True)
        return 1
    parent = os.getppid()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_path)
    listener.listen(16)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the kernels; the runner stops the zygote
    children: dict[int, socket.socket] = {}
    print("ready", flush=True)
    try:
        while not stop:
            if os.getppid() != parent:  # the study runner died: nobody will use these kernels
                break
            try:
                readable, _, _ = select.select([listener, *children.values()], [], [], 0.2)
            except InterruptedError:
                continue
            for sock in readable:
                if sock is listener:
                    conn, _ = listener.accept()
                    msg, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
                    buf = bytearray(msg)
                    while b"\n" not in buf:  # a large environment may arrive in several pieces
                        chunk = conn.recv(1 << 20)
                        if not chunk:
                            break
                        buf.extend(chunk)
                    request = json.loads(bytes(buf).decode().strip())
                    pid = os.fork()
                    if pid == 0:
                        _child(conn, listener, request, fds)
                    for fd in fds:
                        os.close(fd)
                    children[pid] = conn
                    _send(conn, {"pid": pid})
                else:  # a launcher closed its connection (it was killed): kill its kernel
                    pid = next(p for p, c in children.items() if c is sock)
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            for pid, conn in list(children.items()):
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    code = os.waitstatus_to_exitcode(status)
                    try:
                        _send(conn, {"exit": code if code >= 0 else 128 - code})
                    except OSError:
                        pass
                    conn.close()
                    del children[pid]
    finally:
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        listener.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) >= 2 and argv[0] == "serve":
        return serve(argv[1], [m for m in (argv[2].split(",") if len(argv) > 2 else []) if m])
    if len(argv) >= 3 and argv[0] == "launch" and argv[2] == "--":
        return launch(argv[1], argv[3:])
    print("usage: python -m medssl_utils.warmkernel serve SOCKET [MODULES] | launch SOCKET -- IPYKERNEL_ARGS",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
