"""Which fine-tuning settings learn within a CPU budget: a small grid, chosen by validation Dice.

    python benchmarks/finetune_settings.py [--spec "phantom:cardiac?cases=32"] [--encoder tf_efficientnet_lite0]
        [--image-size 64] [--decoder 64 32 16 16 16] [--lr 1e-3 3e-3 1e-2] [--steps 200 400]
        [--batch-size 8] [--inits random imagenet] [--budgets 8 128] [--seed 0] [--workers 2]
        [--out results/finetune-settings]

Every combination of ``--lr`` x ``--steps`` x ``--inits`` x ``--budgets`` is one fine-tuning run
(``training.finetune``: Adam, 5 % warm-up + cosine, Dice + CE, BatchNorm statistics recomputed
before each evaluation), each on one CPU thread, ``--workers`` at a time. Runs are kept in
``--out`` (an interrupted sweep resumes; finished runs are not repeated). The table printed
and written to ``OUT/settings.csv`` has, per setting, the final validation Dice (the
selection criterion: choose the setting with the best mean validation Dice over inits and
budgets — never by test Dice), the test Dice, and the training seconds and images/s.
"""

from __future__ import annotations

import argparse
import itertools
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
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--inits", nargs="+", default=["random", "imagenet"])
    ap.add_argument("--budgets", type=int, nargs="+", default=[8, 128])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("results/finetune-settings"))
    args = ap.parse_args(argv)

    import pandas as pd

    from medssl_utils.data import load_dataset, slice_cache

    slice_cache(load_dataset(args.spec).labelled(), image_size=args.image_size)  # build once, before the workers
    jobs = []
    for lr, steps, init, budget in itertools.product(args.lr, args.steps, args.inits, args.budgets):
        name = f"lr{lr:g}_s{steps}_b{args.batch_size}_{init}_n{budget}"
        jobs.append(dict(dataset=args.spec, init=init, labelled_slices=budget, encoder=args.encoder,
                         image_size=args.image_size, decoder_channels=tuple(args.decoder), lr=lr, max_steps=steps,
                         batch_size=args.batch_size, eval_every=args.eval_every, seed=args.seed, device="cpu",
                         progress=False, save_predictions=False, run_dir=str(args.out / name)))
    if args.workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(args.workers) as pool:
            rows = list(pool.map(_one, jobs))
    else:
        rows = [_one(j) for j in jobs]
    table = pd.DataFrame([{**{k: j[k] for k in ("lr", "max_steps", "batch_size", "init", "labelled_slices")}, **r}
                          for j, r in zip(jobs, rows)])
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "settings.csv", index=False)
    pd.set_option("display.width", 200)
    print(table.drop(columns=["run_dir", "status"]).round(3).to_string(index=False))
    summary = (table.groupby(["lr", "max_steps", "batch_size"])[["val_final_dice", "test_dice", "train_s"]].mean()
               .sort_values("val_final_dice", ascending=False))
    print("\nmean over inits and budgets (choose by validation Dice):")
    print(summary.round(3).to_string())
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
