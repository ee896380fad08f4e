"""``report.html`` and its files: :func:`write_report` writes ``figures/*.png``, ``tables/*.csv`` and the
self-contained page (figures embedded), each atomically, the page last."""

from __future__ import annotations

import base64
import html
import os
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from medssl_utils import results as R
from medssl_utils.errors import DataError
from medssl_utils.fileio import atomic_write
from medssl_utils.plots import figure_png
from medssl_utils.report.captions import FIGURES, figures
from medssl_utils.report.figures import seeds_label
from medssl_utils.report.tables import claims_display, display_tables, effects_display, selection_display


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
    seeds = seeds_label(cells) if len(cells) else "n = 0"
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
        atomic_write(out / "tables" / f"{name}.csv", table.to_csv(index=False).encode("utf-8"))
    figs, pngs = figures(an), {}
    for name, (fig, _) in figs.items():
        path = out / "figures" / f"{name}.png"
        if fig is None:
            path.unlink(missing_ok=True)
            continue
        pngs[name] = figure_png(fig, dpi=100, tight=True)
        atomic_write(path, pngs[name])
    page = out / "report.html"
    atomic_write(page, render_html(an, figs, pngs).encode("utf-8"))
    return page
