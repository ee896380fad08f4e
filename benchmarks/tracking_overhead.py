"""What experiment tracking costs a run: fixed start/finish time and time per logged row.

    python benchmarks/tracking_overhead.py [--rows 2000] [--steps 60] [--repeats 3] [--out FILE]

Three measurements for each tracker (``tensorboard``, ``wandb`` offline) and both together:
  open+close  seconds to start the tracker, log one row and finish it (once per run)
  per row     microseconds per ``log(row)`` of a fine-tuning history row (step, epoch, time_s, loss,
              lr, images_per_s, val_dice, val_loss), over ``--rows`` rows
  in a run    a toy fine-tuning run of ``--steps`` steps logging every step (log_every=1, the worst
              case; the studies log every 10 steps) vs the same run without trackers: extra
              seconds per run and per step (median of ``--repeats``)
Take figures on an otherwise idle machine. Needs the tracking extra (pip install -e '.[tracking]').
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROW = {"epoch": 1.0, "time_s": 1.0, "loss": 0.5, "lr": 1e-3, "images_per_s": 80.0, "val_dice": 0.6, "val_loss": 0.4}
TOY = dict(encoder="test_resnet", image_size=32, decoder_channels=(16, 8, 8, 8, 8), progress=False, device="cpu",
           dataset="phantom:cardiac?cases=4", init="random", labelled_slices=6, batch_size=4, lr=1e-3,
           probe_init=False, log_every=1)


def _tracker(name: str, folder: Path):
    from medssl_utils.training.tracking import TensorBoardTracker, WandbTracker

    if name == "tensorboard":
        return TensorBoardTracker(folder / "tensorboard", {"lr": 1e-3})
    return WandbTracker(folder, {"lr": 1e-3}, {"project": "bench", "group": "bench", "run_id": folder.name})


def fixed_and_per_row(name: str, rows: int, root: Path) -> dict:
    t0 = time.perf_counter()
    t = _tracker(name, root / f"{name}-fixed")
    t.log({"step": 0, **ROW})
    t.close({"status": "complete"})
    fixed = time.perf_counter() - t0
    t = _tracker(name, root / f"{name}-rows")
    t.log({"step": 0, **ROW})
    t0 = time.perf_counter()
    for i in range(1, rows + 1):
        t.log({"step": i, **ROW})
    per_row = (time.perf_counter() - t0) / rows
    t.close({"status": "complete"})
    return {"open_close_s": round(fixed, 3), "per_row_us": round(per_row * 1e6, 1)}


def in_a_run(trackers: list[str], steps: int, repeats: int, root: Path) -> float:
    from medssl_utils import training

    times = []
    for k in range(repeats):
        run = root / f"run-{'+'.join(trackers) or 'none'}-{k}"
        t0 = time.perf_counter()
        training.finetune(run_dir=str(run), max_steps=steps, eval_every=steps, trackers=trackers, **TOY)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None, help="also write the figures as JSON here")
    args = ap.parse_args(argv)
    os.environ.setdefault("WANDB_MODE", "offline")
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="medssl-tracking-") as tmp:
        root = Path(tmp)
        in_a_run([], 2, 1, root / "warm")  # imports, the slice cache
        out = {"rows": args.rows, "steps": args.steps, "repeats": args.repeats, "threads": 1, "trackers": {}}
        base = in_a_run([], args.steps, args.repeats, root)
        out["run_without_trackers_s"] = round(base, 3)
        for names in (["tensorboard"], ["wandb"], ["tensorboard", "wandb"]):
            key = "+".join(names)
            row = fixed_and_per_row(names[0], args.rows, root) if len(names) == 1 else {}
            s = in_a_run(names, args.steps, args.repeats, root)
            row.update({"run_s": round(s, 3), "extra_per_run_s": round(s - base, 3),
                        "extra_per_step_ms": round((s - base) / args.steps * 1e3, 2)})
            out["trackers"][key] = row
            print(f"{key:22s} " + "  ".join(f"{k} {v}" for k, v in row.items()), flush=True)
    print(f"without trackers: {base:.3f} s for {args.steps} steps")
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
