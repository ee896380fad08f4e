"""Which fine-tuning settings learn within a CPU budget: a small grid, chosen by validation Dice.

    python benchmarks/finetune_settings.py [--spec "phantom:cardiac?cases=32"] [--encoder tf_efficientnet_lite0]
        [--image-size 64] [--decoder 64 32 16 16 16] [--lr 1e-3 3e-3 1e-2] [--steps 200 400]
        [--batch-size 8] [--warmup-steps N] [--augment NAME=JSON ...] [--inits random imagenet]
        [--budgets 8 128] [--seeds 0] [--eval-every 50] [--workers 2] [--out results/finetune-settings]

Every combination of ``--lr`` x ``--steps`` x ``--batch-size`` x ``--augment`` x ``--inits`` x
``--budgets`` x ``--seeds`` is one fine-tuning run (``training.finetune``: Adam, warm-up + cosine,
Dice + CE, BatchNorm statistics recomputed before each evaluation), each on one CPU thread,
``--workers`` at a time. ``--augment`` names SegAugment settings, e.g.
``--augment default={} strong='{"rotation": 20, "scale": [0.8, 1.25], "translate": 0.1}'``.
Runs are kept in ``--out`` (an interrupted sweep resumes; finished runs are not repeated). The
table printed and written to ``OUT/settings.csv`` has, per run, the final validation Dice, the
test Dice, and the training seconds and images/s; the summary after it ranks settings by their
mean final validation Dice over inits, budgets and seeds (the selection criterion — never test
Dice) and shows the worst seed next to each mean. Training seconds are only comparable between
runs made one at a time (``--workers 1``) on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from pathlib import Path


def _one(job: dict) -> dict:
    import torch

    torch.set_num_threads(1)
    from medssl_utils import training

    r = training.finetune(**job)
    return {"run_dir": job["run_dir"], "status": r["status"], "val_final_dice": r.get("val_final_dice"),
            "val_best_dice": r.get("val_best_dice"), "test_dice": (r.get("test") or {}).get("mean_dice"),
            "train_s": r["timings"]["train_s"], "images_per_s": r["timings"]["images_per_s"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default="phantom:cardiac?cases=32")
    ap.add_argument("--encoder", default="tf_efficientnet_lite0")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--decoder", type=int, nargs="+", default=[64, 32, 16, 16, 16])
    ap.add_argument("--lr", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2])
    ap.add_argument("--steps", type=int, nargs="+", default=[200, 400])
    ap.add_argument("--batch-size", type=int, nargs="+", default=[8])
    ap.add_argument("--warmup-steps", type=int, default=None, help="default: 5 %% of the steps")
    ap.add_argument("--augment", nargs="+", default=["default={}"], metavar="NAME=JSON",
                    help="named SegAugment settings (JSON objects of SegAugment's parameters)")
    ap.add_argument("--inits", nargs="+", default=["random", "imagenet"])
    ap.add_argument("--budgets", type=int, nargs="+", default=[8, 128])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("results/finetune-settings"))
    args = ap.parse_args(argv)
    augments = {}
    for item in args.augment:
        name, sep, text = item.partition("=")
        try:
            value = json.loads(text) if sep else None
        except json.JSONDecodeError as e:
            ap.error(f"--augment {item!r}: the part after NAME= is not JSON ({e})")
        if not name or not isinstance(value, dict):
            ap.error(f"--augment {item!r}: expected NAME=JSON with a JSON object, e.g. strong='{{\"rotation\": 20}}'")
        augments[name] = value

    import pandas as pd

    from medssl_utils.data import load_dataset, slice_cache

    slice_cache(load_dataset(args.spec).labelled(), image_size=args.image_size)  # build once, before the workers
    jobs, keys = [], []
    for lr, steps, batch, (aug_name, augment), init, budget, seed in itertools.product(
            args.lr, args.steps, args.batch_size, augments.items(), args.inits, args.budgets, args.seeds):
        name = f"lr{lr:g}_s{steps}_b{batch}_{aug_name}_{init}_n{budget}_seed{seed}"
        jobs.append(dict(dataset=args.spec, init=init, labelled_slices=budget, encoder=args.encoder,
                         image_size=args.image_size, decoder_channels=tuple(args.decoder), lr=lr, max_steps=steps,
                         batch_size=batch, warmup_steps=args.warmup_steps, augment=augment,
                         eval_every=args.eval_every, seed=seed, device="cpu", progress=False,
                         save_predictions=False, run_dir=str(args.out / name)))
        keys.append({"lr": lr, "max_steps": steps, "batch_size": batch, "augment": aug_name, "init": init,
                     "labelled_slices": budget, "seed": seed})
    if args.workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(args.workers) as pool:
            rows = list(pool.map(_one, jobs))
    else:
        rows = [_one(j) for j in jobs]
    table = pd.DataFrame([{**k, **r} for k, r in zip(keys, rows)])
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "settings.csv", index=False)
    pd.set_option("display.width", 200)
    print(table.drop(columns=["run_dir", "status"]).round(3).to_string(index=False))
    setting = ["lr", "max_steps", "batch_size", "augment"]
    grouped = table.groupby(setting)
    summary = pd.concat({"val_mean": grouped["val_final_dice"].mean(), "val_worst": grouped["val_final_dice"].min(),
                         "test_mean": grouped["test_dice"].mean(), "test_worst": grouped["test_dice"].min(),
                         "train_s": grouped["train_s"].mean(), "runs": grouped.size()}, axis=1)
    summary = summary.sort_values("val_mean", ascending=False)
    print("\nper setting, over inits, budgets and seeds (choose by val_mean; test shown, never used to choose):")
    print(summary.round(3).to_string())
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
