"""Progress bars that behave in JupyterLab, in a terminal, and under papermill or CI logs.

In a Jupyter kernel the bar is a widget that updates in place (papermill records it once);
in a terminal it is tqdm's text bar; anywhere else (a log file, CI) it prints at most
``lines`` plain lines, so a long run never floods a log.
"""

from __future__ import annotations

import sys
import time


def _in_kernel() -> bool:
    try:
        from IPython import get_ipython

        shell = get_ipython()
        return shell is not None and shell.__class__.__name__ == "ZMQInteractiveShell"
    except Exception:  # pragma: no cover - IPython missing
        return False


class PlainProgress:
    """A few lines of ``desc: n/total (x%) postfix`` for non-interactive output."""

    def __init__(self, total: int, desc: str = "", lines: int = 10, file=None):
        self.total, self.desc, self.n = max(int(total), 1), desc, 0
        self.every = max(self.total // max(lines, 1), 1)
        self.file = file or sys.stderr
        self.postfix = ""
        self.t0 = time.perf_counter()

    def update(self, k: int = 1) -> None:
        before = self.n // self.every
        self.n += k
        if self.n // self.every != before or self.n >= self.total:
            el = time.perf_counter() - self.t0
            print(f"{self.desc}: {self.n}/{self.total} ({100 * self.n / self.total:.0f}%) "
                  f"{el:.0f}s {self.postfix}".rstrip(), file=self.file, flush=True)

    def set_postfix_str(self, s: str, refresh: bool = True) -> None:
        self.postfix = s

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def progress(total: int, desc: str = "", enabled: bool | str = "auto", initial: int = 0):
    """A progress bar object with ``update(k)``, ``set_postfix_str(s)`` and ``close()``.

    ``enabled``: True / False / ``"auto"`` (on). Disabled returns a bar that prints nothing.
    """
    if enabled is False:
        return PlainProgress(total, desc, lines=0, file=_Null())
    if _in_kernel():
        from tqdm.notebook import tqdm

        return tqdm(total=total, desc=desc, initial=initial, mininterval=1.0)
    if sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, initial=initial, mininterval=0.5)
    bar = PlainProgress(total, desc)
    bar.n = initial
    return bar


class _Null:
    def write(self, *_):
        pass

    def flush(self):
        pass
