"""Training loops at toy size: determinism, resume == uninterrupted, refusals, outputs."""

from __future__ import annotations

import copy
import importlib
import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from medssl_utils import training
from medssl_utils.training import loop
from medssl_utils.errors import DataError, ParameterError
from medssl_utils.models import load_checkpoint
from training_kit import DATA, fin, interrupted, pre


def test_stream_batches_are_stateless_and_cover_epochs():
    a = [training.stream_batch(10, 4, seed=3, step=s) for s in range(5)]
    flat = np.concatenate(a)
    assert sorted(flat[:10]) == list(range(10))  # first "epoch" is a permutation
    assert (training.stream_batch(10, 4, seed=3, step=3) == a[3]).all()
    assert not (training.stream_batch(10, 4, seed=4, step=0) == a[0]).all()
    r0 = training.stream_batch(10, 2, 3, 0, rank=0, world=2)
    r1 = training.stream_batch(10, 2, 3, 0, rank=1, world=2)
    assert set(r0).isdisjoint(r1) and list(np.concatenate([r0, r1])) == list(a[0])


def test_lr_schedule():
    assert training.lr_at(0, 100, 1.0, 10) == pytest.approx(0.1)
    assert training.lr_at(9, 100, 1.0, 10) == pytest.approx(1.0)
    assert training.lr_at(55, 100, 1.0, 10) == pytest.approx(0.5)
    assert training.lr_at(100, 100, 1.0, 10) == pytest.approx(0.0)


@pytest.mark.parametrize("name", ["sgd", "adamw", "adam"])
def test_fused_optimisers_make_torchs_reference_update(name):
    """make_optimizer's fused optimisers: torch's own update (its loop form as the reference) to float
    rounding, with the groups' weight decay (none on biases / norms) and lr_scale."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, bias=False), torch.nn.BatchNorm2d(4), torch.nn.Conv2d(4, 1, 1))
    ref_net, start = copy.deepcopy(net), copy.deepcopy(net)
    scaled = {id(net[0].weight): 0.1}
    opt = loop.make_optimizer(name, net, lr=0.05, weight_decay=0.1, scaled=scaled)
    groups = loop._param_groups(ref_net, 0.1, {id(ref_net[0].weight): 0.1})
    for g in groups:
        g["lr"] = 0.05 * g["lr_scale"]
    cls = {"sgd": torch.optim.SGD, "adamw": torch.optim.AdamW, "adam": torch.optim.Adam}[name]
    ref = cls(groups, lr=0.05, weight_decay=0.1, foreach=False, **({"momentum": 0.9} if name == "sgd" else {}))
    assert all(g["fused"] for g in opt.param_groups) and not any(g.get("fused") for g in ref.param_groups)
    x = torch.randn(4, 2, 6, 6, generator=torch.Generator().manual_seed(1))
    for _ in range(3):
        for n, o in ((net, opt), (ref_net, ref)):
            o.zero_grad()
            n(x).square().mean().backward()
            o.step()
    for a, b, a0 in zip(net.parameters(), ref_net.parameters(), start.parameters()):
        assert not torch.equal(a, a0)  # every tensor moved ...
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)  # ... as torch's reference moved it


def test_pretrain_outputs_lineage_and_reuse(tmp_path):
    r = pre(tmp_path / "p", knn_every=1)
    assert r["status"] == "complete" and r["steps"] > 0
    ck = load_checkpoint(r["checkpoint"])
    assert ck["lineage"][-1]["method"] == "byol" and ck["lineage"][-1]["epochs"] == 2
    assert ck["lineage"][-1]["pool"][DATA]["train_cases"]  # the patients it saw are recorded
    assert set(r["checkpoints"]) == {"1"} and load_checkpoint(r["checkpoints"]["1"])["lineage"][-1]["epochs"] == 1
    assert r["lineage_name"].endswith("2 ep)")
    hist = pd.read_csv(tmp_path / "p" / "history.csv")
    assert {"step", "loss", "lr", "momentum", "knn_acc"} <= set(hist.columns)
    assert hist["momentum"].dropna().is_monotonic_increasing
    again = pre(tmp_path / "p")  # finished: returned, not re-trained
    assert again == json.loads((tmp_path / "p" / "result.json").read_text())
    # a hierarchical chain names its stages from the file alone
    r2 = pre(tmp_path / "p2", init=r["checkpoint"], epochs=1, save_epochs=[])
    assert "BYOL" in r2["lineage_name"] and r2["lineage_name"].count("→") == 2


def test_pretrain_throughput_counts_training_time_only(tmp_path, monkeypatch):
    """A fake clock: each optimiser step takes 1 s, each checkpoint 100 s, each k-NN probe 50 s.
    Logging windows span epoch boundaries (3 steps per epoch, a row every 2 steps)."""
    import medssl_utils.models.knn as knn
    pretrain_mod = importlib.import_module("medssl_utils.training.pretrain")  # the module, not training.pretrain()

    clock = {"t": 0.0}
    monkeypatch.setattr(loop.time, "perf_counter", lambda: clock["t"])

    def costs(fn, seconds):
        def wrapped(*a, **k):
            clock["t"] += seconds
            return fn(*a, **k)
        return wrapped

    monkeypatch.setattr(loop, "optimise", costs(loop.optimise, 1.0))
    monkeypatch.setattr(loop, "save_state", costs(loop.save_state, 100.0))
    monkeypatch.setattr(pretrain_mod, "knn_evaluate", costs(knn.knn_evaluate, 50.0))
    r = pre(tmp_path / "p", batch_size=96, epochs=3, log_every=2, knn_every=1)
    n_steps = r["steps"]
    assert n_steps == 9  # windows 1-2, 3-4 (crosses the epoch end at 3), ..., 9 (short, last)
    hist = pd.read_csv(tmp_path / "p" / "history.csv").dropna(subset=["images_per_s"])
    assert list(hist["images_per_s"]) == pytest.approx([96.0] * len(hist))  # 96 images per training second
    assert r["timings"]["train_s"] == pytest.approx(n_steps)
    assert r["timings"]["images_per_s"] == pytest.approx(96.0)
    assert r["timings"]["total_s"] > n_steps + 100 + 50  # the pauses (a save, a k-NN) happened, and were left out


def test_pretrain_resume_equals_uninterrupted(tmp_path, monkeypatch):
    full = pre(tmp_path / "full", save_epochs=[], knn_every=0)
    # inside the last epoch: resume restarts from the epoch boundary
    interrupted(monkeypatch, full["steps"] - 2, lambda: pre(tmp_path / "cut", save_epochs=[], knn_every=0))
    assert (tmp_path / "cut" / "checkpoints" / "last.pt").is_file()
    resumed = pre(tmp_path / "cut", save_epochs=[], knn_every=0)
    a, b = load_checkpoint(full["checkpoint"])["encoder"], load_checkpoint(resumed["checkpoint"])["encoder"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    ha = pd.read_csv(tmp_path / "full" / "history.csv")
    hb = pd.read_csv(tmp_path / "cut" / "history.csv")
    np.testing.assert_allclose(ha["loss"].to_numpy(), hb["loss"].to_numpy())


def test_finetune_outputs_and_determinism(tmp_path):
    r = fin(tmp_path / "a")
    assert r["status"] == "complete" and r["labelled_slices"] == 6
    assert set(r["test"]["per_label"]) == {"RV", "MYO", "LV"} and 0 <= r["test"]["mean_dice"] <= 1
    assert "work_a_mean_iou" in r["test"]["slice_iou"]
    hist = pd.read_csv(tmp_path / "a" / "history.csv")
    assert list(hist.dropna(subset=["val_dice"])["step"]) == [0, 4, 8]
    metrics = pd.read_csv(tmp_path / "a" / "test_metrics.csv")
    assert set(metrics["name"]) == {"RV", "MYO", "LV"} and set(metrics["phase"]) == {"ED", "ES"}
    # predictions: ACDC naming, original grid and affine of the test volume
    preds = sorted(p.name for p in (tmp_path / "a" / "predictions").iterdir())
    assert preds == ["patient001_ED.nii.gz", "patient001_ES.nii.gz"]  # paper split: patient 1 is the test set
    from medssl_utils.data import load_dataset

    vol = next(v for v in load_dataset(DATA).volumes if v.volume_id == "patient001_ED")
    img = nib.load(str(tmp_path / "a" / "predictions" / "patient001_ED.nii.gz"))
    assert img.shape == vol.shape and np.allclose(img.affine, vol.affine)
    # same seed, same result; another seed, another budget draw
    b = fin(tmp_path / "b")
    assert b["test"] == r["test"] and b["val_final_dice"] == r["val_final_dice"]


def test_finetune_resume_equals_uninterrupted(tmp_path, monkeypatch):
    full = fin(tmp_path / "full")
    interrupted(monkeypatch, 6, lambda: fin(tmp_path / "cut"))
    resumed = fin(tmp_path / "cut")
    assert resumed["test"] == full["test"]
    ha = pd.read_csv(tmp_path / "full" / "history.csv")
    hb = pd.read_csv(tmp_path / "cut" / "history.csv")
    np.testing.assert_allclose(ha["val_dice"].dropna(), hb["val_dice"].dropna())


def test_nan_loss_stops_with_clear_error(tmp_path, monkeypatch):
    finetune_mod = importlib.import_module("medssl_utils.training.finetune")  # the module, not training.finetune()

    class NaNLoss(torch.nn.Module):
        def forward(self, logits, target):
            return logits.mean() * float("nan")

    monkeypatch.setattr(finetune_mod, "segmentation_loss", lambda *a, **k: NaNLoss())  # where the loop takes it from
    with pytest.raises(training.TrainingError, match="the loss became nan at step 0"):
        fin(tmp_path / "nan")
    res = json.loads((tmp_path / "nan" / "result.json").read_text())
    assert res["status"] == "failed" and "loss became nan" in res["error"]


def test_parameter_errors(tmp_path):
    with pytest.raises(ParameterError, match="method='mae'"):
        training.PretrainConfig(method="mae", run_dir=str(tmp_path))
    with pytest.raises(ParameterError, match="exactly one of labelled_slices"):
        training.FinetuneConfig(labelled_slices=3, labelled_fraction=0.1, run_dir=str(tmp_path))
    with pytest.raises(ParameterError, match="image_size=40: expected a multiple of 32"):
        training.FinetuneConfig(labelled_slices=3, image_size=40, run_dir=str(tmp_path))
    with pytest.raises(ParameterError, match="16-mixed' needs a GPU"):
        training.make_fabric("cpu", "16-mixed")
    with pytest.raises(DataError, match="does not exist"):
        training.FinetuneConfig(labelled_slices=3, init="/nope/weights.pt", run_dir=str(tmp_path))
    with pytest.raises(ParameterError, match="save_epochs"):
        training.PretrainConfig(epochs=2, save_epochs=[5], run_dir=str(tmp_path))


def test_unfinished_run_with_other_parameters_is_refused(tmp_path, monkeypatch):
    interrupted(monkeypatch, 5, lambda: fin(tmp_path / "r"))
    with pytest.raises(ParameterError, match="holds an unfinished run with other parameters \\(lr\\)"):
        fin(tmp_path / "r", lr=5e-4)


def test_leakage_refused(tmp_path):
    p = pre(tmp_path / "p", epochs=1, save_epochs=[], knn_every=0)
    fin(tmp_path / "ok", init=p["checkpoint"], max_steps=2, eval_every=2)  # same split: fine
    # a random split that tests on a patient the pretraining pool held must be refused
    from medssl_utils.data import load_dataset, make_split, slice_cache

    seen = set(load_checkpoint(p["checkpoint"])["lineage"][-1]["pool"][DATA]["train_cases"])
    index = slice_cache(load_dataset(DATA).labelled(), image_size=32).index
    seed = next(s for s in range(50) if seen & set(make_split(index, "random", seed=s).test))
    with pytest.raises(DataError, match="including patients that this run validates or tests on"):
        fin(tmp_path / "leak", init=p["checkpoint"], split="random", split_seed=seed, max_steps=2, eval_every=2)


def test_bf16_and_channels_last_paths_run_on_cpu(tmp_path):
    r = fin(tmp_path / "bf16", precision="bf16-mixed", channels_last=True, max_steps=2, eval_every=2)
    assert r["status"] == "complete" and r["precision"] == "bf16-mixed"
    assert np.isfinite(pd.read_csv(tmp_path / "bf16" / "history.csv")["loss"].dropna()).all()
    p = pre(tmp_path / "pbf16", precision="bf16-mixed", channels_last=True, epochs=1, max_steps=2, save_epochs=[],
            knn_every=0)
    assert p["status"] == "complete" and np.isfinite(p["final_loss"])
