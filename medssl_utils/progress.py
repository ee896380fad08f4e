"""Progress bars that behave in JupyterLab, in a terminal, and under papermill or CI logs.

In a Jupyter kernel the bar is one HTML output updated in place (``update_display_data``;
papermill records its last state); in a terminal it is tqdm's text bar; anywhere else (a log
file, CI) it prints at most ``lines`` plain lines, so a long run never floods a log.

Why not a widget (tqdm.notebook) in a kernel: JupyterLab ≥ 4.4 sends widget messages over
kernel subshells, and the first widget a kernel shows makes the frontend send a
``create_subshell_request`` on the control channel. ipykernel answers it with its own
``status: busy`` / ``status: idle`` pair, and both JupyterLab's status bar and the server's
``/api/kernels`` take that ``idle`` as the kernel's state: a training cell whose progress bar
was the first widget then showed "Idle" until it finished. A display update opens no comm,
so the kernel stays "busy" for as long as the cell runs.
"""

from __future__ import annotations

import html
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


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m:02d}:{s:02d}"


class HtmlProgress:
    """A progress bar for a Jupyter kernel: one HTML output, redrawn in place at most every
    ``min_interval`` seconds (and always when it reaches ``total`` or closes)."""

    def __init__(self, total: int, desc: str = "", initial: int = 0, min_interval: float = 0.5):
        from IPython.display import HTML, display

        self.total, self.desc, self.n, self.start = max(int(total), 1), desc, int(initial), int(initial)
        self.postfix, self.min_interval = "", min_interval
        self.t0 = self._shown = time.perf_counter()
        self._HTML = HTML
        self._handle = display(HTML(self.html()), display_id=True)

    def html(self) -> str:
        el = time.perf_counter() - self.t0
        rate = (self.n - self.start) / el if el > 0 else 0.0
        eta = f" &lt; {_clock((self.total - self.n) / rate)}" if rate > 0 and self.n < self.total else ""
        speed = f", {rate:.2f} it/s" if rate > 0 else ""
        text = (f"{html.escape(self.desc)}: {self.n}/{self.total} ({100 * self.n / self.total:.0f}%) "
                f"[{_clock(el)}{eta}{speed}] {html.escape(self.postfix)}").rstrip()
        return (f'<div class="medssl-progress"><progress value="{min(self.n, self.total)}" max="{self.total}" '
                f'style="width: 16em; vertical-align: middle"></progress> <span>{text}</span></div>')

    def refresh(self) -> None:
        self._shown = time.perf_counter()
        self._handle.update(self._HTML(self.html()))

    def update(self, k: int = 1) -> None:
        self.n += k
        if self.n >= self.total or time.perf_counter() - self._shown >= self.min_interval:
            self.refresh()

    def set_postfix_str(self, s: str, refresh: bool = True) -> None:
        self.postfix = s
        if refresh and time.perf_counter() - self._shown >= self.min_interval:
            self.refresh()

    def close(self) -> None:
        self.refresh()

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
        return HtmlProgress(total, desc, initial=initial)
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
