"""Segmentation losses and metrics against hand-computed cases."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medssl_utils.errors import ParameterError
from medssl_utils.losses import LOSSES, segmentation_loss
from medssl_utils.metrics import (
    batch_dice,
    dice_counts,
    dice_from_counts,
    slice_iou,
    summarize_metrics,
    summarize_slice_iou,
    volume_metrics,
)

SPACING = (1.5, 1.5, 10.0)  # ACDC-like: fine in-plane, thick slices (mm)


def cube(shape=(12, 12, 10), at=(2, 2, 2), size=(4, 4, 4), label=1, into=None):
    vol = np.zeros(shape, np.int64) if into is None else into
    vol[tuple(slice(a, a + s) for a, s in zip(at, size))] = label
    return vol


# --------------------------------------------------------------------------- volume metrics
def test_dice_and_hd_of_cubes_shifted_in_plane_and_along_z():
    gt = cube()                                   # 4x4x4 = 64 voxels
    m = volume_metrics(cube(at=(4, 2, 2)), gt, SPACING, [1])[1]
    assert m["dice"] == pytest.approx(2 * 32 / 128)           # half the cube overlaps
    assert m["hd"] == pytest.approx(2 * 1.5) and m["hd95"] == pytest.approx(2 * 1.5)  # 2 voxels along x
    m = volume_metrics(cube(at=(2, 2, 3)), gt, SPACING, [1])[1]
    assert m["dice"] == pytest.approx(2 * 48 / 128)
    assert m["hd"] == pytest.approx(10.0)                     # 1 voxel along z = 10 mm, not 1.5
    assert m["gt_volume_ml"] == pytest.approx(64 * 1.5 * 1.5 * 10 / 1000)
    assert not m["gt_empty"] and not m["pred_empty"]


def test_hd_of_single_voxels_three_slices_apart_is_30mm():
    pred, gt = np.zeros((8, 8, 8), np.int64), np.zeros((8, 8, 8), np.int64)
    pred[4, 4, 1], gt[4, 4, 4] = 2, 2
    m = volume_metrics(pred, gt, SPACING, [2])[2]
    assert m["hd"] == pytest.approx(30.0) and m["hd95"] == pytest.approx(30.0) and m["dice"] == 0.0
    pred[4, 4, 1], pred[4, 1, 4] = 0, 2                       # now 3 voxels apart along y instead
    assert volume_metrics(pred, gt, SPACING, [2])[2]["hd"] == pytest.approx(4.5)
    pred[4, 1, 4], pred[1, 0, 1] = 0, 2                       # diagonal: sqrt(4.5² + 6² + 30²)
    assert volume_metrics(pred, gt, SPACING, [2])[2]["hd"] == pytest.approx(math.sqrt(4.5**2 + 6**2 + 30**2))


def test_hd95_ignores_one_outlier_voxel_that_hd_reports():
    gt = cube(shape=(30, 12, 10), at=(2, 2, 2), size=(5, 5, 5))   # 98 surface voxels
    pred = gt.copy()
    pred[26, 4, 4] = 1                                            # 20 voxels beyond the cube's face x=6
    m = volume_metrics(pred, gt, SPACING, [1])[1]
    assert m["hd"] == pytest.approx(20 * 1.5)
    assert m["hd95"] == pytest.approx(0.0)
    assert m["dice"] == pytest.approx(2 * 125 / 251)
    swapped = volume_metrics(gt, pred, SPACING, [1])[1]                # symmetric: same either way round
    assert (swapped["hd"], swapped["hd95"]) == pytest.approx((m["hd"], m["hd95"]))


def test_cropping_keeps_monai_full_volume_values_for_masks_touching_the_border():
    from monai.metrics import compute_dice, compute_hausdorff_distance

    rng = np.random.default_rng(0)
    pred, gt = ((rng.random((2, 14, 12, 5)) < 0.3) * rng.integers(1, 3, (2, 14, 12, 5))).astype(np.int64)
    spacing = (1.3, 0.7, 5.0)
    m = volume_metrics(pred, gt, spacing, [1, 2])
    onehot = [torch.from_numpy(np.stack([a == 1, a == 2]))[None] for a in (pred, gt)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        hd = compute_hausdorff_distance(*onehot, include_background=True, spacing=list(spacing))[0]
        hd95 = compute_hausdorff_distance(*onehot, include_background=True, spacing=list(spacing), percentile=95)[0]
    dice = compute_dice(*onehot, include_background=True)[0]
    for k, label in enumerate((1, 2)):
        assert (m[label]["dice"], m[label]["hd"], m[label]["hd95"]) == pytest.approx(
            (float(dice[k]), float(hd[k]), float(hd95[k])))


@pytest.mark.parametrize("seed", range(6))
def test_hausdorff_equals_monai_on_random_blobs(seed):
    """The scipy implementation gives MONAI's numbers on smooth random shapes, 2D and 3D, anisotropic."""
    from monai.metrics import compute_hausdorff_distance
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    shape = (40, 36, 9) if seed % 2 else (48, 44)
    spacing = tuple(float(s) for s in rng.uniform(0.5, 3.0, len(shape)))
    blobs = [gaussian_filter(rng.standard_normal(shape), 3) > rng.uniform(-0.05, 0.1) for _ in range(2)]
    assert all(b.any() and not b.all() for b in blobs)
    pred, gt = (b.astype(np.int64) for b in blobs)
    m = volume_metrics(pred, gt, spacing, [1])[1]
    onehot = [torch.from_numpy(b)[None, None] for b in blobs]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        hd = float(compute_hausdorff_distance(*onehot, include_background=True, spacing=list(spacing))[0, 0])
        hd95 = float(compute_hausdorff_distance(*onehot, include_background=True, spacing=list(spacing),
                                                percentile=95)[0, 0])
    assert m["hd"] == pytest.approx(hd, rel=1e-6) and m["hd95"] == pytest.approx(hd95, rel=1e-6)
    assert m["hd"] > 0


def test_volume_metrics_does_not_import_monai():
    import subprocess
    import sys

    code = ("import sys, numpy as np; from medssl_utils.metrics import volume_metrics; "
            "a = np.zeros((9, 9, 4), int); a[2:5, 2:5, 1:3] = 1; b = np.roll(a, 1, 0); "
            "volume_metrics(a, b, (1.0, 1.0, 5.0), [1]); print('monai' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_empty_structure_conventions_without_monai_warnings():
    gt = cube(label=1)
    cube(at=(8, 8, 6), size=(2, 2, 2), label=2, into=gt)        # label 2 only in gt: missed
    pred = cube(label=1)
    cube(at=(8, 8, 6), size=(2, 2, 2), label=3, into=pred)      # label 3 only in pred: false positive
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)               # MONAI's "all 0 ... nan/inf" warnings
        m = volume_metrics(pred, gt, SPACING, {1: "RV", 2: "MYO", 3: "LV", 4: "extra"})
    assert list(m) == [1, 2, 3, 4] and m[2]["name"] == "MYO"
    assert (m[1]["dice"], m[1]["hd"], m[1]["hd95"]) == (1.0, 0.0, 0.0)
    missed, false_pos, both_empty = m[2], m[3], m[4]
    assert missed["dice"] == 0.0 and math.isnan(missed["hd"]) and math.isnan(missed["hd95"])
    assert missed["pred_empty"] and not missed["gt_empty"]
    assert false_pos["dice"] == 0.0 and math.isnan(false_pos["hd"]) and math.isnan(false_pos["hd95"])
    assert false_pos["gt_empty"] and not false_pos["pred_empty"]
    assert (both_empty["dice"], both_empty["hd"], both_empty["hd95"]) == (1.0, 0.0, 0.0)
    assert both_empty["gt_empty"] and both_empty["pred_empty"]


def test_volume_metrics_accepts_tensors_and_2d():
    gt = cube(shape=(10, 10, 1), at=(2, 2, 0), size=(4, 4, 1))[..., 0]
    pred = np.roll(gt, 1, axis=0)
    m = volume_metrics(torch.from_numpy(pred), torch.from_numpy(gt), (2.0, 1.0), [1])[1]
    assert m["dice"] == pytest.approx(2 * 12 / 32) and m["hd"] == pytest.approx(2.0)


@pytest.mark.parametrize("kwargs, word", [
    (dict(labels=[]), "labels"),
    (dict(labels=[1, 1]), "labels"),
    (dict(labels=[-1]), "labels"),
    (dict(labels=[1.5]), "labels"),
    (dict(labels="RV"), "labels"),
    (dict(labels=3), "labels"),
    (dict(spacing=(1.5, 1.5)), "spacing"),
    (dict(spacing=(1.5, 0.0, 10.0)), "spacing"),
    (dict(pred=np.zeros((4, 4, 3), np.int64)), "same shape"),
    (dict(pred=np.zeros((4, 4, 2), np.float32)), "integer"),
])
def test_volume_metrics_bad_arguments(kwargs, word):
    args = dict(pred=np.zeros((4, 4, 2), np.int64), gt=np.zeros((4, 4, 2), np.int64), spacing=SPACING, labels=[1])
    args.update(kwargs)
    with pytest.raises(ParameterError, match=word):
        volume_metrics(**args)


# --------------------------------------------------------------------------- summary
def test_summary_counts_missed_and_undefined_instead_of_hiding_them():
    gt = cube()
    good = volume_metrics(cube(at=(2, 2, 3)), gt, SPACING, {1: "LV"})      # dice .75, hd 10
    ok = volume_metrics(cube(at=(4, 2, 2)), gt, SPACING, {1: "LV"})        # dice .5, hd 3
    missed = volume_metrics(np.zeros_like(gt), gt, SPACING, {1: "LV"})     # dice 0, hd NaN
    fp = volume_metrics(gt, np.zeros_like(gt), SPACING, {1: "LV"})         # dice 0, hd NaN
    s = summarize_metrics({"a": good, "b": ok, "c": missed, "d": fp}).set_index("label").loc[1]
    assert s["name"] == "LV"
    assert (s["n"], s["n_missed"], s["n_false_positive"], s["n_undefined_hd"], s["n_gt_empty"]) == (4, 1, 1, 2, 1)
    assert s["dice_mean"] == pytest.approx((0.75 + 0.5 + 0 + 0) / 4)      # misses count as 0
    assert s["dice_std"] == pytest.approx(np.std([0.75, 0.5, 0, 0], ddof=1))
    assert s["hd_mean"] == pytest.approx((10 + 3) / 2)                    # NaNs excluded, but counted
    assert s["hd95_mean"] == pytest.approx((10 + 3) / 2)


def test_summary_groups_by_phase_from_flat_rows():
    rows = [dict(volume=v, phase=ph, label=1, dice=d, hd=h, hd95=h, gt_empty=False, pred_empty=False)
            for v, ph, d, h in [(0, "ED", 0.9, 2.0), (1, "ED", 0.7, 4.0), (0, "ES", 0.5, 8.0)]]
    s = summarize_metrics(rows, by=["phase", "label"]).set_index("phase")
    assert s.loc["ED", "n"] == 2 and s.loc["ED", "dice_mean"] == pytest.approx(0.8)
    assert s.loc["ES", "hd_mean"] == pytest.approx(8.0) and s.loc["ES", "n_missed"] == 0
    with pytest.raises(ParameterError, match="phase"):
        summarize_metrics([{k: v for k, v in rows[0].items() if k != "phase"}], by=["phase", "label"])


# --------------------------------------------------------------------------- per-slice IoU
def test_slice_iou_constructed_example_and_work_a_means():
    gt, pred = np.zeros((3, 4, 4), np.int64), np.zeros((3, 4, 4), np.int64)
    gt[0, :2, :2] = 1                      # slice 0: 4 gt pixels of label 1 ...
    pred[0, :2, 1:3] = 1                   # ... 4 predicted, 2 overlap -> 2/6; label 2 absent from both
    gt[1, 0, :] = 1                        # slice 1: label 1 missed -> 0
    gt[1, 3, :] = 2
    pred[1, 3, :2] = 2                     # label 2: 2/4
    pred[2, 1, 1] = 1                      # slice 2: label 1 only predicted -> 0; label 2 absent
    iou = slice_iou(pred, gt, [1, 2])
    np.testing.assert_allclose(iou, [[2 / 6, np.nan], [0.0, 0.5], [0.0, np.nan]])
    np.testing.assert_allclose(slice_iou(np.moveaxis(pred, 0, -1), np.moveaxis(gt, 0, -1), [1, 2], axis=-1), iou)
    np.testing.assert_allclose(slice_iou(pred[1], gt[1], [1, 2]), iou[1:2])

    s = summarize_slice_iou(iou, {1: "RV", 2: "MYO"})
    assert s["per_label"][1]["iou_mean"] == pytest.approx((2 / 6) / 3) and s["per_label"][1]["n_absent"] == 0
    assert s["per_label"][2]["iou_mean"] == pytest.approx(0.5) and s["per_label"][2]["n"] == 1
    assert s["per_label"][2]["n_absent"] == 2 and s["per_label"][2]["name"] == "MYO"
    # Work A's headline: absent -> 1.0, mean over labels per slice, then over slices
    assert s["work_a_mean_iou"] == pytest.approx(np.mean([(2 / 6 + 1) / 2, 0.25, 0.5])) and s["n_slices"] == 3


def test_slice_iou_bad_arguments():
    with pytest.raises(ParameterError, match="labels"):
        slice_iou(np.zeros((2, 3, 3), np.int64), np.zeros((2, 3, 3), np.int64), [])
    with pytest.raises(ParameterError, match="axis"):
        slice_iou(np.zeros((2, 3, 3), np.int64), np.zeros((2, 3, 3), np.int64), [1], axis=3)
    with pytest.raises(ParameterError, match="shape"):
        summarize_slice_iou(np.zeros((2, 3)), [1, 2])


# --------------------------------------------------------------------------- fast torch Dice
def test_batch_dice_hand_computed():
    target = torch.zeros(2, 4, 4, dtype=torch.long)
    pred = torch.zeros(2, 4, 4, dtype=torch.long)
    target[0, :2, :2] = 1                  # 4 px of class 1
    pred[0, :2, :1] = 1                    # 2 px, both correct: image-0 dice 2*2/(2+4)
    pred[1, 0, 0] = 1                      # image 1: class 1 predicted, absent from target -> 0
    # class 2 absent from both everywhere -> NaN; class 0 (background) is reported too
    d = batch_dice(pred, target, 3)
    assert d.shape == (3,) and math.isnan(d[2])
    assert d[1] == pytest.approx(2 * 2 / (3 + 4))          # pooled over the batch: tp 2, fp 1, fn 2
    per = batch_dice(pred, target, 3, per_image=True)
    assert per.shape == (2, 3)
    assert per[0, 1] == pytest.approx(4 / 6) and per[1, 1] == 0.0 and per[1, 0] == pytest.approx(2 * 15 / 31)
    logits = F.one_hot(pred, 3).permute(0, 3, 1, 2).float() * 5.0
    torch.testing.assert_close(batch_dice(logits, target, 3), d, equal_nan=True)
    tp, fp, fn = dice_counts(pred, target, 3)
    tp2, fp2, fn2 = (2 * t for t in (tp, fp, fn))          # counts add up over validation batches
    torch.testing.assert_close(dice_from_counts(tp2, fp2, fn2), d, equal_nan=True)


def test_batch_dice_bad_arguments():
    t = torch.zeros(1, 4, 4, dtype=torch.long)
    with pytest.raises(ParameterError, match="logits"):
        batch_dice(torch.zeros(1, 2, 4, 4), t, 3)
    with pytest.raises(ParameterError, match="outside"):
        batch_dice(t + 3, t, 3)
    with pytest.raises(ParameterError, match="num_classes"):
        batch_dice(t, t, 0)


# --------------------------------------------------------------------------- losses
def _target(seed=0, shape=(2, 16, 16), num_classes=4):
    g = torch.Generator().manual_seed(seed)
    t = torch.zeros(shape, dtype=torch.long)
    for c in range(1, num_classes):   # blocky regions so every class is present
        x, y = torch.randint(0, shape[1] - 6, (2,), generator=g)
        t[:, x:x + 6, y:y + 6] = c
    return t


def _onehot_logits(target, num_classes=4, scale=1.0):
    return F.one_hot(target, num_classes).permute(0, 3, 1, 2).float() * scale


@pytest.mark.parametrize("name", LOSSES)
def test_loss_decreases_towards_target_and_vanishes_when_perfect(name):
    target = _target()
    loss = segmentation_loss(name, num_classes=4)
    base = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    values = [float(loss(base + _onehot_logits(target, scale=s), target)) for s in (0, 1, 2, 4, 8)]
    assert all(a > b for a, b in zip(values, values[1:])), values
    assert values[0] > 0.3
    assert float(loss(_onehot_logits(target, scale=20.0), target)) < 1e-3
    # and one gradient step from random logits lowers it
    logits = base.clone().requires_grad_(True)
    before = loss(logits, target)
    before.backward()
    with torch.no_grad():
        after = loss(logits - 50.0 * logits.grad, target)
    assert float(after) < float(before.detach())


def test_dice_ce_is_weighted_sum_of_smp_dice_and_cross_entropy():
    from segmentation_models_pytorch.losses import DiceLoss

    target = _target(2)
    logits = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    dice = float(DiceLoss("multiclass")(logits, target))
    ce = float(F.cross_entropy(logits, target))
    assert float(segmentation_loss("dice_ce")(logits, target)) == pytest.approx(dice + ce, rel=1e-5)
    assert float(segmentation_loss("dice_ce", dice_weight=0.25, ce_weight=2.0)(logits, target)) == pytest.approx(
        0.25 * dice + 2.0 * ce, rel=1e-5)
    assert float(segmentation_loss("dice_ce", dice_weight=0.0)(logits, target)) == pytest.approx(ce, rel=1e-5)
    # confident correct logits: the cross-entropy part alone is small
    assert float(segmentation_loss("dice_ce", dice_weight=0.0)(_onehot_logits(target, scale=10.0), target)) < 1e-3
    # (B, 1, H, W) targets are accepted
    assert float(segmentation_loss("dice_ce")(logits, target[:, None])) == pytest.approx(dice + ce, rel=1e-5)


@pytest.mark.parametrize("name", LOSSES)
def test_classes_absent_from_batch_add_zero_region_loss(name):
    # smp: a class without target pixels contributes 0 (but still counts in the mean over C)
    target = torch.zeros(2, 8, 8, dtype=torch.long)
    target[:, 2:5, 2:5] = 1                               # classes 2 and 3 absent
    region = segmentation_loss("dice_ce", dice_weight=1.0, ce_weight=0.0) if name == "dice_ce" else \
        segmentation_loss(name)
    assert float(region(_onehot_logits(target, scale=20.0), target)) < 1e-3
    half = torch.zeros(2, 4, 8, 8)
    half[:, :2] = 5.0                                      # 50/50 between classes 0 and 1 everywhere
    value = float(region(half, target))
    p = 0.5 / (1 + math.exp(-5))                       # softmax mass on classes 0 and 1
    n, n1 = target.numel(), int((target == 1).sum())
    if name == "dice_ce":
        per_class = [1 - 2 * p * (n - n1) / (p * n + n - n1), 1 - 2 * p * n1 / (p * n + n1)]
    else:
        per_class = [1 - p * (n - n1) / (p * n + n - n1 - p * (n - n1)), 1 - p * n1 / (p * n + n1 - p * n1)]
    assert value == pytest.approx(sum(per_class) / 4, rel=1e-4)


def test_loss_bad_arguments():
    with pytest.raises(ParameterError, match="dice_ce.*jaccard"):
        segmentation_loss("focal")
    with pytest.raises(ParameterError, match="dice_weight"):
        segmentation_loss("jaccard", dice_weight=1.0)
    with pytest.raises(ParameterError, match="num_classes"):
        segmentation_loss("dice_ce", num_classes=1)
    with pytest.raises(ParameterError, match="ce_weight"):
        segmentation_loss("dice_ce", ce_weight=-1)
    with pytest.raises(ParameterError, match="both 0"):
        segmentation_loss("dice_ce", dice_weight=0, ce_weight=0)
    loss = segmentation_loss("jaccard", num_classes=4)
    with pytest.raises(ParameterError, match="num_classes=4"):
        loss(torch.zeros(1, 3, 8, 8), torch.zeros(1, 8, 8, dtype=torch.long))
    with pytest.raises(ParameterError, match="target"):
        loss(torch.zeros(1, 4, 8, 8), torch.zeros(1, 8, 7, dtype=torch.long))
    with pytest.raises(ParameterError, match="integer"):
        loss(torch.zeros(1, 4, 8, 8), torch.zeros(1, 8, 8))
