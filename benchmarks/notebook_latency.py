"""How the notebooks feel in JupyterLab: volume-browser redraws and 00_explore_data's first open.

    python benchmarks/notebook_latency.py [--dataset SPEC] [--repeat N] [--browser] [--skip-first-open]
                                          [--out FILE]

Measures:
  kernel     in a real Jupyter kernel (started by nbclient), the VolumeBrowser of 00_explore_data on
             ``--dataset``: from setting a widget's value to the new PNG sent to the frontend —
             slice changes (every slice of a few volumes, target <= 0.3 s), volume changes within a
             case (decode + histogram) and case changes
  first open executing 00_explore_data with its defaults (``--dataset`` as its dataset and first
             gallery entry) with papermill from an EMPTY cache folder, ``--repeat`` times, kernel
             start included (target <= 60 s)
  browser    (``--browser``) the same notebook run from JupyterLab's Run menu in Debian's chromium,
             then single slice changes from the keyboard: seconds until the new image is decoded in
             the page (tests/notebooks/labdriver.py)
Every part works in temporary cache folders (the user's cache is never read or written). Numbers
come from this run only; say whether the machine was otherwise idle when quoting them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "00_explore_data.ipynb"

KERNEL_CODE = r"""
import json, time
from medssl_utils import data
from medssl_utils.widgets import VolumeBrowser

b = VolumeBrowser(data.load_dataset({dataset!r}))
b.wait(120)

def timed(change):
    t = time.perf_counter(); change(); b.wait(120); return time.perf_counter() - t

out = {{"slice": [], "volume": [], "case": []}}
for case in list(b.case.options)[:3]:
    out["case"].append(timed(lambda: setattr(b.case, "value", case)))
    for z in [z for z in range(b.z.max + 1) if z != b.z.value]:
        out["slice"].append(timed(lambda: setattr(b.z, "value", z)))
    for i in [i for _, i in b.volume.options][1:4]:
        out["volume"].append(timed(lambda: setattr(b.volume, "value", i)))
out["errors"] = b.last_error
print("RESULT" + json.dumps(out))
"""


def summary(values: list[float]) -> dict:
    v = sorted(values)
    return {"n": len(v), "median_s": round(statistics.median(v), 4), "p90_s": round(v[int(0.9 * (len(v) - 1))], 4),
            "max_s": round(v[-1], 4)}


def kernel_redraws(dataset: str) -> dict:
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(KERNEL_CODE.format(dataset=dataset))])
    NotebookClient(nb, kernel_name="python3", timeout=1200).execute()
    text = "".join(o.get("text", "") for o in nb.cells[0].outputs if o.get("output_type") == "stream")
    raw = json.loads(text.split("RESULT", 1)[1])
    if raw["errors"]:
        raise RuntimeError(f"the browser failed: {raw['errors']}")
    return {k: summary(v) for k, v in raw.items() if k != "errors"}


def notebook_defaults() -> dict:
    """The values of 00_explore_data's parameters cell."""
    from papermill.iorw import load_notebook_node

    cells = load_notebook_node(str(NOTEBOOK)).cells
    namespace: dict = {}
    exec(next(c for c in cells if "parameters" in c.metadata.get("tags", [])).source, namespace)
    return namespace


def first_open(dataset: str, repeat: int) -> list[float]:
    import papermill as pm

    gallery = [dataset] + notebook_defaults()["gallery"][1:]
    times = []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory(prefix="medssl-first-open-") as cache:
            os.environ["MEDSSL_CACHE_DIR"] = cache
            t = time.perf_counter()
            pm.execute_notebook(str(NOTEBOOK), str(Path(cache) / "out.ipynb"), cwd=cache, kernel_name="python3",
                                parameters={"dataset": dataset, "gallery": gallery}, progress_bar=False)
            times.append(round(time.perf_counter() - t, 1))
            print(f"first open from an empty cache: {times[-1]} s", flush=True)
    return times


def browser_redraws(dataset: str, n: int = 12) -> dict:
    sys.path.insert(0, str(REPO / "tests" / "notebooks"))
    from labdriver import Lab, NotebookPage, VolumeBrowserView, find_chromium, launch_chromium, parameterised
    from playwright.sync_api import sync_playwright

    chromium = find_chromium()
    if chromium is None:
        raise SystemExit("--browser needs Debian's chromium (apt-get install chromium) or MEDSSL_CHROMIUM")
    with tempfile.TemporaryDirectory(prefix="medssl-lab-") as root, Lab(Path(root)) as lab, \
            sync_playwright() as pw:
        browser = launch_chromium(pw, chromium)
        path = parameterised("00_explore_data.ipynb", Path(root), dataset=dataset)
        nb = NotebookPage(lab, browser, path)
        nb.run_all_from_menu()
        nb.wait_finished(900)
        if nb.errors():
            raise RuntimeError(f"00_explore_data failed in JupyterLab: {nb.errors()}")
        view = VolumeBrowserView(nb)
        view.settled()
        slices = []
        for _ in range(n):
            slices.append(view.redraw_s(view.step_slice))
            view.settled()
        browser.close()
    return {"slice": summary(slices)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default=None, help="default: 00_explore_data's own default")
    ap.add_argument("--repeat", type=int, default=2, help="first-open runs, each from an empty cache")
    ap.add_argument("--skip-first-open", action="store_true")
    ap.add_argument("--browser", action="store_true", help="also measure redraws in chromium (JupyterLab)")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    args.dataset = args.dataset or notebook_defaults()["dataset"]

    results: dict = {"dataset": args.dataset, "machine": platform.node(), "cpus": os.cpu_count(),
                     "load_average_at_start": os.getloadavg()}
    if not args.skip_first_open:
        results["first_open_s"] = first_open(args.dataset, args.repeat)
    with tempfile.TemporaryDirectory(prefix="medssl-latency-") as cache:  # never the user's cache
        os.environ["MEDSSL_CACHE_DIR"] = cache
        results["kernel_redraw"] = kernel_redraws(args.dataset)
        if args.browser:
            results["browser_redraw"] = browser_redraws(args.dataset)
    results["load_average_at_end"] = os.getloadavg()
    print(json.dumps(results, indent=1))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
