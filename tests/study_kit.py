"""Stand-in notebooks and helpers for the study runner's tests (tests/unit/test_study.py, test_sweep.py,
tests/system/test_slurm.py): each stand-in appends one line to a log file, checks its init, fails on
request and writes ``result.json`` (and checkpoints for pretraining)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import nbformat
import pytest
import yaml

STUDIES = Path(__file__).resolve().parents[1] / "studies"

BODY = """
import json, os, pathlib, time
started = time.time()
run = pathlib.Path(run_dir)
run.mkdir(parents=True, exist_ok=True)
with open(log, "a") as f:
    f.write(f"{KIND} {run_dir} {init} {'overwrite' if overwrite else ''}\\n")
time.sleep(sleep)
if fail:
    raise ValueError(f"boom in {run.name}")
if init not in ("random", "timm"):
    path = pathlib.Path(init[5:] if init.startswith("file:") else init)
    if not path.is_file():
        raise FileNotFoundError(f"init checkpoint {path} is missing")
if KIND == "pretrain":
    (run / "checkpoints").mkdir(exist_ok=True)
    (run / "checkpoints" / "final.pt").write_text("final")
    for e in save_epochs:
        (run / "checkpoints" / f"epoch_{e}.pt").write_text(str(e))
if not leave_running:
    (run / "result.json").write_text(json.dumps({"status": "complete", "kind": KIND, "error": None}))
(run / "seen.json").write_text(json.dumps({"cwd": os.getcwd(), "init": init, "seed": seed, "extra": extra,
                                           "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                                           "started": started, "ended": time.time(), "devices": devices,
                                           "dataset": dataset, "datasets": datasets,
                                           "labelled_slices": labelled_slices,
                                           "labelled_fraction": labelled_fraction}))
"""


def write_notebook(path: Path, kind: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "Python 3"}
    nb.metadata["language_info"] = {"name": "python"}
    params = nbformat.v4.new_code_cell(textwrap.dedent("""\
        run_dir = None
        init = "random"
        log = None
        fail = False
        leave_running = False
        overwrite = False
        seed = 0
        extra = None
        dataset = None
        datasets = None
        labelled_slices = None
        labelled_fraction = None
        save_epochs = []
        sleep = 0
        devices = 1
        """))
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell(f"# stand-in {kind}"), params,
                nbformat.v4.new_code_cell(f"KIND = {kind!r}\n" + BODY)]
    nbformat.write(nb, path)
    return path


def in_process(notebook: Path, output: Path, parameters: dict, cwd: Path) -> None:
    """Execute the code cells in this process, parameters injected after the parameters cell."""
    nb = nbformat.read(notebook, as_version=4)
    scope: dict = {}
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        exec(cell.source, scope)  # noqa: S102 - the test's own stand-in notebooks
        if "parameters" in cell.metadata.get("tags", []):
            scope.update(parameters)
    nbformat.write(nb, output)


def offline(encoder):
    return False, f"init 'timm': no cached weights for {encoder} (test)"


@pytest.fixture
def nbs(tmp_path) -> dict:
    d = tmp_path / "nbs"
    d.mkdir()
    return {"pretrain": str(write_notebook(d / "pre.ipynb", "pretrain")),
            "finetune": str(write_notebook(d / "fine.ipynb", "finetune"))}


def make_study(tmp_path: Path, nbs: dict, name: str = "s", **sections) -> Path:
    doc = {"name": name, "results_dir": "results", "notebooks": nbs,
           "defaults": {"log": str(tmp_path / "log.txt")}, **sections}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def log_lines(tmp_path: Path) -> list[str]:
    f = tmp_path / "log.txt"
    return f.read_text().splitlines() if f.exists() else []


def result(run_dir: Path) -> dict:
    return json.loads((run_dir / "result.json").read_text())
