"""The two training faults whose effect is a number: BatchNorm statistics at validation, BYOL's target momentum.

    python benchmarks/training_faults.py [--spec "phantom:cardiac?cases=32"] [--encoder tf_efficientnet_lite0]
        [--image-size 64] [--finetune-steps 400] [--lr 0.01] [--pretrain-steps 150] [--out results/training-faults]

1. BatchNorm at validation. One fine-tuning run is made twice, with ``recalibrate_bn=0``
   (validation with BatchNorm's running statistics, as before) and ``recalibrate_bn=64``
   (statistics recomputed for the current weights on 64 training slices). Recalibration does
   not change training (a test checks the weights are bit-identical), so both runs validate
   the same weights at every step: the two validation curves and test Dices show what the
   lagging running statistics did to the numbers Work A's convergence claim rests on.
2. BYOL's target momentum. BYOL pretraining on the unlabelled slices for ``--pretrain-steps``
   steps with base momentum 0.99 (BYOL's value for long runs) and ``"auto"`` (medssl's default
   for the run's length); the k-NN probe (slice position base/mid/apex on validation patients)
   before and after, and the fraction of the random initial target left at the end.
Writes ``OUT/faults.json``; runs are kept in ``OUT`` and reused.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default="phantom:cardiac?cases=32")
    ap.add_argument("--encoder", default="tf_efficientnet_lite0")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--decoder", type=int, nargs="+", default=[64, 32, 16, 16, 16])
    ap.add_argument("--finetune-steps", type=int, default=400)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--labelled-slices", type=int, default=128)
    ap.add_argument("--pretrain-steps", type=int, default=150)
    ap.add_argument("--out", type=Path, default=Path("results/training-faults"))
    args = ap.parse_args(argv)

    import pandas as pd
    import torch

    from medssl_utils import training
    from medssl_utils.models.byol import auto_base_momentum, momentum_schedule

    torch.set_num_threads(1)
    common = dict(encoder=args.encoder, image_size=args.image_size, decoder_channels=tuple(args.decoder),
                  device="cpu", progress=False)
    out: dict = {"args": {k: str(v) for k, v in vars(args).items()}}

    curves = {}
    for recal in (0, 64):
        r = training.finetune(dataset=args.spec, init="random", labelled_slices=args.labelled_slices,
                              max_steps=args.finetune_steps, eval_every=max(args.finetune_steps // 8, 1), lr=args.lr,
                              batch_size=8, recalibrate_bn=recal, save_predictions=False,
                              run_dir=str(args.out / f"finetune-recal{recal}"), **common)
        hist = pd.read_csv(args.out / f"finetune-recal{recal}" / "history.csv").dropna(subset=["val_dice"])
        curves[recal] = dict(zip(hist["step"].astype(int), hist["val_dice"].round(4)))
        out[f"finetune_recalibrate_bn_{recal}"] = {"test_dice": r["test"]["mean_dice"], "val_curve": curves[recal]}
    print("validation Dice of the same weights: BatchNorm running statistics vs recalibrated")
    print(f"  {'step':>6s} {'running':>8s} {'recalibrated':>13s}")
    for step in curves[0]:
        print(f"  {step:6d} {curves[0][step]:8.3f} {curves[64].get(step, float('nan')):13.3f}")
    print(f"  test Dice {out['finetune_recalibrate_bn_0']['test_dice']:.3f} vs "
          f"{out['finetune_recalibrate_bn_64']['test_dice']:.3f}")

    print(f"\nBYOL, {args.pretrain_steps} steps: k-NN probe (slice position) first -> last")
    for m0 in (0.99, "auto"):
        r = training.pretrain(method="byol", datasets=[args.spec], epochs=1000, max_steps=args.pretrain_steps,
                              batch_size=32, optimizer="adamw", save_epochs=[], knn_every=1,
                              method_options={"hidden_dim": 1024, "projection_dim": 128, "base_momentum": m0},
                              run_dir=str(args.out / f"byol-m{m0}"), **common)
        base = r["schedule"]["base_momentum"]
        left = math.prod(momentum_schedule(s, r["steps"], base) for s in range(r["steps"]))
        out[f"byol_base_momentum_{m0}"] = {"base_momentum": base, "knn_first": r["knn"]["first"],
                                           "knn_last": r["knn"]["last"], "initial_target_left": left,
                                           "final_loss": r["final_loss"]}
        print(f"  base momentum {base:.3f} ({m0}): k-NN {r['knn']['first']:.3f} -> {r['knn']['last']:.3f}; "
              f"random initial target left at the end: {left:.1%}")
    assert auto_base_momentum(args.pretrain_steps) <= 0.99
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "faults.json").write_text(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
