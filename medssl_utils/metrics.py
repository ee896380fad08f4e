"""Segmentation metrics: per-volume Dice / Hausdorff (ACDC), per-slice IoU (Work A), summaries.

Three views of one test set, so results compare both with the ACDC challenge and with Work A:

- :func:`volume_metrics` — one 3D volume (the 2D slice predictions of a volume stacked back),
  per structure: Dice, Hausdorff distance ``hd`` (the maximum, as the ACDC challenge reports it)
  and ``hd95``, both in mm using the voxel spacing. Distances are symmetric, Euclidean, on
  surface voxels found by binary erosion with face connectivity — the same surfaces as the
  ``medpy`` code of the official ACDC evaluation — with ``spacing[i]`` the voxel size along
  array axis ``i`` (:func:`hausdorff_distances`). They equal MONAI's
  ``compute_hausdorff_distance`` (checked by a test against MONAI), computed with scipy
  because importing MONAI costs seconds in every run.
  ``hd95`` follows MONAI: the larger of the two directed 95th percentiles
  (pred→gt and gt→pred), not the percentile of the pooled distances.
- :func:`slice_iou` — IoU of every 2D slice and label, as Work A evaluated its test set.
- :func:`summarize_metrics` / :func:`summarize_slice_iou` — means and spreads that count what
  they leave out.

:func:`batch_dice` is a fast torch path for validation during training.

Empty-structure conventions
---------------------------
Per volume and label (``gt_empty`` / ``pred_empty`` flags are always reported):

====================  ======  ==========  ==========================================
gt / prediction       dice    hd, hd95    meaning
====================  ======  ==========  ==========================================
both present          ratio   mm          ordinary case
both empty            1.0     0.0         a correct "nothing there"
gt empty, pred not    0.0     NaN         false positive structure; distance undefined
gt present, pred not  0.0     NaN         **missed** structure; distance undefined
====================  ======  ==========  ==========================================

Dice is MONAI's ``compute_dice(ignore_empty=False)`` convention; MONAI's Hausdorff functions
would return NaN (both empty) or inf (one empty), so the distances of the last three rows are
set here explicitly.
Dice is therefore never NaN and a missed structure enters every Dice mean as 0. Distances
are NaN when undefined; :func:`summarize_metrics` excludes them from the hd/hd95 means and
**counts** them (``n_undefined_hd``), and counts missed structures (``n_missed``) and false
positive ones (``n_false_positive``), so nothing leaves an average unnoticed.

Per 2D slice (:func:`slice_iou`): IoU ``|P∩G| / |P∪G|`` is NaN when the label is absent from
both slices (union empty), and 0.0 when exactly one of them is empty. This matches Work A's
evaluation (``supervised_segmentation/inference_acdc.py`` in its public code): every test slice
was scored with torchmetrics' IoU over 4 classes *including background*; the per-class IoUs it
reported used ``absent_score=NaN`` and a NaN-ignoring mean over slices (our
``iou_mean`` from :func:`summarize_slice_iou`), and its headline "mean IoU" averaged, per
slice, the IoUs of all classes with ``absent_score=1.0``, then averaged over slices (our
``work_a_mean_iou``, equal to Work A's when ``labels=[0, 1, 2, 3]``). Slices where a label is
absent from both are counted in ``n_absent``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch

from medssl_utils.errors import ParameterError
from medssl_utils.validate import check_int

METRICS = ("dice", "hd", "hd95")


# --------------------------------------------------------------------------- argument checks
def _check_labels(labels) -> tuple[list[int], dict[int, str]]:
    """``labels`` as a list of ids (order kept) and an ``{id: name}`` dict (empty if no names)."""
    names = {}
    if isinstance(labels, Mapping):
        names = {k: str(v) for k, v in labels.items()}
        labels = list(labels)
    elif isinstance(labels, (int, np.integer)) or not isinstance(labels, Iterable) or isinstance(labels, str):
        raise ParameterError(f"labels={labels!r} is not allowed; expected a list of class ids such as [1, 2, 3] "
                             "or a dict {id: name}")
    labels = list(labels)
    bad = [v for v in labels if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < 0]
    if not labels or bad or len(set(labels)) != len(labels):
        why = "it is empty" if not labels else f"{bad} are not non-negative integers" if bad else "it has duplicates"
        raise ParameterError(f"labels={labels!r} is not allowed ({why}); expected distinct non-negative integer "
                             "class ids such as [1, 2, 3] or a dict {id: name}")
    return [int(v) for v in labels], {int(k): v for k, v in names.items()}


def _as_label_array(name: str, value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    arr = np.asarray(value)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ParameterError(f"{name} must be an integer label map (class ids), got dtype {arr.dtype}; "
                             "take argmax of logits or probabilities first")
    return arr


def _check_pair(pred, gt, ndims: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = _as_label_array("pred", pred), _as_label_array("gt", gt)
    if pred.shape != gt.shape or pred.ndim not in ndims:
        raise ParameterError(f"pred and gt must have the same shape with {' or '.join(map(str, ndims))} dimensions; "
                             f"got pred {pred.shape} and gt {gt.shape}")
    return pred, gt


# --------------------------------------------------------------------------- per volume
def volume_metrics(pred, gt, spacing: Sequence[float], labels) -> dict[int, dict]:
    """Dice, Hausdorff distance and HD95 (mm) per label for one volume.

    Args:
        pred, gt: integer label maps of one volume, same shape ``(X, Y, Z)`` (or ``(X, Y)``),
            numpy arrays or tensors; for 2D models, the slice predictions stacked back.
        spacing: voxel size in mm along each array axis, e.g. ``(1.5, 1.5, 10.0)``.
        labels: foreground class ids, e.g. ``[1, 2, 3]``, or a dict ``{1: "RV", 2: "MYO", 3: "LV"}``.

    Returns:
        ``{label: {"dice", "hd", "hd95", "gt_empty", "pred_empty", "gt_volume_ml", "pred_volume_ml"[, "name"]}}``
        in the order of ``labels``; distances in mm, Dice in [0, 1]; empty structures follow the module
        docstring's conventions.
    """
    ids, names = _check_labels(labels)
    pred, gt = _check_pair(pred, gt, (2, 3))
    try:
        spacing = [float(s) for s in spacing]
    except (TypeError, ValueError):
        spacing = None
    if spacing is None or len(spacing) != pred.ndim or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise ParameterError(f"spacing must give {pred.ndim} positive voxel sizes in mm, one per array axis "
                             "(e.g. (1.5, 1.5, 10.0))")

    ml_per_voxel = float(np.prod(spacing)) / 1000.0
    out = {}
    for i in ids:
        p, g = pred == i, gt == i
        n_p, n_g = int(p.sum()), int(g.sum())
        row = {"dice": 1.0, "hd": 0.0, "hd95": 0.0, "gt_empty": n_g == 0, "pred_empty": n_p == 0,
               "gt_volume_ml": n_g * ml_per_voxel, "pred_volume_ml": n_p * ml_per_voxel}
        if n_p or n_g:
            row["dice"] = 2.0 * int(np.count_nonzero(p & g)) / (n_p + n_g)
            if n_p and n_g:
                # Crop to the union's bounding box plus a 1-voxel margin, as MONAI does: values unchanged,
                # the distance transforms run on a small box instead of the whole volume.
                box = _bounding_box(p | g, margin=1)
                row["hd"], row["hd95"] = hausdorff_distances(p[box], g[box], spacing)
            else:
                row["hd"] = row["hd95"] = float("nan")
        if i in names:
            row["name"] = names[i]
        out[i] = row
    return out


def surface(mask: np.ndarray) -> np.ndarray:
    """The voxels of ``mask`` that touch the outside across a face (binary erosion, face connectivity;
    voxels on the array's border count as surface)."""
    from scipy.ndimage import binary_erosion, generate_binary_structure

    return mask & ~binary_erosion(mask, structure=generate_binary_structure(mask.ndim, 1), border_value=0)


def hausdorff_distances(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]) -> tuple[float, float]:
    """Symmetric Hausdorff distance and HD95 (mm) between two non-empty boolean masks.

    Surface voxels as :func:`surface`; ``d(a→b)`` = Euclidean distances (with ``spacing``) from
    every surface voxel of ``a`` to the nearest surface voxel of ``b`` (``scipy.ndimage.
    distance_transform_edt``). ``hd = max(max d(p→g), max d(g→p))``; ``hd95 = max(P95 d(p→g),
    P95 d(g→p))`` (numpy's linear-interpolated percentile). This is MONAI's
    ``compute_hausdorff_distance(directed=False)`` computed the same way (``tests/
    test_losses_metrics.py`` checks equality), without importing MONAI, whose import costs
    seconds per run.
    """
    from scipy.ndimage import distance_transform_edt

    sp, sg = surface(pred), surface(gt)
    d_pg = distance_transform_edt(~sg, sampling=spacing)[sp]
    d_gp = distance_transform_edt(~sp, sampling=spacing)[sg]
    hd = max(float(d_pg.max()), float(d_gp.max()))
    hd95 = max(float(np.percentile(d_pg, 95)), float(np.percentile(d_gp, 95)))
    return hd, hd95


def _bounding_box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    """Slices of the smallest box holding ``mask``'s True voxels, grown by ``margin`` (clipped)."""
    box = []
    for axis in range(mask.ndim):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append(slice(max(hits[0] - margin, 0), hits[-1] + 1 + margin))
    return tuple(box)


def metrics_table(results) -> "pandas.DataFrame":  # noqa: F821
    """Flatten per-volume results into a tidy table, one row per (volume, label).

    Args:
        results: ``{volume_id: volume_metrics(...)}``, or a list of :func:`volume_metrics`
            outputs (volume ids are then 0, 1, ...), or a list of flat dicts / a DataFrame that
            already has a ``label`` column (returned as a DataFrame unchanged).

    Returns:
        DataFrame with columns ``volume``, ``label``, then the metric fields.
    """
    import pandas as pd

    if isinstance(results, pd.DataFrame):
        table = results.copy()
    else:
        items = list(results.items()) if isinstance(results, Mapping) else list(enumerate(results))
        rows = []
        for vol, res in items:
            if isinstance(res, Mapping) and "label" in res:  # already a flat row
                rows.append(dict(res))
            elif isinstance(res, Mapping):
                rows.extend({"volume": vol, "label": label, **m} for label, m in res.items())
            else:
                raise ParameterError(f"results item {vol!r} is a {type(res).__name__}; expected the dict returned "
                                     "by volume_metrics or a flat dict with a 'label' key")
        table = pd.DataFrame(rows)
    if "label" not in table.columns:
        raise ParameterError(f"results have no 'label' column; got columns {list(table.columns)}")
    return table


def summarize_metrics(rows, by: str | Sequence[str] = "label") -> "pandas.DataFrame":  # noqa: F821
    """Mean and std (sample, ddof=1) of Dice, HD and HD95 per label over volumes, counting exclusions.

    Args:
        rows: anything :func:`metrics_table` accepts (per-volume results).
        by: column(s) to group by, e.g. ``"label"`` or ``["phase", "label"]`` (ACDC reports
            ED and ES separately). A ``name`` column is carried along with ``label``.

    Returns:
        DataFrame, one row per group, with columns

        - ``n``: volumes; ``n_gt_empty``: volumes whose ground truth lacks the structure;
        - ``n_missed``: gt present but prediction empty (these enter the Dice mean as 0);
        - ``n_false_positive``: gt empty but something predicted (Dice 0);
        - ``n_undefined_hd``: volumes whose hd is NaN (excluded from the hd/hd95 means);
        - ``dice_mean``, ``dice_std``, ``hd_mean``, ``hd_std``, ``hd95_mean``, ``hd95_std``.
    """
    table = metrics_table(rows)
    keys = [by] if isinstance(by, str) else list(by)
    missing = [k for k in keys + list(METRICS) + ["gt_empty", "pred_empty"] if k not in table.columns]
    if missing:
        raise ParameterError(f"cannot summarise: columns {missing} are missing (by={by!r}); "
                             f"available: {list(table.columns)}")
    if "label" in keys and "name" in table.columns and "name" not in keys:
        keys.append("name")

    gt_empty, pred_empty = table["gt_empty"].astype(bool), table["pred_empty"].astype(bool)
    table = table.assign(_missed=~gt_empty & pred_empty, _fp=gt_empty & ~pred_empty, _gt_empty=gt_empty,
                         _undef=table["hd"].isna())
    grouped = table.groupby(keys, sort=True, dropna=False)
    out = grouped.agg(
        n=("dice", "size"),
        n_gt_empty=("_gt_empty", "sum"),
        n_missed=("_missed", "sum"),
        n_false_positive=("_fp", "sum"),
        n_undefined_hd=("_undef", "sum"),
        **{f"{m}_{s}": (m, s) for m in METRICS for s in ("mean", "std")},
    )
    return out.reset_index()


# --------------------------------------------------------------------------- per 2D slice
def slice_iou(pred, gt, labels, axis: int = 0) -> np.ndarray:
    """IoU of every 2D slice and label (Work A's per-slice evaluation).

    Args:
        pred, gt: integer label maps, same shape: a stack of slices ``(N, H, W)`` (slices along
            ``axis``, 0 by default; use ``axis=-1`` for an ``(X, Y, Z)`` volume) or one ``(H, W)`` slice.
        labels: class ids (background 0 may be included, as Work A did) or ``{id: name}``.
        axis: the slice axis of 3D inputs.

    Returns:
        float array ``(n_slices, n_labels)``: ``|P∩G| / |P∪G|``; NaN where the label is absent
        from both slices, 0.0 where only one has it.
    """
    ids, _ = _check_labels(labels)
    pred, gt = _check_pair(pred, gt, (2, 3))
    if pred.ndim == 2:
        pred, gt = pred[None], gt[None]
    else:
        if not isinstance(axis, (int, np.integer)) or not -3 <= axis < 3:
            raise ParameterError(f"axis={axis!r} is not allowed; expected one of [0, 1, 2, -1, -2, -3]")
        pred, gt = np.moveaxis(pred, axis, 0), np.moveaxis(gt, axis, 0)
    out = np.empty((pred.shape[0], len(ids)))
    for k, i in enumerate(ids):
        p, g = pred == i, gt == i
        inter = (p & g).sum(axis=(1, 2))
        union = (p | g).sum(axis=(1, 2))
        with np.errstate(invalid="ignore", divide="ignore"):
            out[:, k] = np.where(union > 0, inter / union, np.nan)
    return out


def summarize_slice_iou(iou: np.ndarray, labels) -> dict:
    """Per-label and headline means of :func:`slice_iou` output, counting absent slices.

    Args:
        iou: array ``(n_slices, n_labels)`` from :func:`slice_iou` (concatenate volumes along axis 0).
        labels: the same ``labels`` that produced ``iou``.

    Returns:
        ``{"per_label": {label: {"iou_mean", "iou_std", "n", "n_absent"[, "name"]}}, "work_a_mean_iou": float,``
        ``"n_slices": int}``, where ``iou_mean``/``iou_std`` (ddof=0) are over the
        ``n`` slices where the label is in pred or gt; ``n_absent`` slices (absent from both) are
        excluded. ``work_a_mean_iou`` scores an absent label 1.0, averages over labels per slice,
        then over slices (Work A's headline number when labels are ``[0, 1, 2, 3]``).
    """
    ids, names = _check_labels(labels)
    iou = np.asarray(iou, dtype=float)
    if iou.ndim != 2 or iou.shape[1] != len(ids):
        raise ParameterError(f"iou must have shape (n_slices, {len(ids)}) to match labels={ids}; got {iou.shape}")
    per_label = {}
    for k, i in enumerate(ids):
        col = iou[:, k]
        valid = col[~np.isnan(col)]
        per_label[i] = {
            "iou_mean": float(valid.mean()) if len(valid) else float("nan"),
            "iou_std": float(valid.std()) if len(valid) else float("nan"),
            "n": int(len(valid)),
            "n_absent": int(len(col) - len(valid)),
        }
        if i in names:
            per_label[i]["name"] = names[i]
    headline = float(np.nan_to_num(iou, nan=1.0).mean(axis=1).mean()) if len(iou) else float("nan")
    return {"per_label": per_label, "work_a_mean_iou": headline, "n_slices": int(len(iou))}


# --------------------------------------------------------------------------- fast torch path
def dice_counts(logits_or_pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                per_image: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """True positives, false positives and false negatives per class (pixel counts).

    Args:
        logits_or_pred: logits ``(B, C, H, W)`` (float; argmax over C is taken) or predicted
            class ids ``(B, H, W)`` (integer).
        target: class ids ``(B, H, W)``, values in ``[0, num_classes)``.
        num_classes: ``C``, background included.
        per_image: count per image ``(B, C)`` instead of over the whole batch ``(C,)``.

    Returns:
        ``(tp, fp, fn)`` int64 tensors on the input's device. Sum them over validation batches
        and pass to :func:`dice_from_counts` for a dataset-level Dice.
    """
    check_int("num_classes", num_classes, 1)
    pred = logits_or_pred
    if pred.is_floating_point():
        if pred.ndim != 4 or pred.shape[1] != num_classes:
            raise ParameterError(f"logits must have shape (B, {num_classes}, H, W); got {tuple(pred.shape)}")
        pred = pred.argmax(1)
    if pred.shape != target.shape or pred.ndim != 3:
        raise ParameterError(f"prediction and target must both be (B, H, W) class ids; got {tuple(pred.shape)} "
                             f"and {tuple(target.shape)}")
    pred, target = pred.long(), target.long()
    for name, t in (("prediction", pred), ("target", target)):
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_classes):
            raise ParameterError(f"{name} holds class ids outside [0, {num_classes}) for num_classes={num_classes}")
    b, c = pred.shape[0], num_classes
    index = target * c + pred + (torch.arange(b, device=pred.device) * c * c).view(b, 1, 1)
    confusion = torch.bincount(index.flatten(), minlength=b * c * c).view(b, c, c)  # [image, true, predicted]
    if not per_image:
        confusion = confusion.sum(0)
    tp = confusion.diagonal(dim1=-2, dim2=-1)
    return tp, confusion.sum(-2) - tp, confusion.sum(-1) - tp


def dice_from_counts(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> torch.Tensor:
    """Dice ``2TP / (2TP + FP + FN)`` as float; NaN where the class is in neither pred nor target."""
    tp, denom = tp.double(), (2 * tp + fp + fn).double()
    return torch.where(denom > 0, 2 * tp / denom.clamp_min(1), torch.full_like(denom, float("nan"))).float()


def batch_dice(logits_or_pred: torch.Tensor, target: torch.Tensor, num_classes: int,
               per_image: bool = False) -> torch.Tensor:
    """Per-class 2D Dice of a batch, for validation during training (torch only, any device).

    Pixels of all images are pooled (``per_image=False``, shape ``(C,)``) or each image is
    scored alone (``per_image=True``, shape ``(B, C)``). Index 0 is background. A class absent
    from both prediction and target gives NaN (use ``torch.nanmean``); a class predicted but
    absent from the target, or missed, gives 0. See :func:`dice_counts` for the inputs.
    """
    return dice_from_counts(*dice_counts(logits_or_pred, target, num_classes, per_image=per_image))
