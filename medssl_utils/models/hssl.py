"""HSSL: hierarchical self-supervised pretraining of a whole U-Net on multi-domain data.

After Zheng et al., MICCAI 2021 ("Hierarchical Self-Supervised Learning for Medical Image
Segmentation Based on Multi-Domain Data Aggregation"; no public code). Unlabelled slices
from several datasets are pooled; each slice carries a ``task`` id (which dataset /
challenge it comes from) and a ``group`` id (a coarser grouping such as modality), as
:class:`~medssl_utils.data.MultiDomainDataset` provides. The loss has three levels:

=========  ==================================================================  ==========
level      term                                                                default w
=========  ==================================================================  ==========
image      NT-Xent between the two views of each image (instance contrast)     1.0
task       cross-entropy of a linear head predicting the task id, both views   1.0
group      cross-entropy of a linear head predicting the group id, both views  1.0
=========  ==================================================================  ==========

``loss = w_image * L_image + w_task * L_task + w_group * L_group``; a level with weight 0
is skipped entirely (no head is built, nothing is computed or logged for it). The paper
does not publish its weights; equal weights are medssl's choice, because at
initialisation the three terms are of the same order (NT-Xent about ``log(2B - 1)``, the
classifiers about ``log(num_tasks)`` and ``log(num_groups)``) and the classification terms
then fall fast, leaving the contrastive term to dominate later training.

How the decoder is trained (medssl's design; the paper only says that the encoder-decoder
is pretrained). Every level is applied to two *branches* and averaged over them:

- encoder branch: the deepest encoder feature map, globally average-pooled,
  ``(B, unet.encoder.out_channels[-1])``;
- decoder branch: the decoder's last feature map (the input of the segmentation head),
  ``(B, decoder_channels[-1], H, W)``, globally average-pooled to ``(B, decoder_channels[-1])``.

Each branch has its own projection head (lightly's SimCLRProjectionHead) and its own
linear task / group heads. The decoder branch's losses reach every decoder block and,
through the skip connections, every encoder stage, so the decoder is pretrained with the
same three-level signal as the encoder. A dense (per-pixel) contrastive term between the
two views' decoder maps is not used: it needs the geometric correspondence between the
views, which the batched two-view augmentation does not return.

The U-Net's segmentation head is not part of this module (it gets no signal here, and
leaving it out keeps DDP free of unused parameters); ``hssl.encoder`` and
``hssl.decoder`` *are* ``unet.encoder`` and ``unet.decoder``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead
from torch import nn

from medssl_utils.errors import ParameterError
from medssl_utils.models.ssl_common import (
    check_dim,
    check_features,
    check_positive,
    check_views,
    contrastive_accuracy,
    pooled,
)

__all__ = ["DEFAULT_WEIGHTS", "HSSL", "LEVELS"]

LEVELS = ("image", "task", "group")
DEFAULT_WEIGHTS = {"image": 1.0, "task": 1.0, "group": 1.0}


def _check_weights(weights) -> dict[str, float]:
    if not isinstance(weights, dict):
        raise ParameterError(f"weights={weights!r} must be a dict with keys {list(LEVELS)}")
    unknown = sorted(set(weights) - set(LEVELS))
    missing = [k for k in LEVELS if k not in weights]
    if unknown or missing:
        raise ParameterError(
            f"weights={weights!r} must give exactly the levels {list(LEVELS)} "
            f"(unknown: {unknown}, missing: {missing}); use 0 to switch a level off"
        )
    out = {}
    for k in LEVELS:
        w = weights[k]
        if not isinstance(w, (int, float)) or isinstance(w, bool) or not (w >= 0 and w < float("inf")):
            raise ParameterError(f"weights[{k!r}]={w!r} must be a finite number >= 0")
        out[k] = float(w)
    if not any(out.values()):
        raise ParameterError(f"weights={weights!r}: at least one level needs a weight > 0")
    return out


def _decoder_channels(unet: nn.Module) -> int:
    head = getattr(unet, "segmentation_head", None)
    conv = head[0] if isinstance(head, nn.Sequential) and len(head) else None
    if not isinstance(conv, nn.Conv2d):
        raise ParameterError(
            "cannot read the decoder's output channels from unet.segmentation_head; pass decoder_dim="
        )
    return conv.in_channels


class HSSL(nn.Module):
    """Hierarchical SSL of an smp U-Net's encoder and decoder (see the module docstring).

    Args:
        unet: an smp ``Unet`` (``unet.encoder``, ``unet.decoder``, ``unet.segmentation_head``).
        num_tasks: number of task ids (``len(MultiDomainDataset.tasks)``); >= 2 when the task
            level is on.
        num_groups: number of group ids (``len(MultiDomainDataset.groups)``); >= 2 when the
            group level is on.
        weights: ``{"image": w, "task": w, "group": w}``, every level named, each ``>= 0``.
        temperature: NT-Xent temperature of the image level.
        projection_dim, hidden_dim: the image level's projection heads (feature -> hidden ->
            projection), one per branch.
        pretrain_decoder: apply the levels to the decoder branch too (default). With False
            only the encoder is trained, as in BYOL / SimCLR.
        decoder_dim: channels of the decoder output; read from the segmentation head when None.
        gather_distributed: gather negatives of the image level from all processes under DDP.
    """

    def __init__(self, unet: nn.Module, num_tasks: int, num_groups: int, weights: dict | None = None,
                 temperature: float = 0.1, projection_dim: int = 128, hidden_dim: int = 2048,
                 pretrain_decoder: bool = True, decoder_dim: int | None = None, gather_distributed: bool = True):
        super().__init__()
        self.weights = _check_weights(DEFAULT_WEIGHTS if weights is None else weights)
        self.num_tasks = check_dim("num_tasks", num_tasks)
        self.num_groups = check_dim("num_groups", num_groups)
        for level, n in (("task", num_tasks), ("group", num_groups)):
            if self.weights[level] > 0 and n < 2:
                raise ParameterError(
                    f"num_{level}s={n}: the {level} level needs at least 2 classes; "
                    f"set weights[{level!r}]=0 for single-{level} pretraining"
                )
        check_dim("projection_dim", projection_dim)
        check_dim("hidden_dim", hidden_dim)
        self.temperature = check_positive("temperature", temperature)

        self.encoder = unet.encoder
        self.feature_dim = check_dim("feature_dim", int(unet.encoder.out_channels[-1]))
        dims = {"encoder": self.feature_dim}
        if pretrain_decoder:
            self.decoder = unet.decoder
            self.decoder_dim = check_dim("decoder_dim", decoder_dim if decoder_dim is not None
                                         else _decoder_channels(unet))
            dims["decoder"] = self.decoder_dim
        else:
            self.decoder = None
        self.branches = tuple(dims)

        self.projectors = self._heads("image", dims, lambda d: SimCLRProjectionHead(d, hidden_dim, projection_dim))
        self.task_heads = self._heads("task", dims, lambda d: nn.Linear(d, num_tasks))
        self.group_heads = self._heads("group", dims, lambda d: nn.Linear(d, num_groups))
        self.contrastive = NTXentLoss(temperature=self.temperature, gather_distributed=bool(gather_distributed))

    def _heads(self, level: str, dims: dict[str, int], make) -> nn.ModuleDict | None:
        if self.weights[level] == 0:
            return None
        return nn.ModuleDict({branch: make(dim) for branch, dim in dims.items()})

    @property
    def levels(self) -> tuple[str, ...]:
        """The levels switched on (weight > 0), in order image, task, group."""
        return tuple(k for k in LEVELS if self.weights[k] > 0)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled encoder features ``(B, feature_dim)`` of images ``(B, C, H, W)``."""
        return check_features(pooled(self.encoder(x)), self.feature_dim)

    def representations(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Pooled features per branch: ``{"encoder": (B, feature_dim)[, "decoder": (B, decoder_dim)]}``."""
        features = self.encoder(x)
        out = {"encoder": check_features(pooled(features), self.feature_dim)}
        if self.decoder is not None:
            out["decoder"] = check_features(pooled(self.decoder(features)), self.decoder_dim, "decoder")
        return out

    def _check_tags(self, name: str, tags, batch: int, n: int) -> torch.Tensor:
        tags = torch.as_tensor(tags)
        if tags.shape != (batch,) or tags.is_floating_point() or tags.is_complex() or tags.dtype == torch.bool:
            raise ParameterError(f"{name} must be an integer tensor of shape ({batch},); got "
                                 f"{tags.dtype} {tuple(tags.shape)}")
        lo, hi = int(tags.min()), int(tags.max())
        if lo < 0 or hi >= n:
            raise ParameterError(f"{name} ids must lie in 0..{n - 1} (num_{name}s={n}); got {lo}..{hi}")
        return tags.long()

    def _classify(self, heads: nn.ModuleDict, reps1, reps2, target) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean cross-entropy and accuracy over branches and both views."""
        losses, correct = [], []
        for branch in self.branches:
            for reps in (reps1, reps2):
                logits = heads[branch](reps[branch])
                losses.append(F.cross_entropy(logits, target))
                correct.append((logits.detach().argmax(dim=1) == target).float().mean())
        return torch.stack(losses).mean(), torch.stack(correct).mean()

    def forward(self, view1: torch.Tensor, view2: torch.Tensor, task, group) -> tuple[torch.Tensor, dict]:
        """Weighted hierarchical loss for two views ``(B, C, H, W)`` of B images and their tags.

        ``task`` and ``group`` are integer ``(B,)`` ids (the same for both views); a level
        switched off ignores its ids (pass anything of the right shape, e.g. zeros).

        Returns ``(loss, logs)``; ``logs`` holds detached 0-d tensors: ``loss``, and for each
        level switched on its *unweighted* loss ``loss_<level>``, plus ``contrast_acc``
        (image level), ``task_acc`` and ``group_acc`` (classification accuracy over both
        views and all branches).
        """
        check_views(view1, view2)
        b = view1.shape[0]
        device = view1.device
        reps1, reps2 = self.representations(view1), self.representations(view2)
        total = view1.new_zeros(())
        logs: dict[str, torch.Tensor] = {}

        if self.projectors is not None:
            losses, accs = [], []
            for branch in self.branches:
                z1 = self.projectors[branch](reps1[branch])
                z2 = self.projectors[branch](reps2[branch])
                losses.append(self.contrastive(z1, z2))
                accs.append(contrastive_accuracy(z1, z2))
            level = torch.stack(losses).mean()
            total = total + self.weights["image"] * level
            logs["loss_image"], logs["contrast_acc"] = level.detach(), torch.stack(accs).mean()

        for name, heads, n, tags in (("task", self.task_heads, self.num_tasks, task),
                                     ("group", self.group_heads, self.num_groups, group)):
            if heads is None:
                continue
            target = self._check_tags(name, tags, b, n).to(device)
            level, acc = self._classify(heads, reps1, reps2, target)
            total = total + self.weights[name] * level
            logs[f"loss_{name}"], logs[f"{name}_acc"] = level.detach(), acc

        logs["loss"] = total.detach()
        return total, logs
