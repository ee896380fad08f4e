"""Study files and the study runner: ``medssl study run STUDY.yaml`` / ``medssl study status``.

A *study* is a YAML file naming pretraining *stages* and a fine-tuning *grid*
(strategies × label budgets × seeds). The runner executes ``notebooks/01_pretrain.ipynb`` once
per stage and ``notebooks/02_finetune.ipynb`` once per grid cell with papermill, in dependency
order, and writes each executed notebook into its run directory (``docs/run-format.md``).

Study file
----------
Every relative path in a study file (``results_dir``, ``notebooks``, ``file:`` inits, the paths of
``acdc:`` / ``msd:`` / ``folder:`` dataset specs) is relative to **the folder holding the study
file**, so a study runs the same from any working directory; ``~`` and ``$VARS`` are expanded.
Unknown keys are errors at the top level, in ``pretrain``, ``finetune`` and a task, and so is a key
given twice in one mapping (YAML merge keys ``<<: *anchor`` work); wherever *notebook parameters* are
expected (``defaults``, ``*.params``, a stage, a strategy mapping), every key is passed to papermill, so
any parameter a notebook has can be set — and only those: before any run starts (``--dry-run`` too)
each is checked against the notebook's declared parameters (:mod:`medssl_utils.params`, or the
parameters cell of a custom notebook) and its type and allowed values
(:func:`~medssl_utils.study.checks.check_parameters`), so a typo is an error naming the key::

    name: quick                      # default: the file name without .yaml
    description: one paragraph       # optional, shown by `status`
    results_dir: ../results/quick    # default: results/<name> beside the study file
    notebooks:                       # optional; default: medssl's notebooks/ folder
      pretrain: ../notebooks/01_pretrain.ipynb
      finetune: ../notebooks/02_finetune.ipynb
    defaults:                        # parameters of every run (both notebooks)
      encoder: resnet18
      image_size: 64
    pretrain:
      params: {epochs: 3}            # parameters of every stage
      stages:                        # name -> parameters of 01_pretrain (method, datasets required)
        byol-natural:  {method: byol, datasets: [natural]}
        byol-cardiac:  {method: byol, datasets: ["phantom:cardiac"], save_epochs: [1, 3]}
        byol-nat-card: {method: byol, datasets: ["phantom:cardiac"], init: "stage:byol-natural"}
    finetune:
      dataset: "phantom:cardiac"     # or `tasks:` (below)
      params: {max_steps: 200}       # parameters of every fine-tuning run
      strategies:                    # name -> init, or a mapping {init: ..., <overrides>}
        random: random
        supervised-imagenet: timm
        byol-cardiac: "stage:byol-cardiac"
        byol-cardiac@1ep: {init: "stage:byol-cardiac@1", labelled_slices: [16], seeds: [0]}
      labelled_slices: [4, 16, all]  # or labelled_fraction: [0.05, 0.1, 1.0]; `all` = every label
                                     # (passed as labelled_fraction: 1.0)
      seeds: [0, 1]                  # or a count: `seeds: 10` means 0..9

``init`` (of a stage or a strategy) is ``random``, ``timm`` (the encoder's timm pretrained weights,
e.g. ImageNet), ``file:PATH`` (a weights file), a checkpoint path, or ``stage:NAME`` — the final
checkpoint of stage NAME (``<results>/pretrain/NAME/checkpoints/final.pt``) — or ``stage:NAME@E``,
its epoch-E checkpoint (``epoch_E.pt``; E must be in that stage's ``save_epochs`` as the study
sets it). A run waits for the stages it starts from; stages starting from stages form chains
(natural → cardiac), and a cycle is an error.

A strategy mapping may override the grid's ``labelled_slices`` / ``labelled_fraction`` and
``seeds`` (e.g. a pretraining-epochs ablation at one budget); its other keys are notebook
parameters. The analysis reads a strategy named ``NAME@<E>ep`` as family NAME after E epochs.

Several downstream datasets (Work B): instead of ``dataset``, give ``tasks``, each a mapping with
its own ``dataset`` and optionally ``strategies``, ``labelled_*``, ``seeds``, ``params`` (which
override the grid's; strategies are merged by name, ``null`` drops one)::

    finetune:
      labelled_fraction: [0.05, 0.1, 1.0]
      strategies: {scratch: random, hssl: "stage:hssl-all"}
      tasks:
        cardiac: {dataset: "phantom:cardiac", strategies: {single-domain: "stage:ssl-cardiac"}}
        prostate: {dataset: "phantom:prostate-mr", strategies: {single-domain: "stage:ssl-prostate"}}

Parameters merge in this order (later wins): ``defaults``, ``pretrain.params`` / ``finetune.params``,
the task's ``params``, the stage / strategy, then the run's ``sweep`` values (below). The runner sets
``run_dir``, ``init`` (resolved), and for fine-tuning ``dataset``, ``seed`` and both
``labelled_slices`` and ``labelled_fraction`` (the unused one ``None``); setting those elsewhere is an
error.

Hyperparameter sweeps with selection on validation data: ``sweep`` maps fine-tuning notebook
parameters to non-empty lists of values; every combination (the product of the lists) is one
*arm* of the cell (task, strategy, budget)::

    finetune:
      sweep: {lr: [1.0e-2, 3.0e-3], encoder_lr_scale: [1.0, 0.1]}  # every strategy (of every task)
      selection_seeds: [0]           # optional; default: every seed of the cell
      seeds: [0, 1, 2]
      strategies:
        random: random
        byol: {init: "stage:byol", sweep: {freeze_encoder_steps: [0, 50]}}  # adds a key for this arm
      tasks:                         # (with tasks) a task may give its own sweep / selection_seeds too

- Levels: ``finetune.sweep``, ``finetune.tasks.<task>.sweep`` and a strategy mapping's ``sweep``;
  a lower level adds keys, and a key given again replaces that key's list for that task / arm.
  The grid is the product of the merged lists: keys in the order they first appear (higher level
  first), values in the order written, the first key varying slowest. **List the simplest (default)
  value of each axis first**: ties go to the combination listed first.
- A sweep must be a mapping; each value a non-empty list without repeats of numbers, true / false,
  null or folder-safe strings (letters, digits, ``. _ - @``); keys are notebook parameters (checked
  like any parameter, errors name e.g. ``finetune.strategies.byol.sweep.lr``), not runner-owned
  ones nor ``slurm``. A key also set as a plain parameter is fine: the sweep's value wins.
- ``selection_seeds`` (grid, task or strategy level, later wins; a list or a count like ``seeds``)
  must be a non-empty subset of the cell's seeds. Every combination runs at every selection seed
  (*selection runs*); the other seeds (*conditional runs*) run only for the combination with the
  highest mean validation Dice (``val_final_dice`` of ``result.json``) over the selection seeds,
  compared to 3 decimals, ties to the combination listed first (:mod:`medssl_utils.selection`;
  test metrics are never read). The losers' conditional runs are ``not selected``: nothing is
  executed or written for them. With the default (every seed selects) all combinations run at all
  seeds and the analysis applies the same rule.
- Folders and ids: a swept cell's runs live in ``<strategy>/<budget>/<combo>/seed<k>`` (run id
  ``[<task>/]finetune/<strategy>/<budget>/<combo>/seed<k>``); ``<combo>`` is
  ``key-value+key-value`` in grid order (``lr-0.01+encoder_lr_scale-1``: ``1.0e-3`` -> ``0.001``,
  ``1.0`` -> ``1``, ``True`` -> ``true``; two values giving one label, such as ``1`` and ``1.0``, are an
  error). A cell without a sweep keeps ``<strategy>/<budget>/seed<k>``.

SLURM resources (used by ``--executor slurm`` only, validated always) go in ``slurm`` sections:
at the top level, in ``pretrain`` / ``finetune`` / a task, and in a stage or strategy mapping;
they merge in that order (later wins; ``sbatch`` options merge option by option)::

    slurm: {partition: gpu, time: 60, cpus_per_task: 8, gpus_per_node: 1, mem: 32G, account: lab}
    pretrain:
      slurm: {time: "1-00:00:00"}        # stages need a day
      stages:
        byol-acdc: {method: byol, datasets: [...], devices: 4, slurm: {gpus_per_node: 4}}

Keys (:data:`medssl_utils.study.resources.RESOURCE_KEYS`): ``partition``, ``time`` (required for
slurm: minutes or ``[D-]HH:MM[:SS]``), ``cpus_per_task``, ``gpus_per_node``, ``mem`` (``32G``),
``account``, ``qos``, ``constraint``, ``sbatch`` (other options, ``["--reservation=x"]``),
``setup`` (shell lines run in the job first). A run with ``devices: N > 1`` becomes one job with
N tasks (and N GPUs when it has GPUs).

Run directories
---------------
``<results>/pretrain/<stage>/`` and ``<results>/finetune/<strategy>/<budget>/seed<k>/``
(``<results>/<task>/finetune/...`` with tasks; ``.../<budget>/<combo>/seed<k>/`` in a swept cell);
``<budget>`` is ``n16`` (16 labelled slices), ``all`` or ``f0.05`` (5% of labels). Each holds the
notebook's files, ``notebook.ipynb`` (the executed copy, saved after every cell), ``study.json``
(which study, stage / strategy, task, budget, seed and init as written made this run; for
fine-tuning also ``combo``, ``sweep`` — this run's values —, ``grid`` — the cell's combination
labels in study order —, ``selection_seeds`` and ``seeds`` — the cell's —, with ``null`` / ``{}`` /
``[]`` without a sweep) and ``kernel.log`` (the kernel process's own stdout / stderr, e.g.
start-up warnings; cell output stays in the notebook).

Runner behaviour
----------------
- A run whose ``result.json`` says ``complete`` is not run again unless ``force`` (then the
  notebook gets ``overwrite=True``). Anything else — no ``result.json``, ``running`` (an
  interrupted run; the notebooks resume from ``checkpoints/last.pt``), ``failed``,
  ``skipped``, ``unreadable`` (a truncated or damaged ``result.json``: the plan and the run say so,
  and the file is replaced) — is (re)run.
- ``init: timm`` is checked before anything runs, without downloading: the weights must be in
  the Hugging Face / torch-hub cache, or the hub must be reachable (and ``HF_HUB_OFFLINE`` unset).
  A missing ``file:`` weights file is treated alike. Such a run is **skipped**: its
  ``result.json`` gets status ``skipped`` and the reason as ``error``. Runs depending on a failed
  or skipped stage are skipped with ``depends on failed/skipped stage X``. Random init is never
  substituted.
- A failing notebook is recorded (``result.json`` status ``failed``, one-line ``error``, the
  partly executed ``notebook.ipynb``) and the other runs go on; the summary lists failures and
  :attr:`StudySummary.exit_code` is 1.
- Executors: ``local`` (:mod:`~medssl_utils.study.local`, the default) executes up to ``workers``
  independent runs at once (threads driving papermill, each run in its own kernel process); the
  results do not depend on N. Ctrl-C interrupts the running kernels; those runs are recorded as
  failed and are redone by the next ``run``. ``slurm`` (:mod:`~medssl_utils.study.slurm`)
  submits each ready run as a SLURM job (arrays for runs sharing resources), at most
  ``max_jobs`` at once, and waits for them; Ctrl-C leaves the jobs queued / running and the
  next ``run`` adopts them instead of submitting them again.
- Executed notebooks run with the run directory as working directory.
- Sweeps: a conditional run waits until every selection run of its cell has an outcome. If one
  is not complete (failed, skipped, ...) the conditional run is ``skipped`` with ``selection of
  <cell> incomplete: <run> is <state>`` and nothing is written into its folder (the next ``run``
  retries the selection run, then decides); a loser is ``not selected``; the winner runs like any
  run. The result does not depend on ``workers``; with ``force`` the selection runs re-run first and
  the conditional runs follow the new selection. The dry run shows ``after selection`` for a
  conditional run whose selection is not complete yet (else what the run would do), and ``status``
  shows ``awaits selection`` / ``not selected`` for conditional runs without a ``result.json``.
  After a run or dry run one line per swept cell gives its selection (or ``not yet selected``).
- One progress bar counts runs (one HTML output in Jupyter, tqdm in a terminal, a few plain
  lines in a log); the summary printed at the end counts done / already complete / skipped / failed
  (and not selected, in a swept study),
  gives the training share (``timings.train_s`` of the runs executed now over their notebooks'
  wall time), groups skipped runs by reason and lists each failed run's folder and error.

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
