"""Evaluation during and after fine-tuning: validation Dice, whole-volume prediction, test metrics.

BatchNorm statistics at evaluation ("precise BN"). In training mode BatchNorm normalises with
the batch's own statistics and keeps running averages (momentum 0.1) for evaluation. While the
learning rate is high the weights move faster than those averages follow, so evaluating with
them scores a model that never existed: for the same weights at step 150 of 300 (lr 5e-3) test
Dice was 0.12 with the running statistics and 0.55 with statistics recomputed for those
weights. :func:`bn_recalibrated` therefore recomputes every BatchNorm's mean and variance for
the current weights — a forward pass in training mode, without gradients, over a fixed set of
un-augmented training slices (``recalibrate_bn`` of them, 64 by default; cumulative average
over batches) — evaluates, and then puts the running statistics back, so training continues
exactly as it would have without the evaluation (a resumed run still equals an uninterrupted
one). This is PreciseBN (Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021): the population
statistics of the model being evaluated, from training data only (no validation or test image
is used to normalise itself).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from medssl_utils.data import restore_slices
from medssl_utils.data.nifti import write_nifti
from medssl_utils.metrics import (dice_counts, dice_from_counts, slice_iou, summarize_metrics, summarize_slice_iou,
                                  volume_metrics)
from medssl_utils.models.batchnorm import recomputed_bn
from medssl_utils.rundir import RunDir


def _batch(cache, rows, device, channels_last: bool = False) -> torch.Tensor:
    x = torch.from_numpy(np.asarray(cache.images[rows], np.float32))[:, None].to(device)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def recalibration_rows(train_rows: np.ndarray, n: int, seed: int) -> np.ndarray:
    """The (sorted) training rows whose slices set BatchNorm statistics: all of them, or ``n`` drawn with ``seed``."""
    rows = np.asarray(train_rows)
    if n <= 0 or len(rows) <= n:
        return np.sort(rows) if n > 0 else rows[:0]
    return np.sort(np.random.default_rng([seed, 0xB4]).choice(rows, n, replace=False))


def bn_recalibrated(model: nn.Module, cache, rows: np.ndarray, batch_size: int, device,
                    channels_last: bool = False, forward=None):
    """Inside the block ``model`` is in eval mode with BatchNorm statistics recomputed on ``rows``.

    On leaving, the running statistics (and momenta) are restored and the previous train/eval
    mode comes back. With no rows (``recalibrate_bn=0``) or no BatchNorm layer this only
    switches to eval mode. ``forward``: what to call on each batch instead of ``model``
    (:func:`medssl_utils.models.batchnorm.recomputed_bn`).
    """
    batches = (_batch(cache, rows[i:i + batch_size], device, channels_last) for i in range(0, len(rows), batch_size))
    return recomputed_bn(model, batches, forward)


def evaluate_val(model, cache, rows, num_classes, batch_size, device, channels_last: bool = False) -> np.ndarray:
    """Dice per class (background first) pooled over the slices ``rows``; ``model`` as it is (eval mode)."""
    tp = fp = fn = None
    was = model.training
    model.eval()
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            r = rows[i:i + batch_size]
            x = _batch(cache, r, device, channels_last)
            y = torch.from_numpy(np.asarray(cache.labels[r], np.int64)).to(device)
            counts = dice_counts(model(x), y, num_classes)
            tp, fp, fn = counts if tp is None else (tp + counts[0], fp + counts[1], fn + counts[2])
    model.train(was)
    return dice_from_counts(tp, fp, fn).cpu().numpy()


def predict_volume(model, cache, volume, batch_size: int, device, channels_last: bool = False) -> np.ndarray:
    """Class ids (X, Y, Z) on the volume's original voxel grid, predicted slice by slice."""
    ix = cache.index
    rows = ix.index[ix.volume_id == volume.volume_id].to_numpy()
    rows = rows[np.argsort(ix.loc[rows, "z"].to_numpy())]
    preds = []
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            x = _batch(cache, rows[i:i + batch_size], device, channels_last)
            preds.append(model(x).argmax(1).to(torch.uint8).cpu().numpy())
    first = ix.loc[rows[0]]
    return restore_slices(np.concatenate(preds), int(first.orig_x), int(first.orig_y))


def test_volumes(model, data, cfg, rd: RunDir, device) -> tuple[dict, list]:
    labels = {k: v for k, v in data.vs.labels.items() if k > 0}
    all_labels = list(data.vs.labels)
    rows, ious = [], []
    model.eval()
    for vol in data.test_volumes:
        pred = predict_volume(model, data.cache, vol, cfg.eval_batch_size, device, cfg.channels_last)
        gt = vol.load()[1]
        res = volume_metrics(pred, gt, vol.spacing, labels)
        for lab, m in res.items():
            rows.append({"volume_id": vol.volume_id, "case_id": vol.case_id, "phase": vol.meta.get("phase") or "",
                         "label": lab, "name": labels[lab],
                         **{k: m[k] for k in ("dice", "hd", "hd95", "gt_empty", "pred_empty")}})
        ious.append(slice_iou(pred, gt, all_labels, axis=-1))
        if cfg.save_predictions and rd.writer:
            write_nifti(rd.path / "predictions" / f"{vol.volume_id}.nii.gz", pred, vol.spacing, affine=vol.affine)
    import pandas as pd

    table = pd.DataFrame(rows)
    summary = summarize_metrics(table.rename(columns={"volume_id": "volume"}))
    per_label = {}
    for _, r in summary.reset_index().iterrows():
        name = labels.get(int(r["label"]), str(r["label"]))
        per_label[name] = {k: (float(r[k]) if k in r and r[k] == r[k] else None)
                           for k in ("dice_mean", "dice_std", "hd_mean", "hd95_mean", "hd95_std")}
        per_label[name].update({k: int(r[k]) for k in ("n", "n_missed", "n_undefined_hd") if k in r})
    iou = summarize_slice_iou(np.concatenate(ious), all_labels)
    slice_summary = {data.vs.labels[int(k)]: v["iou_mean"] for k, v in iou["per_label"].items() if int(k) > 0}
    slice_summary["work_a_mean_iou"] = iou["work_a_mean_iou"]
    mean_dice = float(table["dice"].mean()) if len(table) else None
    return {"mean_dice": mean_dice, "per_label": per_label, "slice_iou": slice_summary,
            "volumes": len(data.test_volumes)}, rows

