"""LARS: SGD with momentum and a layer-wise trust ratio (You, Gitman & Ginsburg 2017), as Work A ran it.

Work A (SSL-MedSeg) pretrained BYOL with solo-learn's LARS settings: trust coefficient
``eta = 0.02``, the layer-wise rate *clipped* at the global learning rate, and biases and
normalisation parameters excluded from both the adaptation and weight decay. lightly's LARS,
which medssl used before, has ``eta = 0.001`` and no clipping: for the same learning rate its
relative steps are about 20x smaller (and smaller still where the clipped rate would not bind),
so a study that asked for Work A's optimiser got a far more timid one.

For a parameter tensor ``w`` with gradient ``g`` in a group with learning rate ``lr``, weight
decay ``wd`` and momentum ``mu``:

- adapted tensors (all of them, or with ``exclude_bias_and_norm`` those with ``ndim > 1``):
  ``d = g + wd * w``; ``local = eta * |w| / (|g| + wd * |w| + eps)`` (1 when ``|w|`` or ``|g|``
  is 0); with ``clip_lr`` the step uses ``min(local, lr)`` instead of ``lr * local``, i.e.
  ``d *= min(local / lr, 1)``, otherwise ``d *= local``;
- excluded tensors (biases, BatchNorm weights and biases): ``d = g`` — no decay, no adaptation;
- momentum: ``v = mu * v + d`` (``v = d`` at the first step); ``w -= lr * v``.

So with clipping the effective per-layer rate is never above the schedule's ``lr`` and a layer
whose trust ratio is large simply follows the schedule.
"""

from __future__ import annotations

import torch

from medssl_utils.errors import ParameterError

__all__ = ["LARS", "WORK_A_LARS"]

#: Work A's / solo-learn's LARS settings (SSL-MedSeg ``byol_acdc.yaml``: eta 0.02, clip_lr, bias/norm excluded).
WORK_A_LARS = {"eta": 0.02, "clip_lr": True, "exclude_bias_and_norm": True}


class LARS(torch.optim.Optimizer):
    """Layer-wise adaptive rate scaling over SGD with momentum (see the module docstring).

    Args:
        params: parameters or parameter groups (groups may set ``lr``, ``weight_decay``, ...).
        lr: learning rate (> 0).
        momentum: SGD momentum in [0, 1).
        weight_decay: L2 weight decay of the adapted tensors (>= 0).
        eta: trust coefficient (> 0); Work A: 0.02.
        clip_lr: clip the layer-wise rate at ``lr`` (Work A: True).
        exclude_bias_and_norm: leave tensors with ``ndim <= 1`` out of adaptation and weight decay
            (Work A: True).
        eps: added to the denominator of the trust ratio.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 0.02,
                 clip_lr: bool = True, exclude_bias_and_norm: bool = True, eps: float = 1e-8):
        for name, value, ok in (("lr", lr, lr > 0), ("momentum", momentum, 0 <= momentum < 1),
                                ("weight_decay", weight_decay, weight_decay >= 0), ("eta", eta, eta > 0),
                                ("eps", eps, eps >= 0)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok:
                raise ParameterError(f"LARS {name}={value!r} is out of range")
        defaults = dict(lr=float(lr), momentum=float(momentum), weight_decay=float(weight_decay), eta=float(eta),
                        clip_lr=bool(clip_lr), exclude_bias_and_norm=bool(exclude_bias_and_norm), eps=float(eps))
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd, mu, eta = group["lr"], group["weight_decay"], group["momentum"], group["eta"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if p.ndim > 1 or not group["exclude_bias_and_norm"]:
                    w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)
                    local = torch.where((w_norm > 0) & (g_norm > 0),
                                        eta * w_norm / (g_norm + wd * w_norm + group["eps"]),
                                        torch.ones_like(w_norm))
                    if group["clip_lr"] and lr > 0:
                        local = torch.clamp(local / lr, max=1.0)
                    g = (g + wd * p) * local
                state = self.state[p]
                if mu:
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = state["momentum_buffer"] = g.detach().clone()
                    else:
                        buf.mul_(mu).add_(g)
                    g = buf
                p.add_(g, alpha=-lr)
        return loss
