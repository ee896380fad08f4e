"""Small pieces shared by the self-supervised methods (BYOL, SimCLR, HSSL).

- :func:`pooled` turns what an encoder returns into one vector per image.
- :func:`check_views` validates a pair of augmented views before any model runs.
- :func:`contrastive_accuracy` is a cheap progress signal for contrastive losses.
- :func:`per_view` runs a network on both views, one view at a time or both in one batch (``views``).
- :func:`check_dim` / :func:`check_positive` validate constructor arguments.
- :class:`SSLMethod`: what the pretraining loop asks of every method, with the common answers.

Every user-facing mistake raises :class:`~medssl_utils.errors.ParameterError`.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from medssl_utils.errors import ParameterError

__all__ = ["SSLMethod", "VIEWS", "check_views", "check_views_mode", "contrastive_accuracy", "per_view", "pooled"]

#: How a method runs its networks on the two views (the constructors' ``views`` option).
VIEWS = ("separate", "batched")


def pooled(features: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """One vector per image from an encoder's output.

    ``features`` is either the list of feature maps an smp encoder returns (the last,
    deepest one is used), a single feature map ``(B, C, H, W)`` (global-average-pooled),
    or already pooled features ``(B, C)`` (returned unchanged). Returns ``(B, C)``.
    """
    if isinstance(features, (list, tuple)):
        features = features[-1]
    if features.dim() == 4:
        return features.mean(dim=(2, 3))
    if features.dim() == 2:
        return features
    raise ParameterError(
        f"encoder output must be (B, C, H, W) feature maps or (B, C) features; got {tuple(features.shape)}"
    )


def check_features(features: torch.Tensor, feature_dim: int, what: str = "encoder") -> torch.Tensor:
    """Raise a clear error when pooled ``features`` (B, C) do not have ``feature_dim`` channels."""
    if features.shape[1] != feature_dim:
        raise ParameterError(
            f"feature_dim={feature_dim} but the {what} gives {features.shape[1]} channels; "
            f"pass feature_dim=unet.encoder.out_channels[-1]"
        )
    return features


def check_views(view1: torch.Tensor, view2: torch.Tensor) -> None:
    """Both views must be float ``(B, C, H, W)`` of the same shape with ``B >= 2``.

    Two images at least: the heads' batch norm and the contrastive negatives need a batch.
    """
    for name, v in (("view1", view1), ("view2", view2)):
        if not isinstance(v, torch.Tensor) or v.dim() != 4 or not v.is_floating_point():
            got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise ParameterError(f"{name} must be a float tensor (B, C, H, W); got {got}")
    if view1.shape[0] != view2.shape[0]:
        raise ParameterError(
            f"view1 and view2 must hold the same images; got batch sizes {view1.shape[0]} and {view2.shape[0]}"
        )
    if view1.shape[0] < 2:
        raise ParameterError(f"a batch of at least 2 images is needed; got {view1.shape[0]}")


def check_views_mode(views) -> str:
    """``views`` must be one of :data:`VIEWS`."""
    if views not in VIEWS:
        raise ParameterError(f"views={views!r}: expected one of {list(VIEWS)}")
    return views


def per_view(fn, view1: torch.Tensor, view2: torch.Tensor, views: str = "separate"):
    """``(fn(view1), fn(view2))``: two calls, or, with ``views="batched"``, one call on both views.

    ``"separate"`` (the default; BYOL's paper, lightly and solo-learn) runs each view as its own batch,
    so every BatchNorm normalises a view with that view's batch statistics. ``"batched"`` runs
    ``fn(cat([view1, view2]))`` once and splits what it returns (a tensor, or a tuple / list / dict
    of them, split along dim 0) into the two views' halves: the same arithmetic in half as many
    (twice as large) operator calls, which is faster where a step is bound by per-operator overhead
    (small images on a CPU; ``benchmarks/train_throughput.py``), but BatchNorm then normalises with
    the statistics of both views together and updates its running statistics once per step, not
    twice. docs/training.md ("Pretraining speed") says what that changed on the probe.
    """
    if views == "separate":
        return fn(view1), fn(view2)
    check_views_mode(views)
    return _halves(fn(torch.cat([view1, view2])), view1.shape[0])


def _halves(out, b: int):
    if isinstance(out, torch.Tensor):
        return out[:b], out[b:]
    if isinstance(out, dict):
        parts = {k: _halves(v, b) for k, v in out.items()}
        return {k: v[0] for k, v in parts.items()}, {k: v[1] for k, v in parts.items()}
    if isinstance(out, (list, tuple)):
        parts = [_halves(v, b) for v in out]
        return type(out)(p[0] for p in parts), type(out)(p[1] for p in parts)
    raise ParameterError(f"per_view: cannot split a {type(out).__name__} into the two views' halves")


@torch.no_grad()
def contrastive_accuracy(z0: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
    """Fraction of the 2B embeddings whose nearest neighbour (cosine) is their other view.

    z0, z1: ``(B, D)`` projections of the two views of the same B images. The candidates
    for each embedding are the other 2B - 1 embeddings of this (local) batch, exactly the
    choice NT-Xent scores. Returns a detached 0-d tensor in [0, 1]; chance is 1 / (2B - 1).
    """
    z = F.normalize(torch.cat([z0, z1]).float(), dim=1)
    sim = z @ z.T
    sim.fill_diagonal_(-math.inf)
    b = z0.shape[0]
    partner = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
    return (sim.argmax(dim=1) == partner).float().mean()




class SSLMethod:
    """What the pretraining loop asks of a method (mixed into each method's ``nn.Module``); a
    method overrides what it does differently. Registered by name in :mod:`medssl_utils.models.methods`.

    - :attr:`augment`: SSLAugment keywords the method needs over the preset (HSSL equalises the
      second view of every pair).
    - :meth:`from_unet`: the method built for a U-Net and the pretraining pool (``pool.tasks``,
      ``pool.groups``); the default trains the encoder alone.
    - :meth:`loss`: the views and the loss of one batch; ``model`` is what to call (the method
      itself, or the Fabric wrapper around it, so that DDP sees the forward pass).
    - :meth:`after_step`: called after every optimiser step; a value returned is logged as
      ``momentum`` (BYOL's target update).
    - :meth:`schedule`: entries for ``result.json["schedule"]``.
    - :attr:`input_norm`: what the encoder was fed (``"volume"``, or ``"image"``: z-scored per
      image); fine-tuning from the checkpoint must feed the same.
    """

    augment: dict = {}

    @classmethod
    def from_unet(cls, unet, pool, **options):
        return cls(unet.encoder, unet.encoder.out_channels[-1], **options)

    def loss(self, model, aug, x: torch.Tensor, batch: dict, generator: torch.Generator):
        view1, view2 = aug(x, generator)
        return model(view1, view2)

    def after_step(self, step: int, total_steps: int) -> float | None:
        return None

    def schedule(self, total_steps: int) -> dict:
        return {}

    @property
    def input_norm(self) -> str:
        return "volume"
