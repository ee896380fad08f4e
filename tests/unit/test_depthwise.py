"""The direct weight gradient of depthwise convolutions on small maps (models/depthwise.py)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medssl_utils.models import build_encoder, build_unet, depthwise
from medssl_utils.models.depthwise import DepthwiseConv2d, depthwise_weight_grad, use_fast_depthwise


@pytest.fixture(autouse=True)
def _one_thread_and_switch(one_thread):
    yield
    depthwise.FAST_WEIGHT_GRAD = True


CASES = [  # (channels, size, kernel, stride, padding, dilation)
    (48, 2, 5, 1, 2, 1),
    (32, 4, 5, 1, 2, 1),
    (16, 8, 3, 2, 1, 1),
    (24, 5, 3, 1, 0, 1),   # no padding, odd size
    (8, 7, 3, 1, 2, 2),    # dilation
    (8, 6, (3, 5), (1, 2), (1, 2), 1),  # rectangular kernel, stride and padding
]


@pytest.mark.parametrize("channels,size,kernel,stride,padding,dilation", CASES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_weight_grad_equals_pytorchs(channels, size, kernel, stride, padding, dilation, channels_last):
    pair = lambda v: tuple(v) if isinstance(v, tuple) else (v, v)
    torch.manual_seed(0)
    x = torch.randn(6, channels, size, size)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(channels, 1, *pair(kernel), requires_grad=True)
    y = F.conv2d(x, w, None, stride, padding, dilation, channels)
    g = torch.randn_like(y)
    (expected,) = torch.autograd.grad(y, w, g)
    got = depthwise_weight_grad(x, g, pair(kernel), pair(stride), pair(padding), pair(dilation))
    assert got.shape == w.shape and got.is_contiguous()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def _grads(model, x):
    model.zero_grad(set_to_none=True)
    out = model(x)
    (out if isinstance(out, torch.Tensor) else out[-1]).square().mean().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("encoder", ["tf_efficientnet_lite0", "mobilenetv3_small_050"])
def test_built_models_train_as_with_pytorchs_backward(encoder):
    """Every depthwise convolution of the encoders with them is switched; the forward is bit-identical and the
    gradients match PyTorch's own backward to float rounding; ``FAST_WEIGHT_GRAD = False`` is PyTorch's."""
    torch.manual_seed(0)
    unet = build_unet(encoder, num_classes=3, decoder_channels=(16, 16, 8, 8, 8)).to(memory_format=torch.channels_last)
    kinds = {type(m).__name__ for m in unet.modules() if isinstance(m, nn.Conv2d) and m.groups > 1}
    assert kinds and kinds <= {"DepthwiseConv2d", "DepthwiseConv2dSame"}, kinds
    x = torch.randn(4, 1, 64, 64).contiguous(memory_format=torch.channels_last)
    depthwise.FAST_WEIGHT_GRAD = False
    with torch.no_grad():
        before = unet(x)
    reference = _grads(unet, x)
    depthwise.FAST_WEIGHT_GRAD = True
    with torch.no_grad():
        assert torch.equal(unet(x), before)
    fast = _grads(unet, x)
    assert fast.keys() == reference.keys()
    for name in reference:
        scale = reference[name].abs().max().clamp_min(1e-8)
        assert ((fast[name] - reference[name]).abs().max() / scale) < 1e-4, name
    again = _grads(unet, x)
    assert all(torch.equal(again[k], fast[k]) for k in fast), "two identical steps must give identical gradients"


def test_large_maps_and_no_grad_use_pytorchs_convolution(monkeypatch):
    calls = []
    original = depthwise._DepthwiseFunction.apply
    monkeypatch.setattr(depthwise._DepthwiseFunction, "apply", lambda *a: calls.append(a[0].shape) or original(*a))
    conv = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=True)
    assert use_fast_depthwise(nn.Sequential(conv, nn.Conv2d(8, 4, 1))) == 1 and type(conv) is DepthwiseConv2d
    small, large = torch.randn(2, 8, 8, 8), torch.randn(2, 8, 16, 16)  # 64 and 256 output pixels
    conv(large).sum().backward()
    with torch.no_grad():
        conv(small)
    assert calls == []
    out = conv(small)
    assert calls == [small.shape]
    torch.testing.assert_close(out, F.conv2d(small, conv.weight, conv.bias, 1, 1, 1, 8))  # the bias is added
    conv.weight.requires_grad_(False)  # a frozen encoder: nothing to gain
    conv(small)
    assert len(calls) == 1


def test_the_switch_survives_copies_and_keeps_state_dict_keys():
    from segmentation_models_pytorch.encoders import get_encoder

    torch.manual_seed(0)
    enc = build_encoder("tf_efficientnet_lite0")
    plain = get_encoder("tu-tf_efficientnet_lite0", in_channels=1, depth=5, weights=None)  # smp's, unswitched
    switched = lambda model: sum(type(m).__module__ == depthwise.__name__ for m in model.modules())
    assert switched(plain) == 0 and switched(enc) > 0
    ours, theirs = enc.state_dict(), plain.state_dict()
    assert list(ours) == list(theirs) and all(ours[k].shape == theirs[k].shape for k in ours)
    plain.load_state_dict(ours)  # and the weights load both ways (export, checkpoints)
    enc.load_state_dict(plain.state_dict())
    target = copy.deepcopy(enc)  # BYOL's target network is a deep copy of the online encoder
    assert [type(m).__name__ for m in target.modules()] == [type(m).__name__ for m in enc.modules()]
    assert use_fast_depthwise(target) == 0  # already switched
    assert use_fast_depthwise(plain) == switched(enc) == switched(plain)
