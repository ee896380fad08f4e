"""Segmentation losses for fine-tuning: Dice + cross-entropy (default) and Jaccard (Work A).

Both are thin wrappers around :mod:`segmentation_models_pytorch.losses` in ``"multiclass"``
mode. Every loss takes

- ``logits``: float tensor ``(B, C, H, W)``, raw network outputs (softmax is applied inside);
- ``target``: integer tensor ``(B, H, W)`` of class ids in ``[0, C)`` (``(B, 1, H, W)`` is
  accepted and squeezed);

and returns a scalar tensor.

Losses
------
``"dice_ce"``
    ``dice_weight * SoftDice + ce_weight * CrossEntropy`` (both weights 1.0 by default). The
    soft Dice term is ``1 - 2·Σ p·y / (Σ p + Σ y)`` per class, with the sums taken over **all
    pixels of the whole batch** (not per image), then averaged over the classes (background
    included). Cross-entropy is the mean over pixels.
``"jaccard"``
    Soft Jaccard (IoU) loss ``1 - Σ p·y / (Σ p + Σ y - Σ p·y)`` per class, same reduction — the
    loss Work A fine-tuned with (``smp.losses.JaccardLoss("multiclass")`` with its defaults).

Classes absent from a batch (smp's behaviour)
---------------------------------------------
A class with no target pixel anywhere in the batch has an undefined Dice/Jaccard ratio. smp
sets that class's term to **0** but still divides by the number of classes ``C``. So such a
class neither helps nor hurts the region term, and the region term's maximum is lowered
accordingly; probability given to an absent class is penalised only indirectly (it is taken
from the present classes' soft intersections). Cross-entropy in ``"dice_ce"`` penalises such
false positives directly, which is one reason it is the default.
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from medssl_utils.errors import ParameterError, check_choice
from medssl_utils.validate import check_int

LOSSES = ("dice_ce", "jaccard")

_OPTIONS = {
    "dice_ce": ("dice_weight", "ce_weight", "smooth", "log_loss"),
    "jaccard": ("smooth", "log_loss"),
}


class _SegmentationLoss(nn.Module):
    """Shared input checks: logits ``(B, C, H, W)`` with ``C == num_classes``, target ``(B, H, W)``."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes

    def _check(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.ndim == logits.ndim and target.shape[1] == 1:
            target = target[:, 0]
        if logits.ndim < 3 or logits.shape[1] != self.num_classes:
            raise ParameterError(f"logits must have shape (B, {self.num_classes}, H, W) for num_classes="
                                 f"{self.num_classes}; got {tuple(logits.shape)}")
        if target.shape != logits.shape[:1] + logits.shape[2:]:
            raise ParameterError(f"target must have shape (B, H, W) = {tuple(logits.shape[:1] + logits.shape[2:])} "
                                 f"to match logits; got {tuple(target.shape)}")
        if target.is_floating_point() or target.dtype == torch.bool:
            raise ParameterError(f"target must hold integer class ids; got dtype {target.dtype}")
        return target.long()


class DiceCELoss(_SegmentationLoss):
    """``dice_weight · soft multiclass Dice + ce_weight · cross-entropy`` (see module docstring)."""

    def __init__(self, num_classes: int, dice_weight: float = 1.0, ce_weight: float = 1.0,
                 smooth: float = 0.0, log_loss: bool = False):
        super().__init__(num_classes)
        from segmentation_models_pytorch.losses import DiceLoss

        self.dice_weight, self.ce_weight = float(dice_weight), float(ce_weight)
        self.dice = DiceLoss("multiclass", from_logits=True, smooth=smooth, log_loss=log_loss)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = self._check(logits, target)
        loss = logits.new_zeros(())
        if self.dice_weight:
            loss = loss + self.dice_weight * self.dice(logits, target)
        if self.ce_weight:
            loss = loss + self.ce_weight * F.cross_entropy(logits, target)
        return loss


class JaccardLoss(_SegmentationLoss):
    """Soft multiclass Jaccard (IoU) loss, as Work A fine-tuned with (see module docstring)."""

    def __init__(self, num_classes: int, smooth: float = 0.0, log_loss: bool = False):
        super().__init__(num_classes)
        from segmentation_models_pytorch.losses import JaccardLoss as SmpJaccard

        self.jaccard = SmpJaccard("multiclass", from_logits=True, smooth=smooth, log_loss=log_loss)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.jaccard(logits, self._check(logits, target))


def segmentation_loss(name: str = "dice_ce", num_classes: int = 4, **options) -> nn.Module:
    """Build a segmentation loss by name.

    Args:
        name: ``"dice_ce"`` (default) or ``"jaccard"``.
        num_classes: number of classes ``C`` including background (logits have ``C`` channels).
        **options: for ``"dice_ce"``: ``dice_weight`` (1.0), ``ce_weight`` (1.0), ``smooth`` (0.0),
            ``log_loss`` (False); for ``"jaccard"``: ``smooth`` (0.0), ``log_loss`` (False).
            ``smooth`` and ``log_loss`` are passed to smp's DiceLoss/JaccardLoss.

    Returns:
        an ``nn.Module`` mapping ``(logits (B, C, H, W), target (B, H, W) int)`` to a scalar.

    Raises:
        ParameterError: unknown name or option, ``num_classes < 2``, negative weights.
    """
    check_choice("loss", name, LOSSES)
    check_int("num_classes", num_classes, 2)
    unknown = sorted(set(options) - set(_OPTIONS[name]))
    if unknown:
        raise ParameterError(f"loss {name!r} does not take option(s) {unknown}; allowed options: "
                             f"{list(_OPTIONS[name])}")
    for key in ("dice_weight", "ce_weight", "smooth"):
        if key in options and not float(options[key]) >= 0:
            raise ParameterError(f"{key}={options[key]!r} is not allowed; expected a number >= 0")
    if name == "dice_ce":
        if options.get("dice_weight", 1.0) == 0 and options.get("ce_weight", 1.0) == 0:
            raise ParameterError("dice_weight and ce_weight are both 0; expected at least one > 0")
        return DiceCELoss(num_classes, **options)
    return JaccardLoss(num_classes, **options)
