"""BYOL: Bootstrap Your Own Latent (Grill et al., 2020), as Work A used it.

An online network (encoder -> projector -> predictor) learns to predict, for each image,
the projection that a slowly moving *target* network (a momentum copy of encoder ->
projector) gives for the other augmented view. No negatives are needed.

The building blocks are lightly's: :class:`~lightly.models.modules.BYOLProjectionHead`,
:class:`~lightly.models.modules.BYOLPredictionHead`,
:class:`~lightly.loss.NegativeCosineSimilarity` and :func:`~lightly.utils.scheduler.cosine_schedule`. The
target's update is lightly's :func:`~lightly.models.utils.update_momentum` written as one
``torch._foreach_lerp_`` over all parameters (the same average; 0.8 instead of 2.2 ms a step for
BYOL's 4.5 M parameters on one CPU thread).

Typical use (the training loop owns the optimiser)::

    unet = smp.Unet("tu-resnet50", encoder_weights=None, in_channels=1, classes=4)
    byol = BYOL(unet.encoder, feature_dim=unet.encoder.out_channels[-1])   # 2048 -> 4096 -> 256
    opt = torch.optim.AdamW([p for p in byol.parameters() if p.requires_grad])
    for step, (view1, view2) in enumerate(batches):
        loss, logs = byol(view1, view2)
        loss.backward(); opt.step(); opt.zero_grad()
        byol.update_target(step, total_steps)          # after every optimiser step

``byol.encoder`` *is* ``unet.encoder`` (the same module), so the U-Net holds the
pretrained online encoder after training.
"""

from __future__ import annotations

import copy
import math

import torch
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
from lightly.models.utils import deactivate_requires_grad
from lightly.utils.scheduler import cosine_schedule
from torch import nn

from medssl_utils.errors import ParameterError
from medssl_utils.validate import check_int, check_number
from medssl_utils.models.ssl_common import SSLMethod, check_features, check_views, check_views_mode, per_view, pooled

__all__ = ["BYOL", "auto_base_momentum", "momentum_schedule"]


def auto_base_momentum(total_steps: int, remaining: float = 0.01, paper: float = 0.99) -> float:
    """The base target momentum that suits a run of ``total_steps``: ``min(0.99, 1 - 2 ln(1/remaining) / T)``.

    With the cosine schedule ``m0 -> 1`` the target keeps about ``exp(-(1 - m0) T / 2)`` of its
    random initial weights after ``T`` steps (the product of the momenta). BYOL's 0.99 is made
    for runs of thousands of steps; after 100 steps it leaves ~70 % of the random target, so
    the online network chases a mostly random target. This rule keeps at most ``remaining``
    (1 %) of it: ``m0 = 0.99`` for ``T >= 922`` steps, 0.879 for 76 steps.
    """
    check_int("total_steps", total_steps, 1)
    return min(paper, max(0.0, 1.0 - 2.0 * math.log(1.0 / remaining) / total_steps))


def momentum_schedule(step: int, total_steps: int, base_momentum: float = 0.99, final_momentum: float = 1.0) -> float:
    """Target momentum at ``step`` of ``total_steps``: cosine from ``base_momentum`` to ``final_momentum``.

    With ``T = total_steps``, ``m0 = base_momentum``, ``m1 = final_momentum``::

        m(step) = m1 - (m1 - m0) * (cos(pi * step / (T - 1)) + 1) / 2    for 0 <= step < T - 1
        m(step) = m1                                                      for step >= T - 1

    (lightly's ``cosine_schedule``.) So ``m(0) = 0.99``, ``m((T-1)/2) = 0.995`` and the last
    step ``T - 1`` (and any later one, e.g. after a resume) gives ``1.0``. BYOL's paper writes
    the same curve with ``k / K``; indexing steps 0..T-1 makes the last step reach ``m1``.
    """
    check_int("total_steps", total_steps, 1)
    check_int("step", step, 0)
    for name, m in (("base_momentum", base_momentum), ("final_momentum", final_momentum)):
        check_number(name, m, 0.0, 1.0)
    return cosine_schedule(min(step, total_steps), total_steps, float(base_momentum), float(final_momentum))


class BYOL(SSLMethod, nn.Module):
    """BYOL over any encoder whose (last) output pools to ``feature_dim`` channels.

    Args:
        encoder: e.g. ``unet.encoder`` of an smp U-Net; called on ``(B, C, H, W)`` images,
            it returns feature maps (a list; the last one is used) or features.
        feature_dim: channels of the pooled representation (``unet.encoder.out_channels[-1]``:
            512 for resnet18, 2048 for resnet50).
        projection_dim: output of projector and predictor (Work A: 256).
        hidden_dim: projector hidden width (Work A: 4096).
        predictor_hidden_dim: predictor hidden width (Work A: 4096 or 8192).
        base_momentum: the target momentum at the first step (cosine to 1.0 at the last), or
            ``"auto"`` (default): :func:`auto_base_momentum` of the run's length — BYOL's 0.99
            for runs of 922 steps or more, lower for shorter runs.
        views: ``"separate"`` (default: each view its own batch through online and target, as BYOL's
            paper, lightly and solo-learn do) or ``"batched"`` (both views in one batch: faster on a
            CPU, but BatchNorm sees both views' statistics together;
            :func:`~medssl_utils.models.ssl_common.per_view`).

    Shapes: representation ``(B, feature_dim)`` -> projection ``(B, projection_dim)`` ->
    prediction ``(B, projection_dim)``. Target encoder and projector are deep copies made
    at construction, never receive gradients (``requires_grad=False``), and only change
    through :meth:`update_target`.
    """

    def __init__(self, encoder: nn.Module, feature_dim: int, projection_dim: int = 256, hidden_dim: int = 4096,
                 predictor_hidden_dim: int = 4096, base_momentum: float | str = "auto", views: str = "separate"):
        super().__init__()
        self.views = check_views_mode(views)
        if base_momentum != "auto" and (not isinstance(base_momentum, (int, float)) or isinstance(base_momentum, bool)
                                        or not 0.0 <= base_momentum <= 1.0):
            raise ParameterError(f"base_momentum={base_momentum!r} must be 'auto' or a number in [0, 1]")
        self.base_momentum = base_momentum
        self.feature_dim = check_int("feature_dim", feature_dim, 1)
        check_int("projection_dim", projection_dim, 1)
        check_int("hidden_dim", hidden_dim, 1)
        check_int("predictor_hidden_dim", predictor_hidden_dim, 1)
        self.encoder = encoder
        self.projector = BYOLProjectionHead(feature_dim, hidden_dim, projection_dim)
        self.predictor = BYOLPredictionHead(projection_dim, predictor_hidden_dim, projection_dim)
        self.target_encoder = copy.deepcopy(encoder)
        self.target_projector = copy.deepcopy(self.projector)
        deactivate_requires_grad(self.target_encoder)
        deactivate_requires_grad(self.target_projector)
        self.criterion = NegativeCosineSimilarity()

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled online-encoder features ``(B, feature_dim)`` of images ``(B, C, H, W)``."""
        return check_features(pooled(self.encoder(x)), self.feature_dim)

    def _online(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.projector(self.embed(x))
        return z, self.predictor(z)

    @torch.no_grad()
    def _target(self, x: torch.Tensor) -> torch.Tensor:
        return self.target_projector(pooled(self.target_encoder(x)))

    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Symmetric BYOL loss of two views ``(B, C, H, W)`` of the same B images (B >= 2).

        ``loss = (ncs(p1, t2) + ncs(p2, t1)) / 2`` with ``ncs`` the mean negative cosine
        similarity, ``p`` online predictions and ``t`` target projections (no gradient).
        Its range is [-1, 1]; -1 means perfect agreement. (BYOL's paper writes the
        equivalent ``2 - 2 cos``.)

        Returns ``(loss, logs)``; ``logs`` holds detached 0-d tensors: ``loss`` and
        ``z_std``, the per-dimension std of the L2-normalised online projections, a
        collapse monitor (about ``1/sqrt(projection_dim)`` when healthy, 0 when collapsed).
        """
        check_views(view1, view2)
        (z1, p1), (z2, p2) = per_view(self._online, view1, view2, self.views)
        t1, t2 = per_view(self._target, view1, view2, self.views)
        loss = 0.5 * (self.criterion(p1, t2) + self.criterion(p2, t1))
        with torch.no_grad():
            z_std = nn.functional.normalize(torch.cat([z1, z2]).float(), dim=1).std(dim=0).mean()
        return loss, {"loss": loss.detach(), "z_std": z_std}

    def resolved_base_momentum(self, total_steps: int) -> float:
        """The base momentum used for a run of ``total_steps`` optimiser steps."""
        if self.base_momentum == "auto":
            return auto_base_momentum(total_steps)
        return float(self.base_momentum)

    @torch.no_grad()
    def update_target(self, step: int, total_steps: int, base_momentum: float | None = None) -> float:
        """Move the target towards the online network: ``target = m * target + (1 - m) * online``.

        ``m = momentum_schedule(step, total_steps, m0)`` (cosine, ``m0`` -> 1.0; see
        :func:`momentum_schedule`), ``m0`` = ``base_momentum`` when given, else the module's
        (``"auto"``: :func:`auto_base_momentum` of ``total_steps``). Call once after each optimiser step, ``step``
        counting optimiser steps from 0. Parameters are averaged; the target's batch-norm
        running statistics are its own (it runs in train mode on the views). Returns ``m``.
        """
        m = momentum_schedule(step, total_steps, self.resolved_base_momentum(total_steps)
                              if base_momentum is None else base_momentum)
        target = [*self.target_encoder.parameters(), *self.target_projector.parameters()]
        online = [*self.encoder.parameters(), *self.projector.parameters()]
        if len(target) != len(online):
            raise RuntimeError(f"BYOL's target has {len(target)} parameter tensors, its online network {len(online)}")
        # target + (1 - m) * (online - target) == m * target + (1 - m) * online, one kernel per tensor
        torch._foreach_lerp_(target, online, 1.0 - m)  # in place on the target; no autograd here (no_grad)
        return m

    def after_step(self, step: int, total_steps: int) -> float:
        """The target network's momentum update (:meth:`update_target`); returns the momentum used."""
        return self.update_target(step, total_steps)

    def schedule(self, total_steps: int) -> dict:
        return {"base_momentum": self.resolved_base_momentum(total_steps)}
