"""Display helpers: the volume browser under concurrent widget events, figures, tables, progress."""

from __future__ import annotations

import random
import threading

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from medssl_utils import plots, progress  # noqa: E402
from medssl_utils.data import load_dataset  # noqa: E402
from medssl_utils.errors import DataError  # noqa: E402
from medssl_utils.widgets import VolumeBrowser  # noqa: E402

DATA = "phantom:cardiac?cases=4"


@pytest.fixture
def browser():
    b = VolumeBrowser(load_dataset(DATA))
    assert b.wait(60)
    yield b
    b.close()


def expected_png(b: VolumeBrowser) -> bytes:
    """What the image must show for the widgets' current state, drawn independently (from a
    separate listing of the dataset, so the browser's own volumes are not touched)."""
    volume_id, z, overlay = b.state()
    vol = next(v for v in load_dataset(DATA).volumes if v.volume_id == volume_id)
    image, label = vol.load()
    vmin, vmax = np.percentile(image, (1, 99))
    return plots.png_bytes(plots.slice_rgb(image[:, :, z], label[:, :, z] if overlay and label is not None else None,
                                           vmin=float(vmin), vmax=float(vmax),
                                           scale=max(1, round(b.display_px / max(image.shape[:2])))))


def test_browser_latest_selection_wins_under_concurrent_events(browser):
    """Four threads change case, volume, slice and overlay at random (as widget messages on
    kernel subshells can): afterwards the image and caption show exactly the final selection,
    stale states were skipped, nothing failed, and pyplot was never used."""
    b = browser
    plt.close("all")
    events = 0

    def hammer(seed):
        nonlocal events
        r = random.Random(seed)
        for _ in range(60):
            what = r.choice(["case", "volume", "z", "z", "overlay"])
            if what == "case":
                b.case.value = r.choice(b.case.options)
            elif what == "volume":
                b.volume.value = r.choice([i for _, i in b.volume.options])
            elif what == "z":
                b.z.value = r.randint(0, b.z.max)
            else:
                b.overlay.value = not b.overlay.value
            events += 1

    before = b.renders
    threads = [threading.Thread(target=hammer, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert b.wait(60)
    volume_id, z, _ = b.state()
    assert b.last_error is None
    assert f"<b>{volume_id}</b>" in b.caption.value and f"slice z={z}/{b.z.max}" in b.caption.value
    assert b.image.value == expected_png(b)
    assert 1 <= b.renders - before < events  # latest wins: most intermediate states were never drawn
    assert plt.get_fignums() == []


def test_browser_decodes_a_volume_once_and_a_slice_change_only_cuts_it(browser, monkeypatch):
    b = browser
    decoded = []
    for v in b.vs.volumes:
        real = v.load_image
        monkeypatch.setattr(v, "load_image", lambda real=real, v=v: decoded.append(v.volume_id) or real())
    for z in range(b.z.max + 1):
        b.z.value = z
        assert b.wait(30)
        assert b.image.value == expected_png(b)
    assert decoded == []  # the volume shown first was decoded when the browser opened
    b.case.value = b.case.options[1]
    assert b.wait(30)
    b.case.value = b.case.options[0]
    assert b.wait(30)
    assert decoded == [f"{b.case.options[1]}_ED"]  # the first case is still kept: not decoded again


def test_browser_shows_a_volume_it_cannot_read(browser, monkeypatch):
    b = browser
    broken = b._by_case[b.case.options[1]][0]

    def fail():
        raise DataError(f"{broken.volume_id}.nii.gz: truncated file")

    monkeypatch.setattr(broken, "load_image", fail)
    b.case.value = b.case.options[1]
    assert b.wait(30)
    assert b.last_error == f"DataError: {broken.volume_id}.nii.gz: truncated file"
    assert "cannot show this volume" in b.caption.value and "truncated file" in b.caption.value
    b.case.value = b.case.options[0]  # the browser keeps working
    assert b.wait(30) and b.last_error is None and b.image.value == expected_png(b)


def test_browser_refuses_an_empty_dataset():
    vs = load_dataset(DATA).select(lambda v: False)
    with pytest.raises(ValueError, match="no volumes to browse"):
        VolumeBrowser(vs)


def test_slice_rgb_orientation_and_overlay():
    image = np.zeros((4, 3), np.float32)
    image[0, 0] = 1.0  # voxel x=0, y=0: drawn bottom-left, as imshow(slice.T, origin="lower")
    label = np.zeros((4, 3), np.uint8)
    label[3, 2] = 2  # x=3, y=2: top-right, label 2's colour blended at alpha 0.4
    rgb = plots.slice_rgb(image, label, vmin=0.0, vmax=1.0, scale=2)
    assert rgb.shape == (6, 8, 3) and rgb.dtype == np.uint8
    assert (rgb[-2:, :2] == 255).all() and (rgb[:2, 2:6] == 0).all()
    green = np.array([0x4D, 0xAF, 0x4A])
    np.testing.assert_array_equal(rgb[0, -1], np.round(0.4 * green).astype(np.uint8))


def test_histogram_figure_is_labelled_and_free_of_mathtext():
    rng = np.random.default_rng(0)
    image = rng.normal(100, 20, (8, 8, 3)).astype(np.float32)
    label = (image > 110).astype(np.uint8)
    fig = plots.histogram_figure(image, label, label_names={0: "bg", 1: "LV"})
    fig.canvas.draw()
    ax = fig.axes[0]
    assert ax.get_xlabel() and ax.get_ylabel()
    ticks = [t.get_text() for t in ax.get_yticklabels() + ax.get_xticklabels()]
    assert not any("$" in t for t in ticks)  # mathtext's parser is shared and not thread-safe
    assert plots.figure_png(fig).startswith(b"\x89PNG") and plt.get_fignums() == []


def test_notebook_figures_label_their_axes_and_rows():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(8, 8, 4)).astype(np.float32)
    fig = plots.normalisation_histograms(image, image[:, :, 0], title="v")
    assert all(ax.get_xlabel() for ax in fig.axes)
    gt = (image > 0).astype(np.uint8)
    fig = plots.prediction_figure(image, gt, gt, label_names={0: "bg", 1: "LV"}, n=2)
    texts = {t.get_text() for ax in fig.axes for t in ax.texts}
    assert {"image", "ground truth", "prediction"} <= texts
    plt.close("all")


def test_structure_table_shows_counts_as_integers():
    result = {"test": {"per_label": {"RV": {"dice_mean": 0.51234, "dice_std": 0.1, "hd_mean": 9.0, "hd95_mean": 7.0,
                                            "hd95_std": 1.0, "n": 12, "n_missed": 0, "n_undefined_hd": 1}},
                       "slice_iou": {"RV": 0.4, "work_a_mean_iou": 0.3}}}
    table = plots.structure_table(result)
    assert table.loc["RV", "n"] == 12 and str(table["n"].dtype) == "Int64"
    assert "12.0" not in table.to_string() and "0.0 " not in table.to_string()
    assert table.loc["RV", "dice_mean"] == 0.512 and table.loc["RV", "slice_IoU"] == 0.4


def test_run_summary_reports_time_over_all_sessions():
    result = {"status": "complete", "lineage_name": "random", "steps": 300, "epochs": 12.5, "device": "cpu",
              "timings": {"total_s": 754.2, "images_per_s": 6.1, "resumed_at_step": 150}}
    line = plots.run_summary(result)
    assert "12 min 34 s" in line and "resumed at step 150" in line and "300 steps" in line
    assert "resumed" not in plots.run_summary({**result, "timings": {"total_s": 56.0}})
    assert plots.duration(3725) == "1 h 02 min"


class _Handle:
    def __init__(self, shown):
        self.shown = shown

    def update(self, obj):
        self.shown.append(obj.data)


def test_kernel_progress_is_one_html_output_updated_in_place(monkeypatch):
    """In a kernel the bar is a display updated in place, not a widget: opening a widget's comm
    mid-cell makes JupyterLab ask for a subshell, whose status messages turned the kernel's
    state to "idle" while training ran (see medssl_utils.progress)."""
    import IPython.display

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda obj, display_id=None: shown.append(obj.data)
                        or _Handle(shown))
    monkeypatch.setattr(progress, "_in_kernel", lambda: True)
    clock = {"t": 0.0}
    monkeypatch.setattr(progress.time, "perf_counter", lambda: clock["t"])
    bar = progress.progress(10, "fine-tune <run>", initial=2)
    assert isinstance(bar, progress.HtmlProgress) and len(shown) == 1
    bar.update(1)  # within the refresh interval: not redrawn
    assert len(shown) == 1
    clock["t"] = 4.0
    bar.update(1)
    assert len(shown) == 2 and 'value="4" max="10"' in shown[-1] and "0.50 it/s" in shown[-1]
    bar.set_postfix_str("loss 0.5")
    bar.update(6)  # reaching the total always redraws
    assert 'value="10"' in shown[-1] and "10/10 (100%)" in shown[-1] and "loss 0.5" in shown[-1]
    assert "fine-tune &lt;run&gt;" in shown[-1]
    bar.close()
    assert len(shown) == 4
