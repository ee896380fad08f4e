"""The caption of every figure, computed from the same tables (best strategy, counts, what was left out), and
:data:`FIGURES`, the registry of figures in report order: name, drawing function, caption."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
from matplotlib.figure import Figure

from medssl_utils import results as R
from medssl_utils.report.figures import (budget_order, fig_convergence, fig_error_vs_slices, fig_hssl,
                                         fig_per_structure, fig_pretraining_length, fig_probe, fig_speedup_vs_epochs,
                                         fig_steps_to_target, pm, split_panels)


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
             f"({s['strategy'].nunique()} strategies, {len(budget_order(s))} budgets)."]
    for (dataset, *_, budget), g in s.groupby(R.BUDGET, sort=False):
        top = _best(g, "final_dice_mean", lowest=False)
        if top is not None:
            parts.append(f"{dataset}, {budget}: highest final validation Dice {top.strategy} "
                         f"{pm(top.final_dice_mean, top.final_dice_std, top.n_runs)}.")
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
                f"{pm(fast.steps_mean, fast.steps_std, digits=0)} steps ({fast.n_reached}/{fast.n_runs} seeds)")
        if pd.notna(fast.speedup_mean) and fast.strategy != fast.reference:
            text += f", {pm(fast.speedup_mean, fast.speedup_std, digits=1)}× faster than {fast.reference} " \
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
        pts = ", ".join(f"{pm(r.speedup_mean, r.speedup_std, digits=1)}× at {r.pretrain_epochs:g} ep"
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
                             f"{pm(top.err_dice_mean, top.err_dice_std, top.n)}.")
    dice = f[f["metric"] == "dice"] if len(f) else f
    if len(dice):
        parts.append("Power-law exponents b (err ∝ n^−b, 1 − Dice): " + "; ".join(
            f"{r.strategy} ({r.dataset}) b={r.b:.2f}" + ("" if pd.isna(r.r2) else f", R²={r.r2:.2f}")
            + f" over {r.n_points} budgets" for r in dice.itertuples(index=False)) + ".")
    return " ".join(parts)


def _caption_structures(an: R.Analysis) -> str:
    p = an.per_structure
    largest = split_panels(p, R.BUDGET)[-1]
    sub = p[(p[R.BUDGET] == pd.Series(largest, index=R.BUDGET)).all(axis=1)]
    parts = [f"Per-structure test metrics; at {largest[0]}, {largest[3]}:"]
    for name, g in sub.groupby("name", sort=False):
        top = _best(g, "dice_mean", lowest=False)
        parts.append(f"{name} best {top.strategy} Dice {pm(top.dice_mean, top.dice_std, top.n_seeds)}, "
                     f"HD95 {pm(top.hd95_mean, top.hd95_std, digits=1)} mm;")
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
