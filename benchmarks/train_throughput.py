"""Training throughput: the real data pipeline vs in-memory tensors vs the model alone, and GFLOP/s.

    python benchmarks/train_throughput.py [--spec phantom:cardiac] [--encoder resnet18] [--image-size 128]
        [--batch-size 32] [--steps 20] [--warmup 3] [--device auto] [--precision 32]
        [--channels-last | --no-channels-last] [--decoder-channels 64 32 16 16 16] [--threads N]
        [--num-workers 0] [--out FILE]

For BYOL pretraining and for fine-tuning it times ``--steps`` optimiser steps (after
``--warmup`` untimed ones) three ways:
  pipeline    batches from the slice cache through SliceDataset + DataLoader (the training
              loops' StreamBatchSampler), moved to the device, augmented there, one step
  in-memory   one batch already on the device, augmented, one step (no data loading)
  model-only  one batch already on the device and already augmented: forward, backward,
              optimiser step and nothing else
so ``pipeline / in-memory`` is the data pipeline's overhead (target >= 0.9) and
``in-memory / model-only`` the augmentation's. Reports images/s.

GFLOP/s: the forward FLOPs of one image are counted with ``torch.utils.flop_counter`` (U-Net for
fine-tuning; BYOL's online network on both views plus its target network); a training step
is counted as 3 x the forward of what gets gradients (backward ~ 2 x forward, the usual
convention: the counter's own backward formula over-counts grouped / depthwise convolutions)
plus 1 x the forward of the gradient-free target. ``achieved GFLOP/s = FLOPs per image x
model-only images/s``; next to it the machine's measured float32 matmul GFLOP/s (1024² x 1024²,
with the same number of threads), so the distance to the hardware limit is visible.
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
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                    help="channels_last memory format (default on, as in training)")
    ap.add_argument("--decoder-channels", type=int, nargs="+", default=None,
                    help="U-Net decoder channels (default: build_unet's)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
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

    if args.threads:
        torch.set_num_threads(args.threads)
    fabric = make_fabric(args.device, args.precision)
    dec = {"decoder_channels": tuple(args.decoder_channels)} if args.decoder_channels else {}
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
                     "decoder_channels": list(args.decoder_channels) if args.decoder_channels else None,
                     "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(), "machine": platform.machine(),
                     "gpu": torch.cuda.get_device_name() if fabric.device.type == "cuda" else None}

    # --- BYOL pretraining
    torch.manual_seed(0)
    unet = build_unet(args.encoder, num_classes=2, **dec)
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

    def byol_model_only(views):
        v1, v2 = views
        loss, _ = byol(v1, v2)
        opt.zero_grad(set_to_none=True)
        fabric.backward(loss)
        opt.step()
        byol.update_target(0, 100)

    rows = np.arange(len(cache))
    results["byol_pipeline_images_per_s"] = timed(byol_step, loader(rows, False))
    results["byol_in_memory_images_per_s"] = timed(byol_step, in_memory(rows, False))
    fixed = ssl_aug(next(in_memory(rows, False))["image"].contiguous(memory_format=mf), gen)
    results["byol_model_only_images_per_s"] = timed(byol_model_only, (fixed for _ in range(n_steps)))
    raw = byol.module if hasattr(byol, "module") else byol
    online = forward_flops(lambda: (raw._online(fixed[0]), raw._online(fixed[1])))
    target = forward_flops(lambda: (raw._target(fixed[0]), raw._target(fixed[1])))
    results["byol_gflop_per_image"] = (3 * online + target) / b / 1e9

    # --- fine-tuning
    torch.manual_seed(0)
    model = build_unet(args.encoder, num_classes=len(vs.labels), **dec).to(memory_format=mf)
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

    def ft_model_only(batch):
        x, y = batch
        loss = loss_fn(model(x), y)
        opt2.zero_grad(set_to_none=True)
        fabric.backward(loss)
        opt2.step()

    results["finetune_pipeline_images_per_s"] = timed(ft_step, loader(labelled, True))
    results["finetune_in_memory_images_per_s"] = timed(ft_step, in_memory(labelled, True))
    first = next(in_memory(labelled, True))
    xa, ya = seg_aug(first["image"], first["label"], gen)
    xa = xa.contiguous(memory_format=mf)
    results["finetune_model_only_images_per_s"] = timed(ft_model_only, ((xa, ya) for _ in range(n_steps)))
    raw = model.module if hasattr(model, "module") else model
    results["finetune_gflop_per_image"] = 3 * forward_flops(lambda: raw(xa)) / b / 1e9

    results["matmul_gflop_per_s"] = matmul_gflops(fabric.device)
    for k in ("byol", "finetune"):
        results[f"{k}_ratio"] = round(results[f"{k}_pipeline_images_per_s"] / results[f"{k}_in_memory_images_per_s"], 3)
        results[f"{k}_achieved_gflop_per_s"] = round(results[f"{k}_gflop_per_image"]
                                                     * results[f"{k}_model_only_images_per_s"], 2)
        results[f"{k}_gflop_per_image"] = round(results[f"{k}_gflop_per_image"], 4)
        for s in ("pipeline", "in_memory", "model_only"):
            results[f"{k}_{s}_images_per_s"] = round(results[f"{k}_{s}_images_per_s"], 1)
    results["matmul_gflop_per_s"] = round(results["matmul_gflop_per_s"], 1)

    print(f"{args.spec} at {args.image_size}px, {args.encoder}, batch {b}, {fabric.device} "
          f"({results['gpu'] or str(results['torch_threads']) + ' threads'}), precision {args.precision}"
          f"{', channels_last' if args.channels_last else ''}")
    print(f"{'':10s} {'pipeline':>9s} {'in-memory':>10s} {'model-only':>11s} {'ratio':>6s} "
          f"{'GFLOP/img':>10s} {'GFLOP/s':>8s}  (img/s; matmul {results['matmul_gflop_per_s']:.1f} GFLOP/s)")
    for k in ("byol", "finetune"):
        print(f"{k:10s} {results[f'{k}_pipeline_images_per_s']:9.1f} {results[f'{k}_in_memory_images_per_s']:10.1f} "
              f"{results[f'{k}_model_only_images_per_s']:11.1f} {results[f'{k}_ratio']:6.3f} "
              f"{results[f'{k}_gflop_per_image']:10.3f} {results[f'{k}_achieved_gflop_per_s']:8.2f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
    return 0


def forward_flops(fn) -> int:
    """FLOPs of the forward computation ``fn()`` (no gradients), by torch's flop counter."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        fn()
    return counter.get_total_flops()


def matmul_gflops(device, n: int = 1024, repeats: int = 20) -> float:
    """Measured float32 matmul GFLOP/s of ``device`` with torch's current thread count."""
    import torch

    a = torch.randn(n, n, device=device)
    c = torch.randn(n, n, device=device)
    for _ in range(3):
        a @ c
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ c
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * n ** 3 * repeats / (time.perf_counter() - t0) / 1e9


if __name__ == "__main__":
    sys.exit(main())
