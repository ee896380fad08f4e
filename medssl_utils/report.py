"""The study's figures, CSV tables and a self-contained HTML report.

Each ``fig_*`` function takes the tidy tables of :func:`medssl_utils.results.analyse` and returns
a :class:`matplotlib.figure.Figure` (not registered with pyplot, so a notebook shows it once,
when returned), or ``None`` when there is no data for it. Every figure says in its title what it
was computed on and how many seeds stand behind each point; points are means over seeds with
±1 SD (never one run).

:func:`write_report` writes ``figures/*.png``, ``tables/*.csv`` and ``report.html`` (figures
embedded, so the one file can be mailed), each file atomically (temp file + rename);
``report.html`` is written last. :func:`run_cli` is ``medssl report DIR`` (parsed in :mod:`medssl_utils.cli`).

Typical notebook use::

    from medssl_utils import results, report
    res = results.gather("results/quick")
    an = results.analyse(res, target=0.95)
    report.fig_convergence(an.curves, an.steps)
    report.write_report(res, target=0.95)
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter

from medssl_utils import results as R
from medssl_utils.claims import format_effect
from medssl_utils.errors import DataError, check_choice

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


def _seeds(counts) -> str:
    """"n = 3" or "n = 1–3" seeds from a collection of per-point counts."""
    counts = [int(c) for c in counts if pd.notna(c)]
    if not counts:
        return "n = 0"
    lo, hi = min(counts), max(counts)
    return f"n = {lo}" if lo == hi else f"n = {lo}–{hi}"


def _budget_order(table: pd.DataFrame) -> list[str]:
    return list(R._sorted_budgets(table)["budget"])


def _panels(table: pd.DataFrame, keys: list[str], limit: int = MAX_PANELS) -> list[tuple]:
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
    """" Showing k of n panels." when :func:`_panels` left some out, else ""."""
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


def _fmt(value, digits: int = 3, scale: float = 1.0) -> str:
    return "–" if value is None or pd.isna(value) else f"{round(scale * value, digits) + 0.0:.{digits}f}"


def _pm(mean, std, n=None, digits: int = 3, scale: float = 1.0) -> str:
    """"mean ± SD (n=k)"; the SD is left out when undefined (a single value), all of it when the
    mean is."""
    if mean is None or pd.isna(mean):
        return "–"
    text = _fmt(mean, digits, scale) + ("" if std is None or pd.isna(std) else f" ± {_fmt(std, digits, scale)}")
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
    panels = _panels(curves, R.BUDGET)
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
        ax.set_title(f"{key[0]} · {key[3]} · {_seeds(n)} seeds/line", fontsize=8)
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
        order = _budget_order(sub)
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
           f"({_seeds(steps['n_runs'])} per bar).")
    return fig


def fig_speedup_vs_epochs(epochs: pd.DataFrame) -> Figure | None:
    """Speed-up vs the reference (or steps to target when there is no reference) against the
    number of domain pretraining epochs, one line per family, one panel per (dataset, budget)."""
    if epochs is None or not len(epochs):
        return None
    use_speedup = epochs["speedup_mean"].notna().any()
    y, yerr = ("speedup_mean", "speedup_std") if use_speedup else ("steps_mean", "steps_std")
    n_col = "n_pairs" if use_speedup else "n_reached"
    panels = _panels(epochs, R.BUDGET)
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
        ax.set_title(f"{dataset} · {_seeds(data[data['dataset'] == dataset]['n'])} seeds/point", fontsize=8)
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
    panels = _panels(per_structure, R.BUDGET, limit=max_budgets)
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
                ax.set_title(f"{dataset} · {key[3]} · {_seeds(sub['n_seeds'])} seeds/bar", fontsize=8)
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
        ax.set_title(f"{dataset} · {_seeds(sub['n'])} seeds/bar", fontsize=8)
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
    axes[0].set_title(f"probe · {_seeds(probe_curve['n'])} probe seeds per point", fontsize=8)
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
        axes[1].set_title(f"fine-tuned · {_seeds(finetune_curve['n'])} seeds per point", fontsize=8)
        axes[1].legend(fontsize=7, frameon=False)
    axes[0].legend(fontsize=7, frameon=False)
    _title(fig, "Pretraining length: what the checkpoints of one pretraining run hold, and what fine-tuning makes of it",
           "Step 0 is the stage's start (random init or ImageNet: the fine-tuned point is that arm's runs); "
           "mean over seeds with a Student's t 95 % interval.")
    return fig


# =============================================================================== captions
MAX_CAPTION_ITEMS = 8
CAVEAT = ("Numbers are mean ± SD over seeds with n stated; with few seeds, a difference smaller than the SDs is not "
          "conclusive.")


def _more(n_items: int) -> str:
    return f"(First {MAX_CAPTION_ITEMS} of {n_items}; all are in the tables.)" if n_items > MAX_CAPTION_ITEMS else ""

def _best(table: pd.DataFrame, col: str, lowest: bool):
    table = table[table[col].notna()]
    if not len(table):
        return None
    return table.sort_values(col, ascending=lowest).iloc[0]


def _caption_convergence(an: R.Analysis) -> str:
    s = an.steps
    parts = [f"Validation Dice while fine-tuning, {an.curves['run_id'].nunique()} runs "
             f"({s['strategy'].nunique()} strategies, {len(_budget_order(s))} budgets)."]
    for (dataset, *_, budget), g in s.groupby(R.BUDGET, sort=False):
        top = _best(g, "final_dice_mean", lowest=False)
        if top is not None:
            parts.append(f"{dataset}, {budget}: highest final validation Dice {top.strategy} "
                         f"{_pm(top.final_dice_mean, top.final_dice_std, top.n_runs)}.")
    return " ".join(parts)


def _caption_steps(an: R.Analysis) -> str:
    s = an.steps
    parts = [f"A run has converged at the first evaluation whose validation Dice reaches {an.target:.0%} of the best "
             "final validation Dice at its budget (the best over strategies of the mean over seeds). "
             f"Speed-ups are relative to the reference strategy — {an.reference_text}."]
    groups = list(s.groupby(R.BUDGET, sort=False))
    for (dataset, *_, budget), g in groups[:MAX_CAPTION_ITEMS]:
        fast = _best(g, "steps_mean", lowest=True)
        if fast is None:
            parts.append(f"{dataset}, {budget}: no strategy reached the threshold.")
            continue
        text = (f"{dataset}, {budget} (threshold {fast.target_dice:.3f}): fastest {fast.strategy}, "
                f"{_pm(fast.steps_mean, fast.steps_std, digits=0)} steps ({fast.n_reached}/{fast.n_runs} seeds)")
        if pd.notna(fast.speedup_mean) and fast.strategy != fast.reference:
            text += f", {_pm(fast.speedup_mean, fast.speedup_std, digits=1)}× faster than {fast.reference} " \
                    f"(n={fast.n_pairs} paired seeds)"
        parts.append(text + ".")
    parts.append(_more(len(groups)))
    never = int((s["n_runs"] - s["n_reached"]).sum())
    parts.append(f"{never} of {int(s['n_runs'].sum())} runs never reached their threshold." if never
                 else "Every run reached its threshold.")
    return " ".join(parts)


def _caption_epochs(an: R.Analysis) -> str:
    parts = []
    for (family, dataset, budget), g in an.epochs.groupby(["pretrain_family", "dataset", "budget"], sort=False):
        pts = ", ".join(f"{_pm(r.speedup_mean, r.speedup_std, digits=1)}× at {r.pretrain_epochs:g} ep"
                        for r in g.itertuples(index=False))
        parts.append(f"{family} on {dataset}, {budget}: {pts}.")
    return (f"Speed-up vs the reference strategy ({an.reference_text}) as domain pretraining grows. "
            + " ".join(parts[:MAX_CAPTION_ITEMS]) + _more(len(parts)))


def _caption_errors(an: R.Analysis) -> str:
    e, f = an.errors, an.fits
    parts = ["Test error against the number of labelled slices."]
    for dataset, g in e.groupby("dataset"):
        for which, lowest_budget in (("smallest", True), ("largest", False)):
            n = g["labelled_slices"].min() if lowest_budget else g["labelled_slices"].max()
            top = _best(g[g["labelled_slices"] == n], "err_dice_mean", lowest=True)
            if top is not None:
                parts.append(f"{dataset}, {which} budget ({top.budget}): lowest error {top.strategy} "
                             f"{_pm(top.err_dice_mean, top.err_dice_std, top.n)}.")
    dice = f[f["metric"] == "dice"] if len(f) else f
    if len(dice):
        parts.append("Power-law exponents b (err ∝ n^−b, 1 − Dice): " + "; ".join(
            f"{r.strategy} ({r.dataset}) b={r.b:.2f}" + ("" if pd.isna(r.r2) else f", R²={r.r2:.2f}")
            + f" over {r.n_points} budgets" for r in dice.itertuples(index=False)) + ".")
    return " ".join(parts)


def _caption_structures(an: R.Analysis) -> str:
    p = an.per_structure
    largest = _panels(p, R.BUDGET)[-1]
    sub = p[(p[R.BUDGET] == pd.Series(largest, index=R.BUDGET)).all(axis=1)]
    parts = [f"Per-structure test metrics; at {largest[0]}, {largest[3]}:"]
    for name, g in sub.groupby("name", sort=False):
        top = _best(g, "dice_mean", lowest=False)
        parts.append(f"{name} best {top.strategy} Dice {_pm(top.dice_mean, top.dice_std, top.n_seeds)}, "
                     f"HD95 {_pm(top.hd95_mean, top.hd95_std, digits=1)} mm;")
    missed = int(p["n_missed"].sum())
    parts.append(f"{missed} test volume × structure predictions missed a structure that was present (Dice 0)."
                 if missed else "No structure present in the ground truth was missed.")
    return " ".join(parts)


def _caption_hssl(an: R.Analysis) -> str:
    h = an.hssl
    scratch = ", ".join(f"{d}: {s}" for d, s in h.groupby("dataset")["scratch"].first().items())
    parts = [f"Test Dice at each labelled fraction; differences vs the scratch strategy ({scratch}) in Dice points."]
    for budget, g in h.groupby("budget_value"):
        diffs = g[(g["strategy"] != g["scratch"]) & g["diff_vs_scratch"].notna()]
        if len(diffs):
            lo, hi = diffs["diff_vs_scratch"].min(), diffs["diff_vs_scratch"].max()
            best = diffs.sort_values("diff_vs_scratch").iloc[-1]
            parts.append(f"At {g['budget'].iloc[0]} labels, gains range from {lo:+.1f} to {hi:+.1f} points "
                         f"(largest: {best.strategy} on {best.dataset}).")
    return " ".join(parts)


@dataclass(frozen=True)
class FigureSpec:
    """One report figure: how to draw it from an Analysis, its caption, and the note shown when
    there is no data for it."""

    name: str
    title: str
    draw: Callable[[R.Analysis], Figure | None]
    caption: Callable[[R.Analysis], str]
    empty: str


def _caption_probe(an: R.Analysis) -> str:
    p = an.probes
    parts = ["Dense linear probe of the encoder each arm starts from (training.probe): BatchNorm statistics "
             "recomputed on the probe's training slices, a per-pixel logistic regression on the frozen stage 1-5 "
             "features upsampled to the image, validation Dice."]
    for dataset, g in p.groupby("dataset"):
        top = g.sort_values("dense_dice_mean").iloc[-1]
        low = g.sort_values("dense_dice_mean").iloc[0]
        parts.append(f"{dataset}: highest {top.strategy} {top.dense_dice_mean:.3f} [{top.ci_low:.3f}, "
                     f"{top.ci_high:.3f}], lowest {low.strategy} {low.dense_dice_mean:.3f}.")
    return " ".join(parts)


def _caption_length(an: R.Analysis) -> str:
    c = an.probe_curve
    parts = []
    for stage, g in c.groupby("stage"):
        g = g.sort_values("step")
        parts.append(f"{stage}: probe {g['probe_dice_mean'].iloc[0]:.3f} at step {int(g['step'].iloc[0])} → "
                     f"{g['probe_dice_mean'].iloc[-1]:.3f} at step {int(g['step'].iloc[-1])}.")
    return "Dense probe at every probed step of each pretraining run, and the test Dice of the runs fine-tuned " \
           "from its checkpoints. " + " ".join(parts[:MAX_CAPTION_ITEMS])


FIGURES = (
    FigureSpec("probe", "Frozen-encoder probe: what each init holds", lambda a: fig_probe(a.probes), _caption_probe,
               "no fine-tuning run recorded an init_probe (probe_init=False everywhere?)"),
    FigureSpec("pretraining_length", "Pretraining length (claim A2, generalised)",
               lambda a: fig_pretraining_length(a.probe_curve, a.finetune_curve), _caption_length,
               "no pretraining run wrote probes.csv (probe_every=0?)"),
    FigureSpec("convergence", "Convergence (claim A1)", lambda a: fig_convergence(a.curves, a.steps),
               _caption_convergence, "no complete fine-tuning run has validation Dice in its history.csv"),
    FigureSpec("steps_to_target", "Steps to target and speed-up (claim A1)", lambda a: fig_steps_to_target(a.steps),
               _caption_steps, "no fine-tuning run reached the convergence threshold"),
    FigureSpec("speedup_vs_epochs", "Speed-up vs pretraining epochs (claim A2)",
               lambda a: fig_speedup_vs_epochs(a.epochs), _caption_epochs,
               "no pretraining-epochs ablation: no strategy family was fine-tuned from more than one number of "
               "pretraining epochs (name strategies like byol-cardiac@1ep)"),
    FigureSpec("error_vs_slices", "Error vs labelled slices (claim A3)",
               lambda a: fig_error_vs_slices(a.errors, a.fits), _caption_errors,
               "no complete fine-tuning run has a test Dice"),
    FigureSpec("hssl", "Multi-domain pretraining, 5% / 10% / 100% labels (claims B1–B3)",
               lambda a: fig_hssl(a.hssl), _caption_hssl,
               "no task was fine-tuned at a labelled fraction below 100% (labelled_fraction), so there is no "
               "HSSL table"),
    FigureSpec("per_structure", "Per-structure Dice and HD95", lambda a: fig_per_structure(a.per_structure),
               _caption_structures, "no test_metrics.csv among the complete fine-tuning runs"),
)


def figures(an: R.Analysis) -> dict[str, tuple[Figure | None, str]]:
    """``name → (figure or None, caption or the reason it is missing)`` for every report figure."""
    out = {}
    for spec in FIGURES:
        fig = spec.draw(an)
        out[spec.name] = (fig, f"{spec.caption(an)} {CAVEAT}" if fig is not None else f"Not drawn: {spec.empty}.")
    return out


# =============================================================================== display tables
def display_tables(an: R.Analysis) -> dict[str, pd.DataFrame]:
    """Readable versions of the main tables (``mean ± SD (n)`` strings) for the HTML report."""
    s, e, f, h, p = an.steps, an.errors, an.fits, an.hssl, an.per_structure
    out = {}
    if len(an.probes):
        q = an.probes
        out["Frozen-encoder probe per init"] = pd.DataFrame({
            "dataset": q["dataset"], "strategy": q["strategy"], "init": q["lineage_name"],
            "dense probe Dice [95% CI]": [f"{m:.3f} [{lo:.3f}, {hi:.3f}]" if np.isfinite(lo) else _fmt(m)
                                          for m, lo, hi in zip(q["dense_dice_mean"], q["ci_low"], q["ci_high"])],
            "SD": q["dense_dice_sd"].map(_fmt), "seeds": q["n"]})
    if len(an.shifts):
        w = an.shifts
        out["Encoder displacement"] = pd.DataFrame({
            "dataset": w["dataset"], "budget": w["budget"], "strategy": w["strategy"],
            "pretraining moved it": w["pretrain_shift"].map(_fmt),
            "fine-tuning moved it": [_pm(m, d, n) for m, d, n in zip(w["finetune_shift_mean"], w["finetune_shift_sd"],
                                                                     w["n"])]})
    if len(an.probe_curve):
        c = an.probe_curve
        out["Pretraining length: dense probe per checkpoint"] = pd.DataFrame({
            "stage": c["stage"], "dataset": c["dataset"], "step": c["step"].astype(int),
            "epoch": c["epoch"].map(lambda v: _fmt(v, 2)),
            "probe Dice [95% CI]": [f"{m:.3f} [{lo:.3f}, {hi:.3f}]" if np.isfinite(lo) else _fmt(m)
                                    for m, lo, hi in zip(c["probe_dice_mean"], c["ci_low"], c["ci_high"])],
            "probe seeds": c["n"]})
    if len(an.finetune_curve):
        c = an.finetune_curve
        out["Pretraining length: fine-tuned from each checkpoint"] = pd.DataFrame({
            "stage": c["stage"], "budget": c["budget"], "step": c["step"].astype(int), "strategy": c["strategy"],
            "test Dice [95% CI]": [f"{m:.3f} [{lo:.3f}, {hi:.3f}]" if np.isfinite(lo) else _fmt(m)
                                   for m, lo, hi in zip(c["test_dice_mean"], c["ci_low"], c["ci_high"])],
            "seeds": c["n"]})
    if len(s):
        out["Steps to target (A1)"] = pd.DataFrame({
            "dataset": s["dataset"], "budget": s["budget"], "strategy": s["strategy"],
            "final val Dice": [_pm(m, d) for m, d in zip(s["final_dice_mean"], s["final_dice_std"])],
            "threshold": s["target_dice"].map(_fmt),
            "steps to target": [_pm(m, d, digits=0) for m, d in zip(s["steps_mean"], s["steps_std"])],
            "reached/runs": [f"{a}/{b}" for a, b in zip(s["n_reached"], s["n_runs"])],
            "reference": s["reference"].fillna("–"),
            "speed-up vs reference": [_pm(m, d, n, 2) for m, d, n in
                                      zip(s["speedup_mean"], s["speedup_std"], s["n_pairs"])],
            "ratio of means": s["speedup_of_means"].map(lambda v: _fmt(v, 2))})
    if len(an.epochs):
        ep = an.epochs
        out["Speed-up vs pretraining epochs (A2)"] = pd.DataFrame({
            "dataset": ep["dataset"], "budget": ep["budget"], "family": ep["pretrain_family"],
            "epochs": ep["pretrain_epochs"].map("{:g}".format),
            "steps to target": [_pm(m, d, digits=0) for m, d in zip(ep["steps_mean"], ep["steps_std"])],
            "reference": ep["reference"].fillna("–"),
            "speed-up vs reference": [_pm(m, d, n, 2) for m, d, n in
                                      zip(ep["speedup_mean"], ep["speedup_std"], ep["n_pairs"])]})
    if len(e):
        out["Error vs labelled slices (A3)"] = pd.DataFrame({
            "dataset": e["dataset"], "budget": e["budget"], "strategy": e["strategy"],
            "labelled slices": e["labelled_slices"].map(lambda v: _fmt(v, 0)),
            "1 − Dice": [_pm(m, d, n) for m, d, n in zip(e["err_dice_mean"], e["err_dice_std"], e["n"])],
            "1 − IoU": [_pm(m, d) for m, d in zip(e["err_iou_mean"], e["err_iou_std"])]})
    if len(f):
        out["Power-law fits err = a·n^(−b) (A3)"] = pd.DataFrame({
            "dataset": f["dataset"], "strategy": f["strategy"], "error": "1 − " + f["metric"].str.replace(
                "dice", "Dice").str.replace("iou", "IoU"), "a": f["a"].map(lambda v: _fmt(v, 3)),
            "b": f["b"].map(lambda v: _fmt(v, 3)), "R²": f["r2"].map(lambda v: _fmt(v, 3)),
            "budgets": f["n_points"], "runs": f["n_runs"]})
    if len(h):
        out["HSSL table: test Dice (points) at labelled fractions (B1–B3)"] = hssl_wide(h)
    if len(p):
        out["Per-structure test metrics"] = pd.DataFrame({
            "dataset": p["dataset"], "budget": p["budget"], "strategy": p["strategy"], "structure": p["name"],
            "Dice": [_pm(m, d) for m, d in zip(p["dice_mean"], p["dice_std"])],
            "Dice SD over volumes": p["dice_std_volumes"].map(_fmt),
            "HD95 (mm)": [_pm(m, d, digits=1) for m, d in zip(p["hd95_mean"], p["hd95_std"])],
            "slice IoU": [_pm(m, d) for m, d in zip(p["slice_iou_mean"], p["slice_iou_std"])],
            "missed": p["n_missed"], "HD95 undefined": p["n_hd95_undefined"], "seeds": p["n_seeds"],
            "volumes": p["n_volumes"]})
    return out


def hssl_wide(hssl: pd.DataFrame) -> pd.DataFrame:
    """The HSSL table as in the paper: one row per (task, strategy), per fraction a column
    ``Dice mean ± SD (n)`` in Dice points and a column ``Δ vs scratch``."""
    rows = []
    for (dataset, strategy), g in hssl.groupby(["dataset", "strategy"], sort=True):
        row = {"task": dataset, "strategy": strategy, "pretraining": g["pretraining"].iloc[0]}
        for r in g.sort_values("budget_value").itertuples(index=False):
            row[f"Dice {r.budget}"] = _pm(r.dice_mean, r.dice_std, r.n, digits=1, scale=100)
            row[f"Δ vs scratch {r.budget}"] = "–" if pd.isna(r.diff_vs_scratch) else f"{r.diff_vs_scratch:+.1f}"
        rows.append(row)
    return pd.DataFrame(rows).fillna("–")


# =============================================================================== writing
def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")  # nothing clipped at the edges
    return buf.getvalue()


_CSS = """body{font-family:system-ui,sans-serif;max-width:1150px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}figure{margin:1em 0}
img{max-width:100%}figcaption{font-size:.92em;line-height:1.4}table{border-collapse:collapse;font-size:.82em;
margin:.6em 0 1.4em}th,td{border:1px solid #ddd;padding:3px 7px;text-align:left}th{background:#f3f3f3}
.note{color:#8a4b00}.small{font-size:.85em;color:#555}code{background:#f4f4f4;padding:0 3px}"""


def _html_table(table: pd.DataFrame) -> str:
    return table.to_html(index=False, border=0, na_rep="–", escape=True)


def _overview(an: R.Analysis) -> str:
    res = an.results
    counts = res.runs.groupby(["kind", "status"]).size().rename("runs").reset_index()
    ft = res.finetune()
    cells = ft.groupby(R.CELL, dropna=False).size()
    seeds = _seeds(cells) if len(cells) else "n = 0"
    lines = [f"<p>Gathered from {', '.join(f'<code>{html.escape(str(r))}</code>' for r in res.roots)}: "
             f"{len(res.runs)} run directories. Fine-tuning: {len(ft)} complete runs on "
             f"{html.escape(', '.join(sorted(ft['dataset'].dropna().unique())) or 'no dataset')}, "
             f"{ft['strategy'].nunique()} strategies, {ft['budget'].nunique()} label budgets, "
             f"<b>{seeds} seeds per strategy and budget</b>. Every number below is a mean ± SD over seeds "
             "unless it says otherwise.</p>", _html_table(counts)]
    if len(ft):
        strategies = ft.groupby("strategy").agg(pretraining=("pretraining", "first"),
                                                lineage=("lineage_name", "first"), runs=("run_id", "size"))
        lines.append(_html_table(strategies.reset_index()))
    return "\n".join(lines)


def _definitions(an: R.Analysis) -> str:
    items = [
        f"<b>Convergence threshold (A1).</b> Per dataset and budget, D* = the best over strategies of the mean over "
        f"seeds of the final validation Dice (last evaluation); threshold = {an.target:g} × D*. A run's steps to "
        "target is its first evaluation step with validation Dice ≥ threshold; runs that never reach it are counted, "
        "not averaged.",
        f"<b>Speed-up.</b> Reference, per dataset: {html.escape(an.reference_text)}. Per seed, steps(reference) / "
        "steps(strategy) at the same dataset, budget and seed (both must reach the threshold); mean ± SD over those "
        "paired seeds. 'Ratio of means' divides the mean steps instead.",
        "<b>Pretraining epochs (A2).</b> A strategy named <code>NAME@Eep</code> belongs to family NAME with E "
        "epochs; otherwise E is the epochs of the last pretraining stage in its lineage.",
        "<b>Error (A3).</b> 1 − test Dice (mean over test volumes and foreground structures of per-volume "
        "Dice) and 1 − test IoU (mean per-2D-slice IoU over foreground structures). Power law err = a·n^(−b) "
        "fitted by least squares of log err on log n over the per-budget means; R² in log–log space (not given "
        "with fewer than 3 budgets).",
        "<b>HSSL table (B1–B3).</b> Test Dice in points (×100), mean ± SD (n seeds); Δ = difference of means vs "
        "the scratch (random-init) strategy at the same task and labelled fraction.",
        "<b>Per structure.</b> Per run, mean over test volumes of per-volume Dice and of HD95 in mm (volumes where "
        "HD95 is undefined — a structure missing from prediction or ground truth — are excluded and counted); then "
        "mean ± SD over seeds. 'Missed' counts volumes whose ground truth has the structure and the prediction not.",
    ]
    return "<ul>" + "".join(f"<li>{t}</li>" for t in items) + "</ul>"


def _skipped_section(res: R.Results) -> str:
    parts = []
    if len(res.skipped):
        grouped = res.skipped.groupby(["kind", "strategy", "reason"], dropna=False).size().rename("runs")
        parts.append(f"<p>{len(res.skipped)} runs were skipped on purpose:</p>" + _html_table(grouped.reset_index()))
    else:
        parts.append("<p>No run was skipped.</p>")
    if len(res.problems):
        parts.append(f"<p>{res.problems['run_id'].nunique()} runs failed or could not be used in full "
                     "(they are left out of what they lack):</p>"
                     + _html_table(res.problems[["run_id", "kind", "strategy", "status", "problem"]]))
    else:
        parts.append("<p>No run failed, and every run's files were readable.</p>")
    return "\n".join(parts)


def selection_display(selection: pd.DataFrame) -> pd.DataFrame:
    """The selection table as people read it: one row per cell, the picked combination, every candidate."""
    if not len(selection):
        return selection
    rows = []
    for cell, g in selection.groupby(R.CELL, sort=False):
        won = g[g["selected"]]
        cands = "; ".join(f"{r.combo} {_fmt(r.val_dice_mean)}" + ("" if r.n_selection_runs else " (no run)")
                          for r in g.sort_values("order").itertuples(index=False))
        rows.append({"dataset": cell[0], "budget": cell[3], "strategy": cell[4],
                     "picked": won["combo"].iloc[0] if len(won) else "–",
                     "validation Dice": _fmt(won["val_dice_mean"].iloc[0]) if len(won) else "–",
                     "tied with": won["tied_with"].iloc[0] if len(won) and won["tied_with"].iloc[0] else "",
                     "every combination (mean validation Dice)": cands,
                     "selection seeds": g["selection_seeds"].iloc[0],
                     "grid complete": "yes" if g["grid_complete"].iloc[0] else "NO"})
    return pd.DataFrame(rows)


def _selection_section(an: R.Analysis) -> str:
    sel = an.selection
    if not len(sel):
        return ("<p>No cell of this study sweeps fine-tuning parameters: each strategy ran with one setting, the "
                "same for every arm.</p>")
    n_cells = len(sel.groupby(R.CELL))
    seeds = sorted(set(sel["selection_seeds"]))
    return (f"<p class='small'>{n_cells} cells (dataset × budget × strategy) swept {sel['grid_size'].max()} "
            f"combinations each. Rule: {html.escape(sel['rule'].iloc[0])}. The score is the final validation Dice "
            f"(validation patients, never test ones) averaged over the selection seeds {', '.join(seeds)}; the picked "
            "combination was then run at the remaining seeds, and every table and claim below uses only the picked "
            "runs (all their seeds). Selection uses fewer seeds than the final runs where the study says so, so a "
            "close pick can be luck; the table shows every candidate's score. <code>tables/selection.csv</code>.</p>"
            + _html_table(selection_display(sel)))


def claims_display(claims: pd.DataFrame) -> pd.DataFrame:
    """The claims table as people read it: claim, statement, quantity, effect [95 % CI], verdict, runs, note."""
    if not len(claims):
        return claims
    out = pd.DataFrame({
        "claim": claims["claim"], "published claim": claims["statement"], "quantity": claims["quantity"],
        "effect [95% CI]": [format_effect(r) for _, r in claims.iterrows()], "verdict": claims["verdict"],
        "pairs / runs": [f"{int(p)} / {int(n)}" for p, n in zip(claims["n_pairs"], claims["n_runs"])],
        "note": claims["note"]})
    return out


def effects_display(effects: pd.DataFrame) -> pd.DataFrame:
    """The effects-vs-scratch table as people read it."""
    if not len(effects):
        return effects
    return pd.DataFrame({
        "dataset": effects["dataset"], "budget": effects["budget"], "strategy": effects["strategy"],
        "role": effects["role"],
        "Dice points vs random [95% CI]": [f"{d:+.1f} [{lo:+.1f}, {hi:+.1f}]" if np.isfinite(lo) else f"{d:+.1f}"
                                           for d, lo, hi in zip(effects["diff"], effects["ci_low"], effects["ci_high"])],
        "seeds": effects["n_pairs"], "": effects["verdict"]})


def format_claims(claims: pd.DataFrame) -> str:
    """One line per claim for a terminal: ``A1  supported     ×2.31 [1.40, 3.81]  (12 pairs)``."""
    return "\n".join(f"{r['claim']}  {r['verdict']:<12s} {format_effect(r):<28s} "
                     + (f"({int(r['n_pairs'])} pairs) " if r["verdict"] != "not run" else "")
                     + (r["note"] if r["verdict"] == "not run" else r["quantity"])
                     for _, r in claims.iterrows())


def render_html(an: R.Analysis, figs: dict[str, tuple[Figure | None, str]], pngs: dict[str, bytes]) -> str:
    """The report as one self-contained HTML page (PNG figures embedded as data URIs)."""
    titles = {spec.name: spec.title for spec in FIGURES}
    body = [f"<h1>medssl study report</h1><p class='small'>Generated "
            f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; target = {an.target:g}.</p>",
            "<h2>The published claims, on these runs</h2>",
            "<p class='small'>Each row is computed from the runs below, never typed in. Effects are means over "
            "runs paired by seed with a Student's t 95 % interval (speed-ups: geometric means); "
            "<b>supported</b> / <b>contradicted</b>: the interval lies on / against the claimed side of no effect; "
            "<b>inconclusive</b>: it contains no effect; <b>not run</b>: the runs are absent (why is given). "
            "Definitions: <code>medssl_utils/claims.py</code>; raw numbers: <code>tables/claims.csv</code>.</p>",
            _html_table(claims_display(an.claims)),
            "<h3>Every strategy against random init</h3><p class='small'>Test Dice points (100 × mean Dice over "
            "structures and test volumes), strategy − random init, paired by seed, Student's t 95 % interval; "
            "<code>tables/effects_vs_scratch.csv</code>.</p>",
            _html_table(effects_display(an.effects)),
            "<h2>Hyperparameter selection (validation data only)</h2>", _selection_section(an),
            "<h2>Data</h2>", _overview(an), "<h2>Definitions</h2>", _definitions(an), "<h2>Figures</h2>"]
    for k, (name, (fig, caption)) in enumerate(figs.items(), start=1):
        body.append(f"<h3>{html.escape(titles.get(name, name))}</h3>")
        if name in pngs:
            data = base64.b64encode(pngs[name]).decode("ascii")
            body.append(f"<figure><img alt='{html.escape(name)}' src='data:image/png;base64,{data}'>"
                        f"<figcaption><b>Figure {k}.</b> {html.escape(caption)} "
                        f"<span class='small'>(figures/{name}.png)</span></figcaption></figure>")
        else:
            body.append(f"<p class='note'>{html.escape(caption)}</p>")
    body.append("<h2>Tables</h2><p class='small'>Raw numbers: <code>tables/*.csv</code>.</p>")
    for title, table in display_tables(an).items():
        body.append(f"<h3>{html.escape(title)}</h3>{_html_table(table)}")
    body += ["<h2>Skipped and failed runs</h2>", _skipped_section(an.results)]
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>medssl study report</title>"
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_report(results: R.Results | str | os.PathLike | list, out_dir: str | os.PathLike | None = None,
                 target: float = 0.95, reference: str | None = None, scratch: str | None = None) -> Path:
    """Write ``figures/*.png``, ``tables/*.csv`` and ``report.html`` into ``out_dir``.

    Args:
        results: a :class:`~medssl_utils.results.Results`, or folder(s) to :func:`~medssl_utils.results.gather`.
        out_dir: output folder (default: ``<first results folder>/report``).
        target: fraction of the best final validation Dice that counts as converged.
        reference: strategy speed-ups are relative to (default, per dataset: supervised ImageNet, else
            random init).
        scratch: strategy the HSSL differences are relative to (default: random init).

    Returns:
        Path of ``report.html``. Figures without data are not drawn (a stale PNG of the same
        name is removed) and the report says why.
    """
    res = results if isinstance(results, R.Results) else R.gather(results)
    an = R.analyse(res, target=target, reference=reference, scratch=scratch)
    out = Path(out_dir) if out_dir is not None else res.roots[0] / "report"
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: is a file; expected a folder for the report (out_dir / --out)")
    for name, table in an.tables().items():
        _atomic_write(out / "tables" / f"{name}.csv", table.to_csv(index=False).encode("utf-8"))
    figs, pngs = figures(an), {}
    for name, (fig, _) in figs.items():
        path = out / "figures" / f"{name}.png"
        if fig is None:
            path.unlink(missing_ok=True)
            continue
        pngs[name] = _png(fig)
        _atomic_write(path, pngs[name])
    page = out / "report.html"
    _atomic_write(page, render_html(an, figs, pngs).encode("utf-8"))
    return page


# =============================================================================== command line
def run_cli(args) -> int:
    """``medssl report``'s work (its parser: :mod:`medssl_utils.cli`)."""
    res = R.gather(args.dirs)
    page = write_report(res, args.out, target=args.target, reference=args.reference)
    print(res.summary())
    claims = pd.read_csv(page.parent / "tables" / "claims.csv") if (page.parent / "tables" / "claims.csv").is_file() \
        else None
    if claims is not None and len(claims):
        print("claims (tables/claims.csv):")
        text = claims.astype({"note": object, "quantity": object})  # all-empty columns are read as float
        print(format_claims(text.fillna({"note": "", "quantity": ""})))
    print(f"report: {page}")
    return print_problems(res.problems)


def print_problems(problems: pd.DataFrame, file=None) -> int:
    """Each problem of a gather (``Results.problems``) as one line ``<run dir>: <problem>`` under a
    count; returns the command's exit status: 1 when there are problems (the report is written but
    some runs could not be used in full), else 0. Skipped runs are not problems."""
    if not len(problems):
        return 0
    n, runs = len(problems), problems["run_id"].nunique()
    print(f"{n} problem{'s' if n > 1 else ''} in {runs} run{'s' if runs > 1 else ''} (also listed in report.html):",
          file=file)
    for _, row in problems.iterrows():
        print(f"  {row['run_dir']}: {row['problem']}", file=file)
    return 1


__all__ = ["claims_display", "fig_pretraining_length", "fig_probe", "selection_display", "display_tables", "effects_display", "format_claims", "fig_convergence", "fig_error_vs_slices", "fig_hssl",
           "fig_per_structure", "fig_speedup_vs_epochs", "fig_steps_to_target", "figures", "hssl_wide",
           "render_html", "write_report"]
