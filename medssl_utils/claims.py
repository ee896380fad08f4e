"""The published claims, answered from the runs present: quantity, effect size, 95 % CI, verdict.

:func:`claims_table` computes one row per claim of ``shared/STUDY.md`` (A1–A3 for Work A,
B1–B3 for Work B) from an :class:`~medssl_utils.results.Analysis`. Nothing is typed in: every
number comes from the runs, and a claim whose runs are absent says **not run** and why.

Which strategies a claim compares is read from each run's *role* (its lineage;
:func:`~medssl_utils.results.role_of`), not from the strategy names a study file chose:

- reference for convergence (A1, A2): ``imagenet`` (supervised ImageNet);
- hierarchical arm (A1): ``hierarchical-ssl`` (BYOL ImageNet → BYOL domain, or its stand-in
  BYOL natural photographs → BYOL domain), else ``hierarchical-external`` (a BYOL ImageNet
  ``file:`` → BYOL domain), else ``hierarchical-supervised`` (supervised ImageNet → BYOL
  domain; named as a stand-in in the row);
- Work B: ``multi-domain`` (HSSL on several domains), ``specialist`` (the same SSL on the
  target domain alone), ``scratch``.

Strategies named ``NAME@<E>ep`` (pretraining-epochs ablation) enter only A2.

Statistics. Runs are **paired by seed**: at one dataset and label budget, the same seed draws
the same labelled slices and the same batches for every strategy, so a per-seed difference
removes the label draw's luck. A claim's unit is one pair (dataset, budget, seed); its effect is
the mean over pairs of a per-pair quantity, with a 95 % confidence interval from Student's t
with n − 1 degrees of freedom (``mean ± t(0.975, n−1) · sd / √n``; with fewer than 2 pairs
the interval is undefined). Ratios (speed-ups) are averaged as logarithms and shown as ratios
(geometric means). The verdict compares the interval with the null value:

- **supported** — the interval lies entirely on the claimed side of the null;
- **contradicted** — it lies entirely on the other side;
- **inconclusive** — it contains the null (or is undefined: fewer than 2 pairs);
- **not run** — the runs the claim needs are absent (the reason is given).

Claims and their quantities (all Dice values are test mean Dice over structures and volumes,
in Dice points = 100 × Dice; steps are optimiser steps):

=====  ====================================================================================
A1     speed-up = steps to target of supervised ImageNet / steps to target of the hierarchical
       arm (target: ``target`` × the best final validation Dice at that budget; a run that
       never reaches it counts as its last evaluated step, so its speed-up is understated);
       null 1, claimed side > 1. The paper reports 4–5×.
A2     the same speed-up for the hierarchical (else specialist) family after at most 5
       epochs of domain pretraining (its largest such checkpoint below the final one); null 1,
       claimed side > 1. The final-epoch speed-up is given in the note.
A3     at budgets under 100 labelled slices: supervised ImageNet − the best other strategy
       (best by mean over seeds at that budget), per seed; null 0, claimed side > 0. The
       power-law exponent b of ``error = a · n^(−b)`` (error = 1 − Dice, fitted per seed on
       ≥ 3 budgets; R² of the fit to the means over seeds) is given in the note.
B1     multi-domain (HSSL) − single-domain SSL, every task and fraction; null 0, side > 0.
B2     multi-domain (HSSL) − scratch at 5 % of the labels; null 0, side > 0. The paper reports
       +0.69 to +18.60 points depending on the task.
B3     fraction of HSSL's 5 % → 100 % gap closed at 10 %: (D10 − D5) / (D100 − D5) per
       (task, seed) (pairs whose gap is not positive are left out and counted); null 0.5,
       side > 0.5 ("much of the gap": more than half, fixed before any run).
=====  ====================================================================================
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from medssl_utils.stats import fit_power_law, t_interval

CLAIMS_COLUMNS = ["claim", "work", "statement", "quantity", "effect", "ci_low", "ci_high", "unit", "null",
                  "ci_method", "n_pairs", "n_runs", "verdict", "note"]
STATEMENTS = {
    "A1": "BYOL ImageNet -> BYOL domain (hierarchical) fine-tunes fastest: 4-5x faster than supervised ImageNet",
    "A2": "Fewer than 5 epochs of pretraining on domain data suffice for that speed-up",
    "A3": "With little labelled data (< 100 slices) supervised ImageNet is most accurate; error vs labelled "
          "slices follows a power law",
    "B1": "Multi-domain joint pretraining (HSSL) beats single-domain pretraining",
    "B2": "With 5 % of the labels HSSL beats training from scratch (+0.69 to +18.60 Dice points)",
    "B3": "With 10 % of the labels HSSL closes much of the gap to 100 %",
}
PAIRED_T = "paired by seed, Student's t 95 % CI"
HIERARCHICAL = ("hierarchical-ssl", "hierarchical-external", "hierarchical-supervised")
_ABLATION = "@"  # NAME@<E>ep strategies are the pretraining-epochs ablation


# ----------------------------------------------------------------------------- statistics
def verdict(low: float, high: float, null: float) -> str:
    """supported / contradicted / inconclusive for an interval against ``null`` (claimed side: above)."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return "inconclusive"
    if low > null:
        return "supported"
    if high < null:
        return "contradicted"
    return "inconclusive"


def _row(claim: str, quantity: str, unit: str, null: float, values, n_runs: int, note: str = "",
         log: bool = False) -> dict:
    vals = [math.log(v) for v in values if v > 0] if log else list(values)
    mean, low, high = t_interval(vals)
    ref = math.log(null) if log else null
    v = verdict(low, high, ref)
    if log:
        mean, low, high = (math.exp(x) if np.isfinite(x) else math.nan for x in (mean, low, high))
        method = PAIRED_T + " on log ratios (geometric mean)"
    else:
        method = PAIRED_T
    if len(vals) < 2:
        note = f"{note}; fewer than 2 pairs: no interval".lstrip("; ")
    return {"claim": claim, "work": claim[0], "statement": STATEMENTS[claim], "quantity": quantity,
            "effect": mean, "ci_low": low, "ci_high": high, "unit": unit, "null": null, "ci_method": method,
            "n_pairs": len(vals), "n_runs": n_runs, "verdict": v, "note": note}


def _not_run(claim: str, reason: str) -> dict:
    return {"claim": claim, "work": claim[0], "statement": STATEMENTS[claim], "quantity": "", "effect": math.nan,
            "ci_low": math.nan, "ci_high": math.nan, "unit": "", "null": math.nan, "ci_method": "", "n_pairs": 0,
            "n_runs": 0, "verdict": "not run", "note": reason}


# ----------------------------------------------------------------------------- selecting runs
def _main(ft: pd.DataFrame) -> pd.DataFrame:
    """Fine-tuning runs outside the pretraining-epochs ablation."""
    return ft[~ft["strategy"].astype(str).str.contains(_ABLATION, regex=False)]


def _strategy_of(ft: pd.DataFrame, role: str) -> str | None:
    """The strategy playing ``role`` with most runs (ties: by name)."""
    counts = ft[ft["role"] == role].groupby("strategy").size()
    if not len(counts):
        return None
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]


def _pairs(ft: pd.DataFrame, a: str, b: str, value: str, keys=("dataset", "budget", "seed")) -> pd.DataFrame:
    """Rows of strategy ``a`` and ``b`` matched on ``keys``: columns keys, ``a``, ``b``."""
    keys = list(keys)
    left = ft[ft["strategy"] == a][keys + [value]].rename(columns={value: "a"})
    right = ft[ft["strategy"] == b][keys + [value]].rename(columns={value: "b"})
    return left.merge(right, on=keys, how="inner").dropna(subset=["a", "b"])


def _skip_reason(analysis, roles: tuple[str, ...], what: str) -> str:
    skipped = analysis.results.skipped
    if len(skipped):
        reasons = sorted(set(str(r) for r in skipped["reason"].dropna()))[:2]
        return f"no complete {what} runs; the study skipped some runs: {'; '.join(reasons)}"
    return f"no complete {what} runs (roles {', '.join(roles)})"


# ----------------------------------------------------------------------------- Work A
def _censored_steps(analysis) -> pd.DataFrame:
    """Per run: steps to target, or (never reached) the last evaluated step; with ``reached``."""
    per = analysis.steps_runs.copy()
    if not len(per):
        return per
    last = analysis.curves.groupby("run_id")["step"].max()
    per["steps"] = per["steps_to_target"].where(per["reached"], per["run_id"].map(last))
    return per


def claim_a1(analysis, ft: pd.DataFrame) -> dict:
    main = _main(ft)
    ref = _strategy_of(main, "imagenet")
    if ref is None:
        return _not_run("A1", _skip_reason(analysis, ("imagenet",), "supervised ImageNet"))
    arm, role = next(((s, r) for r in HIERARCHICAL if (s := _strategy_of(main, r)) is not None), (None, None))
    if arm is None:
        return _not_run("A1", "no hierarchical arm: BYOL ImageNet weights are not available offline (give a "
                              "file: checkpoint), and no BYOL(natural) -> BYOL(domain) or supervised ImageNet -> "
                              "BYOL(domain) stand-in ran")
    steps = _censored_steps(analysis)
    pairs = _pairs(steps, ref, arm, "steps")
    ratios = (pairs["a"] / pairs["b"]).tolist()
    reached = steps[steps["strategy"].isin([ref, arm])]
    note = (f"{arm} ({role}) vs {ref}; target {analysis.target:g} x best final validation Dice per budget; "
            f"reached: {int(reached['reached'].sum())} of {len(reached)} runs; paper: 4-5x")
    if role != "hierarchical-ssl":
        note += f"; stand-in arm: {role} (BYOL ImageNet -> BYOL domain not run)"
    return _row("A1", f"speed-up: steps to target of {ref} / of {arm}", "x", 1.0, ratios, 2 * len(pairs), note,
                log=True)


def claim_a2(analysis, ft: pd.DataFrame) -> dict:
    ref = _strategy_of(_main(ft), "imagenet")
    if ref is None:
        return _not_run("A2", _skip_reason(analysis, ("imagenet",), "supervised ImageNet"))
    ablation = ft[ft["strategy"].astype(str).str.contains(_ABLATION, regex=False)]
    if not len(ablation):
        return _not_run("A2", "no pretraining-epochs ablation (strategies NAME@<E>ep) in this study")
    families = []
    for family, rows in ablation.groupby("pretrain_family"):
        final = ft[(ft["strategy"] == family)]
        role = final["role"].iloc[0] if len(final) else rows["role"].iloc[0]
        early = rows[rows["pretrain_epochs"] <= 5]
        if len(early) and len(final):
            families.append((HIERARCHICAL.index(role) if role in HIERARCHICAL else len(HIERARCHICAL), family, role,
                             early))
    if not families:
        return _not_run("A2", "the ablation has no checkpoint of at most 5 epochs with a final-epoch strategy "
                              "beside it")
    _, family, role, early = sorted(families, key=lambda f: (f[0], f[1]))[0]
    epochs = float(early["pretrain_epochs"].max())
    arm = early[early["pretrain_epochs"] == epochs]["strategy"].iloc[0]
    steps = _censored_steps(analysis)
    pairs = _pairs(steps, ref, arm, "steps")
    final_pairs = _pairs(steps, ref, family, "steps")
    final_ratio = t_interval([math.log(r) for r in (final_pairs["a"] / final_pairs["b"]) if r > 0])[0]
    note = (f"{arm} ({role}, {epochs:g} epochs) vs {ref}; after the final epoch ({family}): "
            f"{math.exp(final_ratio):.2f}x" if np.isfinite(final_ratio) else f"{arm} vs {ref}; final epoch: n/a")
    return _row("A2", f"speed-up after {epochs:g} pretraining epochs: steps of {ref} / of {arm}", "x", 1.0,
                (pairs["a"] / pairs["b"]).tolist(), 2 * len(pairs), note, log=True)


def claim_a3(analysis, ft: pd.DataFrame) -> dict:
    main = _main(ft)
    ref = _strategy_of(main, "imagenet")
    if ref is None:
        return _not_run("A3", _skip_reason(analysis, ("imagenet",), "supervised ImageNet"))
    small = main[(main["budget_kind"] == "slices") & (main["labelled_slices"] < 100)]
    diffs, n_runs, against = [], 0, set()
    for (dataset, budget), rows in small.groupby(["dataset", "budget"]):
        means = rows.groupby("strategy")["test_mean_dice"].mean().drop(ref, errors="ignore").dropna()
        if ref not in set(rows["strategy"]) or not len(means):
            continue
        best = means.idxmax()
        against.add(best)
        pairs = _pairs(rows, ref, best, "test_mean_dice")
        diffs += (100 * (pairs["a"] - pairs["b"])).tolist()
        n_runs += 2 * len(pairs)
    if not diffs:
        return _not_run("A3", "no budget under 100 labelled slices with supervised ImageNet and another strategy")
    fit = analysis.fits
    fit = fit[(fit["strategy"] == ref) & (fit["metric"] == "dice")] if len(fit) else fit
    exps = _per_seed_exponents(main[main["strategy"] == ref])
    b, lo, hi = t_interval(exps)
    if len(fit) and np.isfinite(fit["r2"].iloc[0]):
        law = (f"power law for {ref}: exponent b = {b:.2f} [{lo:.2f}, {hi:.2f}] over {len(exps)} seeds, "
               f"R² = {fit['r2'].iloc[0]:.2f} on {int(fit['n_points'].iloc[0])} budgets")
    else:
        law = "power law: fewer than 3 budgets, not fitted"
    return _row("A3", f"Dice points of {ref} - the best other strategy at budgets < 100 slices", "Dice points", 0.0,
                diffs, n_runs, f"best other: {', '.join(sorted(against))}; {law}")


def _per_seed_exponents(rows: pd.DataFrame) -> list[float]:
    out = []
    for _, seed_rows in rows[rows["labelled_slices"].notna()].groupby(["dataset", "seed"]):
        if seed_rows["labelled_slices"].nunique() >= 3:
            fit = fit_power_law(seed_rows["labelled_slices"].to_numpy(float),
                                1 - seed_rows["test_mean_dice"].to_numpy())
            if np.isfinite(fit["b"]):
                out.append(float(fit["b"]))
    return out


# ----------------------------------------------------------------------------- Work B
def _work_b(ft: pd.DataFrame, role: str) -> str | None:
    return _strategy_of(_main(ft[ft["budget_kind"] == "fraction"]), role)


def claim_b1(analysis, ft: pd.DataFrame) -> dict:
    multi, single = _work_b(ft, "multi-domain"), _work_b(ft, "specialist")
    if multi is None or single is None:
        return _not_run("B1", "needs multi-domain (HSSL) and single-domain SSL runs at labelled fractions "
                              "(studies/hssl*.yaml, or studies/phantom-full.yaml)")
    pairs = _pairs(ft, multi, single, "test_mean_dice")
    return _row("B1", f"Dice points of {multi} - {single} (every task and fraction)", "Dice points", 0.0,
                (100 * (pairs["a"] - pairs["b"])).tolist(), 2 * len(pairs),
                f"{pairs['dataset'].nunique()} tasks, fractions {sorted(pairs['budget'].unique())}")


def claim_b2(analysis, ft: pd.DataFrame) -> dict:
    multi, scratch = _work_b(ft, "multi-domain"), _work_b(ft, "scratch")
    if multi is None or scratch is None:
        return _not_run("B2", "needs multi-domain (HSSL) and scratch runs at labelled fractions")
    at5 = ft[(ft["budget_kind"] == "fraction") & np.isclose(ft["budget_value"].astype(float), 0.05)]
    pairs = _pairs(at5, multi, scratch, "test_mean_dice")
    if not len(pairs):
        return _not_run("B2", "no runs at 5 % of the labels")
    per_task = (100 * (pairs["a"] - pairs["b"])).groupby(pairs["dataset"]).mean()
    note = "per task: " + ", ".join(f"{d.split('?')[0]} {v:+.1f}" for d, v in per_task.items()) + \
        "; paper: +0.69 to +18.60"
    return _row("B2", f"Dice points of {multi} - {scratch} at 5 % labels", "Dice points", 0.0,
                (100 * (pairs["a"] - pairs["b"])).tolist(), 2 * len(pairs), note)


def claim_b3(analysis, ft: pd.DataFrame) -> dict:
    multi = _work_b(ft, "multi-domain")
    if multi is None:
        return _not_run("B3", "needs multi-domain (HSSL) runs at labelled fractions")
    rows = ft[(ft["strategy"] == multi) & (ft["budget_kind"] == "fraction")]
    wide = rows.pivot_table(index=["dataset", "seed"], columns="budget_value", values="test_mean_dice")
    need = [c for c in wide.columns if np.isclose(c, 0.05) or np.isclose(c, 0.1) or np.isclose(c, 1.0)]
    if len(need) < 3:
        return _not_run("B3", "needs HSSL runs at 5 %, 10 % and 100 % of the labels")
    d5, d10, d100 = (wide[next(c for c in wide.columns if np.isclose(c, f))] for f in (0.05, 0.1, 1.0))
    gap = d100 - d5
    ok = gap > 0
    fractions = ((d10 - d5) / gap)[ok].dropna().tolist()
    note = f"{multi}; {int((~ok).sum())} (task, seed) pairs without a positive 5 %->100 % gap left out"
    return _row("B3", f"fraction of the 5 %->100 % gap of {multi} closed at 10 %", "fraction", 0.5, fractions,
                3 * len(fractions), note)


EFFECT_COLUMNS = ["dataset", "budget", "strategy", "role", "versus", "diff", "ci_low", "ci_high", "n_pairs", "verdict"]


def effects_table(analysis) -> pd.DataFrame:
    """Every strategy against random init, per dataset and budget: test Dice points, paired by seed.

    ``diff`` = mean over seeds of (strategy − scratch) in Dice points with a Student's t 95 % CI;
    ``verdict`` says whether the interval excludes no effect (``better`` / ``worse``) or not
    (``no clear difference``). The claims table answers the papers' questions; this table is
    the plain comparison behind them.
    """
    ft = _main(analysis.results.finetune())
    if "role" not in ft.columns or not len(ft):
        return pd.DataFrame(columns=EFFECT_COLUMNS)
    rows = []
    for (dataset, budget), cell in ft.groupby(["dataset", "budget"], sort=False):
        scratch = _strategy_of(cell, "scratch")
        if scratch is None:
            continue
        for strategy in sorted(set(cell["strategy"]) - {scratch}):
            pairs = _pairs(cell, strategy, scratch, "test_mean_dice")
            diff, lo, hi = t_interval((100 * (pairs["a"] - pairs["b"])).tolist())
            word = {"supported": "better", "contradicted": "worse"}.get(verdict(lo, hi, 0.0), "no clear difference")
            rows.append({"dataset": dataset, "budget": budget, "strategy": strategy,
                         "role": cell.loc[cell["strategy"] == strategy, "role"].iloc[0], "versus": scratch,
                         "diff": diff, "ci_low": lo, "ci_high": hi, "n_pairs": len(pairs), "verdict": word})
    out = pd.DataFrame(rows, columns=EFFECT_COLUMNS)
    if len(out):
        order = {b: i for i, b in enumerate(analysis.errors.sort_values("labelled_slices")["budget"].unique())} \
            if len(analysis.errors) else {}
        out = out.sort_values(["dataset", "budget", "strategy"],
                              key=lambda s: s.map(order) if s.name == "budget" else s)
    return out.reset_index(drop=True)


def claims_table(analysis) -> pd.DataFrame:
    """One row per claim (:data:`CLAIMS_COLUMNS`), computed from ``analysis`` (see the module docstring)."""
    ft = analysis.results.finetune()
    if "role" not in ft.columns:
        ft = ft.assign(role=None)
    rows = [fn(analysis, ft) for fn in (claim_a1, claim_a2, claim_a3, claim_b1, claim_b2, claim_b3)]
    return pd.DataFrame(rows, columns=CLAIMS_COLUMNS)


def format_effect(row) -> str:
    """``×2.31 [1.40, 3.81]`` / ``+4.2 [0.8, 7.6] Dice points`` / ``0.71 [0.55, 0.87]`` for a claims row."""
    if row["verdict"] == "not run":
        return "—"
    e, lo, hi = row["effect"], row["ci_low"], row["ci_high"]
    ci = f" [{lo:.2f}, {hi:.2f}]" if np.isfinite(lo) else " [no interval]"
    if row["unit"] == "x":
        return f"×{e:.2f}{ci}"
    if row["unit"] == "Dice points":
        ci = f" [{lo:+.1f}, {hi:+.1f}]" if np.isfinite(lo) else " [no interval]"
        return f"{e:+.1f}{ci} points"
    return f"{e:.2f}{ci}"
