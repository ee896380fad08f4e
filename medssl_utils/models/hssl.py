"""HSSL: hierarchical self-supervised pretraining of a whole U-Net on multi-domain data.

After Zheng et al., MICCAI 2021 ("Hierarchical Self-Supervised Learning for Medical Image
Segmentation Based on Multi-Domain Data Aggregation"; no public code). Unlabelled slices
from several datasets are pooled; each slice carries a ``task`` id (which dataset /
challenge it comes from) and a ``group`` id (a coarser grouping such as modality), as
:class:`~medssl_utils.data.MultiDomainDataset` provides. The loss has four levels:

=========  ==================================================================  ==========
level      term                                                                default w
=========  ==================================================================  ==========
image      NT-Xent between the two views of each image (instance contrast)     1.0
task       cross-entropy of a linear head predicting the task id, both views   1.0
group      cross-entropy of a linear head predicting the group id, both views  1.0
dense      NT-Xent between the decoder's features at the same anatomical       1.0
           point in the two views (pixel-level contrast, decoder only)
=========  ==================================================================  ==========

``loss = sum_level w_level * L_level``; a level with weight 0 is skipped entirely (no head is
built, nothing is computed or logged for it). The paper does not publish its weights; equal
weights are medssl's choice, because at initialisation the terms are of the same order
(NT-Xent about ``log(2N - 1)``, the classifiers about ``log(num_tasks)`` and ``log(num_groups)``).

How the decoder is trained (medssl's design; the paper only says that the encoder-decoder
is pretrained). The image, task and group levels are applied to two *branches* and averaged
over them:

- encoder branch: the deepest encoder feature map, globally average-pooled,
  ``(B, unet.encoder.out_channels[-1])``;
- decoder branch: the decoder's last feature map (the input of the segmentation head),
  ``(B, decoder_channels[-1], H, W)``, globally average-pooled to ``(B, decoder_channels[-1])``.

Pooling throws away where things are, and a segmentation decoder is all about where. The
**dense** level gives the decoder a spatial signal: a fixed grid of ``dense_grid`` ×
``dense_grid`` points in view 1 is mapped through the two views' crop geometry
(:meth:`~medssl_utils.data.SSLAugment.views_with_geometry`) to the same anatomical points in
view 2; points that fall outside view 2 are dropped. The decoder's feature vectors at those
points (bilinear samples of its full-resolution last map) go through a small projection head,
and NT-Xent makes each point's two feature vectors agree while disagreeing with every other
point of the batch (other positions of the same image and all positions of the other images):
a pixel-level contrast with known correspondence, as in PixPro / DenseCL. Its negatives stay
within the process (the number of valid points differs between processes). Its reaches every
decoder block and, through the skip connections, every encoder stage.

Shortcuts. Task and group can be told from intensity statistics alone (CT is windowed to
``[-1, 1]`` with saturated air and bone, MR z-scored over a noisy background), which a
classifier learns in a few steps without learning anything about anatomy. Measured on the four
phantom domains (``benchmarks/hssl_levels.py``, balanced accuracy of a logistic regression on
13 intensity statistics of augmented views, validation patients; chance 0.25 / 0.50): task
0.88 / group 0.97 on the views as augmented, 0.85 / 0.96 after z-scoring each view, 0.28 /
0.53 after histogram equalisation. So medssl's HSSL pretraining histogram-equalises the
second view of every pair (``SSLAugment(equalize_p=(0.0, 1.0))``, the loop's default for
HSSL): the classification levels see one view whose intensities carry no label, and the
image and dense levels must match a natural view to an equalised one (an intensity
invariance, as colour jitter is for photographs). With ``standardize=True`` (default) every
view is also z-scored per image before the network, here and in :meth:`embed`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead
from torch import nn

from medssl_utils.errors import ParameterError
from medssl_utils.validate import check_bool, check_int, check_number
from medssl_utils.models.unet import standardize_images
from medssl_utils.models.ssl_common import (
    SSLMethod,
    check_features,
    check_views,
    check_views_mode,
    contrastive_accuracy,
    per_view,
    pooled,
)

__all__ = ["DEFAULT_WEIGHTS", "HSSL", "LEVELS"]

LEVELS = ("image", "task", "group", "dense")
DEFAULT_WEIGHTS = {"image": 1.0, "task": 1.0, "group": 1.0, "dense": 1.0}


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
        check_number(f"weights[{k!r}]", w, 0)
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


def standardize_views(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Each image of ``x`` (B, C, H, W) z-scored by its own mean and standard deviation
    (:func:`medssl_utils.models.unet.standardize_images`, which fine-tuning applies with
    ``input_norm="image"``)."""
    return standardize_images(x, eps)


def corresponding_points(theta1: torch.Tensor, theta2: torch.Tensor, grid: int) -> tuple[torch.Tensor, torch.Tensor,
                                                                                           torch.Tensor]:
    """Points of a ``grid`` x ``grid`` lattice in view 1 and where the same input points lie in view 2.

    ``theta_k`` (B, 2, 3) map view-k positions to input positions (normalised coordinates,
    ``align_corners=False``; :meth:`~medssl_utils.data.SSLAugment.views_with_geometry`).
    Returns ``(q1, q2, valid)``: ``q1``, ``q2`` (B, grid*grid, 2) as ``(x, y)`` in each view's
    normalised coordinates, and ``valid`` (B, grid*grid) True where the point lies inside view 2.
    """
    b = theta1.shape[0]
    centres = (torch.arange(grid, device=theta1.device, dtype=theta1.dtype) + 0.5) / grid * 2 - 1
    yy, xx = torch.meshgrid(centres, centres, indexing="ij")
    q1 = torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1).expand(b, -1, -1)  # (B, P, 2)
    p_in = q1 @ theta1[:, :, :2].transpose(1, 2) + theta1[:, None, :, 2]
    a2 = theta2[:, :, :2]
    q2 = (p_in - theta2[:, None, :, 2]) @ torch.linalg.inv(a2).transpose(1, 2)
    valid = (q2.abs() <= 1).all(dim=2)
    return q1, q2, valid


def _sample(feature_map: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of ``feature_map`` (B, C, H, W) at ``points`` (B, P, 2) -> (B, P, C)."""
    out = F.grid_sample(feature_map, points.unsqueeze(2).to(feature_map.dtype), mode="bilinear",
                        padding_mode="border", align_corners=False)
    return out.squeeze(3).transpose(1, 2)


class HSSL(SSLMethod, nn.Module):
    """Hierarchical SSL of an smp U-Net's encoder and decoder (see the module docstring).

    Args:
        unet: an smp ``Unet`` (``unet.encoder``, ``unet.decoder``, ``unet.segmentation_head``).
        num_tasks: number of task ids (``len(MultiDomainDataset.tasks)``); >= 2 when the task
            level is on.
        num_groups: number of group ids (``len(MultiDomainDataset.groups)``); >= 2 when the
            group level is on.
        weights: ``{"image": w, "task": w, "group": w, "dense": w}``, every level named, each
            ``>= 0``.
        temperature: NT-Xent temperature of the image level.
        projection_dim, hidden_dim: the image level's projection heads (feature -> hidden ->
            projection), one per branch.
        pretrain_decoder: apply the levels to the decoder branch too (default). With False
            only the encoder is trained, as in BYOL / SimCLR (the dense level needs the decoder).
        decoder_dim: channels of the decoder output; read from the segmentation head when None.
        gather_distributed: gather negatives of the image level from all processes under DDP.
        dense_grid: the dense level's lattice in view 1 (``dense_grid`` ** 2 candidate points).
        dense_dim, dense_hidden_dim: its projection head (decoder_dim -> hidden -> dense_dim).
        dense_temperature: its NT-Xent temperature.
        standardize: z-score each view per image before the network (no intensity-range shortcut).
        views: ``"separate"`` (default: each view its own batch through encoder and decoder) or
            ``"batched"`` (both views in one batch; :func:`~medssl_utils.models.ssl_common.per_view`).
    """

    def __init__(self, unet: nn.Module, num_tasks: int, num_groups: int, weights: dict | None = None,
                 temperature: float = 0.1, projection_dim: int = 128, hidden_dim: int = 2048,
                 pretrain_decoder: bool = True, decoder_dim: int | None = None, gather_distributed: bool = True,
                 dense_grid: int = 6, dense_dim: int = 64, dense_hidden_dim: int = 256,
                 dense_temperature: float = 0.2, standardize: bool = True, views: str = "separate"):
        super().__init__()
        self.views = check_views_mode(views)
        self.weights = _check_weights(DEFAULT_WEIGHTS if weights is None else weights)
        self.num_tasks = check_int("num_tasks", num_tasks, 1)
        self.num_groups = check_int("num_groups", num_groups, 1)
        for level, n in (("task", num_tasks), ("group", num_groups)):
            if self.weights[level] > 0 and n < 2:
                raise ParameterError(
                    f"num_{level}s={n}: the {level} level needs at least 2 classes; "
                    f"set weights[{level!r}]=0 for single-{level} pretraining"
                )
        if self.weights["dense"] > 0 and not pretrain_decoder:
            raise ParameterError("weights['dense'] > 0 needs pretrain_decoder=True (the dense level trains the "
                                 "decoder); set weights['dense']=0 to pretrain the encoder alone")
        check_int("projection_dim", projection_dim, 1)
        check_int("hidden_dim", hidden_dim, 1)
        self.dense_grid = check_int("dense_grid", dense_grid, 1)
        check_int("dense_dim", dense_dim, 1)
        check_int("dense_hidden_dim", dense_hidden_dim, 1)
        self.temperature = check_number("temperature", temperature, 0, low_open=True)
        check_bool("standardize", standardize)
        self.standardize = standardize

        self.encoder = unet.encoder
        self.feature_dim = check_int("feature_dim", int(unet.encoder.out_channels[-1]), 1)
        dims = {"encoder": self.feature_dim}
        self.pretrain_decoder = bool(pretrain_decoder)  # the training loop saves the decoder only when True
        if pretrain_decoder:
            self.decoder = unet.decoder
            self.decoder_dim = check_int("decoder_dim", decoder_dim if decoder_dim is not None
                                         else _decoder_channels(unet), 1)
            dims["decoder"] = self.decoder_dim
        else:
            self.decoder = None
        self.branches = tuple(dims)

        self.projectors = self._heads("image", dims, lambda d: SimCLRProjectionHead(d, hidden_dim, projection_dim))
        self.task_heads = self._heads("task", dims, lambda d: nn.Linear(d, num_tasks))
        self.group_heads = self._heads("group", dims, lambda d: nn.Linear(d, num_groups))
        self.dense_head = (SimCLRProjectionHead(self.decoder_dim, dense_hidden_dim, dense_dim)
                           if self.weights["dense"] > 0 else None)
        self.contrastive = NTXentLoss(temperature=self.temperature, gather_distributed=bool(gather_distributed))
        dense_t = check_number("dense_temperature", dense_temperature, 0, low_open=True)
        self.dense_contrastive = NTXentLoss(temperature=dense_t,
                                            gather_distributed=False)

    def _heads(self, level: str, dims: dict[str, int], make) -> nn.ModuleDict | None:
        if self.weights[level] == 0:
            return None
        return nn.ModuleDict({branch: make(dim) for branch, dim in dims.items()})

    @property
    def levels(self) -> tuple[str, ...]:
        """The levels switched on (weight > 0), in order image, task, group, dense."""
        return tuple(k for k in LEVELS if self.weights[k] > 0)

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        return standardize_views(x) if self.standardize else x

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled encoder features ``(B, feature_dim)`` of images ``(B, C, H, W)`` (standardised like the views)."""
        return check_features(pooled(self.encoder(self._input(x))), self.feature_dim)

    def representations(self, x: torch.Tensor, keep_map: bool = False) -> dict[str, torch.Tensor]:
        """Pooled features per branch: ``{"encoder": (B, feature_dim)[, "decoder": (B, decoder_dim)]}``.

        With ``keep_map`` also ``"decoder_map"``: the decoder's last feature map (B, decoder_dim, H, W).
        """
        features = self.encoder(self._input(x))
        out = {"encoder": check_features(pooled(features), self.feature_dim)}
        if self.decoder is not None:
            dmap = self.decoder(features)
            out["decoder"] = check_features(pooled(dmap), self.decoder_dim, "decoder")
            if keep_map:
                out["decoder_map"] = dmap
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

    def _dense(self, map1: torch.Tensor, map2: torch.Tensor, theta1, theta2) -> tuple[torch.Tensor, torch.Tensor,
                                                                                       torch.Tensor]:
        """Pixel-level NT-Xent over corresponding points; returns (loss, accuracy, number of points)."""
        for name, th in (("theta1", theta1), ("theta2", theta2)):
            if not isinstance(th, torch.Tensor) or th.shape != (map1.shape[0], 2, 3):
                raise ParameterError(f"the dense level needs {name}: the (B, 2, 3) view geometry from "
                                     "SSLAugment.views_with_geometry; got "
                                     f"{tuple(th.shape) if isinstance(th, torch.Tensor) else th!r}")
        q1, q2, valid = corresponding_points(theta1.float(), theta2.float(), self.dense_grid)
        f1, f2 = _sample(map1, q1)[valid], _sample(map2, q2)[valid]  # (N, decoder_dim) each
        n = f1.shape[0]
        if n < 2:  # no overlap between the views anywhere in the batch: nothing to contrast
            zero = map1.sum() * 0.0
            return zero, zero.detach(), torch.tensor(float(n))
        z1, z2 = self.dense_head(f1), self.dense_head(f2)
        return self.dense_contrastive(z1, z2), contrastive_accuracy(z1, z2), torch.tensor(float(n))

    def forward(self, view1: torch.Tensor, view2: torch.Tensor, task, group, theta1: torch.Tensor | None = None,
                theta2: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        """Weighted hierarchical loss for two views ``(B, C, H, W)`` of B images and their tags.

        ``task`` and ``group`` are integer ``(B,)`` ids (the same for both views); a level
        switched off ignores its ids (pass anything of the right shape, e.g. zeros).
        ``theta1``, ``theta2``: the views' geometry (B, 2, 3), needed by the dense level.

        Returns ``(loss, logs)``; ``logs`` holds detached 0-d tensors: ``loss``, and for each
        level switched on its *unweighted* loss ``loss_<level>``, plus ``contrast_acc``
        (image level), ``task_acc`` and ``group_acc`` (classification accuracy over both
        views and all branches), ``dense_acc`` (fraction of points whose nearest projection is
        their own other view; chance 1 / (2N - 1)) and ``dense_points`` (N).
        """
        check_views(view1, view2)
        b = view1.shape[0]
        device = view1.device
        dense = self.dense_head is not None
        reps1, reps2 = per_view(lambda v: self.representations(v, keep_map=dense), view1, view2, self.views)
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

        if dense:
            level, acc, n = self._dense(reps1["decoder_map"], reps2["decoder_map"], theta1, theta2)
            total = total + self.weights["dense"] * level
            logs["loss_dense"], logs["dense_acc"], logs["dense_points"] = level.detach(), acc, n

        logs["loss"] = total.detach()
        return total, logs

    # ------------------------------------------------------------------ the pretraining loop's questions
    #: the second view of every pair is histogram-equalised (no intensity shortcut to task and group)
    augment = {"equalize_p": (0.0, 1.0)}

    @classmethod
    def from_unet(cls, unet, pool, **options):
        """The whole encoder-decoder, with one class per task and group of the pool."""
        return cls(unet, num_tasks=len(pool.tasks), num_groups=len(pool.groups), **options)

    def loss(self, model, aug, x: torch.Tensor, batch: dict, generator: torch.Generator):
        """The dense level needs where each point of one view lies in the other: views with geometry."""
        view1, view2, theta1, theta2 = aug.views_with_geometry(x, generator)
        return model(view1, view2, batch["task"], batch["group"], theta1, theta2)

    @property
    def input_norm(self) -> str:
        return "image" if self.standardize else "volume"
