"""The report's figures: each ``fig_*`` takes tables of :class:`~medssl_utils.results.Analysis` and returns a
pyplot-free :class:`~matplotlib.figure.Figure`, or ``None`` when there is nothing to draw; the shared
style helpers (palette, panels, legends, number formats) sit above them."""

from __future__ import annotations

import math
import textwrap

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter

from medssl_utils import results as R
from medssl_utils.errors import check_choice


MAX_PANELS = 12


# =============================================================================== small helpers
def _palette(strategies) -> dict[str, tuple]:
    """Stable strategy → colour mapping (sorted names)."""
    names = sorted(set(strategies))
    colours = sns.color_palette("tab10" if len(names) <= 10 else "husl", max(len(names), 1))
    return dict(zip(names, colours))


def _figure(n_panels: int, ncols: int = 3, size=(4.2, 3.3), nrows: int | None = None):
    ncols = max(1, min(ncols, n_panels))
    nrows = nrows or math.ceil(n_panels / ncols)
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows + 0.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes


def _title(fig: Figure, title: str, data: str) -> None:
    """Title plus a wrapped line saying what data is shown and how many seeds stand behind it."""
    width = int(fig.get_figwidth() * 12)  # characters per line at 9 pt
    fig.suptitle("\n".join(textwrap.wrap(title, width) + textwrap.wrap(data, width)), fontsize=9)


def seeds_label(counts) -> str:
    """"n = 3" or "n = 1–3" seeds from a collection of per-point counts."""
    counts = [int(c) for c in counts if pd.notna(c)]
    if not counts:
        return "n = 0"
    lo, hi = min(counts), max(counts)
    return f"n = {lo}" if lo == hi else f"n = {lo}–{hi}"


def budget_order(table: pd.DataFrame) -> list[str]:
    return list(R.sorted_budgets(table)["budget"])


def split_panels(table: pd.DataFrame, keys: list[str], limit: int = MAX_PANELS) -> list[tuple]:
    """Distinct ``keys`` combinations (``keys[0]`` is the dataset) in display order, budgets
    increasing; per dataset at most ``limit``, spread evenly (smallest and largest kept)."""
    order = table[keys].drop_duplicates()
    if "budget_value" in keys:
        order = order.sort_values(keys, ascending=[k != "budget_kind" for k in keys])
    combos = []
    for _, group in order.groupby(keys[0], sort=True):
        rows = [tuple(r) for r in group.itertuples(index=False)]
        if len(rows) > limit:  # noted on the figure by _shown
            rows = [rows[i] for i in np.unique(np.linspace(0, len(rows) - 1, limit).round().astype(int))]
        combos += rows
    return combos


def _shown(panels: list, table: pd.DataFrame, keys: list[str]) -> str:
    """" Showing k of n panels." when :func:`split_panels` left some out, else ""."""
    total = len(table[keys].drop_duplicates())
    return "" if len(panels) == total else f" Showing {len(panels)} of {total} budgets, evenly spaced per dataset."


def _grouped_bars(ax, table: pd.DataFrame, x: str, y: str, yerr: str, x_order, hue_order, palette) -> dict:
    """Bars of ``y`` ± ``yerr`` per ``x`` category, dodged by strategy (one ``bar`` call per
    strategy); returns ``{(x, strategy): (centre, top)}`` for annotations."""
    width = 0.8 / max(len(hue_order), 1)
    slot = {cat: i for i, cat in enumerate(x_order)}
    where = {}
    for j, strategy in enumerate(hue_order):
        sub = table[(table["strategy"] == strategy) & table[x].isin(slot)].drop_duplicates(x)
        if not len(sub):
            continue
        centres = sub[x].map(slot).to_numpy(float) - 0.4 + width * (j + 0.5)
        height, err = sub[y].to_numpy(float), sub[yerr].to_numpy(float)
        ax.bar(centres, np.nan_to_num(height), width * 0.92, color=palette[strategy],
               yerr=np.where(np.isfinite(height), np.nan_to_num(err), 0), capsize=2, error_kw={"lw": 0.8})
        tops = np.nan_to_num(height) + np.nan_to_num(err)
        where.update({(cat, strategy): (c, t) for cat, c, t in zip(sub[x], centres, tops)})
    ax.set_xticks(range(len(x_order)), x_order, fontsize=8)
    return where


def _log_axes(ax, which: str = "xy") -> None:
    """Log scale on ``which`` axes, labelled with plain numbers (1, 10, 0.2), not mathtext powers;
    intermediate ticks are labelled when the axis spans about a decade or less."""
    for name in which:
        getattr(ax, f"set_{name}scale")("log")
        axis = getattr(ax, f"{name}axis")
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(FuncFormatter(lambda v, _, axis=axis: _minor_label(v, axis)))


def _minor_label(value: float, axis) -> str:
    """Label 2, 3, 5 (× 10^k) when the axis spans ≤ 1.3 decades, every minor tick below 0.5."""
    lo, hi = sorted(axis.get_view_interval())
    if value <= 0 or lo <= 0:
        return ""
    decades = math.log10(hi / lo)
    mantissa = round(value / 10 ** math.floor(math.log10(value)))
    return f"{value:g}" if decades <= 0.5 or (decades <= 1.3 and mantissa in (2, 3, 5)) else ""


def _legend(fig: Figure, palette: dict, labels: dict | None = None, **style) -> None:
    """One legend for the whole figure, below the panels; ``style``: Line2D keywords (default: a
    thick bar-like line)."""
    style = style or {"lw": 6}
    handles = [Line2D([], [], color=c, **style) for c in palette.values()]
    names = [labels.get(s, s) if labels else s for s in palette]
    # as many columns as fit the figure's width (about 6 px per character at fontsize 8, 100 dpi)
    fit = int(fig.get_figwidth() * 100 / 6 // (max(len(n) for n in names) + 5)) if names else 1
    fig.legend(handles, names, loc="outside lower center", ncols=max(1, min(len(names), 3, fit)), fontsize=8,
               frameon=False)


def fmt(value, digits: int = 3, scale: float = 1.0) -> str:
    return "–" if value is None or pd.isna(value) else f"{round(scale * value, digits) + 0.0:.{digits}f}"


def pm(mean, std, n=None, digits: int = 3, scale: float = 1.0) -> str:
    """"mean ± SD (n=k)"; the SD is left out when undefined (a single value), all of it when the
    mean is."""
    if mean is None or pd.isna(mean):
        return "–"
    text = fmt(mean, digits, scale) + ("" if std is None or pd.isna(std) else f" ± {fmt(std, digits, scale)}")
    return text if n is None else f"{text} (n={int(n)})"


# =============================================================================== figures
def fig_convergence(curves: pd.DataFrame, steps: pd.DataFrame | None = None) -> Figure | None:
    """Validation Dice vs fine-tuning step: one panel per (dataset, budget), one line per
    strategy (mean over seeds, band ±1 SD), dashed: the convergence threshold of ``steps``.

    Args:
        curves: :func:`~medssl_utils.results.validation_curves` (``Analysis.curves``).
        steps: :func:`~medssl_utils.results.steps_summary` (``Analysis.steps``), optional.
    """
    if curves is None or not len(curves):
        return None
    panels = split_panels(curves, R.BUDGET)
    palette = _palette(curves["strategy"])
    fig, axes = _figure(len(panels))
    for ax, key in zip(axes, panels):
        sub = curves[(curves[R.BUDGET] == pd.Series(key, index=R.BUDGET)).all(axis=1)]
        stats = sub.groupby(["strategy", "step"])["val_dice"].agg(["mean", "std"]).reset_index()
        for strategy, g in stats.groupby("strategy"):
            ax.plot(g["step"], g["mean"], color=palette[strategy], lw=1.3)
            ax.fill_between(g["step"], g["mean"] - g["std"].fillna(0), g["mean"] + g["std"].fillna(0),
                            color=palette[strategy], alpha=0.2, lw=0)
        if steps is not None and len(steps):
            thr = steps[(steps[R.BUDGET] == pd.Series(key, index=R.BUDGET)).all(axis=1)]["target_dice"]
            if len(thr) and pd.notna(thr.iloc[0]):
                ax.axhline(thr.iloc[0], ls="--", lw=0.8, color="0.3")
        n = sub.groupby("strategy")["run_id"].nunique()
        ax.set_title(f"{key[0]} · {key[3]} · {seeds_label(n)} seeds/line", fontsize=8)
        ax.set_xlabel("fine-tuning step")
        ax.set_ylabel("validation Dice")
    _legend(fig, palette, lw=1.5)
    n_runs = curves["run_id"].nunique()
    _title(fig, "Convergence: validation Dice during fine-tuning",
           f"{n_runs} complete fine-tuning runs on {', '.join(sorted(curves['dataset'].unique()))}; "
           "val Dice = mean foreground Dice on the validation patients' slices; line = mean over seeds, "
           "band = ±1 SD; dashed = convergence threshold (target × best final Dice at that budget)."
           + _shown(panels, curves, R.BUDGET))
    return fig


def fig_steps_to_target(steps: pd.DataFrame) -> Figure | None:
    """Steps to reach the threshold per budget and strategy (bar = mean over the seeds that
    reached it, whisker ±1 SD), labelled with the paired speed-up vs the reference strategy and
    ``reached/runs``; one panel per dataset."""
    if steps is None or not len(steps) or not steps["n_reached"].sum():
        return None
    datasets = sorted(steps["dataset"].unique())
    palette = _palette(steps["strategy"])
    n_bars = steps.groupby("dataset").size().max()
    fig, axes = _figure(len(datasets), ncols=1, size=(float(np.clip(2 + 0.3 * n_bars, 6, 15)), 3.4))
    for ax, dataset in zip(axes, datasets):
        sub = steps[steps["dataset"] == dataset]
        order = budget_order(sub)
        where = _grouped_bars(ax, sub, "budget", "steps_mean", "steps_std", order, sorted(sub["strategy"].unique()),
                              palette)
        for row in sub.itertuples(index=False):
            if (row.budget, row.strategy) not in where:
                continue
            x, top = where[(row.budget, row.strategy)]
            label = f"{row.n_reached}/{row.n_runs}"
            if pd.notna(row.speedup_mean):
                label = f"×{row.speedup_mean:.1f}\n" + label
            ax.annotate(label, (x, top), xytext=(0, 2), textcoords="offset points", ha="center", va="bottom",
                        fontsize=6)
        ax.margins(y=0.25)
        ref = sub["reference"].dropna()
        ax.set_title(f"{dataset} · speed-up reference: {ref.iloc[0] if len(ref) else 'none'}", fontsize=9)
        ax.set_ylabel("steps to target")
        ax.set_xlabel("label budget")
    _legend(fig, palette)
    _title(fig, "Fine-tuning steps to reach the convergence threshold",
           f"{int(steps['n_runs'].sum())} runs; bar = mean over seeds that reached the threshold, whisker = ±1 SD; "
           "label: ×speed-up vs the panel's reference strategy (mean over paired seeds) and seeds reached/runs "
           f"({seeds_label(steps['n_runs'])} per bar).")
    return fig


def fig_speedup_vs_epochs(epochs: pd.DataFrame) -> Figure | None:
    """Speed-up vs the reference (or steps to target when there is no reference) against the
    number of domain pretraining epochs, one line per family, one panel per (dataset, budget)."""
    if epochs is None or not len(epochs):
        return None
    use_speedup = epochs["speedup_mean"].notna().any()
    y, yerr = ("speedup_mean", "speedup_std") if use_speedup else ("steps_mean", "steps_std")
    n_col = "n_pairs" if use_speedup else "n_reached"
    panels = split_panels(epochs, R.BUDGET)
    palette = _palette(epochs["pretrain_family"])
    fig, axes = _figure(len(panels))
    for ax, key in zip(axes, panels):
        sub = epochs[(epochs[R.BUDGET] == pd.Series(key, index=R.BUDGET)).all(axis=1)]
        for family, g in sub.groupby("pretrain_family"):
            ax.errorbar(g["pretrain_epochs"], g[y], yerr=g[yerr].fillna(0), color=palette[family], marker="o",
                        ms=4, capsize=2, lw=1.2)
            for row in g.itertuples(index=False):
                ax.annotate(f"n={getattr(row, n_col)}", (row.pretrain_epochs, getattr(row, y)), xytext=(3, 3),
                            textcoords="offset points", fontsize=6)
        if (epochs["pretrain_epochs"] > 0).all():
            _log_axes(ax, "x")
        if use_speedup:
            ax.axhline(1.0, ls="--", lw=0.8, color="0.3")
        ax.set_title(f"{key[0]} · {key[3]}", fontsize=8)
        ax.set_xlabel("domain pretraining epochs")
        ax.set_ylabel(f"speed-up vs {sub['reference'].iloc[0]}" if use_speedup else "steps to target")
    _legend(fig, palette, marker="o", lw=1.2)
    _title(fig, "Convergence speed-up vs number of domain pretraining epochs",
           (f"{int(epochs['n_runs'].sum())} fine-tuning runs; point = mean over paired seeds of "
           f"steps(reference) / steps(strategy), whisker = ±1 SD, n = paired seeds per point; dashed: no speed-up."
           if use_speedup else f"{int(epochs['n_runs'].sum())} fine-tuning runs; no reference strategy: "
           "points = mean steps to target over seeds that reached it, ±1 SD.") + _shown(panels, epochs, R.BUDGET))
    return fig


def fig_error_vs_slices(errors: pd.DataFrame, fits: pd.DataFrame | None = None, metric: str = "dice") -> Figure | None:
    """Test error vs labelled slices on log–log axes, per strategy (mean ± SD over seeds) with
    the fitted power law ``err = a · n^(−b)`` dashed; one panel per dataset.

    Args:
        errors: :func:`~medssl_utils.results.error_vs_slices`; fits: :func:`~medssl_utils.results.power_law_fits`.
        metric: ``"dice"`` (1 − test Dice) or ``"iou"`` (1 − per-slice IoU).
    """
    check_choice("metric", metric, ("dice", "iou"))
    col, sd = f"err_{metric}_mean", f"err_{metric}_std"
    if errors is None or not len(errors):
        return None
    data = errors[(errors[col] > 0) & (errors["labelled_slices"] > 0)]
    if not len(data):
        return None
    datasets = sorted(data["dataset"].unique())
    palette = _palette(data["strategy"])
    fig, axes = _figure(len(datasets), ncols=2, size=(5.2, 4.0))
    labels = {}
    for ax, dataset in zip(axes, datasets):
        for strategy, g in data[data["dataset"] == dataset].groupby("strategy"):
            g = g.sort_values("labelled_slices")
            lower = np.minimum(g[sd].fillna(0), 0.95 * g[col])  # keep bars above 0 on a log axis
            ax.errorbar(g["labelled_slices"], g[col], yerr=[lower, g[sd].fillna(0)], color=palette[strategy],
                        marker="o", ms=4, lw=0, elinewidth=1, capsize=2)
            fit = _fit_row(fits, dataset, strategy, metric)
            if fit is not None:
                xs = np.geomspace(g["labelled_slices"].min(), g["labelled_slices"].max(), 50)
                ax.plot(xs, fit["a"] * xs ** (-fit["b"]), ls="--", lw=1.1, color=palette[strategy])
                r2 = "" if pd.isna(fit["r2"]) else f", R²={fit['r2']:.2f}"
                labels[strategy] = f"{strategy}: b={fit['b']:.2f}{r2}"
        _log_axes(ax)
        ax.set_title(f"{dataset} · {seeds_label(data[data['dataset'] == dataset]['n'])} seeds/point", fontsize=8)
        ax.set_xlabel("labelled slices")
        ax.set_ylabel("1 − test Dice" if metric == "dice" else "1 − test IoU (per slice)")
    _legend(fig, palette, labels, marker="o", ls="--")
    what = ("1 − mean per-volume test Dice over foreground structures" if metric == "dice"
            else "1 − mean per-slice test IoU over foreground structures")
    _title(fig, "Error vs number of labelled slices (log–log)",
           f"{int(data['n'].sum())} fine-tuning runs; error = {what}; point = mean over seeds, whisker = ±1 SD; "
           "dashed = least-squares power law err = a·n^(−b) fitted to the means in log–log space.")
    return fig


def _fit_row(fits, dataset, strategy, metric):
    if fits is None or not len(fits):
        return None
    hit = fits[(fits["dataset"] == dataset) & (fits["strategy"] == strategy) & (fits["metric"] == metric)]
    return None if not len(hit) else hit.iloc[0]


def fig_per_structure(per_structure: pd.DataFrame, max_budgets: int = 3) -> Figure | None:
    """Per-structure test Dice and HD95 in mm, bars = mean over seeds ± SD, dodged by strategy;
    per dataset two rows (Dice, HD95) and one column per budget, at most ``max_budgets``
    (smallest and largest kept, spread evenly)."""
    if per_structure is None or not len(per_structure):
        return None
    panels = split_panels(per_structure, R.BUDGET, limit=max_budgets)
    datasets = list(dict.fromkeys(key[0] for key in panels))
    ncols = max(sum(key[0] == d for key in panels) for d in datasets)
    palette = _palette(per_structure["strategy"])
    n_bars = per_structure.groupby(R.BUDGET).size().max()
    fig, axes = _figure(2 * len(datasets) * ncols, ncols=ncols, nrows=2 * len(datasets),
                        size=(float(np.clip(1 + 0.25 * n_bars, 3.5, 7)), 2.6))
    for ax in axes:
        ax.set_visible(False)
    for i, dataset in enumerate(datasets):
        for j, key in enumerate(k for k in panels if k[0] == dataset):
            sub = per_structure[(per_structure[R.BUDGET] == pd.Series(key, index=R.BUDGET)).all(axis=1)]
            names = list(sub.sort_values(["label", "name"])["name"].drop_duplicates())
            for r, (y, sd, label) in enumerate((("dice_mean", "dice_std", "Dice (per volume)"),
                                               ("hd95_mean", "hd95_std", "HD95 (mm)"))):
                ax = axes[(2 * i + r) * ncols + j]
                ax.set_visible(True)
                _grouped_bars(ax, sub, "name", y, sd, names, sorted(sub["strategy"].unique()), palette)
                ax.set_ylabel(label)
                ax.set_title(f"{dataset} · {key[3]} · {seeds_label(sub['n_seeds'])} seeds/bar", fontsize=8)
    _legend(fig, palette)
    _title(fig, "Per-structure test metrics",
           f"{int(per_structure['n_volumes'].sum())} test volume × structure scores from "
           f"{per_structure.groupby(R.CELL)['n_seeds'].max().sum()} runs; bar = mean over seeds of the per-run mean "
           "over test volumes, whisker = ±1 SD over seeds; HD95 averages volumes where it is defined."
           + _shown(panels, per_structure, R.BUDGET))
    return fig


def fig_hssl(hssl: pd.DataFrame) -> Figure | None:
    """Test Dice per labelled fraction and strategy (mean ± SD over seeds), labelled with the
    difference vs scratch in Dice points; one panel per task (dataset)."""
    if hssl is None or not len(hssl):
        return None
    datasets = sorted(hssl["dataset"].unique())
    palette = _palette(hssl["strategy"])
    fig, axes = _figure(len(datasets), ncols=2, size=(5.0, 3.4))
    for ax, dataset in zip(axes, datasets):
        sub = hssl[hssl["dataset"] == dataset]
        order = list(sub.sort_values("budget_value")["budget"].drop_duplicates())
        where = _grouped_bars(ax, sub, "budget", "dice_mean", "dice_std", order, sorted(sub["strategy"].unique()),
                              palette)
        for row in sub.itertuples(index=False):
            if (row.budget, row.strategy) in where and pd.notna(row.diff_vs_scratch) and row.strategy != row.scratch:
                x, top = where[(row.budget, row.strategy)]
                ax.annotate(f"{row.diff_vs_scratch:+.1f}", (x, top), xytext=(0, 2), textcoords="offset points",
                            ha="center", fontsize=6)
        ax.set_ylim(0, 1.12)
        ax.set_title(f"{dataset} · {seeds_label(sub['n'])} seeds/bar", fontsize=8)
        ax.set_ylabel("test Dice")
        ax.set_xlabel("labelled fraction")
    _legend(fig, palette)
    scratch = hssl["scratch"].dropna()
    _title(fig, "Test Dice of scratch, single-domain and multi-domain pretraining per labelled fraction",
           f"{int(hssl['n'].sum())} fine-tuning runs; bar = mean test Dice over seeds, whisker = ±1 SD; "
           "label = difference vs the task's scratch (random-init) strategy "
           f"({', '.join(sorted(set(scratch))) or 'none'}) in Dice points.")
    return fig


def fig_probe(probes: pd.DataFrame) -> Figure | None:
    """Dense-probe Dice of every init (mean and t 95 % CI over seeds), one panel per dataset."""
    if probes is None or not len(probes):
        return None
    datasets = sorted(probes["dataset"].unique())
    palette = _palette(probes["strategy"])
    fig, axes = _figure(len(datasets), ncols=2, size=(5.0, 3.2))
    for ax, dataset in zip(axes, datasets):
        sub = probes[probes["dataset"] == dataset].sort_values("dense_dice_mean")
        y = np.arange(len(sub))
        lo = (sub["dense_dice_mean"] - sub["ci_low"]).to_numpy(float)
        hi = (sub["ci_high"] - sub["dense_dice_mean"]).to_numpy(float)
        ax.errorbar(sub["dense_dice_mean"], y, xerr=[np.nan_to_num(lo), np.nan_to_num(hi)], fmt="none", ecolor="0.4",
                    capsize=2, lw=0.8)
        ax.scatter(sub["dense_dice_mean"], y, c=[palette[s] for s in sub["strategy"]], zorder=3, s=22)
        ax.set_yticks(y, [f"{s} (n={n})" for s, n in zip(sub["strategy"], sub["n"])], fontsize=7)
        ax.set_xlim(0, 1)
        ax.set_xlabel("dense probe: validation Dice")
        ax.set_title(dataset, fontsize=8)
        ax.grid(alpha=0.3, axis="x")
    _title(fig, "What each init holds before fine-tuning: a linear per-pixel classifier on its frozen features",
           "Point = mean over seeds of the fine-tuning runs' init probe (same labelled training slices per seed for "
           "every init; validation patients' slices scored), bar = Student's t 95 % CI.")
    return fig


def fig_pretraining_length(probe_curve: pd.DataFrame, finetune_curve: pd.DataFrame) -> Figure | None:
    """Pretraining-length curve: dense-probe Dice (left) and fine-tuned test Dice (right) against the
    pretraining step of the checkpoint, per stage; bands / bars = t 95 % CI over seeds."""
    if probe_curve is None or not len(probe_curve):
        return None

    def curves_only(table, keys):
        """Stages with 3 or more points (a curve, not just start and end), when there are any."""
        points = table.groupby(keys)["step"].transform("nunique")
        return table[points >= 3] if (points >= 3).any() else table

    probe_curve = curves_only(probe_curve, ["stage", "dataset"])
    if finetune_curve is not None and len(finetune_curve):
        finetune_curve = curves_only(finetune_curve, ["stage", "dataset", "budget"])
    have_ft = finetune_curve is not None and len(finetune_curve)
    fig, axes = _figure(2 if have_ft else 1, ncols=2, size=(5.0, 3.3))
    stages = sorted(set(probe_curve["stage"]) | (set(finetune_curve["stage"]) if have_ft else set()))
    palette = _palette(stages)
    for stage, g in probe_curve.groupby("stage"):
        for dataset, d in g.groupby("dataset"):
            d = d.sort_values("step")
            label = stage if probe_curve["dataset"].nunique() == 1 else f"{stage} · {dataset}"
            axes[0].plot(d["step"], d["probe_dice_mean"], marker="o", ms=3, color=palette[stage], label=label)
            axes[0].fill_between(d["step"], d["ci_low"], d["ci_high"], color=palette[stage], alpha=0.15, lw=0)
    axes[0].set_ylim(0, 1)
    axes[0].set_xlabel("pretraining step of the checkpoint")
    axes[0].set_ylabel("dense probe: validation Dice")
    axes[0].grid(alpha=0.3)
    axes[0].set_title(f"probe · {seeds_label(probe_curve['n'])} probe seeds per point", fontsize=8)
    if have_ft:
        styles = {b: m for b, m in zip(sorted(finetune_curve["budget"].unique()), "osD^v<>")}
        several = finetune_curve["dataset"].nunique() > 1
        for (stage, dataset, budget), d in finetune_curve.groupby(["stage", "dataset", "budget"]):
            d = d.sort_values("step")
            err = [np.nan_to_num((d["test_dice_mean"] - d["ci_low"]).to_numpy(float)),
                   np.nan_to_num((d["ci_high"] - d["test_dice_mean"]).to_numpy(float))]
            axes[1].errorbar(d["step"], d["test_dice_mean"], yerr=err, marker=styles[budget], ms=4, capsize=2,
                             color=palette[stage], label=f"{stage}{' · ' + dataset if several else ''}, {budget}")
        axes[1].set_ylim(0, 1)
        axes[1].set_xlabel("pretraining step of the checkpoint fine-tuned from")
        axes[1].set_ylabel("fine-tuned test Dice")
        axes[1].grid(alpha=0.3)
        axes[1].set_title(f"fine-tuned · {seeds_label(finetune_curve['n'])} seeds per point", fontsize=8)
        axes[1].legend(fontsize=7, frameon=False)
    axes[0].legend(fontsize=7, frameon=False)
    _title(fig, "Pretraining length: what the checkpoints of one pretraining run hold, "
                "and what fine-tuning makes of it",
           "Step 0 is the stage's start (random init or ImageNet: the fine-tuned point is that arm's runs); "
           "mean over seeds with a Student's t 95 % interval.")
    return fig
