"""Interactive browsers for JupyterLab (ipywidgets). Display helpers only: no study logic.

Widget events may run on several threads at once: JupyterLab ≥ 4.4 delivers widget messages
on kernel subshells (threads of their own) while the main thread runs cells, and a kernel
may give each widget its own subshell. So :class:`VolumeBrowser`

* never touches pyplot (its global state is not thread-safe, and ``plt.show`` from an event
  shows whatever figure the running cell is drawing): slices are drawn with numpy and sent
  as PNG bytes to an ``ipywidgets.Image``; the per-volume histogram is a pyplot-free
  ``Figure`` drawn once per volume;
* only records that something changed when an event arrives; one render thread per browser
  draws the *latest* selection and skips every state it never got to (latest wins), so rapid
  changes cannot stack figures, mislabel them or queue seconds of redraws;
* decodes a volume once and keeps the last few (with their display window and histogram),
  so a slice change cuts an array and encodes a PNG: no decoding, no figure, no layout.
"""

from __future__ import annotations

import html
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from medssl_utils import plots
from medssl_utils.data.volume import Volume, VolumeSet

#: One histogram drawing at a time across browsers (matplotlib text layout shares caches).
_FIGURE_LOCK = threading.Lock()


@dataclass
class _Shown:
    """A decoded volume as the browser shows it."""

    image: np.ndarray
    label: np.ndarray | None
    vmin: float
    vmax: float
    scale: int
    histogram_png: bytes


class VolumeBrowser:
    """Browse a dataset: case → volume (phase / frame) → slice, with mask overlay and histogram.

    ``VolumeBrowser(load_dataset("phantom:cardiac")).show()`` in a notebook. ``keep`` decoded
    volumes stay in memory (least recently shown dropped first); ``display_px`` is the
    approximate size of the slice image on screen. ``wait()`` blocks until the shown image
    matches the widgets (for scripts and tests); ``close()`` stops the render thread.
    """

    def __init__(self, vs: VolumeSet, *, keep: int = 6, display_px: int = 320):
        import ipywidgets as w

        if not vs.volumes:
            raise ValueError(f"{vs.spec}: no volumes to browse")
        self.vs, self.keep, self.display_px = vs, max(int(keep), 1), display_px
        self._by_case: dict[str, list[Volume]] = {}
        for v in vs.volumes:
            self._by_case.setdefault(v.case_id, []).append(v)
        cases = list(self._by_case)
        self.case = w.Dropdown(options=cases, value=cases[0], description="case")
        self.volume = w.Dropdown(description="volume")
        self.z = w.IntSlider(min=0, max=0, value=0, description="slice")
        self.overlay = w.Checkbox(value=True, description="mask overlay")
        self.caption = w.HTML()
        self.image = w.Image(format="png")
        self.histogram = w.Image(format="png")
        rows = [w.HBox([self.case, self.volume]), w.HBox([self.z, self.overlay]), self.caption,
                w.HBox([self.image, self.histogram], layout=w.Layout(align_items="center"))]
        self.widget = w.VBox(rows)
        for wdg, css in ((self.widget, "medssl-volume-browser"), (self.caption, "medssl-caption"),
                         (self.image, "medssl-slice"), (self.histogram, "medssl-histogram")):
            wdg.add_class(css)  # stable hooks for the browser test (tests/notebooks/test_browser.py)
        self._widgets = [self.case, self.volume, self.z, self.overlay, self.caption, self.image, self.histogram,
                         rows[0], rows[1], rows[3], self.widget]
        self.renders = 0  # images drawn so far (fewer than events when changes come quickly)
        self.last_error: str | None = None
        self._state = threading.RLock()  # widget values: changed and read as a whole
        self._quiet = threading.local()  # set while a handler adjusts dependent widgets
        self._wake = threading.Condition()
        self._pending = self._busy = self._closed = False
        self._decoded: OrderedDict[str, _Shown] = OrderedDict()
        with self._state:
            self._select_case()
        self.case.observe(self._on_case, names="value")
        self.volume.observe(self._on_volume, names="value")
        self.z.observe(self._on_view, names="value")
        self.overlay.observe(self._on_view, names="value")
        self._thread = threading.Thread(target=self._render_loop, name="medssl-volume-browser", daemon=True)
        self._thread.start()
        self._request()

    # ---- events: adjust dependent widgets, then ask for a redraw -------------------------

    def _is_quiet(self) -> bool:
        return getattr(self._quiet, "on", False)

    def _select_case(self) -> None:
        vols = self._by_case[self.case.value]
        self._quiet.on = True
        try:
            self.volume.options = [(self._describe(v), i) for i, v in enumerate(vols)]
            self.volume.value = 0
            self._fit_slider(vols[0])
        finally:
            self._quiet.on = False

    def _fit_slider(self, vol: Volume) -> None:
        self.z.max = vol.shape[2] - 1
        self.z.value = vol.shape[2] // 2

    def _on_case(self, _change=None) -> None:
        with self._state:
            self._select_case()
        self._request()

    def _on_volume(self, _change=None) -> None:
        if self._is_quiet():
            return
        with self._state:
            self._quiet.on = True
            try:
                self._fit_slider(self._current()[0])
            finally:
                self._quiet.on = False
        self._request()

    def _on_view(self, _change=None) -> None:
        if not self._is_quiet():
            self._request()

    @staticmethod
    def _describe(v: Volume) -> str:
        phase = v.meta.get("phase")
        if phase in ("ED", "ES"):
            return f"{phase} (frame {v.meta.get('frame')})" + ("" if v.has_label else ", no label")
        if phase == "cine":
            return f"cine frame {v.meta.get('frame')}"
        return v.volume_id + ("" if v.has_label else " (no label)")

    def _current(self) -> tuple[Volume, int, bool]:
        with self._state:
            vols = self._by_case[self.case.value]
            i = self.volume.value if isinstance(self.volume.value, int) else 0
            return vols[min(i, len(vols) - 1)], int(self.z.value), bool(self.overlay.value)

    # ---- rendering: one thread, latest state wins ----------------------------------------

    def _request(self) -> None:
        with self._wake:
            self._pending = True
            self._wake.notify_all()

    def _render_loop(self) -> None:
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self._pending or self._closed)
                if self._closed:
                    return
                self._pending, self._busy = False, True
            try:
                self._render(*self._current())
            except Exception as exc:  # shown in the browser and kept in last_error, never swallowed
                first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                self.last_error = f"{type(exc).__name__}: {first_line}"
                self.caption.value = (f'<span style="color:#b00020">cannot show this volume: '
                                      f"{html.escape(self.last_error)}</span>")
            finally:
                with self._wake:
                    self._busy = False
                    self.renders += 1
                    self._wake.notify_all()

    def _shown(self, vol: Volume) -> _Shown:
        key = vol.volume_id
        if key in self._decoded:
            self._decoded.move_to_end(key)
            return self._decoded[key]
        image, label = vol.load()
        vmin, vmax = (float(q) for q in np.percentile(image, (1, 99)))
        with _FIGURE_LOCK:
            hist = plots.figure_png(plots.histogram_figure(image, label, label_names=self.vs.labels))
        shown = _Shown(image, label, vmin, vmax if vmax > vmin else vmin + 1.0,
                       max(1, round(self.display_px / max(image.shape[:2]))), hist)
        self._decoded[key] = shown
        while len(self._decoded) > self.keep:
            self._decoded.popitem(last=False)
        return shown

    def _render(self, vol: Volume, z: int, overlay: bool) -> None:
        shown = self._shown(vol)
        n_z = shown.image.shape[2]
        z = min(max(z, 0), n_z - 1)
        label = shown.label[:, :, z] if (overlay and shown.label is not None) else None
        self.image.value = plots.png_bytes(plots.slice_rgb(shown.image[:, :, z], label, vmin=shown.vmin,
                                                           vmax=shown.vmax, scale=shown.scale))
        if self.histogram.value != shown.histogram_png:
            self.histogram.value = shown.histogram_png
        spacing = ", ".join(f"{s:.2f}" for s in vol.spacing)
        legend = f" &nbsp; {plots.legend_html(self.vs.labels)}" if label is not None else ""
        self.caption.value = (f"<b>{html.escape(vol.volume_id)}</b> &nbsp; slice z={z}/{n_z - 1} &nbsp; "
                              f"spacing ({spacing}) mm{legend}")
        self.last_error = None

    # ---- public ---------------------------------------------------------------------------

    def state(self) -> tuple[str, int, bool]:
        """(volume id, slice z, overlay) that the widgets select now."""
        vol, z, overlay = self._current()
        return vol.volume_id, z, overlay

    def wait(self, timeout: float = 30.0) -> bool:
        """Block until the image shows the widgets' current state; False if ``timeout`` passed."""
        with self._wake:
            return self._wake.wait_for(lambda: not (self._pending or self._busy), timeout)

    def show(self):
        from IPython.display import display

        display(self.widget)
        return self

    def close(self) -> None:
        """Stop the render thread and close the widgets."""
        with self._wake:
            self._closed = True
            self._wake.notify_all()
        self._thread.join(timeout=10)
        for wdg in self._widgets:
            wdg.close()
