"""Figures for the notebooks: slices with label overlays, galleries, augmentation views.

Slices are stored in NIfTI voxel order (X, Y); they are shown as ``imshow(slice.T,
origin="lower")`` so that anatomy appears in the usual orientation.
"""

from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch

LABEL_COLOURS = ["#e41a1c", "#4daf4a", "#377eb8", "#ff7f00", "#984ea3", "#ffff33", "#a65628", "#f781bf"]


def label_cmap(n: int) -> ListedColormap:
    return ListedColormap(LABEL_COLOURS[: max(1, n)])


def show_slice(ax, image: np.ndarray, label: np.ndarray | None = None, *, label_names: dict | None = None,
               alpha: float = 0.4, title: str | None = None, legend: bool = False, vmin=None, vmax=None) -> None:
    """Draw a (X, Y) slice on ``ax`` with an optional label overlay (background transparent)."""
    image = np.asarray(image, dtype=np.float32)
    if vmin is None:
        vmin, vmax = np.percentile(image, (1, 99)) if image.size else (0, 1)
    ax.imshow(image.T, origin="lower", cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
    if label is not None and np.any(label):
        n = int(max(label.max(), max(label_names or {0: 0})))
        masked = np.ma.masked_where(label.T == 0, label.T)
        ax.imshow(masked, origin="lower", cmap=label_cmap(n), vmin=0.5, vmax=n + 0.5, alpha=alpha,
                  interpolation="nearest")
    if legend and label_names:
        handles = [Patch(color=LABEL_COLOURS[(k - 1) % len(LABEL_COLOURS)], label=v)
                   for k, v in sorted(label_names.items()) if k > 0]
        ax.legend(handles=handles, loc="lower right", fontsize=7, framealpha=0.6)
    if title:
        ax.set_title(title, fontsize=9)
    ax.set_axis_off()


def volume_panel(image: np.ndarray, label: np.ndarray | None, z: int, *, label_names=None, overlay=True,
                 title: str = "", raw: np.ndarray | None = None):
    """Slice ``z`` of a volume with overlay, next to the volume's intensity histogram."""
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(9, 4), gridspec_kw={"width_ratios": [1.1, 1]})
    show_slice(ax0, image[:, :, z], label[:, :, z] if (label is not None and overlay) else None,
               label_names=label_names, legend=overlay and label is not None, title=title)
    values = (raw if raw is not None else image).ravel()
    ax1.hist(values, bins=100, color="0.4")
    if label is not None:
        lv = label.ravel()
        src = (raw if raw is not None else image).ravel()
        for k, name in sorted((label_names or {}).items()):
            if k > 0 and np.any(lv == k):
                ax1.hist(src[lv == k], bins=100, histtype="step", lw=1.5,
                         color=LABEL_COLOURS[(k - 1) % len(LABEL_COLOURS)], label=name)
        ax1.legend(fontsize=8)
    ax1.set_yscale("log")
    ax1.set_title("intensity histogram (whole volume)", fontsize=9)
    ax1.set_xlabel("intensity (as stored)")
    fig.tight_layout()
    return fig


def slice_strip(image: np.ndarray, label: np.ndarray | None, *, label_names=None, n: int = 6, title: str = ""):
    """``n`` slices spread from the first to the last z (e.g. base → apex of a heart)."""
    zs = np.unique(np.linspace(0, image.shape[2] - 1, n).round().astype(int))
    fig, axes = plt.subplots(1, len(zs), figsize=(2.2 * len(zs), 2.4), squeeze=False)
    for ax, z in zip(axes[0], zs):
        show_slice(ax, image[:, :, z], None if label is None else label[:, :, z], label_names=label_names,
                   title=f"z={z}")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def gallery(rows: Sequence[tuple[str, np.ndarray, np.ndarray | None]], ncols: int = 4, label_names=None):
    """A grid of preprocessed slices: ``rows`` of (title, image (S, S), label or None)."""
    n = len(rows)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.4 * ncols, 2.5 * nrows), squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for ax, (title, img, lab) in zip(axes.ravel(), rows):
        show_slice(ax, img, lab, title=title)
    fig.tight_layout()
    return fig


def view_pairs(images, view1, view2, n: int = 4, title: str = ""):
    """Original slice and its two augmented views (tensors (B, 1, H, W) or arrays)."""
    images, view1, view2 = (np.asarray(t.detach().cpu() if hasattr(t, "detach") else t) for t in
                            (images, view1, view2))
    n = min(n, len(images))
    fig, axes = plt.subplots(n, 3, figsize=(6.6, 2.2 * n), squeeze=False)
    for i in range(n):
        for j, (arr, name) in enumerate(((images, "slice"), (view1, "view 1"), (view2, "view 2"))):
            show_slice(axes[i, j], arr[i, 0], title=name if i == 0 else None)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def history_figure(history, panels: Sequence[tuple[str, str]], title: str = ""):
    """Curves from a run's ``history.csv`` DataFrame: ``panels`` = [(column, y label), ...].

    Rows where a column is empty (e.g. evaluation-only metrics) are skipped per panel.
    """
    panels = [(c, lab) for c, lab in panels if c in history.columns and history[c].notna().any()]
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(4.2 * max(len(panels), 1), 3.2), squeeze=False)
    for ax, (col, lab) in zip(axes[0], panels):
        d = history[["step", col]].dropna()
        ax.plot(d["step"], d[col], marker="o" if len(d) < 30 else None, ms=3)
        ax.set_xlabel("step")
        ax.set_ylabel(lab)
        ax.grid(alpha=0.3)
    if not panels:
        axes[0, 0].text(0.5, 0.5, "no history yet", ha="center", va="center")
        axes[0, 0].set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def prediction_figure(image: np.ndarray, gt: np.ndarray, pred: np.ndarray, *, label_names=None, n: int = 4,
                      title: str = ""):
    """Rows of slices (first → last z): image, ground truth overlay, prediction overlay."""
    zs = np.unique(np.linspace(0, image.shape[2] - 1, n).round().astype(int))
    fig, axes = plt.subplots(3, len(zs), figsize=(2.3 * len(zs), 7), squeeze=False)
    for j, z in enumerate(zs):
        show_slice(axes[0, j], image[:, :, z], title=f"z={z}")
        show_slice(axes[1, j], image[:, :, z], gt[:, :, z], label_names=label_names,
                   title="ground truth" if j == 0 else None, legend=j == len(zs) - 1)
        show_slice(axes[2, j], image[:, :, z], pred[:, :, z], label_names=label_names,
                   title="prediction" if j == 0 else None)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
