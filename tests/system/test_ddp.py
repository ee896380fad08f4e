"""Multi-process (DDP) training on CPU: two gloo processes started by Fabric from a script.

Fabric starts the extra process by re-running the calling script, so the runs happen in a
subprocess running a small script, exactly as a user would start them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pandas as pd
import pytest
import torch

from medssl_utils import training
from medssl_utils.training import loop
from medssl_utils.errors import ParameterError
from medssl_utils.training import TrainingError
from medssl_utils.models import load_checkpoint

SCRIPT = """
import json, os, sys
from medssl_utils import training

out = sys.argv[1]
tiny = dict(encoder="test_resnet", image_size=32, decoder_channels=(16, 8, 8, 8, 8), progress=False,
            device="cpu", devices=2, probe_slices=8, probe_val_slices=8, probe_steps=10)
data = "phantom:cardiac?cases=4"
pre = training.pretrain(method="byol", datasets=[data], epochs=2, batch_size=16, save_epochs=[1],
                        method_options=dict(hidden_dim=64, predictor_hidden_dim=64, projection_dim=16),
                        optimizer="adamw", knn_max_bank=64, knn_max_query=32, log_every=2, probe_seeds=1,
                        run_dir=os.path.join(out, "pre"), **tiny)
fin = training.finetune(dataset=data, init=pre["checkpoint"], labelled_slices=8, max_steps=6, eval_every=3,
                        batch_size=2, lr=1e-3, log_every=1, run_dir=os.path.join(out, "fin"), **tiny)
import torch.distributed as dist
rank = dist.get_rank() if dist.is_initialized() else "none"
with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
    json.dump({"world": dist.get_world_size() if dist.is_initialized() else 1, "pre": pre, "fin": fin}, f)
"""


def _run_script(tmp_path, *args, timeout=420):
    script = tmp_path / "train_ddp.py"
    script.write_text(textwrap.dedent(SCRIPT))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE"):
        env.pop(k, None)
    return subprocess.run([sys.executable, str(script), str(tmp_path), *args], env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=tmp_path)


def test_two_process_pretrain_and_finetune(tmp_path):
    proc = _run_script(tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = {r: json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)}
    assert all(v["world"] == 2 for v in ranks.values())
    pre0, fin0 = ranks[0]["pre"], ranks[0]["fin"]

    # one run directory, written by rank 0 only, equal to what both processes returned
    for name, res in (("pre", pre0), ("fin", fin0)):
        on_disk = json.loads((tmp_path / name / "result.json").read_text())
        assert on_disk["status"] == "complete" and on_disk["devices"] == 2
        assert on_disk["steps"] == res["steps"]
        assert not list((tmp_path / name).rglob("*.tmp-*"))  # no half-written files left over
    assert ranks[1]["fin"]["test"]["mean_dice"] == fin0["test"]["mean_dice"]  # same weights, same scores

    # pretraining: an epoch is one pass over the pool by both processes together
    n = pre0["slices_in_pool"]
    assert pre0["steps"] == 2 * (n // (16 * 2))
    hist = pd.read_csv(tmp_path / "pre" / "history.csv")
    assert hist["step"].is_monotonic_increasing
    assert hist["loss"].dropna().iloc[-1] < hist["loss"].dropna().iloc[0]  # BYOL learns under DDP
    assert set(pre0["checkpoints"]) == {"1"}
    ck = load_checkpoint(pre0["checkpoint"])
    assert ck["lineage"][-1]["method"] == "byol" and ck["lineage"][-1]["epochs"] == 2

    # fine-tuning: global batch 2 processes x 2, history rows once each, predictions once each
    fh = pd.read_csv(tmp_path / "fin" / "history.csv")
    assert list(fh["step"]) == list(range(7))
    assert fin0["epochs"] == pytest.approx(6 * 2 * 2 / fin0["labelled_slices"])
    preds = sorted(p.name for p in (tmp_path / "fin" / "predictions").iterdir())
    assert len(preds) == fin0["test"]["volumes"] and len(set(preds)) == len(preds)
    metrics = pd.read_csv(tmp_path / "fin" / "test_metrics.csv")
    assert metrics["volume_id"].nunique() == fin0["test"]["volumes"]

    # a second start returns the finished runs without training (and without a second process)
    (tmp_path / "rank0.json").unlink()
    again = _run_script(tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((tmp_path / "ranknone.json").read_text())["fin"] == fin0


def test_extra_processes_write_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    cfg = training.FinetuneConfig(dataset="phantom:cardiac?cases=4", run_dir=str(tmp_path / "r"), encoder="test_resnet",
                                  image_size=32, labelled_slices=4, max_steps=2, eval_every=1, progress=False)
    rd, done = loop.prepare_run(cfg, "finetune")
    assert done is None and rd.writer is False
    rd.log({"step": 1, "loss": 0.5})
    rd.flush_history()
    rd.write_result({"status": "complete"})
    assert not (tmp_path / "r").exists()
    monkeypatch.setenv("LOCAL_RANK", "0")
    rd, _ = loop.prepare_run(cfg, "finetune")
    assert rd.writer and (tmp_path / "r" / "params.json").is_file()


class _FakeFabric:
    """Stands in for two processes: all_gather returns what the 'other rank' holds too."""

    world_size = 2
    device = torch.device("cpu")

    def __init__(self, other_offset: float):
        self.offset = other_offset

    def all_gather(self, t):
        return torch.stack([t, t + self.offset])


def test_diverged_processes_are_reported():
    model = torch.nn.Linear(3, 2)
    loop.check_ranks_in_sync(_FakeFabric(0.0), model)  # identical: fine
    with pytest.raises(TrainingError, match="2 processes ended with different weights"):
        loop.check_ranks_in_sync(_FakeFabric(1e-3), model)


def test_multi_process_from_a_notebook_is_refused(monkeypatch):
    monkeypatch.setattr(loop, "in_notebook_kernel", lambda: True)
    with pytest.raises(ParameterError, match="devices=2: .*script"):
        training.make_fabric("cpu", "32", devices=2)
