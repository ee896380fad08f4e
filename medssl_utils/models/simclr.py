"""SimCLR (Chen et al., 2020): contrast two views of each image against all other images.

Encoder -> pooled features -> :class:`~lightly.models.modules.SimCLRProjectionHead` ->
:class:`~lightly.loss.NTXentLoss`. With ``gather_distributed=True`` (the default) the
loss gathers the projections of every process under DDP, so each image is contrasted
with the whole global batch; on a single process it is the ordinary in-batch loss.

Typical use::

    simclr = SimCLR(unet.encoder, feature_dim=unet.encoder.out_channels[-1])
    loss, logs = simclr(view1, view2)
"""

from __future__ import annotations

import torch
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead
from torch import nn

from medssl_utils.validate import check_int, check_number
from medssl_utils.models.ssl_common import (
    SSLMethod,
    check_features,
    check_views,
    check_views_mode,
    contrastive_accuracy,
    per_view,
    pooled,
)

__all__ = ["SimCLR"]


class SimCLR(SSLMethod, nn.Module):
    """SimCLR over any encoder whose (last) output pools to ``feature_dim`` channels.

    Args:
        encoder: e.g. ``unet.encoder``; the same module object is trained.
        feature_dim: channels of the pooled representation (``unet.encoder.out_channels[-1]``).
        projection_dim: output of the projection head (SimCLR: 128).
        hidden_dim: hidden width of the 2-layer projection head (SimCLR: 2048).
        temperature: NT-Xent temperature (> 0; SimCLR used 0.1 to 0.5 depending on batch size).
        gather_distributed: gather negatives from all processes under DDP.
        views: ``"separate"`` (default: each view its own batch through the encoder) or ``"batched"``
            (both views in one batch, so BatchNorm normalises over all 2B images;
            :func:`~medssl_utils.models.ssl_common.per_view`).

    Shapes: images ``(B, C, H, W)`` -> representation ``(B, feature_dim)`` -> projection
    ``(B, projection_dim)``.
    """

    def __init__(self, encoder: nn.Module, feature_dim: int, projection_dim: int = 128, hidden_dim: int = 2048,
                 temperature: float = 0.1, gather_distributed: bool = True, views: str = "separate"):
        super().__init__()
        self.views = check_views_mode(views)
        self.feature_dim = check_int("feature_dim", feature_dim, 1)
        check_int("projection_dim", projection_dim, 1)
        check_int("hidden_dim", hidden_dim, 1)
        self.temperature = check_number("temperature", temperature, 0, low_open=True)
        self.encoder = encoder
        self.projector = SimCLRProjectionHead(feature_dim, hidden_dim, projection_dim)
        self.criterion = NTXentLoss(temperature=self.temperature, gather_distributed=bool(gather_distributed))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled encoder features ``(B, feature_dim)`` of images ``(B, C, H, W)``."""
        return check_features(pooled(self.encoder(x)), self.feature_dim)

    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """NT-Xent loss of two views ``(B, C, H, W)`` of the same B images (B >= 2).

        Each of the 2B projections must pick out its partner among the other 2B - 1 (times
        the world size under DDP). At chance the loss is about ``log(2B - 1)``.

        Returns ``(loss, logs)``; ``logs`` holds detached 0-d tensors: ``loss`` and
        ``contrast_acc`` (fraction of local projections whose nearest neighbour is their
        partner; see :func:`~medssl_utils.models.ssl_common.contrastive_accuracy`).
        """
        check_views(view1, view2)
        z1, z2 = per_view(lambda v: self.projector(self.embed(v)), view1, view2, self.views)
        loss = self.criterion(z1, z2)
        return loss, {"loss": loss.detach(), "contrast_acc": contrastive_accuracy(z1, z2)}
