"""Everything at once: :func:`analyse` runs every derived table of :mod:`medssl_utils.results.tables`
on the runs that selection on validation kept, plus the claims, into one :class:`Analysis`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from medssl_utils.claims import claims_table, effects_table
from medssl_utils.results.gather import Results
from medssl_utils.results.columns import empty_table
from medssl_utils.results.tables import (CURVE_COLUMNS, CURVE_FT_COLUMNS, PROBE_COLUMNS, SELECTION_COLUMNS,
                                         SHIFT_COLUMNS, check_target, choose_references, encoder_shift_table,
                                         error_vs_slices, hssl_table, per_structure_table, power_law_fits,
                                         pretraining_curve, probe_table, read_probe_files, selected_runs,
                                         selection_table, speedup_vs_epochs, steps_summary, steps_to_target,
                                         validation_curves)


# =============================================================================== everything
@dataclass
class Analysis:
    """Every derived table of one :class:`Results` (see the module docstring for definitions).

    ``results`` holds the runs the tables use — every run, except that in a swept cell only the runs of
    the combination picked on validation data are kept (:func:`selection_table`); ``gathered`` is
    everything :func:`gather` found (``tables/runs.csv``, with a ``selected`` column).
    """

    results: Results
    target: float
    references: pd.DataFrame
    steps_runs: pd.DataFrame
    steps: pd.DataFrame
    epochs: pd.DataFrame
    errors: pd.DataFrame
    fits: pd.DataFrame
    hssl: pd.DataFrame
    per_structure: pd.DataFrame
    curves: pd.DataFrame
    claims: pd.DataFrame = field(default_factory=pd.DataFrame)
    effects: pd.DataFrame = field(default_factory=pd.DataFrame)
    gathered: Results | None = None
    selection: pd.DataFrame = field(default_factory=lambda: empty_table(SELECTION_COLUMNS))
    probes: pd.DataFrame = field(default_factory=lambda: empty_table(PROBE_COLUMNS))
    shifts: pd.DataFrame = field(default_factory=lambda: empty_table(SHIFT_COLUMNS))
    probe_curve: pd.DataFrame = field(default_factory=lambda: empty_table(CURVE_COLUMNS))
    finetune_curve: pd.DataFrame = field(default_factory=lambda: empty_table(CURVE_FT_COLUMNS))

    @property
    def reference_text(self) -> str:
        """The speed-up reference of each dataset and why, in one line."""
        if not len(self.references):
            return "no reference (no complete fine-tuning runs)"
        return "; ".join(f"{r.dataset}: {r.reason}" for r in self.references.itertuples(index=False))

    def tables(self) -> dict[str, pd.DataFrame]:
        """Name → table, as written to ``tables/<name>.csv``."""
        r = self.results
        every = self.gathered or r
        runs = every.runs.assign(selected=every.runs["run_id"].isin(set(r.runs["run_id"])))
        return {"claims": self.claims, "effects_vs_scratch": self.effects, "runs": runs,
                "selection": self.selection, "probe": self.probes, "encoder_shift": self.shifts,
                "pretraining_curve_probe": self.probe_curve, "pretraining_curve_finetune": self.finetune_curve,
                "steps_to_target": self.steps, "steps_to_target_runs": self.steps_runs,
                "speedup_vs_epochs": self.epochs, "error_vs_slices": self.errors, "power_law_fits": self.fits,
                "hssl": self.hssl, "per_structure": self.per_structure, "references": self.references,
                "skipped": r.skipped,
                "problems": r.problems}


def analyse(results: Results, target: float = 0.95, reference: str | None = None,
            scratch: str | None = None) -> Analysis:
    """Run every derived quantity on ``results``.

    Args:
        results: from :func:`gather`.
        target: fraction of the best final validation Dice that counts as converged (A1).
        reference: strategy the speed-ups are relative to (default per dataset: :func:`choose_references`).
        scratch: strategy the HSSL table's differences are relative to (default: random init).
    """
    target = check_target(target)
    gathered = results
    selection = selection_table(results.runs)
    keep = selected_runs(results.runs, selection)
    if not keep.all():  # only the picked combination of each swept cell enters the tables
        ids = set(results.runs.loc[keep, "run_id"])
        results = Results(runs=results.runs[keep].copy(), history=_only(results.history, ids),
                          test=_only(results.test, ids), structures=_only(results.structures, ids),
                          skipped=results.skipped, problems=results.problems, roots=results.roots)
    refs = choose_references(results.runs, reference)
    per_run = steps_to_target(results.runs, results.history, target)
    steps = steps_summary(per_run, refs)
    errors = error_vs_slices(results.runs)
    an = Analysis(
        results=results, target=target, references=refs, steps_runs=per_run, steps=steps,
        epochs=speedup_vs_epochs(steps, results.runs), errors=errors, fits=power_law_fits(errors),
        hssl=hssl_table(results.runs, scratch),
        per_structure=per_structure_table(results.runs, results.test, results.structures),
        curves=validation_curves(results.runs, results.history), gathered=gathered, selection=selection,
        probes=probe_table(results.runs), shifts=encoder_shift_table(results.runs))
    an.probe_curve, an.finetune_curve = pretraining_curve(results.runs, read_probe_files(results.runs))
    an.claims = claims_table(an)
    an.effects = effects_table(an)
    return an


def _only(table: pd.DataFrame, ids: set) -> pd.DataFrame:
    return table[table["run_id"].isin(ids)].copy() if "run_id" in table.columns else table
