"""A faster CPU weight gradient for the depthwise convolutions of small feature maps.

On a CPU, oneDNN (which PyTorch calls for convolutions) computes the weight gradient of a
depthwise convolution (``groups == in_channels == out_channels``) on small feature maps one to
two orders of magnitude slower than the forward pass: for a batch of 16 maps of 1152 channels
at 2 x 2 pixels and a 5 x 5 kernel (tf_efficientnet_lite0's last stage at 64 px input) the
forward takes 0.11 ms, the input gradient 0.12 ms, the weight gradient 4.96 ms (one thread,
``benchmarks/train_throughput.py``'s machine; docs/training.md, "Pretraining speed").
EfficientNet / MobileNet-style encoders have such a convolution in every block: at the CPU studies'
64 px they took 58 of a backward pass's 103 ms of convolution time. Measured on whole training steps,
interleaved (``benchmarks/step_ab.py``), the direct gradient makes a BYOL step 7-12 % and a fine-tuning
step 5-9 % faster.

:func:`use_fast_depthwise` routes a module's depthwise convolutions through
:class:`DepthwiseConv2d`'s function where the convolution's output has at most
:data:`MAX_OUTPUT_PIXELS` pixels per map: the forward and the input gradient are PyTorch's own
(the same kernels and results as before), the weight gradient is summed directly,
``dW[c, i, j] = sum over (b, y, x) of x_pad[b, c, s*y + d*i, s*x + d*j] * g[b, c, y, x]``, one
elementwise product and reduction per kernel tap (25 for a 5 x 5 kernel). That is the same sum in a
different order, so weights trained with it differ from oneDNN's by float rounding (relative
1e-6 per step); runs still repeat exactly. Larger maps, CUDA tensors and calls without gradients
use PyTorch's convolution unchanged. :func:`~medssl_utils.models.build_unet` and
:func:`~medssl_utils.models.build_encoder` apply it to every model they build; set
``FAST_WEIGHT_GRAD = False`` (module attribute) to compare with PyTorch's own backward.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DepthwiseConv2d", "FAST_WEIGHT_GRAD", "MAX_OUTPUT_PIXELS",
           "depthwise_weight_grad", "use_fast_depthwise"]

#: Output pixels per map (H_out * W_out) up to which the direct weight gradient is used: measured, it is
#: faster up to 8 x 8 outputs (5 x 5 kernel, batch 16-32) and slower from 16 x 16 (docs/training.md).
MAX_OUTPUT_PIXELS = 64
#: Switch for comparisons: False sends every convolution through PyTorch's own backward.
FAST_WEIGHT_GRAD = True


def depthwise_weight_grad(x: torch.Tensor, grad_out: torch.Tensor, kernel_size: tuple[int, int],
                          stride: tuple[int, int], padding: tuple[int, int],
                          dilation: tuple[int, int]) -> torch.Tensor:
    """The weight gradient ``(C, 1, kh, kw)`` of a depthwise convolution of ``x`` (B, C, H, W) whose
    output gradient is ``grad_out`` (B, C, H_out, W_out), zero padding, any stride and dilation."""
    kh, kw = kernel_size
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    xp = F.pad(x, (pw, pw, ph, ph)) if ph or pw else x
    ho, wo = grad_out.shape[-2:]
    out = x.new_empty(kh, kw, x.shape[1])
    for i in range(kh):
        for j in range(kw):
            window = xp[:, :, i * dh:i * dh + sh * (ho - 1) + 1:sh, j * dw:j * dw + sw * (wo - 1) + 1:sw]
            torch.sum(window * grad_out, dim=(0, 2, 3), out=out[i, j])
    return out.permute(2, 0, 1).unsqueeze(1).contiguous()


class _DepthwiseFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, stride, padding, dilation):
        ctx.save_for_backward(x, weight)
        ctx.conv = (stride, padding, dilation)
        return F.conv2d(x, weight, None, stride, padding, dilation, weight.shape[0])

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        stride, padding, dilation = ctx.conv
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:  # PyTorch's own (fast) input gradient
            grad_x = torch.ops.aten.convolution_backward(
                grad_out, x, weight, None, list(stride), list(padding), list(dilation), False, [0, 0],
                weight.shape[0], [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            grad_w = depthwise_weight_grad(x, grad_out, tuple(weight.shape[-2:]), stride, padding, dilation)
        return grad_x, grad_w, None, None, None


def _output_pixels(h: int, w: int, conv: nn.Conv2d, padding: tuple[int, int]) -> int:
    (kh, kw), (sh, sw), (dh, dw) = conv.kernel_size, conv.stride, conv.dilation
    ho = (h + 2 * padding[0] - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * padding[1] - dw * (kw - 1) - 1) // sw + 1
    return ho * wo


def _fast(conv: nn.Conv2d, x: torch.Tensor, padding: tuple[int, int]) -> bool:
    return (FAST_WEIGHT_GRAD and x.device.type == "cpu" and torch.is_grad_enabled() and conv.weight.requires_grad
            and x.dim() == 4 and _output_pixels(x.shape[-2], x.shape[-1], conv, padding) <= MAX_OUTPUT_PIXELS)


def _apply(conv: nn.Conv2d, x: torch.Tensor, padding: tuple[int, int]) -> torch.Tensor:
    y = _DepthwiseFunction.apply(x, conv.weight, tuple(conv.stride), padding, tuple(conv.dilation))
    return y if conv.bias is None else y + conv.bias.view(1, -1, 1, 1)


class DepthwiseConv2d(nn.Conv2d):
    """``nn.Conv2d`` (depthwise, zero padding) whose weight gradient on small maps is summed directly."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _fast(self, x, self.padding):
            return _apply(self, x, tuple(self.padding))
        return super().forward(x)


@functools.cache
def _same_subclass(cls: type) -> type:
    """``DepthwiseConv2dSame``: timm's ``Conv2dSame`` (TensorFlow's "SAME" padding) with the direct weight
    gradient; made on first use, so that importing this module does not import timm."""
    from timm.layers.padding import pad_same  # timm is loaded already when one of its layers exists

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _fast(self, x, (0, 0)):
            return cls.forward(self, x)
        return _apply(self, pad_same(x, self.kernel_size, self.stride, self.dilation), (0, 0))

    return type("DepthwiseConv2dSame", (cls,), {"forward": forward, "__module__": __name__,
                                                "__doc__": _same_subclass.__doc__})


def _is_depthwise(m: nn.Module) -> bool:
    return (isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels == m.out_channels
            and m.padding_mode == "zeros" and not isinstance(m.padding, str))


def use_fast_depthwise(module: nn.Module) -> int:
    """Give every depthwise ``nn.Conv2d`` / timm ``Conv2dSame`` of ``module`` the direct weight gradient
    (their class becomes :class:`DepthwiseConv2d` / a ``DepthwiseConv2dSame`` subclass; parameters, state-dict
    keys and forward results stay as they are). Returns how many convolutions were changed."""
    n = 0
    for m in module.modules():
        if type(m) is nn.Conv2d and _is_depthwise(m):
            m.__class__ = DepthwiseConv2d
            n += 1
        elif type(m).__name__ == "Conv2dSame" and type(m).__module__ == "timm.layers.conv2d_same" and _is_depthwise(m):
            m.__class__ = _same_subclass(type(m))
            n += 1
    return n
