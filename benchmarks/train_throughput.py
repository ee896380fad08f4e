"""Training throughput: the real data pipeline vs the same model fed in-memory tensors.

    python benchmarks/train_throughput.py [--spec phantom:cardiac] [--encoder resnet18] [--image-size 128]
        [--batch-size 32] [--steps 20] [--warmup 3] [--device auto] [--precision 32] [--channels-last]
        [--num-workers 0] [--out FILE]

For BYOL pretraining and for fine-tuning it times ``--steps`` optimiser steps (after
``--warmup`` untimed ones) twice:
  pipeline   batches from the slice cache through SliceDataset + DataLoader (the training
             loops' StreamBatchSampler), moved to the device, augmented there, one step
  in-memory  one batch already on the device, augmented, one step (no data loading)
Both include the batched augmentation, which runs on the training device in both cases, so
``pipeline / in-memory`` is the data pipeline's overhead (target >= 0.9). Reports images/s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default="phantom:cardiac")
    ap.add_argument("--encoder", default="resnet18")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--precision", default="32", choices=("32", "bf16-mixed", "16-mixed"))
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--num-workers", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    from medssl_utils.data import SliceDataset, SSLAugment, SegAugment, load_dataset, slice_cache
    from medssl_utils.losses import segmentation_loss
    from medssl_utils.models import build_unet
    from medssl_utils.models.byol import BYOL
    from medssl_utils.training import StreamBatchSampler, make_fabric

    fabric = make_fabric(args.device, args.precision)
    vs = load_dataset(args.spec)
    cache = slice_cache(vs, image_size=args.image_size)
    labelled = cache.index.index[cache.index.has_label.astype(bool)].to_numpy()
    b, n_steps = args.batch_size, args.warmup + args.steps
    mf = torch.channels_last if args.channels_last else torch.contiguous_format

    def timed(step_fn, batches) -> float:
        it = iter(batches)
        for _ in range(args.warmup):
            step_fn(next(it))
        if fabric.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step_fn(next(it))
        if fabric.device.type == "cuda":
            torch.cuda.synchronize()
        return args.steps * b / (time.perf_counter() - t0)

    def loader(rows, with_labels):
        ds = SliceDataset(cache, rows, with_labels=with_labels)
        dl = DataLoader(ds, batch_sampler=StreamBatchSampler(len(ds), b, 0, 0, n_steps), num_workers=args.num_workers,
                        pin_memory=fabric.device.type == "cuda")
        return fabric.setup_dataloaders(dl, use_distributed_sampler=False)

    def in_memory(rows, with_labels):
        ds = SliceDataset(cache, rows[:b], with_labels=with_labels)
        batch = {k: v.to(fabric.device) if torch.is_tensor(v) else v
                 for k, v in torch.utils.data.default_collate(ds.__getitems__(list(range(b)))).items()}
        return (batch for _ in range(n_steps))

    results: dict = {"spec": args.spec, "encoder": args.encoder, "image_size": args.image_size, "batch_size": b,
                     "steps": args.steps, "device": str(fabric.device), "precision": args.precision,
                     "channels_last": args.channels_last, "num_workers": args.num_workers,
                     "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(), "machine": platform.machine(),
                     "gpu": torch.cuda.get_device_name() if fabric.device.type == "cuda" else None}

    # --- BYOL pretraining
    torch.manual_seed(0)
    unet = build_unet(args.encoder, num_classes=2)
    byol = BYOL(unet.encoder, unet.encoder.out_channels[-1]).to(memory_format=mf)
    opt = torch.optim.AdamW(byol.parameters(), 1e-3)
    byol, opt = fabric.setup(byol, opt)
    ssl_aug = SSLAugment(output_size=args.image_size)
    gen = torch.Generator(device=fabric.device).manual_seed(0)

    def byol_step(batch):
        x = batch["image"].contiguous(memory_format=mf)
        v1, v2 = ssl_aug(x, gen)
        loss, _ = byol(v1, v2)
        opt.zero_grad(set_to_none=True)
        fabric.backward(loss)
        opt.step()
        byol.update_target(0, 100)

    rows = np.arange(len(cache))
    results["byol_pipeline_images_per_s"] = timed(byol_step, loader(rows, False))
    results["byol_in_memory_images_per_s"] = timed(byol_step, in_memory(rows, False))

    # --- fine-tuning
    torch.manual_seed(0)
    model = build_unet(args.encoder, num_classes=len(vs.labels)).to(memory_format=mf)
    opt2 = torch.optim.Adam(model.parameters(), 1e-4)
    model, opt2 = fabric.setup(model, opt2)
    seg_aug = SegAugment(output_size=args.image_size)
    loss_fn = segmentation_loss("dice_ce", num_classes=len(vs.labels))

    def ft_step(batch):
        x, y = seg_aug(batch["image"], batch["label"], gen)
        loss = loss_fn(model(x.contiguous(memory_format=mf)), y)
        opt2.zero_grad(set_to_none=True)
        fabric.backward(loss)
        opt2.step()

    results["finetune_pipeline_images_per_s"] = timed(ft_step, loader(labelled, True))
    results["finetune_in_memory_images_per_s"] = timed(ft_step, in_memory(labelled, True))
    for k in ("byol", "finetune"):
        results[f"{k}_ratio"] = round(results[f"{k}_pipeline_images_per_s"] / results[f"{k}_in_memory_images_per_s"], 3)
        for s in ("pipeline", "in_memory"):
            results[f"{k}_{s}_images_per_s"] = round(results[f"{k}_{s}_images_per_s"], 1)

    print(f"{args.spec} at {args.image_size}px, {args.encoder}, batch {b}, {fabric.device} "
          f"({results['gpu'] or str(results['torch_threads']) + ' threads'}), precision {args.precision}"
          f"{', channels_last' if args.channels_last else ''}")
    print(f"{'':10s} {'pipeline img/s':>15s} {'in-memory img/s':>16s} {'ratio':>6s}")
    for k in ("byol", "finetune"):
        print(f"{k:10s} {results[f'{k}_pipeline_images_per_s']:15.1f} {results[f'{k}_in_memory_images_per_s']:16.1f} "
              f"{results[f'{k}_ratio']:6.3f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
