"""Drive a real JupyterLab in a real browser: Debian's chromium through playwright.

Used by ``tests/notebooks/test_browser.py`` and ``benchmarks/notebook_latency.py --browser``. JupyterLab
listens on 127.0.0.1 with a random token; its configuration, settings, workspaces and runtime
files live in a private folder, so nothing of the user's is read or written. The browser is the
system's chromium (``$MEDSSL_CHROMIUM`` or ``chromium`` on PATH): playwright never downloads one.

Every kernel message the page receives is decoded from JupyterLab's websocket (protocol
``v1.kernel.websocket.jupyter.org``), so a test sees errors, status changes and kernel
restarts exactly as the frontend does.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO / "notebooks"


def find_chromium() -> str | None:
    path = os.environ.get("MEDSSL_CHROMIUM")
    if path:
        return path if os.access(path, os.X_OK) else None
    return shutil.which("chromium") or shutil.which("chromium-browser")


def parameterised(name: str, out_dir: Path, **parameters) -> Path:
    """Copy notebook ``name`` into ``out_dir`` with papermill's injected-parameters cell."""
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    import nbformat

    nb = parameterize_notebook(load_notebook_node(str(NOTEBOOKS / name)), parameters, kernel_name="python3",
                               language="python")
    out = Path(out_dir) / name
    nbformat.write(nb, out)
    return out


def decode_frame(buf: bytes) -> dict:
    """One kernel message from a binary websocket frame (offset table, channel, header, parent
    header, metadata, content, buffers)."""
    n = struct.unpack_from("<Q", buf, 0)[0]
    offsets = list(struct.unpack_from(f"<{n}Q", buf, 8)) + [len(buf)]
    parts = [buf[offsets[i]:offsets[i + 1]] for i in range(n)]
    header, parent, _meta, content = (json.loads(p) if p else {} for p in parts[1:5])
    return {"channel": parts[0].decode(), "msg_type": header.get("msg_type"), "msg_id": header.get("msg_id"),
            "parent_type": parent.get("msg_type"), "parent_id": parent.get("msg_id"), "content": content,
            "t": time.monotonic()}


class Lab:
    """A JupyterLab server on 127.0.0.1 serving ``root``; use as a context manager."""

    SETTINGS = {  # no news/update pop-ups; every cell kept in the page (no windowing)
        "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                             "checkForUpdates": False},
        "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    }

    def __init__(self, root: Path, env: dict | None = None, timeout: float = 120.0):
        self.root, self.timeout = Path(root), timeout
        self.private = self.root / ".lab"
        self.token = secrets.token_hex(16)
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "Lab":
        for sub in ("config", "runtime", "workspaces", "settings"):
            (self.private / sub).mkdir(parents=True, exist_ok=True)
        for rel, value in self.SETTINGS.items():
            path = self.private / "settings" / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(value))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**self.env, "JUPYTER_CONFIG_DIR": str(self.private / "config"),
               "JUPYTER_RUNTIME_DIR": str(self.private / "runtime"),
               "JUPYTERLAB_SETTINGS_DIR": str(self.private / "settings"),
               "JUPYTERLAB_WORKSPACES_DIR": str(self.private / "workspaces"),
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{self.env.get('PATH', '')}"}
        cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={self.port}",
               f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.root}",
               "--ServerApp.port_retries=0", "--LabApp.news_url=", "--LabApp.check_for_updates_class="
               "jupyterlab.NeverCheckForUpdate"]
        if os.geteuid() == 0:
            cmd.append("--allow-root")
        self.log_path = self.private / "jupyterlab.log"
        self.proc = subprocess.Popen(cmd, stdout=self.log_path.open("w"), stderr=subprocess.STDOUT, env=env)
        end = time.monotonic() + self.timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                self.api("/api/status")
                return self
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"JupyterLab did not answer within {self.timeout:.0f} s:\n{self.log()[-3000:]}")

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.is_file() else ""

    def api(self, path: str):
        with urllib.request.urlopen(f"{self.url}{path}?token={self.token}", timeout=5) as r:
            return json.loads(r.read())

    def kernel_states(self) -> list[str]:
        return [k["execution_state"] for k in self.api("/api/kernels")]

    def shutdown_kernels(self) -> None:
        for k in self.api("/api/kernels"):
            req = urllib.request.Request(f"{self.url}/api/kernels/{k['id']}?token={self.token}", method="DELETE")
            urllib.request.urlopen(req, timeout=30).close()


class NotebookPage:
    """One notebook open in JupyterLab (a fresh workspace: nothing else open), with every kernel
    message the page received."""

    NOTEBOOK = ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook"

    def __init__(self, lab: Lab, browser, path: Path):
        self.lab, self.path = lab, Path(path)
        self.page = browser.new_page(viewport={"width": 1500, "height": 1100})
        self.messages: list[dict] = []
        self.page.on("websocket", self._watch)
        rel = self.path.relative_to(lab.root).as_posix()
        workspace = f"w{secrets.token_hex(4)}"
        self.page.goto(f"{lab.url}/lab/workspaces/{workspace}/tree/{rel}?reset&token={lab.token}")
        self.page.wait_for_selector(f"{self.NOTEBOOK} .jp-Cell", timeout=90_000)
        self.wait_status("Idle", 90)

    def _watch(self, ws) -> None:
        if "/channels" not in ws.url:
            return

        def received(payload):
            if isinstance(payload, (bytes, bytearray)):
                self.messages.append(decode_frame(bytes(payload)))

        ws.on("framereceived", received)

    def status(self) -> str:
        """The kernel status the status bar shows ("Idle", "Busy", ...)."""
        text = " ".join(self.page.inner_text("#jp-main-statusbar").split())
        for state in ("Busy", "Idle", "Starting", "Restarting", "Dead", "Unknown", "Connecting", "Disconnected"):
            if f"| {state}" in text:
                return state
        return text

    def wait_status(self, state: str, timeout: float) -> None:
        end = time.monotonic() + timeout
        while self.status() != state:
            if time.monotonic() > end:
                raise TimeoutError(f"the status bar shows {self.status()!r}, not {state!r}, after {timeout:.0f} s")
            time.sleep(0.2)

    def run_all_from_menu(self) -> None:
        self.page.click(".lm-MenuBar-itemLabel:text-is('Run')")
        self.page.click(".lm-Menu-itemLabel:text-is('Run All Cells')")

    def prompts(self) -> list[str]:
        return [p.strip() for p in self.page.eval_on_selector_all(
            f"{self.NOTEBOOK} .jp-CodeCell .jp-InputArea-prompt", "els => els.map(e => e.textContent)")]

    def running(self) -> bool:
        return any(p in ("[*]:", "[ ]:") for p in self.prompts())

    def wait_finished(self, timeout: float, during=None) -> None:
        """Wait until every code cell has run (or an error stopped the run); ``during()`` is
        called about every 0.25 s meanwhile."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if during is not None:
                during()
            prompts = self.prompts()
            if self.errors() or self.kernel_restarts():
                return
            if prompts and all(p.startswith("[") and p[1:-2].isdigit() for p in prompts):
                return
            time.sleep(0.25)
        raise TimeoutError(f"cells still running after {timeout:.0f} s: {self.prompts()}")

    def execution_window(self, code: str) -> tuple[float, float | None] | None:
        """(start, end) on ``time.monotonic()`` of the execution of the cell whose code contains
        ``code``, as the kernel reported it (its ``execute_input``, and the main shell's ``idle``
        for that request); end is None while it runs, and None is returned before it starts."""
        start = next((m for m in self.messages if m["msg_type"] == "execute_input"
                      and code in m["content"].get("code", "")), None)
        if start is None:
            return None
        end = next((m["t"] for m in self.messages if m["msg_type"] == "status" and m["parent_id"] == start["parent_id"]
                    and m["content"].get("execution_state") == "idle"), None)
        return start["t"], end

    def errors(self) -> list[str]:
        return [f"{m['content'].get('ename')}: {m['content'].get('evalue')}" for m in self.messages
                if m["msg_type"] == "error"]

    def kernel_restarts(self) -> list[str]:
        dead = [m["content"]["execution_state"] for m in self.messages if m["msg_type"] == "status"
                and m["content"].get("execution_state") in ("restarting", "dead", "autorestarting")]
        dialogs = self.page.eval_on_selector_all(".jp-Dialog", "els => els.map(e => e.innerText)")
        return dead + [d for d in dialogs if "kernel" in d.lower()]

    def widgets_as_text(self) -> list[str]:
        """Outputs that show a widget's Python repr or a rendering failure instead of the widget."""
        texts = self.page.eval_on_selector_all(f"{self.NOTEBOOK} .jp-OutputArea-output",
                                               "els => els.map(e => e.innerText)")
        bad = ("VBox(", "HBox(", "IntSlider(", "Dropdown(", "Image(", "Checkbox(", "HTML(value", "FloatProgress(",
               "IntProgress(", "Loading widget", "Error displaying widget", "Error rendering", "Failed to load model")
        return [t[:200] for t in texts if any(t.lstrip().startswith(b) or b in t[:200] for b in bad)]

    def screenshot(self, path: Path) -> None:
        self.page.screenshot(path=str(path), full_page=True)

    def close(self) -> None:
        self.page.close()


def launch_chromium(playwright, executable: str):
    args = ["--disable-dev-shm-usage", "--disable-gpu"] + (["--no-sandbox"] if os.geteuid() == 0 else [])
    return playwright.chromium.launch(executable_path=executable, args=args, headless=True)


class VolumeBrowserView:
    """The volume browser of ``medssl_utils.widgets`` as shown in the page (CSS hooks
    ``medssl-volume-browser``, ``medssl-caption``, ``medssl-slice``)."""

    STATE_JS = """() => {
      const root = document.querySelector('.medssl-volume-browser');
      const sel = [...root.querySelectorAll('select')].map(
        s => s.selectedOptions[0] ? s.selectedOptions[0].text : null);
      return {case: sel[0], volume: sel[1], z: root.querySelector('.widget-readout').innerText.trim(),
              overlay: root.querySelector('input[type=checkbox]').checked,
              caption: root.querySelector('.medssl-caption').innerText};
    }"""
    REDRAW_JS = """() => { const img = document.querySelector('img.medssl-slice'); const t0 = performance.now();
      window.__redraw = new Promise((resolve, reject) => {
        const obs = new MutationObserver(() => {
          obs.disconnect(); img.decode().then(() => resolve(performance.now() - t0)); });
        obs.observe(img, {attributes: true, attributeFilter: ['src']});
        setTimeout(() => { obs.disconnect(); reject(new Error('no new slice image within 20 s')); }, 20000); }); }"""

    def __init__(self, nb: NotebookPage):
        self.page = nb.page
        self.root = nb.page.locator(".medssl-volume-browser")
        self.case, self.volume = self.root.locator("select").nth(0), self.root.locator("select").nth(1)
        self.handle = self.root.locator(".noUi-handle").first
        self.overlay = self.root.locator("input[type=checkbox]")

    def state(self) -> dict:
        s = self.page.evaluate(self.STATE_JS)
        s["volume"] = " ".join(s["volume"].replace("\u00a0", " ").split())  # dropdowns use non-breaking spaces
        s["caption"] = " ".join(s["caption"].replace("\u00a0", " ").split())
        return s

    @staticmethod
    def volume_id(case: str, volume: str) -> str:
        """The volume id the caption must name for the dropdowns' texts."""
        if volume.startswith(("ED", "ES")):
            return f"{case}_{volume[:2]}"
        if volume.startswith("cine frame "):
            return f"{case}_frame{int(volume.split()[-1]):02d}"
        return volume.split(" ")[0]

    def settled(self, timeout: float = 20.0) -> dict:
        """Wait until the caption names what the widgets select (volume, slice, and the label
        legend exactly when the overlay is on a labelled volume); return that state."""
        end = time.monotonic() + timeout
        while True:
            s = self.state()
            legend = s["overlay"] and s["volume"].startswith(("ED", "ES"))
            if s["caption"].startswith(f"{self.volume_id(s['case'], s['volume'])} slice z={s['z']}/") and \
                    ("\u25a0" in s["caption"]) == legend:
                return s
            if time.monotonic() > end:
                raise AssertionError(f"the browser shows {s['caption']!r} while its widgets select {s}")
            time.sleep(0.1)

    def redraw_s(self, action) -> float:
        """Seconds from a user action to the new slice image decoded in the page."""
        self.page.evaluate(self.REDRAW_JS)
        action()
        return self.page.evaluate("window.__redraw") / 1000.0

    def step_slice(self) -> None:
        """One slice further (back when at the last slice), from the keyboard."""
        top = int(float(self.handle.get_attribute("aria-valuemax")))
        self.handle.press("ArrowRight" if int(self.state()["z"]) < top else "ArrowLeft")


def browser_unavailable(reason: str):
    """Skip the test, or fail it when MEDSSL_REQUIRE_BROWSER=1 (``.ci/run`` sets it)."""
    import pytest

    if os.environ.get("MEDSSL_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason} (MEDSSL_REQUIRE_BROWSER=1)")
    pytest.skip(reason)


def chromium_session():
    """A generator for a pytest fixture: the system chromium through playwright, closed afterwards."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        browser_unavailable("playwright is not installed (pip install -e '.[dev]')")
    chromium = find_chromium()
    if chromium is None:
        browser_unavailable("Debian's chromium is not installed (apt-get install chromium; .ci/run installs it) "
                            "and MEDSSL_CHROMIUM names no browser")
    with sync_playwright() as pw:
        b = launch_chromium(pw, chromium)
        yield b
        b.close()
