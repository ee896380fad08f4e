"""Self-supervised methods (BYOL, SimCLR, HSSL) and the online k-NN probe.

Training-loop tests use smp U-Nets over timm's tiny ``test_resnet`` encoder on 32x32
slices from the fixture datasets so the file stays fast on a shared CPU; the structural
HSSL test uses the study's ``tu-resnet18``.
"""

from __future__ import annotations

import datetime
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch
import torch.distributed as dist
from torch import nn

from medssl_utils.data import MultiDomainDataset, SliceDataset, SSLAugment, load_dataset, slice_cache
from medssl_utils.errors import ParameterError
from medssl_utils.models.byol import BYOL, auto_base_momentum, momentum_schedule
from medssl_utils.models.hssl import HSSL, _sample, corresponding_points
from medssl_utils.models.knn import dataset_labels, embed_dataset, knn_accuracy, knn_probe, position_bins
from medssl_utils.models.simclr import SimCLR

SIZE = 32
SMALL = dict(projection_dim=32, hidden_dim=64)


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Other work shares the CPU cores; one thread is faster than two contended ones."""


def tiny_unet(encoder: str = "tu-test_resnet", seed: int = 0) -> smp.Unet:
    torch.manual_seed(seed)
    return smp.Unet(encoder, encoder_weights=None, in_channels=1, classes=4, decoder_channels=(32, 16, 16, 8, 8))


def feature_dim(unet) -> int:
    return unet.encoder.out_channels[-1]


@pytest.fixture
def cardiac(acdc2023):
    """SliceDataset of the ACDC-layout fixture (ED/ES frames), 32x32."""
    cache = slice_cache(load_dataset(f"acdc:{acdc2023}?cine=0"), image_size=SIZE)
    return SliceDataset(cache, with_labels=False)


@pytest.fixture
def multi_domain(acdc2023, msd_prostate, msd_ct):
    """Three domains: cardiac MR, prostate MR, spleen CT -> 3 tasks, 2 groups (MR, CT)."""
    parts = []
    for spec in (f"acdc:{acdc2023}?cine=0", f"msd:{msd_prostate}", f"msd:{msd_ct}"):
        parts.append(SliceDataset(slice_cache(load_dataset(spec), image_size=SIZE), with_labels=False))
    return MultiDomainDataset(parts)


def batch_of(dataset, n: int, seed: int = 0) -> dict:
    """n items drawn without replacement, collated to tensors."""
    rows = np.random.default_rng(seed).choice(len(dataset), size=n, replace=False)
    items = dataset.__getitems__(rows)
    return {k: torch.stack([torch.as_tensor(d[k]) for d in items]) for k in items[0]}


# crop + flip only: with intensity jitter on these tiny blob images ten steps are too noisy to show a trend
AUG = SSLAugment(scale=(0.6, 1.0), jitter_p=0.0, gamma_p=0.0, blur_p=0.0, noise_p=0.0)


def loss_before_after(model, images, extra=(), steps: int = 10, lr: float = 3e-3, on_step=None, view_seed=1,
                      geometry: bool = False):
    """Mean loss on two fixed view pairs before and after ``steps`` Adam steps on fresh views.

    The model stays in train mode throughout (batch-norm batch statistics, as in training).
    With ``geometry`` the views' crop geometry follows the tags (HSSL's dense level).
    """
    gen = torch.Generator().manual_seed(view_seed)

    def views():
        if not geometry:
            return AUG(images, gen)
        v1, v2, th1, th2 = AUG.views_with_geometry(images, gen)
        return v1, v2, th1, th2

    def call(v):
        return model(v[0], v[1], *extra, *v[2:])

    fixed = [views() for _ in range(2)]

    def evaluate():
        with torch.no_grad():
            return float(np.mean([float(call(v)[0]) for v in fixed]))

    torch.manual_seed(0)
    before = evaluate()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    for step in range(steps):
        loss, _ = call(views())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if on_step is not None:
            on_step(step, steps)
    return before, evaluate()


# --------------------------------------------------------------------------- loss falls
def test_byol_loss_falls_on_slices(cardiac):
    images = batch_of(cardiac, 12)["image"]
    unet = tiny_unet()
    byol = BYOL(unet.encoder, feature_dim(unet), projection_dim=32, hidden_dim=64, predictor_hidden_dim=64)
    before, after = loss_before_after(byol, images, on_step=lambda s, n: byol.update_target(s, n))
    assert after < before - 0.1, (before, after)


def test_simclr_loss_falls_on_slices(cardiac):
    images = batch_of(cardiac, 12)["image"]
    unet = tiny_unet()
    simclr = SimCLR(unet.encoder, feature_dim(unet), **SMALL)
    before, after = loss_before_after(simclr, images)
    assert after < before - 0.1, (before, after)


def test_hssl_loss_falls_on_multi_domain_slices(multi_domain):
    batch = batch_of(multi_domain, 12)
    assert len(set(batch["task"].tolist())) == 3 and len(set(batch["group"].tolist())) == 2
    unet = tiny_unet()
    hssl = HSSL(unet, num_tasks=len(multi_domain.tasks), num_groups=len(multi_domain.groups), **SMALL)
    before, after = loss_before_after(hssl, batch["image"], extra=(batch["task"], batch["group"]), geometry=True)
    assert after < before - 0.1, (before, after)


# --------------------------------------------------------------------------- BYOL momentum
def test_byol_default_heads_are_work_a_sizes():
    byol = BYOL(nn.Identity(), feature_dim=2048)
    linears = lambda m: [(l.in_features, l.out_features) for l in m.modules() if isinstance(l, nn.Linear)]
    assert linears(byol.projector) == [(2048, 4096), (4096, 256)]
    assert linears(byol.predictor) == [(256, 4096), (4096, 256)]
    assert linears(byol.target_projector) == linears(byol.projector)
    emb = byol.embed(torch.randn(3, 2048))  # pooled features pass through unchanged
    assert emb.shape == (3, 2048)


def test_momentum_schedule_values():
    assert momentum_schedule(0, 101) == pytest.approx(0.99)
    assert momentum_schedule(50, 101) == pytest.approx(0.995)
    assert momentum_schedule(100, 101) == pytest.approx(1.0)
    assert momentum_schedule(500, 101) == pytest.approx(1.0)  # after the end (e.g. resumed): stays at 1
    assert momentum_schedule(25, 101) == pytest.approx(1 - 0.01 * (math.cos(math.pi / 4) + 1) / 2)
    values = [momentum_schedule(s, 101) for s in range(101)]
    assert all(a <= b for a, b in zip(values, values[1:]))
    assert momentum_schedule(0, 11, base_momentum=0.9) == pytest.approx(0.9)
    for bad in (dict(step=-1, total_steps=10), dict(step=0, total_steps=0),
                dict(step=0, total_steps=10, base_momentum=1.5), dict(step=0.5, total_steps=10)):
        with pytest.raises(ParameterError):
            momentum_schedule(**bad)


def test_byol_target_moves_by_exactly_one_minus_m():
    unet = tiny_unet()
    byol = BYOL(unet.encoder, feature_dim(unet), projection_dim=16, hidden_dim=32, predictor_hidden_dim=32)
    assert byol.encoder is unet.encoder
    assert not any(p.requires_grad for p in byol.target_encoder.parameters())
    assert not any(p.requires_grad for p in byol.target_projector.parameters())
    online = lambda: [p.detach().clone() for p in [*byol.encoder.parameters(), *byol.projector.parameters()]]
    target = lambda: [p.detach().clone() for p in [*byol.target_encoder.parameters(),
                                                   *byol.target_projector.parameters()]]
    # the copies start equal
    assert all(torch.equal(a, b) for a, b in zip(online(), target()))

    opt = torch.optim.SGD([p for p in byol.parameters() if p.requires_grad], lr=0.5)
    x = torch.randn(6, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    target_before, online_before = target(), online()
    loss, logs = byol(x, x.flip(-1))
    loss.backward()
    opt.step()
    target_after_step, online_after_step = target(), online()
    assert all(torch.equal(a, b) for a, b in zip(target_before, target_after_step)), "optimiser moved the target"
    assert not all(torch.equal(a, b) for a, b in zip(online_before, online_after_step))
    assert set(logs) == {"loss", "z_std"} and -1 <= float(logs["loss"]) <= 1

    m = byol.update_target(step=0, total_steps=10)
    assert m == pytest.approx(auto_base_momentum(10))  # "auto": a 10-step run starts far below 0.99
    for t_old, o, t_new in zip(target_before, online_after_step, target()):
        torch.testing.assert_close(t_new, m * t_old + (1 - m) * o)
    # at the last step m = 1: the target no longer moves
    frozen = target()
    byol.update_target(step=9, total_steps=10)
    assert all(torch.equal(a, b) for a, b in zip(frozen, target()))


def _initial_target_left(total: int, base: float) -> float:
    """Fraction of the random initial target weights left after a whole run (product of momenta)."""
    return math.prod(momentum_schedule(s, total, base) for s in range(total))


def test_byol_base_momentum_suits_the_run_length():
    # the fault: BYOL's 0.99 over the quick study's 76 steps leaves ~70 % of the random target
    assert _initial_target_left(76, 0.99) > 0.65
    for total in (20, 76, 300, 921, 5000):
        m0 = auto_base_momentum(total)
        assert _initial_target_left(total, m0) <= 0.0101
        assert m0 <= 0.99
    assert auto_base_momentum(76) == pytest.approx(0.8788, abs=1e-4)
    assert auto_base_momentum(922) == auto_base_momentum(100_000) == 0.99
    unet = tiny_unet()
    fixed = BYOL(unet.encoder, feature_dim(unet), base_momentum=0.99, **SMALL)
    assert fixed.update_target(0, 76) == pytest.approx(0.99)
    assert BYOL(tiny_unet().encoder, feature_dim(unet), **SMALL).update_target(0, 76) == pytest.approx(0.8788, abs=1e-4)
    with pytest.raises(ParameterError, match="base_momentum=1.5 must be 'auto' or a number in"):
        BYOL(unet.encoder, feature_dim(unet), base_momentum=1.5)


# --------------------------------------------------------------------------- SimCLR
def test_simclr_identical_views_score_lower_than_unrelated_images(cardiac):
    images = batch_of(cardiac, 8)["image"]
    unet = tiny_unet()
    simclr = SimCLR(unet.encoder, feature_dim(unet), **SMALL).eval()
    with torch.no_grad():
        same, logs = simclr(images, images)
        unrelated, _ = simclr(images, images.roll(1, dims=0))
    assert float(same) < float(unrelated)
    assert float(logs["contrast_acc"]) == 1.0


def test_simclr_gather_distributed_single_process_equals_plain_loss():
    unet = tiny_unet()
    gathered = SimCLR(unet.encoder, feature_dim(unet), gather_distributed=True, **SMALL).eval()
    plain = SimCLR(unet.encoder, feature_dim(unet), gather_distributed=False, **SMALL).eval()
    plain.projector.load_state_dict(gathered.projector.state_dict())
    x = torch.randn(6, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    loss, _ = gathered(x, x + 0.1)
    torch.testing.assert_close(loss, plain(x, x + 0.1)[0])
    loss.backward()  # gradients flow through the (single-process) gather path
    assert all(p.grad is not None for p in gathered.projector.parameters())


class _TinyEncoder(nn.Module):
    """A BN-free encoder, so per-process losses can be compared with one process."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 8, 3, stride=2)

    def forward(self, x):
        return [torch.relu(self.conv(x))]


def _tiny_simclr() -> SimCLR:
    torch.manual_seed(0)
    return SimCLR(_TinyEncoder(), 8, projection_dim=4, hidden_dim=8, temperature=0.2).eval()


# DDP rank 1 in a child process (kept import-light); it builds the same model as _tiny_simclr.
_RANK1 = """
import sys, datetime, torch, torch.distributed as dist
from torch import nn
from medssl_utils.models.simclr import SimCLR
init, data = sys.argv[1], sys.argv[2]
dist.init_process_group("gloo", init_method="file://" + init, rank=1, world_size=2,
                        timeout=datetime.timedelta(seconds=120))
class Enc(nn.Module):
    def __init__(self):
        super().__init__(); torch.manual_seed(0); self.conv = nn.Conv2d(1, 8, 3, stride=2)
    def forward(self, x):
        return [torch.relu(self.conv(x))]
torch.manual_seed(0)
model = SimCLR(Enc(), 8, projection_dim=4, hidden_dim=8, temperature=0.2).eval()
images = torch.load(data)
loss, _ = model(images[4:], images[4:].flip(-1))
loss.backward()
print(repr(float(loss)))
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_simclr_gathers_negatives_across_processes(tmp_path):
    """Two DDP ranks (this process and a child) with half the batch each: their mean loss
    equals the loss of one process on the whole batch, so negatives were gathered."""
    images = torch.randn(8, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    torch.save(images, tmp_path / "images.pt")
    model = _tiny_simclr()
    with torch.no_grad():
        expected = float(model(images, images.flip(-1))[0])
        local_only = float(model(images[:4], images[:4].flip(-1))[0])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    child = subprocess.Popen([sys.executable, "-c", _RANK1, str(tmp_path / "init"), str(tmp_path / "images.pt")],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=2,
                                timeout=datetime.timedelta(seconds=120))
        try:
            loss0, _ = model(images[:4], images[:4].flip(-1))
            loss0.backward()  # the gather layer's backward runs too
        finally:
            dist.destroy_process_group()
        out, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0, err[-2000:]
    loss1 = float(out.strip().splitlines()[-1])
    loss0 = loss0.item()
    assert (loss0 + loss1) / 2 == pytest.approx(expected, rel=1e-5)
    assert loss0 != pytest.approx(local_only, rel=1e-3), "rank 0 saw only its own negatives"


# --------------------------------------------------------------------------- HSSL
def tags(n: int, k: int) -> torch.Tensor:
    return torch.arange(n) % k


IDENTITY = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
HFLIP = torch.tensor([[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # view 2 = view 1 flipped left-right


def flipped_geometry(b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Geometry of the pair (x, x.flip(-1)): the whole image, the second one mirrored."""
    return IDENTITY.expand(b, 2, 3), HFLIP.expand(b, 2, 3)


@pytest.mark.parametrize("weights", [
    {"image": 1.0, "task": 1.0, "group": 1.0, "dense": 1.0},
    {"image": 1.0, "task": 0.0, "group": 0.0, "dense": 0.0},
    {"image": 0.0, "task": 2.0, "group": 0.0, "dense": 0.0},
    {"image": 0.5, "task": 0.0, "group": 3.0, "dense": 0.0},
    {"image": 0.0, "task": 0.0, "group": 0.0, "dense": 2.0},
])
def test_hssl_weights_toggle_levels(weights):
    unet = tiny_unet()
    hssl = HSSL(unet, num_tasks=3, num_groups=2, weights=weights, **SMALL)
    x = torch.randn(6, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    loss, logs = hssl(x, x.flip(-1), tags(6, 3), tags(6, 2), *flipped_geometry(6))
    on = [k for k, w in weights.items() if w > 0]
    assert hssl.levels == tuple(on)
    assert {k for k in logs if k.startswith("loss_")} == {f"loss_{k}" for k in on}
    assert ("contrast_acc" in logs) == ("image" in on)
    for level in ("task", "group"):
        assert (f"{level}_acc" in logs) == (level in on)
        if level in on:
            assert 0.0 <= float(logs[f"{level}_acc"]) <= 1.0
        assert (getattr(hssl, f"{level}_heads") is None) == (level not in on)
    assert ("dense_acc" in logs) == ("dense" in on) and (hssl.dense_head is None) == ("dense" not in on)
    if "dense" in on:
        assert float(logs["dense_points"]) == 6 * 36  # a mirrored whole image: every grid point lies in view 2
    torch.testing.assert_close(loss.detach(), sum(weights[k] * logs[f"loss_{k}"] for k in on))
    torch.testing.assert_close(logs["loss"], loss.detach())


def test_hssl_trains_the_decoder():
    """Study model (tu-resnet18): the decoder gets non-zero gradients and changes after a step."""
    unet = tiny_unet("tu-resnet18")
    hssl = HSSL(unet, num_tasks=3, num_groups=2, **SMALL)
    assert hssl.encoder is unet.encoder and hssl.decoder is unet.decoder
    assert hssl.branches == ("encoder", "decoder") and hssl.decoder_dim == 8
    head_ids = {id(p) for p in unet.segmentation_head.parameters()}
    assert not head_ids & {id(p) for p in hssl.parameters()}, "segmentation head would be unused under DDP"
    before = {n: p.detach().clone() for n, p in unet.decoder.named_parameters()}
    opt = torch.optim.Adam(hssl.parameters(), lr=1e-3)
    x = torch.randn(4, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    loss, logs = hssl(x, x.flip(-1), tags(4, 3), tags(4, 2), *flipped_geometry(4))
    loss.backward()
    for name, p in unet.decoder.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"decoder.{name} got no gradient"
    opt.step()
    for name, p in unet.decoder.named_parameters():
        assert not torch.equal(p, before[name]), f"decoder.{name} did not change"


def test_hssl_without_decoder_branch_leaves_decoder_untouched():
    unet = tiny_unet()
    hssl = HSSL(unet, num_tasks=3, num_groups=2, pretrain_decoder=False, **SMALL,
                weights={"image": 1.0, "task": 1.0, "group": 1.0, "dense": 0.0})
    x = torch.randn(4, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    hssl(x, x.flip(-1), tags(4, 3), tags(4, 2))[0].backward()
    assert hssl.branches == ("encoder",)
    assert all(p.grad is None for p in unet.decoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in unet.encoder.parameters())


def test_hssl_refuses_bad_arguments():
    unet = tiny_unet()
    for bad in (dict(weights={"image": 1.0}),
                dict(weights={"image": 1.0, "task": 1.0, "group": 1.0, "dense": 1.0, "x": 1}),
                dict(weights={"image": -1.0, "task": 1.0, "group": 1.0, "dense": 1.0}),
                dict(weights={"image": 0, "task": 0, "group": 0, "dense": 0}),
                dict(weights={"image": 1.0, "task": 1.0, "group": 1.0}),  # a level left out: say so
                dict(pretrain_decoder=False),  # the dense level needs the decoder
                dict(num_tasks=1), dict(temperature=0.0), dict(standardize="yes")):
        kwargs = dict(num_tasks=3, num_groups=2, **SMALL) | bad
        with pytest.raises(ParameterError):
            HSSL(unet, **kwargs)
    # one task is fine once the task level is off (single-domain pretraining)
    HSSL(unet, num_tasks=1, num_groups=1, weights={"image": 1.0, "task": 0.0, "group": 0.0, "dense": 1.0}, **SMALL)
    hssl = HSSL(unet, num_tasks=3, num_groups=2, **SMALL)
    x = torch.randn(4, 1, SIZE, SIZE)
    with pytest.raises(ParameterError, match="task ids"):
        hssl(x, x, torch.tensor([0, 1, 2, 3]), tags(4, 2))
    with pytest.raises(ParameterError, match="group"):
        hssl(x, x, tags(4, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ParameterError, match="at least 2"):
        hssl(x[:1], x[:1], tags(1, 3), tags(1, 2))
    with pytest.raises(ParameterError, match="the dense level needs theta1"):
        hssl(x, x, tags(4, 3), tags(4, 2))


def test_views_with_geometry_maps_points_between_views():
    """The same anatomical point sampled in both views reads the same intensity (no intensity change)."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 48), torch.linspace(-1, 1, 48), indexing="ij")
    smooth = (torch.sin(3 * xx) + torch.cos(2 * yy) + xx * yy)[None, None].repeat(8, 1, 1, 1)
    aug = SSLAugment(output_size=32, scale=(0.2, 1.0), rotation=30, hflip_p=0.5, vflip_p=0.5, jitter_p=0,
                     gamma_p=0, blur_p=0, noise_p=0)
    v1, v2, th1, th2 = aug.views_with_geometry(smooth, torch.Generator().manual_seed(0))
    same1, same2 = aug(smooth, torch.Generator().manual_seed(0))
    assert torch.equal(v1, same1) and torch.equal(v2, same2)  # same draws as __call__
    q1, q2, valid = corresponding_points(th1, th2, grid=6)
    assert valid.any(dim=1).all() and not valid.all()  # some crops overlap only in part
    a, b = _sample(v1, q1)[valid], _sample(v2, q2)[valid]
    assert (a - b).abs().max() < 0.15 * float(smooth.std())  # bilinear resampling twice, nothing more
    shuffled = _sample(v2, q2.roll(1, dims=1))[valid]
    assert (a - shuffled).abs().mean() > 5 * (a - b).abs().mean()  # the test can fail


def test_hssl_standardized_input_hides_the_intensity_range():
    """task/group cannot be read from the intensity range: x and a*x + b give the same features."""
    unet = tiny_unet()
    hssl = HSSL(unet, num_tasks=3, num_groups=2, **SMALL).eval()
    x = torch.randn(4, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = hssl.representations(x), hssl.representations(3.0 * x - 2.0)
        torch.testing.assert_close(a["encoder"], b["encoder"], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(hssl.embed(x), hssl.embed(0.5 * x + 1.0), atol=1e-4, rtol=1e-4)
        plain = HSSL(unet, num_tasks=3, num_groups=2, standardize=False, **SMALL).eval()
        assert not torch.allclose(plain.embed(x), plain.embed(3.0 * x - 2.0), atol=1e-3)


def test_methods_refuse_a_wrong_feature_dim():
    unet = tiny_unet()
    x = torch.randn(4, 1, SIZE, SIZE)
    for model in (BYOL(unet.encoder, 512, 8, 16, 16), SimCLR(unet.encoder, 512, 8, 16)):
        with pytest.raises(ParameterError, match="feature_dim"):
            model(x, x)


# --------------------------------------------------------------------------- k-NN probe
def test_knn_accuracy_separable_vs_random():
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 16, generator=gen) * 5
    def clusters(n):
        labels = torch.arange(n) % 3
        return centres[labels] + torch.randn(n, 16, generator=gen), labels
    train, train_y = clusters(300)
    test, test_y = clusters(150)
    assert knn_accuracy(train, train_y, test, test_y) > 0.95
    noise, noise_test = torch.randn(300, 16, generator=gen), torch.randn(600, 16, generator=gen)
    chance = knn_accuracy(noise, train_y, noise_test, torch.arange(600) % 3)
    assert 0.2 < chance < 0.47
    # k larger than the bank and tiny chunks give the same kind of answer
    assert knn_accuracy(train[:10], train_y[:10], test, test_y, k=50, chunk_size=7) > 0.9


def test_knn_accuracy_refuses_bad_input():
    x, y = torch.randn(5, 4), torch.arange(5) % 2
    for bad in (dict(k=0), dict(temperature=0.0), dict(test_emb=torch.randn(5, 3)),
                dict(train_labels=torch.arange(4)), dict(train_labels=torch.rand(5))):
        kwargs = dict(train_emb=x, train_labels=y, test_emb=x, test_labels=y) | bad
        with pytest.raises(ParameterError):
            knn_accuracy(**kwargs)


def test_position_bins():
    got = position_bins([0.0, 0.33, 1 / 3, 0.5, 2 / 3 - 1e-9, 2 / 3, 0.99, 1.0])
    assert got.tolist() == [0, 0, 1, 1, 1, 2, 2, 2]
    assert position_bins([0.0, 0.5, 1.0], bins=2).tolist() == [0, 1, 1]


def test_embed_dataset_and_probe(multi_domain):
    unet = tiny_unet()
    model = SimCLR(unet.encoder, feature_dim(unet), **SMALL).train()
    emb, tags_ = embed_dataset(model, multi_domain, batch_size=64)
    assert model.training, "train mode must be restored"
    assert emb.shape == (len(multi_domain), feature_dim(unet)) and not emb.requires_grad
    assert set(tags_) == {"index", "domain", "task", "group"}
    # in order, and computed in eval mode (batch statistics would differ per batch)
    i = len(multi_domain) - 3
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(emb[i], model.embed(multi_domain[i]["image"][None])[0])
    model.train()

    part = multi_domain.parts[0]
    labels = dataset_labels(multi_domain, "position")
    expected = position_bins(part.cache.index["position"].to_numpy()[part.rows])
    assert labels[: len(part)].tolist() == expected.tolist() and set(labels.tolist()) == {0, 1, 2}
    assert dataset_labels(multi_domain, "task", tags_).tolist() == tags_["task"].tolist()

    acc = knn_probe(model, multi_domain, multi_domain, by="task", k=5)
    assert 0.0 <= acc <= 1.0
    with pytest.raises(ParameterError):
        knn_probe(model, multi_domain, multi_domain, by="organ")


# --------------------------------------------------------------------------- views: separate or batched
def _three_methods(multi_domain, views: str):
    """BYOL, SimCLR and HSSL over identically initialised tiny U-Nets, each with ``views``."""
    out = {}
    for name in ("byol", "simclr", "hssl"):
        unet = tiny_unet(seed=3)
        torch.manual_seed(5)
        if name == "byol":
            out[name] = BYOL(unet.encoder, feature_dim(unet), projection_dim=32, hidden_dim=64,
                             predictor_hidden_dim=64, views=views)
        elif name == "simclr":
            out[name] = SimCLR(unet.encoder, feature_dim(unet), **SMALL, views=views)
        else:
            out[name] = HSSL(unet, num_tasks=len(multi_domain.tasks), num_groups=len(multi_domain.groups), **SMALL,
                             views=views)
    return out


def _loss_and_grads(method, batch, gen_seed: int = 7):
    v1, v2, th1, th2 = AUG.views_with_geometry(batch["image"], torch.Generator().manual_seed(gen_seed))
    extra = (batch["task"], batch["group"], th1, th2) if isinstance(method, HSSL) else ()
    loss, _ = method(v1, v2, *extra)
    method.zero_grad(set_to_none=True)
    loss.backward()
    return float(loss), {k: p.grad.clone() for k, p in method.named_parameters() if p.grad is not None}


def test_batched_views_compute_the_same_loss_and_gradients_without_batch_statistics(multi_domain):
    """With BatchNorm on running statistics (eval mode) nothing depends on the batch, so running both views
    as one batch must give the separate form's loss and every gradient (to float rounding)."""
    batch = batch_of(multi_domain, 8)
    separate, batched = _three_methods(multi_domain, "separate"), _three_methods(multi_domain, "batched")
    for name in separate:
        a, b = separate[name].eval(), batched[name].eval()
        assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters())), name
        la, ga = _loss_and_grads(a, batch)
        lb, gb = _loss_and_grads(b, batch)
        assert la == pytest.approx(lb, rel=1e-5, abs=1e-6), name
        assert ga.keys() == gb.keys() and len(ga) > 4, name
        for k in ga:
            scale = float(ga[k].abs().max())  # some gradients are ~0 by symmetry: compare on the tensor's scale
            torch.testing.assert_close(ga[k], gb[k], rtol=1e-4, atol=1e-5 * max(scale, 1e-3), msg=f"{name}: {k}")


def test_batched_views_normalise_over_both_views_in_training_mode(multi_domain):
    """In training mode the two forms differ where BatchNorm does: the batched form's statistics pool both
    views and its running statistics are updated once per step, the separate form's twice."""
    batch = batch_of(multi_domain, 8)
    separate, batched = _three_methods(multi_domain, "separate"), _three_methods(multi_domain, "batched")
    for name in separate:
        la, _ = _loss_and_grads(separate[name], batch)
        lb, _ = _loss_and_grads(batched[name], batch)
        assert la != pytest.approx(lb, rel=1e-4), name
        bn = lambda m: next(x for x in m.encoder.modules() if isinstance(x, nn.BatchNorm2d))
        assert int(bn(separate[name]).num_batches_tracked) == 2 * int(bn(batched[name]).num_batches_tracked), name
    # BYOL's target network runs its own batch too: one forward per view, or one for both
    tbn = lambda m: next(x for x in m.target_encoder.modules() if isinstance(x, nn.BatchNorm2d))
    assert (int(tbn(separate["byol"]).num_batches_tracked), int(tbn(batched["byol"]).num_batches_tracked)) == (2, 1)


def test_per_view_splits_what_the_network_returns():
    from medssl_utils.models.ssl_common import per_view

    calls = []

    def net(x):
        calls.append(x.shape[0])
        return {"a": x * 2, "b": (x + 1, [x.sum(dim=1)])}

    v1, v2 = torch.randn(3, 2), torch.randn(3, 2)
    for views in ("separate", "batched"):
        calls.clear()
        o1, o2 = per_view(net, v1, v2, views)
        assert calls == ([3, 3] if views == "separate" else [6])
        torch.testing.assert_close(o1["a"], v1 * 2)
        torch.testing.assert_close(o2["b"][0], v2 + 1)
        torch.testing.assert_close(o2["b"][1][0], v2.sum(dim=1))
    with pytest.raises(ParameterError, match="views='both'"):
        per_view(net, v1, v2, "both")
    with pytest.raises(ParameterError, match="cannot split a str"):
        per_view(lambda x: "text", v1, v2, "batched")


@pytest.mark.parametrize("make", [lambda views: BYOL(nn.Identity(), 8, 4, 8, 8, views=views),
                                  lambda views: SimCLR(nn.Identity(), 8, 4, 8, views=views)])
def test_methods_refuse_an_unknown_views_mode(make):
    with pytest.raises(ParameterError, match=r"views='together': expected one of \['separate', 'batched'\]"):
        make("together")
