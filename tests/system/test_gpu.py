"""The GPU path: mixed-precision and channels_last training steps, a pretrain -> fine-tune chain
with predictions, on CUDA. Marked ``gpu`` and skipped without a CUDA GPU (``benchmarks/gpu_check.sh``
runs them on one); the check script's own dry run is tested here on CPU.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
CUDA = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not CUDA, reason="no CUDA GPU visible (benchmarks/gpu_check.sh runs these on a GPU)")
DATA = "phantom:cardiac?cases=4"
SMALL = dict(encoder="resnet18", image_size=64, progress=False, device="cuda", channels_last=True)
PRECISIONS = ["bf16-mixed", "16-mixed"]
GPU_TESTS = 6  # the gpu-marked tests below (parametrised cases counted); the dry run checks they are collected


def _pretrain(run_dir, **kw):
    from medssl_utils import training

    args = dict(method="byol", datasets=[DATA], epochs=1, max_steps=4, batch_size=32, optimizer="adamw",
                method_options=dict(hidden_dim=256, predictor_hidden_dim=256, projection_dim=64),
                knn_max_bank=64, knn_max_query=32, log_every=1, run_dir=str(run_dir), **SMALL)
    args.update(kw)
    return training.pretrain(**args)


def _finetune(run_dir, **kw):
    from medssl_utils import training

    args = dict(dataset=DATA, init="random", labelled_slices=16, max_steps=6, eval_every=3, batch_size=8, lr=1e-3,
                log_every=1, run_dir=str(run_dir), **SMALL)
    args.update(kw)
    return training.finetune(**args)


def _check_trained(r: dict, run_dir: Path, steps: int, precision: str) -> None:
    """A complete run of ``steps`` steps on CUDA at ``precision``, its logged losses finite."""
    assert r["status"] == "complete" and r["steps"] == steps
    assert r["device"].startswith("cuda") and r["precision"] == precision
    losses = pd.read_csv(run_dir / "history.csv")["loss"].dropna()
    assert len(losses) >= 3 and all(math.isfinite(x) for x in losses)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("precision", PRECISIONS)
def test_finetune_steps_on_cuda(tmp_path, precision):
    r = _finetune(tmp_path / "ft", precision=precision)
    _check_trained(r, tmp_path / "ft", 6, precision)
    assert math.isfinite(r["test"]["mean_dice"]) and r["timings"]["train_s"] > 0
    assert list((tmp_path / "ft" / "predictions").glob("*.nii.gz"))


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("precision", PRECISIONS)
def test_pretrain_steps_on_cuda(tmp_path, precision):
    r = _pretrain(tmp_path / "pre", precision=precision)
    _check_trained(r, tmp_path / "pre", 4, precision)
    assert Path(r["checkpoint"]).is_file()


@pytest.mark.gpu
@needs_gpu
def test_pretrain_then_finetune_chain_writes_predictions(tmp_path):
    import nibabel as nib

    pre = _pretrain(tmp_path / "pre", precision="bf16-mixed")
    ft = _finetune(tmp_path / "ft", init=pre["checkpoint"], precision="bf16-mixed")
    assert ft["status"] == "complete" and "BYOL" in ft["lineage_name"]
    files = sorted((tmp_path / "ft" / "predictions").glob("patient*_E[DS].nii.gz"))
    assert files, "no predictions in ACDC naming"
    img = nib.load(files[0])
    labels = set(int(v) for v in torch.from_numpy(img.get_fdata()).unique().tolist())
    assert img.ndim == 3 and labels <= {0, 1, 2, 3}
    assert ft["device"].startswith("cuda") and ft["timings"]["images_per_s"] > 0


@pytest.mark.gpu
@needs_gpu
def test_two_workers_share_one_gpu_through_the_study_runner(tmp_path):
    """``medssl study run --gpus 0 --runs-per-gpu 2``: two fine-tuning notebooks at once on GPU 0, each
    kernel seeing it as cuda:0 (its CUDA_VISIBLE_DEVICES), study.json recording ["0"]."""
    import yaml

    study = tmp_path / "two.yaml"
    study.write_text(yaml.safe_dump({
        "name": "two-on-one", "results_dir": str(tmp_path / "results"),
        "defaults": {"encoder": "resnet18", "image_size": 64, "device": "cuda", "precision": "bf16-mixed"},
        "finetune": {"dataset": DATA, "labelled_slices": [16], "seeds": [0], "params": {"max_steps": 40,
                                                                                         "eval_every": 20},
                     "strategies": {"a": "random", "b": "random"}}}))
    proc = subprocess.run([sys.executable, "-m", "medssl_utils", "study", "run", str(study), "--gpus", "0",
                           "--runs-per-gpu", "2"], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": "0"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    runs = sorted((tmp_path / "results").glob("finetune/*/n16/seed0"))
    assert len(runs) == 2
    for rd in runs:
        assert json.loads((rd / "study.json").read_text())["gpus"] == ["0"]
        r = json.loads((rd / "result.json").read_text())
        assert r["status"] == "complete" and r["device"].startswith("cuda")


def test_gpu_tests_are_counted():
    """GPU_TESTS (what the dry run expects pytest to collect) matches this file."""
    marked = [n for n, f in globals().items() if n.startswith("test_") and hasattr(f, "pytestmark")
              and any(m.name == "gpu" for m in f.pytestmark)]
    cases = sum(len(PRECISIONS) if any(m.name == "parametrize" for m in globals()[n].pytestmark) else 1 for n in marked)
    assert cases == GPU_TESTS


@pytest.mark.slow
def test_gpu_check_dry_run_on_cpu(tmp_path):
    """benchmarks/gpu_check.sh --dry-run: packages checked, GPU tests collected, the throughput benchmark run
    on CPU at toy size, and one JSON of results written, so a GPU slot is not lost to a broken script."""
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable}  # the session's data cache: the toy phantom is shared
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=600, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((out / "gpu_check.json").read_text())
    assert res["dry_run"] is True and res["ok"] is True
    assert [s["name"] for s in res["steps"]] == ["environment", "gpu tests", "throughput"]
    assert all(s["rc"] == 0 and s["seconds"] >= 0 for s in res["steps"])
    assert res["env"]["torch"] == torch.__version__ and res["env"]["cuda_available"] == CUDA
    assert res["tests"]["collected"] == GPU_TESTS
    tp = res["throughput"]
    rows = {row["what"]: row for row in tp["rows"]}
    assert tp["device"] == "cpu" and rows.keys() == {"byol", "finetune"}
    for row in rows.values():
        assert row["pipeline"] > 0 and row["in_memory"] > 0 and row["model_only"] > 0 and row["gflop_per_image"] > 0
        assert row["share_of_matmul"] == pytest.approx(row["achieved_gflop_per_s"] / tp["matmul_gflop_per_s"], abs=2e-3)
    assert "gpu_check.json" in proc.stdout


def test_gpu_check_refuses_unknown_options(tmp_path):
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--fast"], capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2 and "gpu_check.sh: unknown option --fast" in proc.stderr
