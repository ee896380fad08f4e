"""Readable tables for the HTML report and notebooks: ``mean ± SD (n)`` strings, the claims and effects
with their intervals, the selection on validation."""

from __future__ import annotations

import numpy as np
import pandas as pd

from medssl_utils import results as R
from medssl_utils.claims import format_effect
from medssl_utils.report.figures import fmt, pm


# =============================================================================== display tables
def display_tables(an: R.Analysis) -> dict[str, pd.DataFrame]:
    """Readable versions of the main tables (``mean ± SD (n)`` strings) for the HTML report."""
    s, e, f, h, p = an.steps, an.errors, an.fits, an.hssl, an.per_structure
    out = {}
    if len(an.probes):
        q = an.probes
        out["Frozen-encoder probe per init"] = pd.DataFrame({
            "dataset": q["dataset"], "strategy": q["strategy"], "init": q["lineage_name"],
            "dense probe Dice [95% CI]": [f"{m:.3f} [{lo:.3f}, {hi:.3f}]" if np.isfinite(lo) else fmt(m)
                                          for m, lo, hi in zip(q["dense_dice_mean"], q["ci_low"], q["ci_high"])],
            "SD": q["dense_dice_sd"].map(fmt), "seeds": q["n"]})
    if len(an.shifts):
        w = an.shifts
        out["Encoder displacement"] = pd.DataFrame({
            "dataset": w["dataset"], "budget": w["budget"], "strategy": w["strategy"],
            "pretraining moved it": w["pretrain_shift"].map(fmt),
            "fine-tuning moved it": [pm(m, d, n) for m, d, n in zip(w["finetune_shift_mean"], w["finetune_shift_sd"],
                                                                     w["n"])]})
    if len(an.probe_curve):
        c = an.probe_curve
        out["Pretraining length: dense probe per checkpoint"] = pd.DataFrame({
            "stage": c["stage"], "dataset": c["dataset"], "step": c["step"].astype(int),
            "epoch": c["epoch"].map(lambda v: fmt(v, 2)),
            "probe Dice [95% CI]": [f"{m:.3f} [{lo:.3f}, {hi:.3f}]" if np.isfinite(lo) else fmt(m)
                                    for m, lo, hi in zip(c["probe_dice_mean"], c["ci_low"], c["ci_high"])],
            "probe seeds": c["n"]})
    if len(an.finetune_curve):
        c = an.finetune_curve
        out["Pretraining length: fine-tuned from each checkpoint"] = pd.DataFrame({
            "stage": c["stage"], "budget": c["budget"], "step": c["step"].astype(int), "strategy": c["strategy"],
            "test Dice [95% CI]": [f"{m:.3f} [{lo:.3f}, {hi:.3f}]" if np.isfinite(lo) else fmt(m)
                                   for m, lo, hi in zip(c["test_dice_mean"], c["ci_low"], c["ci_high"])],
            "seeds": c["n"]})
    if len(s):
        out["Steps to target (A1)"] = pd.DataFrame({
            "dataset": s["dataset"], "budget": s["budget"], "strategy": s["strategy"],
            "final val Dice": [pm(m, d) for m, d in zip(s["final_dice_mean"], s["final_dice_std"])],
            "threshold": s["target_dice"].map(fmt),
            "steps to target": [pm(m, d, digits=0) for m, d in zip(s["steps_mean"], s["steps_std"])],
            "reached/runs": [f"{a}/{b}" for a, b in zip(s["n_reached"], s["n_runs"])],
            "reference": s["reference"].fillna("–"),
            "speed-up vs reference": [pm(m, d, n, 2) for m, d, n in
                                      zip(s["speedup_mean"], s["speedup_std"], s["n_pairs"])],
            "ratio of means": s["speedup_of_means"].map(lambda v: fmt(v, 2))})
    if len(an.epochs):
        ep = an.epochs
        out["Speed-up vs pretraining epochs (A2)"] = pd.DataFrame({
            "dataset": ep["dataset"], "budget": ep["budget"], "family": ep["pretrain_family"],
            "epochs": ep["pretrain_epochs"].map("{:g}".format),
            "steps to target": [pm(m, d, digits=0) for m, d in zip(ep["steps_mean"], ep["steps_std"])],
            "reference": ep["reference"].fillna("–"),
            "speed-up vs reference": [pm(m, d, n, 2) for m, d, n in
                                      zip(ep["speedup_mean"], ep["speedup_std"], ep["n_pairs"])]})
    if len(e):
        out["Error vs labelled slices (A3)"] = pd.DataFrame({
            "dataset": e["dataset"], "budget": e["budget"], "strategy": e["strategy"],
            "labelled slices": e["labelled_slices"].map(lambda v: fmt(v, 0)),
            "1 − Dice": [pm(m, d, n) for m, d, n in zip(e["err_dice_mean"], e["err_dice_std"], e["n"])],
            "1 − IoU": [pm(m, d) for m, d in zip(e["err_iou_mean"], e["err_iou_std"])]})
    if len(f):
        out["Power-law fits err = a·n^(−b) (A3)"] = pd.DataFrame({
            "dataset": f["dataset"], "strategy": f["strategy"], "error": "1 − " + f["metric"].str.replace(
                "dice", "Dice").str.replace("iou", "IoU"), "a": f["a"].map(lambda v: fmt(v, 3)),
            "b": f["b"].map(lambda v: fmt(v, 3)), "R²": f["r2"].map(lambda v: fmt(v, 3)),
            "budgets": f["n_points"], "runs": f["n_runs"]})
    if len(h):
        out["HSSL table: test Dice (points) at labelled fractions (B1–B3)"] = hssl_wide(h)
    if len(p):
        out["Per-structure test metrics"] = pd.DataFrame({
            "dataset": p["dataset"], "budget": p["budget"], "strategy": p["strategy"], "structure": p["name"],
            "Dice": [pm(m, d) for m, d in zip(p["dice_mean"], p["dice_std"])],
            "Dice SD over volumes": p["dice_std_volumes"].map(fmt),
            "HD95 (mm)": [pm(m, d, digits=1) for m, d in zip(p["hd95_mean"], p["hd95_std"])],
            "slice IoU": [pm(m, d) for m, d in zip(p["slice_iou_mean"], p["slice_iou_std"])],
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
            row[f"Dice {r.budget}"] = pm(r.dice_mean, r.dice_std, r.n, digits=1, scale=100)
            row[f"Δ vs scratch {r.budget}"] = "–" if pd.isna(r.diff_vs_scratch) else f"{r.diff_vs_scratch:+.1f}"
        rows.append(row)
    return pd.DataFrame(rows).fillna("–")


def selection_display(selection: pd.DataFrame) -> pd.DataFrame:
    """The selection table as people read it: one row per cell, the picked combination, every candidate."""
    if not len(selection):
        return selection
    rows = []
    for cell, g in selection.groupby(R.CELL, sort=False):
        won = g[g["selected"]]
        cands = "; ".join(f"{r.combo} {fmt(r.val_dice_mean)}" + ("" if r.n_selection_runs else " (no run)")
                          for r in g.sort_values("order").itertuples(index=False))
        rows.append({"dataset": cell[0], "budget": cell[3], "strategy": cell[4],
                     "picked": won["combo"].iloc[0] if len(won) else "–",
                     "validation Dice": fmt(won["val_dice_mean"].iloc[0]) if len(won) else "–",
                     "tied with": won["tied_with"].iloc[0] if len(won) and won["tied_with"].iloc[0] else "",
                     "every combination (mean validation Dice)": cands,
                     "selection seeds": g["selection_seeds"].iloc[0],
                     "grid complete": "yes" if g["grid_complete"].iloc[0] else "NO"})
    return pd.DataFrame(rows)


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
                                           for d, lo, hi in zip(effects["diff"], effects["ci_low"],
                                                                effects["ci_high"])],
        "seeds": effects["n_pairs"], "": effects["verdict"]})


def format_claims(claims: pd.DataFrame) -> str:
    """One line per claim for a terminal: ``A1  supported     ×2.31 [1.40, 3.81]  (12 pairs)``."""
    return "\n".join(f"{r['claim']}  {r['verdict']:<12s} {format_effect(r):<28s} "
                     + (f"({int(r['n_pairs'])} pairs) " if r["verdict"] != "not run" else "")
                     + (r["note"] if r["verdict"] == "not run" else r["quantity"])
                     for _, r in claims.iterrows())
