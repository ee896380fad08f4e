"""Evaluation during and after fine-tuning: validation Dice, whole-volume prediction, test metrics."""

from __future__ import annotations

import numpy as np
import torch

from medssl_utils.rundir import RunDir

def evaluate_val(model, cache, rows, num_classes, batch_size, device) -> np.ndarray:
    from medssl_utils.metrics import dice_counts, dice_from_counts

    tp = fp = fn = None
    was = model.training
    model.eval()
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            r = rows[i:i + batch_size]
            x = torch.from_numpy(np.asarray(cache.images[r], np.float32))[:, None].to(device)
            y = torch.from_numpy(np.asarray(cache.labels[r], np.int64)).to(device)
            counts = dice_counts(model(x), y, num_classes)
            tp, fp, fn = counts if tp is None else (tp + counts[0], fp + counts[1], fn + counts[2])
    model.train(was)
    return dice_from_counts(tp, fp, fn).cpu().numpy()


def predict_volume(model, cache, volume, batch_size: int, device) -> np.ndarray:
    """Class ids (X, Y, Z) on the volume's original voxel grid, predicted slice by slice."""
    from medssl_utils.data import restore_slices

    ix = cache.index
    rows = ix.index[ix.volume_id == volume.volume_id].to_numpy()
    rows = rows[np.argsort(ix.loc[rows, "z"].to_numpy())]
    preds = []
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            x = torch.from_numpy(np.asarray(cache.images[rows[i:i + batch_size]], np.float32))[:, None].to(device)
            preds.append(model(x).argmax(1).to(torch.uint8).cpu().numpy())
    first = ix.loc[rows[0]]
    return restore_slices(np.concatenate(preds), int(first.orig_x), int(first.orig_y))


def test_volumes(model, data, cfg, rd: RunDir, device) -> tuple[dict, list]:
    from medssl_utils.data.nifti import write_nifti
    from medssl_utils.metrics import slice_iou, summarize_metrics, summarize_slice_iou, volume_metrics

    labels = {k: v for k, v in data.vs.labels.items() if k > 0}
    all_labels = list(data.vs.labels)
    rows, ious = [], []
    model.eval()
    for vol in data.test_volumes:
        pred = predict_volume(model, data.cache, vol, cfg.eval_batch_size, device)
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

