"""The command line of ``medssl study run`` / ``medssl study status`` (what they print:
:mod:`medssl_utils.study.formatting`)."""

from __future__ import annotations

from medssl_utils.errors import ParameterError
from medssl_utils.study.executor import EXECUTORS
from medssl_utils.study.formatting import format_status
from medssl_utils.study.resources import RESOURCE_KEYS
from medssl_utils.study.runner import run_study, study_status
from medssl_utils.study.spec import load_study

SLURM_FLAGS = ("max_jobs", "poll_s", *RESOURCE_KEYS)


def _cmd_run(args) -> int:
    options = {k: getattr(args, k) for k in SLURM_FLAGS if getattr(args, k) not in (None, [])}
    if args.executor == "local" and options:
        flags = ", ".join(f"--{'poll' if k == 'poll_s' else k.replace('_', '-')}" for k in options)
        raise ParameterError(f"{flags}: only with --executor slurm")
    if args.executor == "slurm" and args.workers is not None:
        raise ParameterError("--workers: only with --executor local; with --executor slurm, --max-jobs limits "
                             "the jobs queued or running at once")
    local = {k: getattr(args, k) for k in ("gpus", "runs_per_gpu") if getattr(args, k) is not None}
    if args.executor == "slurm" and local:
        raise ParameterError(f"{', '.join('--' + k.replace('_', '-') for k in local)}: only with --executor local; "
                             "with --executor slurm, --gpus-per-node gives each job its GPUs")
    options = options or local
    if args.executor == "slurm" and args.cold_kernels:
        raise ParameterError("--cold-kernels: only with --executor local (each SLURM job starts its own kernel)")
    summary = run_study(args.study, workers=args.workers, dry_run=args.dry_run, force=args.force,
                        results_dir=args.results_dir, executor=args.executor, executor_options=options,
                        warm_kernels=not args.cold_kernels)
    return summary.exit_code


def _cmd_status(args) -> int:
    study = load_study(args.study, args.results_dir)
    if study.description:
        print(study.description)
    print(format_status(study_status(study), study.name, every_run=args.runs))
    return 0


def add_cli(subparsers) -> None:
    """Register ``study run`` and ``study status`` on an argparse ``add_subparsers()`` object.

    Each sub-command sets ``func(args) -> exit status``.
    """
    study = subparsers.add_parser("study", help="run a study (YAML grid of notebook runs) or show its status")
    sub = study.add_subparsers(dest="study_cmd", required=True)
    run = sub.add_parser("run", help="execute the study's notebooks with papermill, in dependency order")
    run.add_argument("study", help="study YAML file, e.g. studies/quick.yaml")
    run.add_argument("--executor", choices=tuple(EXECUTORS), default="local",
                     help="local: on this machine (default); slurm: one SLURM job per run, via submitit")
    run.add_argument("--workers", type=int, default=None, metavar="N", help="local: runs executed at once (default 1)")
    run.add_argument("--dry-run", action="store_true", help="print the plan (with slurm: each job's resources); "
                                                            "execute nothing")
    run.add_argument("--force", action="store_true", help="re-run runs that are already complete")
    run.add_argument("--results-dir", default=None, metavar="DIR", help="override the study's results_dir")
    run.add_argument("--gpus", default=None, metavar="IDS",
                     help="local: GPUs to spread the runs over, one run per GPU through its kernel's "
                          "CUDA_VISIBLE_DEVICES: ids as nvidia-smi numbers them (0,1,2,3) or 'all'; "
                          "--workers then defaults to one per GPU")
    run.add_argument("--runs-per-gpu", type=int, default=None, metavar="K",
                     help="local, with --gpus: K runs share one GPU (default 1)")
    run.add_argument("--cold-kernels", action="store_true",
                     help="local: start every notebook kernel from scratch instead of forking it from one process "
                          "that imported torch & co. once (warm kernels, the default)")
    slurm = run.add_argument_group("slurm executor (override the study file's slurm sections for every run)")
    slurm.add_argument("--max-jobs", type=int, default=None, metavar="N",
                       help="runs queued or running at once (default 100)")
    slurm.add_argument("--poll", dest="poll_s", type=float, default=None, metavar="S",
                       help="seconds between job-state polls with sacct (default 15)")
    slurm.add_argument("--partition", default=None)
    slurm.add_argument("--time", default=None, metavar="T", help="time limit per run: minutes or [D-]HH:MM[:SS]")
    slurm.add_argument("--cpus-per-task", type=int, default=None, metavar="N")
    slurm.add_argument("--gpus-per-node", type=int, default=None, metavar="N",
                       help="GPUs per run (a run with devices: N > 1 needs N)")
    slurm.add_argument("--mem", default=None, help="memory per run, e.g. 32G")
    slurm.add_argument("--account", default=None)
    slurm.add_argument("--qos", default=None)
    slurm.add_argument("--constraint", default=None)
    slurm.add_argument("--sbatch", action="append", default=[], metavar="OPTION",
                       help="another sbatch option, e.g. --sbatch=--reservation=gpu (repeatable)")
    slurm.add_argument("--setup", action="append", default=[], metavar="LINE",
                       help="a shell line run in each job before the notebook (repeatable)")
    run.set_defaults(func=_cmd_run)
    status = sub.add_parser("status", help="list the study's runs: complete / failed / skipped / queued / running / "
                                           "pending, with SLURM job ids")
    status.add_argument("study", help="study YAML file")
    status.add_argument("--runs", action="store_true", help="list every run, not only failed and skipped ones")
    status.add_argument("--results-dir", default=None, metavar="DIR", help="override the study's results_dir")
    status.set_defaults(func=_cmd_status)
