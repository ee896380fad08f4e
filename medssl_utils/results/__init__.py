"""Gather finished run directories into tidy tables, and compute the study's derived quantities.

Four modules, each one job, dependencies pointing down: :mod:`~medssl_utils.results.columns` (the
tables' columns and shared value coercions), :mod:`~medssl_utils.results.lineage` (what a run's
encoder start was), :mod:`~medssl_utils.results.gather` (reading run directories),
:mod:`~medssl_utils.results.tables` (the derived tables) and :mod:`~medssl_utils.results.analysis`
(all of them at once). Their public names are importable from here.

:func:`gather` walks one or several results folders for run directories (see
``docs/run-format.md``), reads each one's ``params.json``, ``result.json``, ``history.csv`` and
``test_metrics.csv``, and returns a :class:`Results` of tidy DataFrames. A broken run (unreadable
JSON, missing history, status ``failed`` / ``running``) never stops the analysis: it is listed in
``Results.problems`` with the reason, and runs the study skipped on purpose (e.g. ImageNet arms
offline) are listed in ``Results.skipped``.

Every derived quantity is a pure function of those DataFrames; :func:`analyse` runs them all.
Only fine-tuning runs whose status is ``complete`` enter them. The definitions a reader checks:

**Budget.** A fine-tuning run's label budget is what its parameters asked for:
``labelled_fraction`` (shown ``"5%"``; ``budget_kind == "fraction"``) or ``labelled_slices``
(shown ``"15 slices"``; ``"slices"``); neither means all labels (``"100%"``). A *cell* is one
(dataset, budget, strategy); its runs differ only in the seed.

**Strategy.** The study runner names it: ``study.json``'s ``strategy`` (``stage`` for pretraining),
else the layout ``…/finetune/<strategy>/<budget>/seed<k>/``; otherwise ``params["strategy"]``, else
the run's ``lineage_name``, else its ``init``.

**Steps to target (claim A1)** — :func:`steps_to_target`, :func:`steps_summary`.
A run's *final validation Dice* is the ``val_dice`` (mean foreground Dice on the validation
patients' slices) of its last evaluation row in ``history.csv``. For each (dataset, budget),
``best_final_dice`` D* is the maximum over strategies of the mean over seeds of the final
validation Dice, and the threshold is ``target_dice = target × D*`` (the same threshold for every
strategy at that budget, so their steps compare). A run's ``steps_to_target`` is the first
evaluation step whose ``val_dice ≥ target_dice``; a run that never gets there has NaN and is
counted (``n_runs − n_reached``). Step = optimiser step as logged in ``history.csv``.

**Speed-up.** Against a reference strategy R chosen per dataset (default: supervised ImageNet —
a lineage that is only an ImageNet start — when it has complete runs on that dataset, else random
init; see :func:`choose_references`): for each seed k where both reached the target at the same
dataset and
budget, ``ratio_k = steps_R(k) / steps_S(k)`` (> 1: S is faster). ``speedup_mean`` ±
``speedup_std`` (sample SD, ddof=1) over those ``n_pairs`` seeds; ``speedup_of_means`` is
``steps_mean(R) / steps_mean(S)``, the ratio of the per-strategy means over seeds that reached.

**Pretraining epochs (claim A2)** — :func:`speedup_vs_epochs`. A strategy named ``NAME@<E>ep``
(e.g. ``byol-cardiac@1ep``) belongs to family ``NAME`` with E epochs; otherwise its family is its
name (a lineage name loses its last ``", E ep"``) and E is the ``epochs`` of the last
pretraining stage of its lineage. Families seen with at least two epoch values form the table.

**Error vs labelled slices (claim A3)** — :func:`error_vs_slices`, :func:`power_law_fits`.
Error is ``1 − test mean Dice`` (mean over test volumes and foreground structures of per-volume
Dice) and ``1 − test mean IoU`` (mean over foreground structures of the per-2D-slice IoU,
Work A's evaluation); per cell, mean ± SD over seeds; x = the mean number of labelled slices the
runs actually used. The power law ``err = a · n^(−b)`` is fitted per (dataset, strategy) by least
squares of ``log err = log a − b log n`` on the cell means (each budget weighs the same; points
with err ≤ 0 are left out and counted); ``r2`` is R² of that fit in log–log space, NaN with fewer
than 3 points.

**HSSL table (claims B1–B3)** — :func:`hssl_table`. Test mean Dice per (task = dataset,
strategy, labelled fraction; tasks with a fraction below 1 only), mean ± SD over seeds (n), and
``diff_vs_scratch`` =
100 × (mean − the scratch strategy's mean at the same task and fraction), in Dice points.

**Per structure** — :func:`per_structure_table`. Per run and structure: mean over test volumes of
per-volume Dice, mean of HD95 (mm) over volumes where it is defined, missed volumes (structure in
the ground truth, prediction empty); then per cell mean ± SD over seeds, with the pooled
per-volume SD, and per-slice IoU (from ``result.json``) mean ± SD over seeds.
"""

from medssl_utils.results.analysis import Analysis, analyse
from medssl_utils.results.columns import (BUDGET, CELL, PROBLEM_COLUMNS, RUN_COLUMNS, RUN_KEYS, SKIPPED_COLUMNS,
                                          STRUCTURE_COLUMNS, as_float, empty_table, finetune_runs, sorted_budgets)
from medssl_utils.results.gather import PARAMS_FILE, RESULT_FILE, STUDY_FILE, Results, find_run_dirs, gather
from medssl_utils.results.lineage import ROLES, pretrain_epochs, pretraining_category, role_of, stage_checkpoint
from medssl_utils.results.tables import (CURVE_COLUMNS, CURVE_FT_COLUMNS, EPOCHS_COLUMNS, ERROR_COLUMNS, FIT_COLUMNS,
                                         HSSL_COLUMNS, PROBE_COLUMNS, REFERENCE_COLUMNS, SELECTION_COLUMNS,
                                         SHIFT_COLUMNS, STEPS_COLUMNS, STEPS_RUN_COLUMNS, STRUCTURE_TABLE_COLUMNS,
                                         check_target, choose_reference, choose_references, encoder_shift_table,
                                         error_vs_slices, hssl_table, per_structure_table, power_law_fits,
                                         pretraining_curve, probe_table, read_probe_files, selected_runs,
                                         selection_table, speedup_vs_epochs, steps_summary, steps_to_target,
                                         validation_curves)

__all__ = ["Analysis", "BUDGET", "CELL", "CURVE_COLUMNS", "CURVE_FT_COLUMNS", "EPOCHS_COLUMNS",
    "ERROR_COLUMNS", "FIT_COLUMNS", "HSSL_COLUMNS", "PARAMS_FILE", "PROBE_COLUMNS", "PROBLEM_COLUMNS",
    "REFERENCE_COLUMNS", "RESULT_FILE", "ROLES", "RUN_COLUMNS", "RUN_KEYS", "Results", "SELECTION_COLUMNS",
    "SHIFT_COLUMNS", "SKIPPED_COLUMNS", "STEPS_COLUMNS", "STEPS_RUN_COLUMNS", "STRUCTURE_COLUMNS",
    "STRUCTURE_TABLE_COLUMNS", "STUDY_FILE", "analyse", "as_float", "check_target", "choose_reference",
    "choose_references", "empty_table", "encoder_shift_table", "error_vs_slices", "find_run_dirs",
    "finetune_runs", "gather", "hssl_table", "per_structure_table", "power_law_fits", "pretrain_epochs",
    "pretraining_category", "pretraining_curve", "probe_table", "read_probe_files", "role_of",
    "selected_runs", "selection_table", "sorted_budgets", "speedup_vs_epochs", "stage_checkpoint",
    "steps_summary", "steps_to_target", "validation_curves"]
