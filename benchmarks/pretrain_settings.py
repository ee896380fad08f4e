"""Pretraining settings compared on what a study may choose them by: the dense probe on validation data.

    python benchmarks/pretrain_settings.py --out DIR [--spec "phantom:cardiac?cases=32"]
        [--setting NAME=JSON ...] [--steps 240] [--batch-size 16] [--workers 2] [--probe-seeds 2]

Each setting (a JSON object of ``training.pretrain`` parameters over the defaults below: BYOL,
tf_efficientnet_lite0, 64 px, AdamW, the quick study's projector sizes) is one pretraining run from
random init; the table gives the dense probe (validation Dice of a linear per-pixel classifier on the
frozen encoder, ``training.probe``) at step 0 and at the end, the encoder's displacement from its start
(median over convolutions of |W - W0| / |W0|) and the training time. No test data is read, so the
table may choose a study's pretraining settings. Runs of one setting are reused when DIR already
holds them (delete the folder to measure again); with ``--workers 2`` two runs share the machine,
so their times are not throughput figures.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

DEFAULTS = dict(method="byol", encoder="tf_efficientnet_lite0", image_size=64, decoder_channels=[64, 32, 16, 16, 16],
                optimizer="adamw", method_options={"hidden_dim": 1024, "projection_dim": 128}, epochs=1000,
                progress=False, probe_every=1000)


def _run(args: tuple) -> dict:
    name, params, out = args
    import torch

    torch.set_num_threads(1)
    from medssl_utils import training

    r = training.pretrain(**{**DEFAULTS, **params, "run_dir": str(out / name)})
    probe = r.get("probe") or {}
    return {"setting": name, "params": params, "steps": r["steps"],
            "probe_start": (probe.get("first") or {}).get("dense_dice"), "probe_end": probe.get("dense_dice"),
            "probe_end_sd": probe.get("sd_over_seeds"), "encoder_shift": r.get("encoder_shift"),
            "final_loss": r.get("final_loss"), "train_s": r["timings"]["train_s"],
            "images_per_s": r["timings"]["images_per_s"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--spec", default="phantom:cardiac?cases=32")
    ap.add_argument("--setting", action="append", default=[], metavar="NAME=JSON",
                    help='e.g. lr3e-3=\'{"lr": 0.003}\' (default: AdamW 1e-3 and 3e-3)')
    ap.add_argument("--steps", type=int, default=240)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--probe-seeds", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    settings = {}
    for text in args.setting or ['adamw-1e-3={"lr": 0.001}', 'adamw-3e-3={"lr": 0.003}']:
        name, _, js = text.partition("=")
        settings[name] = json.loads(js)
    jobs = [(name, {"datasets": [args.spec], "max_steps": args.steps, "batch_size": args.batch_size,
                    "probe_seeds": args.probe_seeds, **p}, args.out) for name, p in settings.items()]
    with ProcessPoolExecutor(args.workers) as pool:
        rows = list(pool.map(_run, jobs))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pretrain_settings.json").write_text(json.dumps(rows, indent=1))
    print(f"{'setting':24s} {'steps':>5s} {'probe 0':>8s} {'probe end':>10s} {'shift':>7s} {'loss':>7s} "
          f"{'train s':>8s}")
    for r in rows:
        print(f"{r['setting']:24s} {r['steps']:5d} {r['probe_start']:8.3f} {r['probe_end']:10.3f} "
              f"{r['encoder_shift']:7.3f} {r['final_loss']:7.3f} {r['train_s']:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
