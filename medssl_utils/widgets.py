"""Interactive browsers for JupyterLab (ipywidgets). Display helpers only: no study logic."""

from __future__ import annotations

import matplotlib.pyplot as plt

from medssl_utils.data.volume import VolumeSet
from medssl_utils.plots import volume_panel


class VolumeBrowser:
    """Browse a dataset: case → volume (phase / frame) → slice, with mask overlay and histogram.

    ``VolumeBrowser(load_dataset("phantom:cardiac")).show()`` in a notebook. Volumes are
    decoded on demand and the last one is kept, so browsing a large dataset stays cheap.
    """

    def __init__(self, vs: VolumeSet):
        import ipywidgets as w

        if not vs.volumes:
            raise ValueError(f"{vs.spec}: no volumes to browse")
        self.vs = vs
        self._by_case: dict[str, list] = {}
        for v in vs.volumes:
            self._by_case.setdefault(v.case_id, []).append(v)
        self._loaded: tuple | None = None
        cases = list(self._by_case)
        self.case = w.Dropdown(options=cases, value=cases[0], description="case")
        self.volume = w.Dropdown(description="volume")
        self.z = w.IntSlider(min=0, max=0, value=0, description="slice", continuous_update=False)
        self.overlay = w.Checkbox(value=True, description="mask overlay")
        self.out = w.Output()
        self.case.observe(self._on_case, names="value")
        self.volume.observe(self._on_volume, names="value")
        for ctrl in (self.z, self.overlay):
            ctrl.observe(lambda _: self.draw(), names="value")
        self._on_case()
        self.widget = w.VBox([w.HBox([self.case, self.volume]), w.HBox([self.z, self.overlay]), self.out])

    def _on_case(self, *_):
        vols = self._by_case[self.case.value]
        self.volume.options = [(self._describe(v), i) for i, v in enumerate(vols)]
        self.volume.value = 0
        self._on_volume()

    @staticmethod
    def _describe(v) -> str:
        phase = v.meta.get("phase")
        if phase in ("ED", "ES"):
            return f"{phase} (frame {v.meta.get('frame')})" + ("" if v.has_label else ", no label")
        if phase == "cine":
            return f"cine frame {v.meta.get('frame')}"
        return v.volume_id + ("" if v.has_label else " (no label)")

    def _on_volume(self, *_):
        vol = self._by_case[self.case.value][self.volume.value or 0]
        self._loaded = (vol, *vol.load())
        self.z.max = vol.shape[2] - 1
        self.z.value = vol.shape[2] // 2
        self.draw()

    def draw(self):
        vol, image, label = self._loaded
        with self.out:
            self.out.clear_output(wait=True)
            fig = volume_panel(image, label, self.z.value, label_names=self.vs.labels, overlay=self.overlay.value,
                               title=f"{vol.volume_id}  z={self.z.value}/{vol.shape[2] - 1}  "
                                     f"spacing {tuple(round(s, 2) for s in vol.spacing)} mm")
            plt.show(fig)

    def show(self):
        from IPython.display import display

        display(self.widget)
        return self
