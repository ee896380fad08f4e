"""The study protocol's training side (issue 17): fine-tuning that can keep an init (encoder learning-rate
scale, a frozen-encoder phase, Work A's recipe), encoder displacement, the dense linear probe, the k-NN probe's
BatchNorm statistics and chance levels, augmentation presets, HSSL's decoder and input, and Work A's LARS."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from medssl_utils import training
from medssl_utils.data.transforms import SSL_PRESETS, SSLAugment, ssl_preset
from medssl_utils.errors import ParameterError
from medssl_utils.models import build_unet, load_checkpoint
from medssl_utils.training import loop
from medssl_utils.training.lars import LARS
from medssl_utils.training.probe import ProbeData, dense_probe, prepare_probe_data

from training_kit import DATA, SMALL_BYOL, TINY
from training_kit import pre_epoch as pre
ROOT = Path(__file__).resolve().parents[2]


def fin(run_dir, **kw):
    args = dict(dataset=DATA, init="random", labelled_slices=12, max_steps=6, eval_every=3, batch_size=4,
                run_dir=str(run_dir), probe_init=False, **TINY)
    args.update(kw)
    return training.finetune(**args)


def encoder_of(ckpt_or_init, seed=0):
    torch.manual_seed(seed)
    return build_unet("test_resnet", 4, init=ckpt_or_init, decoder_channels=(16, 8, 8, 8, 8)).encoder


# ============================================================================ fine-tuning that can keep an init
@pytest.fixture(scope="module")
def byol_run(tmp_path_factory):
    """One short BYOL run shared by the tests that need a pretrained checkpoint."""
    return pre(tmp_path_factory.mktemp("byol") / "p", max_steps=4)


def test_encoder_lr_scale_frozen_phase_and_work_a_recipe(tmp_path, monkeypatch):
    seen = []
    real = loop.optimise

    def spy(fabric, model, optimizer, loss, grad_clip, frozen=()):
        enc = {id(p) for p in loop.unwrap(model).encoder.parameters()}
        groups = [(g["lr"], g["lr_scale"], any(id(p) in enc for p in g["params"])) for g in optimizer.param_groups]
        before = {n: p.detach().clone() for n, p in loop.unwrap(model).named_parameters()}
        real(fabric, model, optimizer, loss, grad_clip, frozen=frozen)
        moved = {n for n, p in loop.unwrap(model).named_parameters() if not torch.equal(before[n], p.detach())}
        seen.append((groups, moved, len(frozen), grad_clip))

    monkeypatch.setattr(loop, "optimise", spy)
    r = fin(tmp_path / "a", recipe="work-a", encoder_lr_scale=0.1, freeze_encoder_steps=3)
    sched = r["schedule"]
    assert (sched["encoder_lr_scale"], sched["freeze_encoder_steps"], sched["lr"], sched["loss"]) == \
        (0.1, 3, 1e-4, "jaccard")
    for step, (groups, moved, n_frozen, clip) in enumerate(seen):
        assert clip == 5.0  # Work A's gradient clipping
        for lr, scale, has_encoder in groups:
            # every group of the encoder runs at a tenth of the schedule's rate, the others at the rate itself
            assert scale == (0.1 if has_encoder else 1.0)
            assert lr == pytest.approx(scale * loop.lr_at(step, 6, 1e-4, sched["warmup_steps"], 1e-6))
        encoder_moved = any(n.startswith("encoder.") for n in moved)
        assert encoder_moved == (step >= 3), step  # frozen for exactly the first 3 steps
        assert any(n.startswith("decoder.") for n in moved)
    assert all(n > 0 for _, _, n, _ in seen[:3]) and [n for _, _, n, _ in seen[3:]] == [0, 0, 0]
    # how far the encoder moved: not at all while frozen (evaluation at step 3), then it moves
    hist = pd.read_csv(tmp_path / "a" / "history.csv").dropna(subset=["val_dice"]).set_index("step")
    assert hist.loc[0, "encoder_shift"] == 0.0 and hist.loc[3, "encoder_shift"] == 0.0
    assert hist.loc[6, "encoder_shift"] == pytest.approx(r["encoder_shift"]) and r["encoder_shift"] > 0


def test_recipes_fill_what_is_left_none():
    medssl = training.FinetuneConfig(labelled_slices=4, max_steps=300, run_dir="x").schedule()
    assert medssl == {"recipe": "medssl", "lr": 1e-2, "warmup_steps": 15, "warmup_start_lr": None, "grad_clip": 0.0,
                      "loss": "dice_ce", "encoder_lr_scale": 1.0, "freeze_encoder_steps": 0}
    work_a = training.FinetuneConfig(recipe="work-a", labelled_slices=4, max_steps=300, run_dir="x").schedule()
    # SSL-MedSeg: Adam 1e-4, 10 of 150 epochs of linear warm-up from 1e-6, gradient clipping 5, Jaccard loss
    assert (work_a["lr"], work_a["warmup_steps"], work_a["warmup_start_lr"], work_a["grad_clip"], work_a["loss"]) == \
        (1e-4, 20, 1e-6, 5.0, "jaccard")
    explicit = training.FinetuneConfig(recipe="work-a", lr=3e-4, grad_clip=0.0, loss="dice_ce", warmup_steps=0,
                                       labelled_slices=4, max_steps=300, run_dir="x").schedule()
    assert (explicit["lr"], explicit["grad_clip"], explicit["loss"], explicit["warmup_steps"]) == (3e-4, 0.0, "dice_ce", 0)
    assert loop.lr_at(0, 300, 1e-4, 20, 1e-6) == pytest.approx(1e-6)
    assert loop.lr_at(10, 300, 1e-4, 20, 1e-6) == pytest.approx((1e-6 + 1e-4) / 2)
    assert loop.lr_at(20, 300, 1e-4, 20, 1e-6) == pytest.approx(1e-4)
    for bad, match in (({"recipe": "worka"}, "recipe"), ({"encoder_lr_scale": 0}, "encoder_lr_scale"),
                       ({"freeze_encoder_steps": 301}, "freeze_encoder_steps"), ({"input_norm": "slice"}, "input_norm")):
        with pytest.raises(ParameterError, match=match):
            training.FinetuneConfig(labelled_slices=4, max_steps=300, run_dir="x", **bad)


# ============================================================================ encoder displacement
def test_encoder_shift_is_the_median_relative_change_of_the_conv_weights(tmp_path, byol_run):
    r = byol_run
    start = encoder_of("random", seed=0)
    end = encoder_of(r["checkpoint"])
    ratios = [float((pe.detach() - ps.detach()).norm() / ps.detach().norm()) for (n, ps), pe in
              zip(start.named_parameters(), end.parameters()) if ps.ndim == 4]
    assert r["encoder_shift"] == pytest.approx(float(np.median(ratios)), rel=1e-5)
    assert r["encoder_shift"] > 0


# ============================================================================ the dense probe
class _Cache:
    """A slice cache whose images are their label maps plus noise: a probe on their intensities can segment."""

    def __init__(self, n=12, size=32, seed=0):
        rng = np.random.default_rng(seed)
        labels = np.zeros((n, size, size), np.uint8)
        for i in range(n):
            cx, cy = rng.integers(8, size - 8, 2)
            yy, xx = np.mgrid[:size, :size]
            r = np.hypot(yy - cy, xx - cx)
            labels[i][r < 7] = 1
            labels[i][r < 4] = 2
        self.labels = labels
        self.images = (labels.astype(np.float32) + rng.normal(0, 0.2, labels.shape)).astype(np.float32)


class _IntensityEncoder(nn.Module):
    """Stage maps that hold the image (and its square) at stride 2: a linear probe can read the classes."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(2)

    def forward(self, x):
        half = nn.functional.avg_pool2d(x, 2)
        return [x, self.bn(torch.cat([half, half * half], dim=1))]


class _ConstantEncoder(nn.Module):
    def forward(self, x):
        return [x, torch.ones(x.shape[0], 2, x.shape[2] // 2, x.shape[3] // 2)]


def _probe_data():
    cache = _Cache()
    return ProbeData("synthetic", cache, np.arange(8), np.arange(8, 12), 3, ["ring", "core"])


def test_dense_probe_reads_segmentation_off_features_and_leaves_the_encoder_alone():
    data = _probe_data()
    enc = _IntensityEncoder().train()
    enc.bn.running_mean.fill_(5.0)
    state = {k: v.clone() for k, v in enc.state_dict().items()}
    good = dense_probe(enc, data, seed=0, train_slices=8, steps=50)
    assert good["dense_dice"] > 0.7, good
    assert enc.training and all(torch.equal(state[k], v) for k, v in enc.state_dict().items())
    again = dense_probe(enc, data, seed=0, train_slices=8, steps=50)
    assert (again["dense_dice"], again["dice"]) == (good["dense_dice"], good["dice"])  # repeats exactly
    blind = dense_probe(_ConstantEncoder(), data, seed=0, train_slices=8, steps=50)
    assert blind["dense_dice"] < 0.2  # features without information: background everywhere (Dice 0)
    assert good["train_slices"] == 8 and good["val_slices"] == 4 and set(good["dice"]) == {"ring", "core"}


def test_dense_probe_ignores_the_running_statistics():
    """A fresh encoder's running statistics are the defaults; the probe recomputes them, so they cannot matter."""
    data = _probe_data()
    a, b = _IntensityEncoder(), _IntensityEncoder()
    b.bn.running_mean.fill_(100.0)
    b.bn.running_var.fill_(1e-4)
    assert dense_probe(a, data, 1, train_slices=6, steps=30)["dense_dice"] == \
        dense_probe(b, data, 1, train_slices=6, steps=30)["dense_dice"]


def test_probe_in_pretraining_and_of_a_finetuning_init_agree(tmp_path):
    r = pre(tmp_path / "p", max_steps=3, probe_every=1, probe_seeds=2, probe_slices=8, probe_val_slices=8,
            probe_steps=10)
    probe = r["probe"]
    assert probe["seeds"] == [0, 1] and probe["train_slices"] == 8 and probe["val_slices"] <= 8
    assert probe["first"]["step"] == 0 and probe["step"] == 3
    rows = pd.read_csv(tmp_path / "p" / "probes.csv")
    assert sorted(set(rows["step"])) == [0, 3] and len(rows) == 4
    hist = pd.read_csv(tmp_path / "p" / "history.csv")
    assert hist.dropna(subset=["probe_dice"])["step"].tolist() == [0, 3]
    # the probe of random init at step 0 (seed 0) is the fine-tuning run's init probe of the same init and seed
    ft = fin(tmp_path / "f", probe_init=True, probe_slices=8, probe_val_slices=8, probe_steps=10, max_steps=1,
             eval_every=1)
    step0 = rows[(rows["step"] == 0) & (rows["seed"] == 0)]["dense_dice"].item()
    assert ft["init_probe"]["dense_dice"] == pytest.approx(step0, abs=1e-7)
    assert json.loads((tmp_path / "f" / "init_probe.json").read_text())["dense_dice"] == ft["init_probe"]["dense_dice"]
    # so is the probe of the pretrained checkpoint at the end
    ft2 = fin(tmp_path / "f2", init=r["checkpoint"], probe_init=True, probe_slices=8, probe_val_slices=8,
              probe_steps=10, max_steps=1, eval_every=1)
    end = rows[(rows["step"] == 3) & (rows["seed"] == 0)]["dense_dice"].item()
    assert ft2["init_probe"]["dense_dice"] == pytest.approx(end, abs=1e-7)


def test_prepare_probe_data_skips_unlabelled_datasets():
    assert prepare_probe_data("natural", 32) is None
    data = prepare_probe_data(DATA, 32, val_slices=5)
    assert data is not None and len(data.val_rows) == 5 and data.num_classes == 4
    assert prepare_probe_data(DATA, 32, val_slices=5).val_rows.tolist() == data.val_rows.tolist()  # fixed


# ============================================================================ k-NN: BatchNorm and chance
def test_knn_at_step_0_does_not_depend_on_the_running_statistics(tmp_path, monkeypatch):
    """The pretraining loop's k-NN at step 0 must see the encoder as its weights are, whatever running
    statistics its BatchNorm layers hold (a fresh encoder's are the defaults: mean 0, variance 1)."""
    from medssl_utils import models

    kw = dict(max_steps=1, knn_every=1, knn_max_bank=60, knn_max_query=30)
    plain = pre(tmp_path / "plain", **kw)
    real = models.build_unet

    built = []

    def odd_statistics(*a, **k):
        model = real(*a, **k)
        built.append(model)
        g = torch.Generator().manual_seed(1)
        for m in model.encoder.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 3)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) * 10 + 0.01)
        return model

    monkeypatch.setattr(importlib.import_module("medssl_utils.training.pretrain"), "build_unet", odd_statistics)  # what the loop calls
    odd = pre(tmp_path / "odd", **kw)
    assert built  # the odd statistics were in the model the loop evaluated
    first = [pd.read_csv(tmp_path / d / "history.csv").dropna(subset=["knn_acc"]).iloc[0] for d in ("plain", "odd")]
    assert first[0]["step"] == 0 and first[0]["knn_acc"] == first[1]["knn_acc"]
    assert plain["knn"]["first"] == odd["knn"]["first"]
    # logged with both chance levels, at step 0 and at the end
    knn = plain["knn"]
    assert 0 <= knn["chance_majority"] <= 1 and 0 <= knn["chance_frequency"] <= 1
    hist = pd.read_csv(tmp_path / "plain" / "history.csv").dropna(subset=["knn_acc"])
    assert hist["step"].tolist() == [0, 1] and hist["knn_chance_majority"].notna().all()


def test_knn_evaluate_restores_the_statistics():
    from medssl_utils.models.byol import BYOL
    from medssl_utils.models.knn import knn_evaluate

    data = training.prepare_pretrain_data(training.PretrainConfig(
        datasets=[DATA], knn_every=1, knn_max_bank=60, knn_max_query=30, run_dir="x", probe_every=0, **TINY))
    torch.manual_seed(0)
    enc = build_unet("test_resnet", 2, decoder_channels=(16, 8, 8, 8, 8)).encoder
    model = BYOL(enc, enc.out_channels[-1], **SMALL_BYOL).train()
    state = {k: v.clone() for k, v in enc.state_dict().items()}
    out = knn_evaluate(model, data.bank, data.query, by="position")
    assert set(out) == {"acc", "chance_majority", "chance_frequency"} and 0 <= out["acc"] <= 1
    assert model.training and all(torch.equal(state[k], v) for k, v in enc.state_dict().items())


def test_knn_chance_levels():
    from medssl_utils.models.knn import chance_levels

    c = chance_levels([0, 0, 0, 1], [0, 1, 1, 2])
    assert c["chance_majority"] == pytest.approx(0.25)  # always class 0 (the bank's majority)
    assert c["chance_frequency"] == pytest.approx(0.75 * 0.25 + 0.25 * 0.5)


# ============================================================================ augmentation for small images
def test_ssl_augment_defaults_fit_small_images():
    aug = SSLAugment()
    assert aug.blur_p == (0.0, 0.0) and aug.scale == (0.2, 1.0)
    byol = ssl_preset("byol", 64)
    assert byol["blur_sigma"] == pytest.approx((0.025, 0.5)) and byol["blur_p"] == (1.0, 0.1)
    assert ssl_preset("byol", 256)["blur_sigma"] == pytest.approx((0.1, 2.0))
    work_a = SSLAugment(output_size=64, **ssl_preset("work-a", 64))
    assert (work_a.scale, work_a.brightness, work_a.contrast, work_a.jitter_p) == ((0.08, 1.0), 0.2, 0.2, (0.8, 0.8))
    assert work_a.blur_p == work_a.gamma_p == work_a.noise_p == (0.0, 0.0)
    with pytest.raises(ParameterError, match="augment_preset"):
        training.PretrainConfig(augment_preset="simclr", run_dir="x")
    assert set(SSL_PRESETS) == {"medssl", "byol", "work-a"}


def test_pretraining_uses_and_records_its_augmentation(tmp_path):
    r = pre(tmp_path / "a", max_steps=1, augment_preset="work-a", augment={"hflip_p": 0.0})
    assert r["augment"]["scale"] == [0.08, 1.0] and r["augment"]["hflip_p"] == [0.0, 0.0]
    assert r["augment"]["blur_p"] == [0.0, 0.0]


# ============================================================================ HSSL: decoder and input
HSSL_OPTS = dict(hidden_dim=32, projection_dim=16, dense_hidden_dim=16, dense_dim=8)


@pytest.fixture(scope="module")
def hssl_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hssl")
    encoder_only = pre(root / "enc", method="hssl", max_steps=2, method_options={
        **HSSL_OPTS, "pretrain_decoder": False, "weights": {"image": 1.0, "task": 0.0, "group": 0.0, "dense": 0.0}})
    full = pre(root / "full", method="hssl", max_steps=2, method_options={
        **HSSL_OPTS, "weights": {"image": 1.0, "task": 0.0, "group": 0.0, "dense": 1.0}})
    return encoder_only, full


def test_encoder_only_hssl_saves_no_decoder(tmp_path, hssl_runs):
    encoder_only, full = hssl_runs
    assert load_checkpoint(encoder_only["checkpoint"])["decoder"] is None  # its decoder never trained
    assert load_checkpoint(full["checkpoint"])["decoder"] is not None
    ft = fin(tmp_path / "f", init=encoder_only["checkpoint"], input_norm="image", max_steps=1, eval_every=1)
    assert ft["load_decoder"] is False


def test_finetuning_feeds_what_hssl_pretraining_fed(tmp_path, monkeypatch, hssl_runs, byol_run):
    r = hssl_runs[1]
    assert r["input_norm"] == "image" and load_checkpoint(r["checkpoint"])["lineage"][-1]["input_norm"] == "image"
    with pytest.raises(ParameterError, match="input_norm='volume'.*per-image z-scored views.*input_norm='image'"):
        fin(tmp_path / "v", init=r["checkpoint"], max_steps=1, eval_every=1)
    seen = []
    from medssl_utils.models import unet as unet_mod

    real = unet_mod.standardize_images
    spy = lambda x, eps=1e-5: (seen.append(x.shape), real(x, eps))[1]  # noqa: E731
    monkeypatch.setattr(unet_mod, "standardize_images", spy)  # PerImageNorm's
    monkeypatch.setattr(importlib.import_module("medssl_utils.training.finetune"), "standardize_images", spy)  # the init probe's
    ft = fin(tmp_path / "i", init=r["checkpoint"], input_norm="image", max_steps=1, eval_every=1)
    assert ft["input_norm"] == "image" and seen  # every input went through the per-image z-score
    with pytest.raises(ParameterError, match="input_norm='image'.*normalised per volume"):
        fin(tmp_path / "bi", init=byol_run["checkpoint"], input_norm="image", max_steps=1, eval_every=1)


# ============================================================================ LARS as Work A ran it
def test_lars_step_follows_the_trust_ratio_with_clipping_and_exclusions():
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(4, 3))
    b = nn.Parameter(torch.randn(4))
    w0, b0 = w.detach().clone(), b.detach().clone()
    w.grad, b.grad = torch.randn(4, 3) * 10, torch.randn(4)
    g_w, g_b = w.grad.clone(), b.grad.clone()
    lr, wd, eta = 0.5, 1e-5, 0.02
    opt = LARS([{"params": [w], "weight_decay": wd}, {"params": [b], "weight_decay": 0.0}], lr=lr, momentum=0.9,
               weight_decay=wd)
    opt.step()
    local = eta * w0.norm() / (g_w.norm() + wd * w0.norm() + 1e-8)
    expected_w = w0 - lr * min(float(local) / lr, 1.0) * (g_w + wd * w0)
    assert torch.allclose(w.detach(), expected_w, atol=1e-6)
    assert torch.allclose(b.detach(), b0 - lr * g_b, atol=1e-6)  # bias: no adaptation, no decay
    # the effective rate is min(trust, lr): a huge trust ratio follows the schedule's lr
    big = nn.Parameter(torch.ones(2, 2) * 100)
    big.grad = torch.ones(2, 2) * 1e-3
    LARS([big], lr=0.1, momentum=0.0).step()
    assert torch.allclose(big.detach(), torch.full((2, 2), 100 - 0.1 * 1e-3), atol=1e-7)


def test_the_lars_optimizer_is_work_a_s():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
    opt = loop.make_optimizer("lars", model, 0.25, 1e-5)
    assert isinstance(opt, LARS)
    g = opt.param_groups[0]
    assert (g["eta"], g["clip_lr"], g["exclude_bias_and_norm"]) == (0.02, True, True)  # lightly's: 0.001, no clipping
    assert [grp["weight_decay"] for grp in opt.param_groups] == [1e-5, 0.0]


def test_acdc_paper_study_pretrains_as_work_a():
    from medssl_utils.study import load_study

    study = load_study(ROOT / "studies" / "acdc-paper.yaml")
    stage = next(r for r in study.runs if r.kind == "pretrain").params
    assert stage["optimizer"] == "lars" and stage["weight_decay"] == pytest.approx(1e-5)
    assert stage["lr"] == pytest.approx(0.5 * 128 / 256)  # solo-learn: lr 0.5 x batch / 256
    assert stage["augment_preset"] == "work-a" and stage["method_options"]["predictor_hidden_dim"] == 8192
    ft = next(r for r in study.runs if r.kind == "finetune").params
    assert ft["recipe"] == "work-a"
