"""Frozen-encoder evaluation: a dense (per-pixel) linear probe of an encoder's multi-stage features.

Fine-tuning rewrites an encoder: what it started from is hard to see in the fine-tuned Dice,
whose seed-to-seed noise is of the size of the effects in question. A probe asks the question
without fine-tuning noise: *how much segmentation can a linear classifier read off the frozen
features?* Protocol (:func:`dense_probe`), the same for every initialisation:

1. ``train_slices`` labelled slices are drawn from the training patients' annotated slices
   (seeded by ``seed``); ``val_slices`` slices of the validation patients are fixed (drawn with
   a fixed seed, the same for every seed and every encoder). Un-augmented, as cached.
2. BatchNorm statistics of the encoder are recomputed on the training slices
   (:func:`~medssl_utils.models.batchnorm.recomputed_bn`; a fresh random encoder's running
   statistics are the defaults, a pretrained one's belong to other data) and put back afterwards.
3. The encoder's feature maps at every stage (``encoder(x)[1:]``: stride 2 to the deepest; the
   input itself, stage 0, is left out so that the probe cannot threshold raw intensities) are
   computed once without gradients and standardised per channel on the training slices.
4. A per-pixel linear classifier (multinomial logistic regression) on the concatenation of all
   stages upsampled to the image's size (bilinear): trained on ``pixels_per_slice`` pixels drawn
   uniformly from each training slice (classes keep their frequencies), features standardised,
   mean cross-entropy plus a small L2 penalty, L-BFGS from zero for ``steps`` iterations — a
   convex problem, so the probe measures the features, not an optimiser's luck. The encoder never
   changes.
5. ``dense_dice``: mean foreground Dice of its predictions on whole validation slices, pooled over
   slices per class as the fine-tuning validation Dice is (:func:`~.evaluate.evaluate_val`). The
   classifier is applied as ``b + sum_s upsample(W_s f_s)``: bilinear upsampling is linear and per
   channel, so this equals the classifier on the upsampled, concatenated features, at a fraction
   of the cost.

Everything is a function of (encoder weights, data, seed): on CPU a probe repeats exactly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medssl_utils.data import labelled_slices, load_dataset, make_split, slice_cache
from medssl_utils.metrics import dice_counts, dice_from_counts
from medssl_utils.models.batchnorm import recomputed_bn
from medssl_utils.training.loop import resolve_split

__all__ = ["ProbeData", "dense_probe", "prepare_probe_data"]

_VAL_SEED = 0x5EED


@dataclass
class ProbeData:
    """Labelled slices a probe trains and scores on (see :func:`prepare_probe_data`)."""

    dataset: str
    cache: object
    train_pool: np.ndarray  # rows: annotated slices of the training patients
    val_rows: np.ndarray  # rows: the fixed validation slices
    num_classes: int
    names: list  # foreground class names, in label order


def prepare_probe_data(dataset: str, image_size: int, split: str = "auto", split_seed: int = 0,
                       val_slices: int = 64, progress: bool = False) -> ProbeData | None:
    """The probe's data on ``dataset`` (its labelled volumes, the study's patient split), or None
    when the dataset has no labelled training and validation slices (e.g. photographs)."""
    vs = load_dataset(dataset).labelled()
    if not vs.volumes or len(vs.labels) < 2:
        return None
    cache = slice_cache(vs, image_size=image_size, progress=progress)
    sp = make_split(cache.index, resolve_split(vs.format, split), seed=split_seed)
    pool = labelled_slices(cache.index, sp, "train")
    val = labelled_slices(cache.index, sp, "val")
    if not len(pool) or not len(val):
        return None
    if len(val) > val_slices:
        val = np.sort(np.random.default_rng(_VAL_SEED).choice(val, val_slices, replace=False))
    names = [vs.labels[k] for k in sorted(vs.labels) if k > 0]
    return ProbeData(str(dataset), cache, np.asarray(pool), np.asarray(val), len(vs.labels), names)


def _images(cache, rows, device, channels_last: bool) -> torch.Tensor:
    x = torch.from_numpy(np.asarray(cache.images[rows], np.float32))[:, None].to(device)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _features(encoder, transform, cache, rows, batch_size, device, channels_last) -> list[torch.Tensor]:
    """Stage feature maps (stages 1..depth) of ``rows``, float32 on ``device``, no gradients."""
    out: list[list[torch.Tensor]] = []
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            x = _images(cache, rows[i:i + batch_size], device, channels_last)
            maps = encoder(transform(x) if transform else x)[1:]
            for s, m in enumerate(maps):
                if len(out) <= s:
                    out.append([])
                out[s].append(m.float().contiguous())
    return [torch.cat(m) for m in out]


def _pixel_samples(maps: list[torch.Tensor], points: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of every stage map at ``points`` (B, P, 2; normalised x, y, align_corners=False),
    concatenated over stages: (B * P, sum of channels). Equal to upsampling each map to the image's
    size (bilinear, align_corners=False, edges clamped) and reading those pixels."""
    out = []
    for m in maps:
        s = F.grid_sample(m, points.unsqueeze(2).to(m.dtype), mode="bilinear", padding_mode="border",
                          align_corners=False)  # (B, C, P, 1)
        out.append(s.squeeze(3).permute(0, 2, 1).reshape(-1, m.shape[1]))
    return torch.cat(out, dim=1)


def dense_probe(encoder: nn.Module, data: ProbeData, seed: int = 0, *, train_slices: int = 96, steps: int = 100,
                pixels_per_slice: int = 256, l2: float = 1e-3, batch_size: int = 64, device="cpu",
                channels_last: bool = False, transform=None) -> dict:
    """Dense linear probe of ``encoder`` (an smp encoder: ``encoder(x)`` returns its stage maps) on ``data``.

    Args:
        encoder: frozen during the probe; its weights, BatchNorm statistics and train/eval mode are
            as before afterwards.
        data: from :func:`prepare_probe_data`.
        seed: draws the training slices and the training pixels.
        train_slices: labelled training slices (all of the pool when it has fewer).
        steps: L-BFGS iterations of the classifier (one full-batch ``step`` with ``max_iter=steps``).
        pixels_per_slice: training pixels per slice, drawn uniformly (so classes keep their frequencies).
        l2: weight of ``0.5 * |W|^2`` added to the mean cross-entropy (standardised features).
        transform: applied to every input batch before the encoder (e.g. per-image z-scoring for an
            encoder pretrained on standardised views).

    Returns ``{"dense_dice", "dice": {class: Dice}, "dataset", "seed", "train_slices", "val_slices",
    "train_pixels", "steps", "seconds"}`` (Dice as fractions).
    """
    t0 = time.perf_counter()
    rng = np.random.default_rng([int(seed), 0xD3])
    pool = data.train_pool
    rows = pool if len(pool) <= train_slices else np.sort(rng.choice(pool, train_slices, replace=False))
    cache = data.cache
    h, w = cache.images.shape[-2:]
    k = data.num_classes
    batches = (_images(cache, rows[i:i + batch_size], device, channels_last) for i in range(0, len(rows), batch_size))
    forward = (lambda x: encoder(transform(x))) if transform else None
    with recomputed_bn(encoder, batches, forward):
        f_train = _features(encoder, transform, cache, rows, batch_size, device, channels_last)
        f_val = _features(encoder, transform, cache, data.val_rows, batch_size, device, channels_last)
    # training pixels: uniform without replacement per slice, as (x, y) pixel-centre coordinates
    n_pix = min(pixels_per_slice, h * w)
    flat = np.stack([rng.choice(h * w, n_pix, replace=False) for _ in range(len(rows))])
    ys, xs = flat // w, flat % w
    points = torch.from_numpy(np.stack([(xs + 0.5) / w * 2 - 1, (ys + 0.5) / h * 2 - 1], axis=-1)).float().to(device)
    x_pix = _pixel_samples(f_train, points)
    labels = torch.from_numpy(np.asarray(cache.labels[rows], np.int64)).to(device)
    y_pix = labels.view(len(rows), -1).gather(1, torch.from_numpy(flat).to(device)).reshape(-1)
    mean, std = x_pix.mean(0), x_pix.std(0).clamp_min(1e-6)
    x_pix = (x_pix - mean) / std
    weight = torch.zeros(k, x_pix.shape[1], device=device, requires_grad=True)
    bias = torch.zeros(k, device=device, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=steps, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(x_pix @ weight.T + bias, y_pix) + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        # the same classifier on whole validation slices: standardisation folded into W and b, each stage's
        # part applied at its own resolution and upsampled (linear maps commute with bilinear upsampling)
        w_eff, b_eff = weight / std, bias - (weight / std) @ mean
        logits, start = b_eff.view(1, -1, 1, 1), 0
        for f in f_val:
            part = w_eff[:, start:start + f.shape[1]]
            start += f.shape[1]
            logits = logits + F.interpolate(F.conv2d(f, part[:, :, None, None]), size=(h, w), mode="bilinear",
                                            align_corners=False)
        y_val = torch.from_numpy(np.asarray(cache.labels[data.val_rows], np.int64)).to(device)
        tp, fp, fn = dice_counts(logits, y_val, k)
        dice = dice_from_counts(tp, fp, fn).cpu().numpy()
    return {"dense_dice": float(np.mean(dice[1:])), "dice": {n: float(d) for n, d in zip(data.names, dice[1:])},
            "dataset": data.dataset, "seed": int(seed), "train_slices": int(len(rows)),
            "val_slices": int(len(data.val_rows)), "train_pixels": int(len(y_pix)), "steps": int(steps),
            "seconds": round(time.perf_counter() - t0, 2)}
