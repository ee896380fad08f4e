"""Every notebook executed with papermill at toy size, and stored without outputs.

What runs are the *instructor copies* (``medssl teach``: the notebooks with their exercise
solutions), so every solution is checked against medssl's reference on the way.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import papermill as pm
import pytest

from medssl_utils import teach

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_committed_without_outputs_and_with_parameters(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), "clear outputs"
    assert any("parameters" in c.get("metadata", {}).get("tags", []) for c in code)
    first = nb["cells"][0]
    assert first["cell_type"] == "markdown" and "".join(first["source"]).startswith("# ")  # a title first


@pytest.fixture(scope="session")
def instructor(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("teaching")
    teach.make_copies(out, NOTEBOOKS)
    return out / "instructor"


def run(name, tmp_path, instructor, **parameters):
    out = tmp_path / name
    pm.execute_notebook(str(instructor / name), str(out), parameters=parameters, cwd=str(tmp_path),
                        kernel_name="python3", progress_bar=False)
    nb = json.loads(out.read_text())
    check = next(i for i, c in enumerate(nb["cells"]) if "injected-parameters" in c["metadata"].get("tags", [])) + 1
    shown = ["".join(o["data"].get("text/plain", "")) for o in nb["cells"][check].get("outputs", [])
             if o["output_type"] == "execute_result"]
    assert not any(re.fullmatch(r"[-+.\deE]+", v.strip()) for v in shown), f"{name}: the parameter check shows {shown}"
    return nb


def _text(nb) -> str:
    return "".join("".join(o.get("text", "")) for c in nb["cells"] if c["cell_type"] == "code"
                   for o in c.get("outputs", []))


def _exercises_pass(nb, n: int) -> bool:
    return _text(nb).count("agrees with medssl's reference") == n


def test_explore_data_toy(tmp_path, instructor):
    nb = run("00_explore_data.ipynb", tmp_path, instructor, dataset="phantom:cardiac?cases=3", image_size=32,
             n_views=2, gallery=["phantom:cardiac?cases=3", "phantom:abdomen-ct?cases=2", "phantom:brain-mr?cases=2",
                      "phantom:prostate-mr?cases=2", "natural?quadrants=0"])
    outputs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 5  # strip, histograms, gallery, views, seg aug
    text = _text(nb)
    assert "format            acdc" in text and "parameters OK" in text and _exercises_pass(nb, 1)
    tables = "".join("".join(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert "labelled volumes" in tables and "natural" in tables  # the gallery's table of domains


def test_explore_data_rejects_bad_parameter(tmp_path, instructor):
    with pytest.raises(pm.PapermillExecutionError, match=r"dataset: .*unknown kind 'nifti'"):
        run("00_explore_data.ipynb", tmp_path, instructor, dataset="nifti:/x")


TOY = dict(encoder="test_resnet", image_size=32, decoder_channels=[16, 8, 8, 8, 8], device="cpu", probe_slices=8,
           probe_val_slices=8, probe_steps=10)
CARDIAC = "phantom:cardiac?cases=4"


def _images(nb) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb["cells"] if c["cell_type"] == "code"
               for o in c.get("outputs", []))


def _training_cell_outputs(nb, call: str) -> list:
    return next(c for c in nb["cells"] if c["cell_type"] == "code" and call in "".join(c["source"]))["outputs"]


def test_pretrain_finetune_analysis_toy(tmp_path, instructor):
    pre_dir = tmp_path / "results" / "pretrain" / "byol-cardiac"
    nb = run("01_pretrain.ipynb", tmp_path, instructor, method="byol", datasets=[CARDIAC], epochs=2, batch_size=48,
             save_epochs=[1], method_options={"hidden_dim": 64, "predictor_hidden_dim": 64, "projection_dim": 16},
             optimizer="adamw", run_dir=str(pre_dir), probe_seeds=1, **TOY)
    pre_result = json.loads((pre_dir / "result.json").read_text())
    assert _images(nb) >= 2 and pre_result["status"] == "complete" and pre_result["probe"]["first"]["step"] == 0
    assert "dense probe" in _text(nb)
    assert _exercises_pass(nb, 1)
    ckpt = str(pre_dir / "checkpoints" / "final.pt")
    for strategy, init in (("random", "random"), ("byol-cardiac", ckpt)):
        for seed in (0, 1):
            ft_dir = tmp_path / "results" / "finetune" / strategy / "n6" / f"seed{seed}"
            nb = run("02_finetune.ipynb", tmp_path, instructor, dataset=CARDIAC, init=init, labelled_slices=6,
                     max_steps=6, eval_every=3, batch_size=4, lr=1e-3, seed=seed, run_dir=str(ft_dir), **TOY)
            result = json.loads((ft_dir / "result.json").read_text())
            assert result["status"] == "complete" and _images(nb) >= 3 and _exercises_pass(nb, 1)
    # A plain timm state dict (the README's offline-ImageNet route) through the notebook, as a study runs it:
    # load_decoder="auto" once opened it as a medssl checkpoint and refused it (issue 10).
    import timm
    import torch

    foreign = tmp_path / "test_resnet_timm.pth"
    torch.save(timm.create_model("test_resnet").state_dict(), foreign)
    ft_dir = tmp_path / "foreign"
    run("02_finetune.ipynb", tmp_path, instructor, dataset=CARDIAC, init=f"file:{foreign}", labelled_slices=6,
        max_steps=2, eval_every=2, batch_size=4, lr=1e-3, run_dir=str(ft_dir), **TOY)
    foreign_result = json.loads((ft_dir / "result.json").read_text())
    assert foreign_result["status"] == "complete" and foreign_result["lineage"][0]["method"] == "file"
    # The training cell shows its progress as one HTML output updated in place and opens no widget
    # (a widget's comm opened mid-cell made JupyterLab report the kernel "Idle": medssl_utils.progress).
    outputs = _training_cell_outputs(nb, "training.finetune(cfg)")
    assert not any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)
    bars = [o["data"]["text/html"] for o in outputs if 'class="medssl-progress"' in "".join(o.get("data", {}).get(
        "text/html", ""))]
    assert len(bars) == 1 and "6/6 (100%)" in "".join(bars[0])
    assert "BYOL" in result["lineage_name"]
    nb = run("03_analysis.ipynb", tmp_path, instructor, results_dir=str(tmp_path / "results"))
    report_dir = tmp_path / "results" / "report"
    assert (report_dir / "report.html").is_file() and _images(nb) >= 1 and _exercises_pass(nb, 1)
    assert (report_dir / "tables" / "steps_to_target.csv").is_file()


@pytest.mark.parametrize("name,params,message", [
    ("01_pretrain.ipynb", {"method": "mae"}, r"method='mae' is not allowed"),
    ("02_finetune.ipynb", {"labelled_fraction": 0.1}, r"exactly one of labelled_slices"),
    ("03_analysis.ipynb", {"target": 1.5}, r"target=1.5: expected a fraction"),
])
def test_notebooks_reject_bad_parameters(tmp_path, instructor, name, params, message):
    with pytest.raises(pm.PapermillExecutionError, match=message):
        run(name, tmp_path, instructor, run_dir=str(tmp_path / "r"), **params)
