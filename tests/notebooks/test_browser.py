"""The notebooks as a class uses them: a real JupyterLab, driven in Debian's chromium.

At toy size (encoder ``test_resnet``, 32 px, ``phantom:cardiac?cases=4``): ``00_explore_data``
and ``02_finetune`` are run from JupyterLab's Run menu, every widget of the volume browser is
changed quickly, twice in a row, and the test fails on any error output, a kernel death or
restart, a widget rendered as text, a browser that shows another selection than its widgets,
a slice redraw slower than ``REDRAW_LIMIT_S``, or a kernel reported "Idle" while a cell trains.

``REDRAW_LIMIT_S`` is 5× the 0.3 s target: the suite shares two cores with everything else, and
the real figure is measured by ``benchmarks/notebook_latency.py`` (README, "Using it in
JupyterLab"). Screenshots, the kernel messages and JupyterLab's log of a failing test are kept
in ``$MEDSSL_TEST_ARTIFACTS`` (default ``test-artifacts/browser/`` in the repository).

Needs Debian's ``chromium`` (``.ci/run`` installs it when missing) and playwright (dev extra);
without them the test is skipped with the reason, except where ``MEDSSL_REQUIRE_BROWSER=1``
(CI), where it fails.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from labdriver import REPO, Lab, NotebookPage, VolumeBrowserView, chromium_session, parameterised

REDRAW_TARGET_S = 0.3
REDRAW_LIMIT_S = 5 * REDRAW_TARGET_S
ARTEFACTS = Path(os.environ.get("MEDSSL_TEST_ARTIFACTS", REPO / "test-artifacts" / "browser"))
TOY = dict(encoder="test_resnet", image_size=32, decoder_channels=[16, 8, 8, 8, 8], device="cpu", probe_slices=8,
           probe_val_slices=8, probe_steps=10)
CARDIAC = "phantom:cardiac?cases=4"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser():
    yield from chromium_session()


@pytest.fixture(scope="module")
def lab(tmp_path_factory, browser):  # the browser first: without one, skip before starting a server
    root = tmp_path_factory.mktemp("lab")
    with Lab(root) as server:
        yield server


@pytest.fixture
def open_notebook(lab, browser):
    """Open a notebook in its own page; afterwards close the page and shut its kernel down."""
    pages = []

    def opener(path):
        pages.append(NotebookPage(lab, browser, path))
        return pages[-1]

    yield opener
    for nb in pages:
        nb.close()
    lab.shutdown_kernels()


@contextmanager
def artefacts_on_failure(lab: Lab, nb: NotebookPage, name: str, facts: dict):
    try:
        yield
    except BaseException:
        out = ARTEFACTS / name
        out.mkdir(parents=True, exist_ok=True)
        try:
            nb.screenshot(out / "page.png")
        except Exception as exc:  # the page itself may be gone; keep what can be kept
            (out / "screenshot-error.txt").write_text(repr(exc))
        (out / "kernel-messages.json").write_text(json.dumps(nb.messages, indent=1, default=str))
        (out / "facts.json").write_text(json.dumps(facts, indent=1, default=str))
        (out / "jupyterlab.log").write_text(lab.log())
        raise


def _assert_clean(nb: NotebookPage, lab: Lab) -> None:
    assert not nb.errors(), f"error outputs: {nb.errors()}"
    assert not nb.kernel_restarts(), f"the kernel died or restarted: {nb.kernel_restarts()}"
    assert "restarting kernel" not in lab.log().lower(), "JupyterLab's log says the kernel restarted"
    assert not nb.widgets_as_text(), f"widgets rendered as text: {nb.widgets_as_text()}"


# ------------------------------------------------------------------------------ 00_explore_data

def test_explore_data_in_jupyterlab(lab, open_notebook):
    path = parameterised("00_explore_data.ipynb", lab.root, dataset=CARDIAC, image_size=32, n_views=2,
                         gallery=[CARDIAC, "phantom:abdomen-ct?cases=2", "natural?quadrants=0"])
    nb = open_notebook(path)
    facts: dict = {"redraw_s": []}
    with artefacts_on_failure(lab, nb, "00_explore_data", facts):
        nb.run_all_from_menu()
        nb.page.wait_for_selector("img.medssl-slice", timeout=180_000)
        view = VolumeBrowserView(nb)

        def burst(i: int) -> None:  # every widget, quickly, twice in a row
            n_cases = view.case.locator("option").count()
            view.handle.press("ArrowRight")
            view.case.select_option(index=(1 + i) % n_cases)
            view.case.select_option(index=(2 + i) % n_cases)
            view.volume.select_option(index=1)
            view.volume.select_option(index=2)
            view.handle.press("ArrowLeft")
            view.handle.press("ArrowLeft")
            for _ in range(3):
                view.overlay.click()

        burst(0)  # while the later cells still run and draw their own figures on the main thread
        facts["during_run_all"] = not all(p.startswith("[") and p[1:-2].isdigit() for p in nb.prompts())
        nb.wait_finished(240)
        _assert_clean(nb, lab)
        facts["burst0"] = view.settled()
        assert view.root.count() == 1, "the volume browser is not shown as a widget"
        assert view.root.locator("select").count() == 2 and view.root.locator(".widget-slider").count() == 1
        assert view.overlay.count() == 1
        for img in ("img.medssl-slice", "img.medssl-histogram"):
            assert nb.page.evaluate(f"() => document.querySelector('{img}').naturalWidth") > 0, img
        assert nb.page.locator(f"{nb.NOTEBOOK} .jp-OutputArea-output img").count() >= 5  # strip … augmentations
        for i in (1, 2):
            burst(i)
            facts[f"burst{i}"] = view.settled()
        assert [facts[f"burst{i}"]["overlay"] for i in range(3)] == [False, True, False]  # 3 clicks each
        for _ in range(6):  # single slice changes: the redraw as the student sees it
            facts["redraw_s"].append(view.redraw_s(view.step_slice))
            view.settled()
        facts["case_change_s"] = view.redraw_s(lambda: view.case.select_option(index=0))
        view.settled()
        _assert_clean(nb, lab)
        assert "cannot show" not in view.state()["caption"] and view.root.count() == 1  # no stacked copies
        print(f"\nbrowser redraw after a slice change: median {statistics.median(facts['redraw_s']):.3f} s, "
              f"max {max(facts['redraw_s']):.3f} s (target {REDRAW_TARGET_S} s); case change "
              f"{facts['case_change_s']:.3f} s; first burst while cells still ran: {facts['during_run_all']}")
        assert max(facts["redraw_s"]) <= REDRAW_LIMIT_S, f"slice redraws took {facts['redraw_s']} s"


# ------------------------------------------------------------------------------ 02_finetune

def test_finetune_in_jupyterlab_shows_busy_while_training(lab, open_notebook):
    # As when a student re-opens the notebook: the slices are cached, so the training cell is the
    # first to show progress (a progress *widget* there made JupyterLab report "Idle": progress.py).
    # 120 steps keep the training cell running for several seconds on a fast machine too (30 steps
    # took 2.1 s on an AVX-512 CPU: too short to sample the status bar three times inside it).
    from medssl_utils.data import load_dataset, slice_cache

    slice_cache(load_dataset(CARDIAC).labelled(), image_size=TOY["image_size"])
    path = parameterised("02_finetune.ipynb", lab.root, dataset=CARDIAC, init="random", labelled_slices=6,
                         max_steps=120, eval_every=40, batch_size=4, lr=1e-3, seed=0,
                         run_dir=str(lab.root / "runs" / "ft"), **TOY)
    nb = open_notebook(path)
    facts: dict = {"samples": []}
    call = "training.finetune(cfg)"

    def sample():  # the status as the student sees it, and as the server's API says
        window = nb.execution_window(call)
        if window is not None and window[1] is None:
            facts["samples"].append({"t": time.monotonic(), "status_bar": nb.status(), "api": lab.kernel_states()})

    with artefacts_on_failure(lab, nb, "02_finetune", facts):
        nb.run_all_from_menu()
        nb.wait_finished(300, during=sample)
        _assert_clean(nb, lab)
        start, end = nb.execution_window(call)
        facts["training_cell_s"] = end - start
        # Samples well inside the cell's execution (the page may show its end a moment before the
        # kernel's "idle" reaches this process): all must say busy.
        mid = [s for s in facts["samples"] if start + 0.5 < s["t"] < end - 1.0]
        assert len(mid) >= 3, f"too few samples while the training cell ran to judge the status: {facts}"
        wrong = [s for s in mid if s["status_bar"] != "Busy" or s["api"] != ["busy"]]
        assert not wrong, f"the kernel was reported idle while a cell trained: {wrong}"
        assert nb.page.locator(f"{nb.NOTEBOOK} .medssl-progress").count() == 1  # one bar, updated in place
        assert nb.page.locator(f"{nb.NOTEBOOK} .jp-OutputArea-output img").count() >= 3  # budget, curves, predictions
        text = nb.page.inner_text(nb.NOTEBOOK)
        assert "agrees with medssl's reference" in text and "120 steps" in text
        print(f"\ntraining cell {facts['training_cell_s']:.1f} s, {len(mid)} status samples, all busy")
