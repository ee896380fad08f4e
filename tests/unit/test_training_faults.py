"""The training faults found in review, each pinned by a test (issue: training that learns within a CPU budget)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from medssl_utils import training
from medssl_utils.errors import ParameterError
from medssl_utils.models.byol import auto_base_momentum
from medssl_utils.training import loop
from medssl_utils.training.evaluate import bn_recalibrated, evaluate_val, recalibration_rows
from medssl_utils.training.pretrain import warmup_steps

from training_kit import DATA, SMALL_BYOL, TINY
from training_kit import pre_epoch as pre


def fin(run_dir, **kw):
    args = dict(dataset=DATA, init="random", labelled_slices=12, max_steps=8, eval_every=4, batch_size=4, lr=1e-2,
                run_dir=str(run_dir), probe_init=False, **TINY)
    args.update(kw)
    return training.finetune(**args)


# ----------------------------------------------------------------------------- warm-up
def test_pretrain_warmup_is_bounded_by_the_run():
    # a pool of 200 steps per epoch capped at 76 steps (the quick study's HSSL stage): the old
    # one-epoch warm-up (200 steps) outlasted the run, so the learning rate never peaked
    assert warmup_steps(None, 200, 76) == 7
    assert warmup_steps(None, 38, 76) == 7           # old: 38, the peak in the middle of the run
    assert warmup_steps(None, 195, 78_000) == 195    # long runs: one epoch, as before
    assert warmup_steps(0.5, 38, 76) == 19           # explicit values are kept...
    with pytest.raises(ParameterError, match=r"warmup_epochs=1.0: 200 warm-up steps but the run has only 76"):
        warmup_steps(1.0, 200, 76)                   # ...unless longer than the run


def test_pretrain_lr_peaks_early_and_decays_in_a_capped_run(tmp_path):
    r = pre(tmp_path / "p", epochs=3, max_steps=10)  # 4 patients: ~15 steps per epoch, capped at 10
    assert r["steps"] == 10 and r["schedule"]["warmup_steps"] == 1
    lr = pd.read_csv(tmp_path / "p" / "history.csv").dropna(subset=["lr"])["lr"].to_numpy()
    assert lr.argmax() <= 1 and lr[-1] < 0.1 * lr.max()


# ----------------------------------------------------------------------------- BYOL momentum
def test_byol_base_momentum_is_a_parameter_with_a_run_length_default(tmp_path):
    r = pre(tmp_path / "auto", epochs=3, max_steps=10)
    m0 = auto_base_momentum(10)
    assert r["schedule"]["base_momentum"] == pytest.approx(m0) and m0 < 0.6
    first = pd.read_csv(tmp_path / "auto" / "history.csv").dropna(subset=["momentum"])["momentum"].iloc[0]
    assert first < 0.99  # logged after step 1 (log_every=1): the schedule starts at m0, not 0.99
    r = pre(tmp_path / "paper", epochs=3, max_steps=10, method_options={**SMALL_BYOL, "base_momentum": 0.99})
    assert r["schedule"]["base_momentum"] == 0.99


# ----------------------------------------------------------------------------- BatchNorm at evaluation
def _tiny_bn_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                               torch.nn.Conv2d(4, 2, 1), torch.nn.BatchNorm2d(2))


class _Cache:
    def __init__(self, images):
        self.images = images


def test_bn_recalibrated_uses_statistics_of_the_current_weights_then_restores():
    model = _tiny_bn_model()
    images = np.random.default_rng(0).normal(3.0, 2.0, (10, 16, 16)).astype(np.float32)
    cache = _Cache(images)
    x = torch.from_numpy(images)[:, None]
    stale = [(m.running_mean.clone(), m.running_var.clone()) for m in model if isinstance(m, torch.nn.BatchNorm2d)]
    model.train()
    with torch.no_grad():
        batch_stats = model(x)  # training mode: normalised with this batch's statistics
    for m, (mean, var) in zip([m for m in model if isinstance(m, torch.nn.BatchNorm2d)], stale):
        m.running_mean.copy_(mean)  # undo what that forward did to the running averages
        m.running_var.copy_(var)
    with torch.no_grad():
        running = model.eval()(x)
    assert not torch.allclose(running, batch_stats, atol=1e-2)  # stale statistics give another output
    model.train()
    with bn_recalibrated(model, cache, np.arange(10), batch_size=64, device="cpu"):
        assert not model.training
        with torch.no_grad():
            recalibrated = model(x)
    # one batch holds every row: eval output == the output with those slices' own statistics
    torch.testing.assert_close(recalibrated, batch_stats, atol=2e-3, rtol=2e-3)
    assert model.training  # mode restored, and the running statistics put back exactly
    for m, (mean, var) in zip([m for m in model if isinstance(m, torch.nn.BatchNorm2d)], stale):
        assert torch.equal(m.running_mean, mean) and torch.equal(m.running_var, var) and m.momentum == 0.1


def test_recalibration_rows_are_seeded_and_bounded():
    rows = np.arange(100, 400)
    a = recalibration_rows(rows, 64, seed=3)
    assert len(a) == 64 and set(a) <= set(rows) and (np.diff(a) > 0).all()
    assert (a == recalibration_rows(rows, 64, seed=3)).all() and not (a == recalibration_rows(rows, 64, seed=4)).all()
    assert (recalibration_rows(rows[:10], 64, seed=3) == rows[:10]).all()
    assert len(recalibration_rows(rows, 0, seed=3)) == 0


def _model_at_end(run_dir, cfg):
    """The fine-tuned U-Net as last.pt holds it (weights and running statistics)."""
    from medssl_utils.models import build_unet

    model = build_unet(cfg.encoder, num_classes=4, init="random", decoder_channels=cfg.decoder_channels)
    state = torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    return model


@pytest.mark.parametrize("recal", [64, 0])
def test_validation_dice_uses_recalibrated_statistics_and_leaves_training_alone(tmp_path, recal):
    run_dir = tmp_path / f"r{recal}"
    r = fin(run_dir, recalibrate_bn=recal)
    assert r["schedule"]["recalibrate_bn_slices"] == min(recal, 12)
    cfg = training.FinetuneConfig(dataset=DATA, labelled_slices=12, recalibrate_bn=recal, run_dir=str(run_dir), **TINY)
    data = training.prepare_finetune_data(cfg)
    model = _model_at_end(run_dir, cfg)
    rows = recalibration_rows(data.train_rows, recal, cfg.seed)
    with bn_recalibrated(model, data.cache, rows, 64, "cpu", channels_last=True):
        dice = evaluate_val(model, data.cache, data.val_rows, 4, 64, "cpu", channels_last=True)
    last_val = pd.read_csv(run_dir / "history.csv").dropna(subset=["val_dice"])["val_dice"].iloc[-1]
    assert float(np.mean(dice[1:])) == pytest.approx(last_val, abs=1e-6)


def test_recalibration_does_not_change_training(tmp_path):
    fin(tmp_path / "on", recalibrate_bn=64)
    fin(tmp_path / "off", recalibrate_bn=0)
    a = torch.load(tmp_path / "on" / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "off" / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # weights and running statistics alike


# ----------------------------------------------------------------------------- init kinds, non-finite values
def test_finetune_accepts_a_foreign_weights_file(tmp_path):
    """load_decoder='auto' used to open every path as a medssl checkpoint and refuse timm/torchvision files."""
    import timm

    torch.manual_seed(1)
    path = tmp_path / "test_resnet_timm.pth"
    torch.save(timm.create_model("test_resnet").state_dict(), path)
    r = fin(tmp_path / "ft", init=f"file:{path}", max_steps=2, eval_every=2)
    assert r["status"] == "complete" and r["load_decoder"] is False
    assert r["lineage"][0]["method"] == "file" and r["lineage"][0]["path"] == str(path.resolve())


@pytest.mark.parametrize("name,value", [("lr", float("inf")), ("lr", float("nan")), ("lr", 0), ("lr", -1e-3),
                                        ("grad_clip", float("inf")), ("lr", True)])
def test_impossible_numbers_are_parameter_errors(tmp_path, name, value):
    with pytest.raises(ParameterError, match=f"{name}={value!r}: expected"):
        training.FinetuneConfig(labelled_slices=3, run_dir=str(tmp_path), **{name: value})
    with pytest.raises(ParameterError, match=f"{name}={value!r}: expected"):
        training.PretrainConfig(run_dir=str(tmp_path), **{name: value})
    with pytest.raises(ParameterError, match="weight_decay=inf: expected"):
        training.PretrainConfig(run_dir=str(tmp_path), weight_decay=float("inf"))


@pytest.mark.parametrize("kind", ["finetune", "pretrain"])
def test_non_finite_weights_fail_the_run(tmp_path, monkeypatch, kind):
    """An update that breaks the weights at the last step (no later loss sees it) must not end 'complete'."""
    real = loop.optimise
    calls = {"n": 0}

    def breaks_weights(fabric, model, optimizer, loss, grad_clip, **kw):
        real(fabric, model, optimizer, loss, grad_clip, **kw)
        calls["n"] += 1
        if calls["n"] == 2:
            with torch.no_grad():
                next(p for p in model.parameters() if p.requires_grad).view(-1)[0] = float("inf")

    monkeypatch.setattr(loop, "optimise", breaks_weights)
    run_dir = tmp_path / kind
    with pytest.raises(training.TrainingError, match="weights became non-finite .* at step 1"):
        if kind == "finetune":
            fin(run_dir, max_steps=2, eval_every=2)
        else:
            pre(run_dir, max_steps=2)
    res = json.loads((run_dir / "result.json").read_text())
    assert res["status"] == "failed" and "non-finite" in res["error"]
