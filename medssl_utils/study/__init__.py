"""Study files and the study runner: ``medssl study run STUDY.yaml`` / ``medssl study status``.

A *study* is a YAML file naming pretraining *stages* and a fine-tuning *grid*
(strategies × label budgets × seeds). The runner executes ``notebooks/01_pretrain.ipynb`` once
per stage and ``notebooks/02_finetune.ipynb`` once per grid cell with papermill, in dependency
order, and writes each executed notebook into its run directory (``docs/run-format.md``).

The study file's schema — every key, the merge order of parameters, sweeps and selection on
validation, ``slurm`` sections, run directories and what the runner does — is described once, in
``docs/study.md`` ("The study file"); where each key may appear is generated from
:mod:`medssl_utils.study.spec` into ``docs/reference.md``.

Modules, bottom to top: :mod:`.resources` (the SLURM resource schema), :mod:`.spec` (study files →
runs), :mod:`.records` (run-directory files), :mod:`.jobs` (SLURM job records), :mod:`.executor`
(the executor interface and the table of executors), :mod:`.local` and :mod:`.slurm` (the two
executors), :mod:`.checks` (weights, notebooks, data folders), :mod:`.formatting` (what the commands
print), :mod:`.runner` (scheduling, summary, status), :mod:`.cli` (the command line).
"""

from medssl_utils.study.checks import blocked_runs, check_parameters, preflight_problems, timm_weights_available
from medssl_utils.study.cli import add_cli
from medssl_utils.study.formatting import format_plan, format_status, format_summary
from medssl_utils.study.executor import EXECUTORS, Executor, executor_class
from medssl_utils.study.local import LocalExecutor, NotebookEngine, PapermillEngine, execute_run
from medssl_utils.study.records import STATES, Outcome, read_state
from medssl_utils.study.runner import (CellSelection, StudySummary, cell_selections, make_executor,
                                       run_study, select_cell, skip_run, study_status)
from medssl_utils.study.resources import RESOURCE_KEYS
from medssl_utils.study.slurm import SlurmExecutor
from medssl_utils.study.spec import Run, Study, execution_order, load_study

__all__ = ["RESOURCE_KEYS", "STATES", "CellSelection", "Executor", "LocalExecutor", "NotebookEngine", "Outcome",
           "PapermillEngine", "EXECUTORS", "Run", "SlurmExecutor", "executor_class", "Study", "StudySummary",
           "add_cli", "blocked_runs", "cell_selections", "check_parameters", "execute_run", "select_cell",
           "execution_order", "format_plan", "format_status", "format_summary", "load_study", "make_executor",
           "preflight_problems", "read_state", "run_study", "skip_run", "study_status", "timm_weights_available"]
