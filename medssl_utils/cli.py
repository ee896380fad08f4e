"""The ``medssl`` command (also ``python -m medssl_utils``).

Errors a user can cause are printed as one line ``medssl: error: …`` (no traceback) and the
command exits with status 2; ``data summary`` exits 1 when it found problems in the data.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from medssl_utils import __version__
from medssl_utils.errors import MedsslError, ParameterError
from medssl_utils.site import add_cli as add_site_cli
from medssl_utils.study import add_cli as add_study_cli
from medssl_utils.teach import add_cli as add_teach_cli


def _cmd_data_summary(args) -> int:
    from medssl_utils.data.summary import format_summary, summarize  # the data layer (torch): this command only

    s = summarize(args.path, decode=not args.headers_only, progress=not args.json and sys.stderr.isatty())
    print(json.dumps(s, indent=2) if args.json else format_summary(s))
    return 1 if s["problems"] else 0


def _cmd_data_phantoms(args) -> int:
    from medssl_utils.data.phantoms import PHANTOMS, write_phantom  # the data layer (torch): this command only


    names = args.only or sorted(PHANTOMS)
    unknown = [n for n in names if n not in PHANTOMS]
    if unknown:  # before writing any of them
        raise ParameterError(f"--only {unknown[0]!r}: unknown phantom; expected some of {sorted(PHANTOMS)}")
    out = Path(args.out).expanduser()
    if out.exists() and not out.is_dir():
        raise ParameterError(f"{out}: is a file; expected a folder to write the phantoms into")
    for name in names:
        t0 = time.perf_counter()
        root = write_phantom(name, out / name, cases=args.cases, seed=args.seed)
        fmt = PHANTOMS[name].format
        print(f"{name:12s} {time.perf_counter() - t0:6.1f} s  {fmt}:{root}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medssl", description="medssl: self-supervised pretraining study for "
                                                           "2D medical image segmentation")
    p.add_argument("--version", action="version", version=f"medssl {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    data = sub.add_parser("data", help="inspect datasets, write phantoms").add_subparsers(dest="data_cmd",
                                                                                          required=True)

    s = data.add_parser("summary", help="detect a dataset's layout (or read a dataset spec) and check every volume")
    s.add_argument("path", help="dataset folder (ACDC, MSD task folder, images/ + labels/ folder, or DICOM files), "
                                "or a dataset spec such as 'dicom:/data/export?bad_series=skip' or 'phantom:cardiac'")
    s.add_argument("--json", action="store_true", help="print the summary as JSON")
    s.add_argument("--headers-only", action="store_true", help="read headers only (fast; skips decoding voxels)")
    s.set_defaults(func=_cmd_data_summary)

    ph = data.add_parser("phantoms", help="write the synthetic phantom datasets as NIfTI")
    ph.add_argument("out", help="output folder (one sub-folder per phantom)")
    ph.add_argument("--only", nargs="+", metavar="NAME", help="phantoms to write (default: all)")
    ph.add_argument("--cases", type=int, default=None, help="number of (training) cases per phantom (1..2000)")
    ph.add_argument("--seed", type=int, default=0)
    ph.set_defaults(func=_cmd_data_phantoms)

    add_study_cli(sub)
    rp = sub.add_parser("report", help="gather run directories and write figures, CSV tables and report.html",
                        description="Exit status: 0 the report is written and every run could be read; 1 the "
                                    "report is written but some runs have problems (failed, still running, "
                                    "unreadable or non-numeric files; each printed as one line); 2 nothing "
                                    "was written (no runs, a bad folder or option).")
    rp.add_argument("dirs", nargs="+", metavar="DIR", help="results folder(s) holding run directories")
    rp.add_argument("--target", type=float, default=0.95,
                    help="fraction of the best final validation Dice that counts as converged (default 0.95)")
    rp.add_argument("--reference", default=None,
                    help="strategy the speed-ups are relative to (default: supervised ImageNet, else random init)")
    rp.add_argument("--out", default=None, help="output folder (default: DIR/report)")
    rp.set_defaults(func=_cmd_report)
    add_teach_cli(sub)
    add_site_cli(sub)
    ex = sub.add_parser("export", help="replay finished runs' history.csv into TensorBoard event files or W&B "
                                       "offline runs (needs the tracking extra)",
                        description="Every complete run under RESULTS_DIR, step for step as in its history.csv. "
                                    "tensorboard: OUT/<run id>/ (default RESULTS_DIR/tensorboard), then "
                                    "`tensorboard --logdir OUT`; wandb: offline runs in OUT (default "
                                    "RESULTS_DIR/wandb; project and group = the study, name = the run id), then "
                                    "`wandb sync` their offline-run-* folders.")
    ex.add_argument("tracker", choices=("tensorboard", "wandb"))
    ex.add_argument("results_dir", metavar="RESULTS_DIR", help="a results folder holding run directories")
    ex.add_argument("--out", default=None, help="where to write (default RESULTS_DIR/TRACKER)")
    ex.add_argument("--force", action="store_true", help="wandb: export runs already exported again")
    ex.set_defaults(func=_cmd_export)
    ref = sub.add_parser("reference", help="print docs/reference.md: dataset kinds and options, notebook "
                                           "parameters, study-file keys, claims (generated from the code)")
    ref.add_argument("--out", default=None, help="write it to this file instead (make reference: docs/reference.md)")
    ref.set_defaults(func=_cmd_reference)
    return p


def _cmd_report(args) -> int:
    from medssl_utils.report.cli import run_cli  # pandas, seaborn, matplotlib: imported for this command only

    return run_cli(args)


def _cmd_export(args) -> int:
    from medssl_utils.training.tracking import export_runs  # pandas, and the tracker's package: this command only

    done = export_runs(args.tracker, args.results_dir, args.out, force=args.force)
    print(f"{args.tracker}: {len(done['exported'])} run(s) exported to {done['out']}, {len(done['skipped'])} skipped")
    return 0


def _cmd_reference(args) -> int:
    from medssl_utils.reference import run_cli  # the data layer and training config (torch): this command only

    return run_cli(args)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MedsslError as exc:
        print(f"medssl: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("medssl: interrupted", file=sys.stderr)
        return 130
