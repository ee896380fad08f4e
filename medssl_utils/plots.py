"""Figures and tables for the notebooks: slices with label overlays, galleries, augmentation
views, training curves, metric tables.

Slices are stored in NIfTI voxel order (X, Y); they are shown as ``imshow(slice.T,
origin="lower")`` so that anatomy appears in the usual orientation. Functions that return a
figure for a notebook cell use pyplot; the ones a widget calls from its own thread
(:func:`slice_rgb`, :func:`png_bytes`, :func:`histogram_figure`, :func:`figure_png`) never do,
because pyplot's global state is not thread-safe.
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


def slice_rgb(image: np.ndarray, label: np.ndarray | None = None, *, vmin: float, vmax: float,
              alpha: float = 0.4, scale: int = 1) -> np.ndarray:
    """A (X, Y) slice as an RGB uint8 array oriented as :func:`show_slice` draws it.

    Grey levels map ``vmin..vmax`` to 0..255; label ``k > 0`` is blended with colour
    ``LABEL_COLOURS[k - 1]`` at ``alpha``; every pixel becomes ``scale × scale`` pixels. Pure
    numpy: safe to call from any thread (no matplotlib state is touched).
    """
    grey = np.asarray(image, dtype=np.float32).T[::-1]
    grey = np.clip((grey - vmin) / max(float(vmax - vmin), 1e-12), 0.0, 1.0) * 255.0
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    if label is not None:
        lab = np.asarray(label).T[::-1]
        colours = np.array([[int(c[i:i + 2], 16) for i in (1, 3, 5)] for c in LABEL_COLOURS], np.float32)
        on = lab > 0
        rgb[on] = (1 - alpha) * rgb[on] + alpha * colours[(lab[on].astype(np.int64) - 1) % len(LABEL_COLOURS)]
    rgb = rgb.round().astype(np.uint8)
    if scale > 1:
        rgb = rgb.repeat(scale, axis=0).repeat(scale, axis=1)
    return rgb


def png_bytes(rgb: np.ndarray) -> bytes:
    """Encode an RGB uint8 array as PNG (no figure involved; thread-safe)."""
    import io

    from matplotlib.image import imsave

    buf = io.BytesIO()
    imsave(buf, rgb, format="png")
    return buf.getvalue()


def histogram_figure(image: np.ndarray, label: np.ndarray | None = None, *, label_names: dict | None = None,
                     title: str = "intensity histogram (whole volume)", figsize=(4.6, 3.4), dpi: int = 80):
    """Histogram of a volume's stored intensities, and per structure when a label map is given.

    Returns a ``matplotlib.figure.Figure`` made without pyplot (no global figure registry), so it
    can be drawn from a widget's thread; counts are on a log axis labelled in plain text.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import LogFormatter, NullFormatter

    fig = Figure(figsize=figsize, dpi=dpi)
    ax = fig.add_subplot()
    values = np.asarray(image, dtype=np.float32).ravel()
    counts, edges = np.histogram(values, bins=100)
    ax.stairs(counts, edges, fill=True, color="0.6", label="all voxels")
    if label is not None:
        lv = np.asarray(label).ravel()
        for k, name in sorted((label_names or {}).items()):
            if k > 0 and np.any(lv == k):
                ax.stairs(np.histogram(values[lv == k], bins=edges)[0], edges, lw=1.5,
                          color=LABEL_COLOURS[(k - 1) % len(LABEL_COLOURS)], label=name)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(LogFormatter())  # plain-text ticks: no mathtext (not thread-safe)
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("intensity (as stored in the file)")
    ax.set_ylabel("voxels (log scale)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def figure_png(fig, dpi: float | None = None, tight: bool = False) -> bytes:
    """PNG bytes of a (pyplot-free) figure, at ``dpi`` (matplotlib's default when None); ``tight``
    crops to the drawn content so nothing at the edges is clipped (the report's figures)."""
    import io

    buf = io.BytesIO()
    options = {"dpi": dpi} if dpi is not None else {}
    if tight:
        options["bbox_inches"] = "tight"
    fig.savefig(buf, format="png", **options)
    return buf.getvalue()


def legend_html(label_names: dict) -> str:
    """Colour swatches for the label overlay, as HTML (used under a widget's image)."""
    import html

    return " ".join(f'<span style="color:{LABEL_COLOURS[(k - 1) % len(LABEL_COLOURS)]}">&#9632;</span> '
                    f"{html.escape(str(v))}" for k, v in sorted(label_names.items()) if k > 0)


def normalisation_histograms(stored: np.ndarray, normalised: np.ndarray, *, title: str = ""):
    """Two histograms side by side: intensities as stored and after normalisation + resizing."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3))
    for ax, values, name, unit in ((axes[0], stored, "stored intensities (one volume)", "intensity as stored"),
                                   (axes[1], normalised, "after normalisation + resizing",
                                    "normalised intensity (z-score for MR, window → [−1, 1] for CT)")):
        ax.hist(np.asarray(values, np.float32).ravel(), bins=100, color="0.4")
        ax.set_yscale("log")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(unit)
        ax.set_ylabel("voxels (log scale)")
    if title:
        fig.suptitle(title, fontsize=10)
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
    """Rows of slices (first → last z): image, ground truth overlay, prediction overlay.

    Each row is named on its left ("image", "ground truth", "prediction"); columns by slice z.
    """
    zs = np.unique(np.linspace(0, image.shape[2] - 1, n).round().astype(int))
    fig, axes = plt.subplots(3, len(zs), figsize=(2.3 * len(zs) + 0.4, 7), squeeze=False)
    for j, z in enumerate(zs):
        show_slice(axes[0, j], image[:, :, z], title=f"z={z}")
        show_slice(axes[1, j], image[:, :, z], gt[:, :, z], label_names=label_names, legend=j == len(zs) - 1)
        show_slice(axes[2, j], image[:, :, z], pred[:, :, z], label_names=label_names)
    for row, name in enumerate(("image", "ground truth", "prediction")):
        axes[row, 0].text(-0.06, 0.5, name, transform=axes[row, 0].transAxes, rotation=90, ha="right",
                          va="center", fontsize=10)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def domain_tiles(volume_sets, image_size: int, *, per_domain: int = 2, seed: int = 0) -> list:
    """Tiles for :func:`gallery`: ``per_domain`` slices from the middle of one volume per dataset,
    preprocessed as training sees them (normalised, padded, resized to ``image_size``).

    Only the volume shown is decoded, and in memory: no slice cache is built, so a gallery of
    large datasets opens in seconds. A labelled volume is chosen when the dataset has one.
    """
    from medssl_utils.data import Preprocessing, normalise_volume  # the data layer (torch): only to draw a volume
    from medssl_utils.data.slicing import resize_volume

    rng = np.random.default_rng(seed)
    prep = Preprocessing(image_size=image_size)
    tiles = []
    for vs in volume_sets:
        pool = [v for v in vs.volumes if v.has_label] or vs.volumes
        vol = pool[int(rng.integers(len(pool)))]
        image, label = vol.load()
        img, lab = resize_volume(normalise_volume(image, vs.modality, prep, where=vol.volume_id), label, image_size)
        n = img.shape[0]
        middle = [z for z in range(n) if 0.3 < z / max(n - 1, 1) < 0.7] or list(range(n))
        for z in sorted(rng.choice(middle, size=min(per_domain, len(middle)), replace=False)):
            tiles.append((f"{vs.domain} ({vs.group})", img[z], None if lab is None else lab[z]))
    return tiles


def domain_table(volume_sets):
    """What multi-domain pretraining would pool: per dataset its task and group tags, volumes,
    labelled volumes and 2D slices (counted from file headers; nothing is decoded)."""
    import pandas as pd

    return pd.DataFrame([{"dataset": vs.spec, "task": vs.task, "group": vs.group, "modality": vs.modality,
                          "volumes": len(vs.volumes), "labelled volumes": sum(v.has_label for v in vs.volumes),
                          "slices": sum(int(v.shape[2]) for v in vs.volumes)} for vs in volume_sets]
                        ).set_index("dataset")


def augmentation_figure(images, masks, aug_images, aug_masks, *, label_names=None):
    """Slices with their masks (top row) and the same after joint image/mask augmentation (bottom)."""
    images, masks, aug_images, aug_masks = (np.asarray(t.detach().cpu() if hasattr(t, "detach") else t)
                                            for t in (images, masks, aug_images, aug_masks))
    n = len(images)
    fig, axes = plt.subplots(2, n, figsize=(2.4 * n, 5), squeeze=False)
    for i in range(n):
        show_slice(axes[0, i], images[i, 0], masks[i], label_names=label_names, title="slice + mask")
        show_slice(axes[1, i], aug_images[i, 0], aug_masks[i], label_names=label_names, title="augmented")
    fig.tight_layout()
    return fig


def structure_table(result: dict):
    """A fine-tuning result's per-structure test metrics: means to 3 decimals, counts as integers."""
    import pandas as pd

    table = pd.DataFrame(result["test"]["per_label"]).T
    table["slice_IoU"] = pd.Series(result["test"]["slice_iou"])
    counts = [c for c in ("n", "n_missed", "n_undefined_hd") if c in table]
    values = [c for c in table.columns if c not in counts]
    table[values] = table[values].astype(float).round(3)
    table[counts] = table[counts].astype("Int64")
    table.index.name = "structure"
    return table


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 12 s``, ``1 h 05 min``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def run_summary(result: dict) -> str:
    """One line about a finished run: lineage, steps, time over all its sessions, device."""
    t = result.get("timings") or {}
    speed = f", {t['images_per_s']} images/s while training" if t.get("images_per_s") else ""
    resumed = (f" (resumed at step {t['resumed_at_step']}; the time counts every session)"
               if t.get("resumed_at_step") else "")
    return (f"{result['status']}: {result['lineage_name']} — {result['steps']} steps ({result['epochs']:.1f} epochs), "
            f"{duration(t.get('total_s', 0))} on {result.get('device')}{speed}{resumed}")


def probe_summary(result: dict) -> str:
    """What a run's dense probe and encoder shift say, in two lines (pretraining or fine-tuning result)."""
    lines = []
    probe = result.get("probe")
    if probe:
        first = probe.get("first") or {}
        sd = probe.get("sd_over_seeds")
        spread = f" (SD {sd:.3f} over {len(probe.get('per_seed', []))} probe seeds)" if sd is not None else ""
        start = f"{first['dense_dice']:.3f} at step 0 → " if first.get("dense_dice") is not None else ""
        lines.append(f"dense probe (validation Dice of a linear classifier on the frozen encoder, "
                     f"{probe.get('train_slices')} labelled training slices): {start}{probe['dense_dice']:.3f} "
                     f"at step {probe.get('step')}{spread}")
    init = result.get("init_probe")
    if init:
        lines.append(f"dense probe of the starting encoder: validation Dice {init['dense_dice']:.3f} "
                     f"({init['train_slices']} labelled training slices, seed {init['seed']})")
    shift = result.get("encoder_shift")
    if shift is not None:
        lines.append(f"encoder shift from the start (median over convolutions of |W - W0| / |W0|): {shift:.3f}")
    knn = result.get("knn") or {}
    if knn.get("last") is not None:
        lines.append(f"k-NN ({knn.get('by')}): {knn.get('first')} → {knn['last']} "
                     f"(chance: majority {knn.get('chance_majority'):.3f}, class frequencies "
                     f"{knn.get('chance_frequency'):.3f})")
    return "\n".join(lines) or "no probe recorded"
