"""Training throughput: the real data pipeline vs in-memory tensors vs the model alone, and GFLOP/s.

    python benchmarks/train_throughput.py --preset quick [--methods byol simclr hssl]
        [--views separate batched] [--target-mode no_grad inference] [--out FILE]
    python benchmarks/train_throughput.py [--spec phantom:cardiac] [--encoder resnet18] [--image-size 128]
        [--batch-size 32] [--ssl-batch-size N] [--method-options JSON] [--steps 20] [--warmup 3]
        [--device auto] [--precision 32] [--channels-last | --no-channels-last]
        [--decoder-channels 64 32 16 16 16] [--threads N] [--num-workers 0] [--no-finetune] [--out FILE]

``--preset quick`` is the quick study's setting (studies/quick.yaml): phantom:cardiac?cases=32,
tf_efficientnet_lite0 at 64 px, decoder 64-32-16-16-16, pretraining batch 16 with the projector
sizes of ``PretrainConfig`` (hidden 1024, projection 128), fine-tuning batch 8, one thread.

For each self-supervised method (``--methods``; BYOL by default) in each way of running the two views
(``--views``: ``separate``, each view its own batch, or ``batched``, both in one;
:func:`medssl_utils.models.ssl_common.per_view`), and for fine-tuning, it times ``--steps``
optimiser steps (after ``--warmup`` untimed ones) three ways:
  pipeline    batches from the slice cache through SliceDataset + DataLoader (the training
              loops' StreamBatchSampler), moved to the device, augmented there, one step
  in-memory   one batch already on the device, augmented, one step (no data loading)
  model-only  one batch already on the device and already augmented: forward, backward,
              optimiser step (and BYOL's target update) and nothing else
so ``pipeline / in-memory`` is the data pipeline's overhead (target >= 0.95) and
``in-memory / model-only`` the augmentation's. Reports images/s (images, not views: a
pretraining step of batch B augments each image twice). The methods are built and stepped as the
pretraining loop does (``SSLMethod.from_unet``, ``SSLMethod.loss``, ``after_step``, the loops' fused
AdamW, ``training.loop.make_optimizer``); HSSL runs on one domain, so with its image and dense levels
(task and group need several domains), as in studies/hssl-phantom.yaml's single-domain arms.

GFLOP/s: the forward FLOPs of one step are counted with ``torch.utils.flop_counter``; a training step
is counted as 3 x the forward of what gets gradients (backward ~ 2 x forward, the usual convention: the
counter's own backward formula over-counts grouped / depthwise convolutions) plus 1 x the forward
of what runs without gradients (BYOL's target network). ``achieved GFLOP/s = FLOPs per image x
model-only images/s``; next to it the machine's measured float32 matmul GFLOP/s (1024² x 1024², with
the same number of threads), so the distance to the hardware limit is visible.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

PRESETS = {
    "quick": {"spec": "phantom:cardiac?cases=32", "encoder": "tf_efficientnet_lite0", "image_size": 64,
              "decoder_channels": [64, 32, 16, 16, 16], "batch_size": 8, "ssl_batch_size": 16, "threads": 1},
}
SINGLE_DOMAIN_HSSL = {"weights": {"image": 1.0, "task": 0.0, "group": 0.0, "dense": 1.0}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default=None,
                    help="a study's setting (sets the options below it names unless they are given)")
    ap.add_argument("--spec", default=None, help="dataset (default phantom:cardiac)")
    ap.add_argument("--encoder", default=None, help="default resnet18")
    ap.add_argument("--image-size", type=int, default=None, help="default 128")
    ap.add_argument("--batch-size", type=int, default=None, help="fine-tuning batch (default 32)")
    ap.add_argument("--ssl-batch-size", type=int, default=None, help="pretraining batch (default --batch-size)")
    ap.add_argument("--methods", nargs="+", default=["byol"], help="byol, simclr, hssl (default byol)")
    ap.add_argument("--views", nargs="+", default=["separate"], help="separate and / or batched")
    ap.add_argument("--target-mode", nargs="+", default=["no_grad"],
                    help="BYOL's target forward under torch.no_grad (the code's) and / or torch.inference_mode")
    ap.add_argument("--depthwise", nargs="+", default=["fast"],
                    help="depthwise weight gradient: fast (medssl's, the default) and / or torch (PyTorch's own)")
    ap.add_argument("--method-options", type=json.loads, default=None,
                    help="JSON of method options (default PretrainConfig's: hidden 1024, projection 128)")
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
    ap.add_argument("--no-finetune", action="store_true", help="time the pretraining methods only")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    fallback = {"spec": "phantom:cardiac", "encoder": "resnet18", "image_size": 128, "batch_size": 32}
    for key, value in {**fallback, **PRESETS.get(args.preset, {})}.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.ssl_batch_size = args.ssl_batch_size or args.batch_size

    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    from medssl_utils.data import MultiDomainDataset, SliceDataset, SegAugment, load_dataset, slice_cache
    from medssl_utils.losses import segmentation_loss
    from medssl_utils.models import build_unet, depthwise
    from medssl_utils.models.methods import method_class
    from medssl_utils.models.ssl_common import VIEWS
    from medssl_utils.training import StreamBatchSampler, make_fabric
    from medssl_utils.training.config import PretrainConfig
    from medssl_utils.training.loop import make_optimizer
    from medssl_utils.training.pretrain import ssl_augment

    for v in args.views:
        if v not in VIEWS:
            ap.error(f"--views {v}: expected one of {list(VIEWS)}")
    for d in args.depthwise:
        if d not in ("fast", "torch"):
            ap.error(f"--depthwise {d}: expected fast or torch")
    for m in args.target_mode:
        if m not in ("no_grad", "inference"):
            ap.error(f"--target-mode {m}: expected no_grad or inference")
    if args.threads:
        torch.set_num_threads(args.threads)
    fabric = make_fabric(args.device, args.precision)
    dec = {"decoder_channels": tuple(args.decoder_channels)} if args.decoder_channels else {}
    vs = load_dataset(args.spec)
    cache = slice_cache(vs, image_size=args.image_size)
    labelled = cache.index.index[cache.index.has_label.astype(bool)].to_numpy()
    n_steps = args.warmup + args.steps
    mf = torch.channels_last if args.channels_last else torch.contiguous_format
    cuda = fabric.device.type == "cuda"

    def timed(step_fn, batches, b) -> float:
        it = iter(batches)
        for _ in range(args.warmup):
            step_fn(next(it))
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step_fn(next(it))
        if cuda:
            torch.cuda.synchronize()
        return args.steps * b / (time.perf_counter() - t0)

    def loader(ds, b):
        dl = DataLoader(ds, batch_sampler=StreamBatchSampler(len(ds), b, 0, 0, n_steps), num_workers=args.num_workers,
                        pin_memory=cuda)
        return fabric.setup_dataloaders(dl, use_distributed_sampler=False)

    def in_memory(ds, b):
        batch = {k: v.to(fabric.device) if torch.is_tensor(v) else v
                 for k, v in torch.utils.data.default_collate(ds.__getitems__(list(range(b)))).items()}
        return (batch for _ in range(n_steps))

    results: dict = {"preset": args.preset, "spec": args.spec, "encoder": args.encoder, "image_size": args.image_size,
                     "batch_size": args.batch_size, "ssl_batch_size": args.ssl_batch_size, "steps": args.steps,
                     "device": str(fabric.device), "precision": args.precision,
                     "channels_last": args.channels_last, "num_workers": args.num_workers,
                     "decoder_channels": list(args.decoder_channels) if args.decoder_channels else None,
                     "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(), "machine": platform.machine(),
                     "gpu": torch.cuda.get_device_name() if cuda else None, "torch": torch.__version__, "rows": []}
    rows = results["rows"]

    # --- self-supervised pretraining, per method, way of running the views and target mode
    b = args.ssl_batch_size
    pool = MultiDomainDataset([SliceDataset(cache, np.arange(len(cache)), with_labels=False)])
    combos = [(method, views, target_mode, dw) for dw in args.depthwise for method in args.methods
              for views in args.views for target_mode in (args.target_mode if method == "byol" else ["no_grad"])]
    base_options = (PretrainConfig.__dataclass_fields__["method_options"].default_factory()
                    if args.method_options is None else args.method_options)
    for method, views, target_mode, dw in combos:
        depthwise.FAST_WEIGHT_GRAD = dw == "fast"
        cls = method_class(method)
        # the run's config, as the pretraining loop gets it: its method options (checked against the method)
        # and its augmentation; nothing is written to run_dir
        options = {**base_options, **(SINGLE_DOMAIN_HSSL if method == "hssl" else {}), "views": views}
        cfg = PretrainConfig(method=method, image_size=args.image_size, datasets=[args.spec], method_options=options,
                             run_dir="unused-train-throughput-run")
        torch.manual_seed(0)
        unet = build_unet(args.encoder, num_classes=2, **dec)
        raw = cls.from_unet(unet, pool, **cfg.method_options)
        if target_mode == "inference":
            raw._target = _inference_mode(raw._target)
        raw = raw.to(memory_format=mf)
        opt = make_optimizer("adamw", raw, 1e-3, 1e-4)
        model, opt = fabric.setup(raw, opt)
        aug = ssl_augment(cfg)
        gen = torch.Generator(device=fabric.device).manual_seed(0)

        def step(batch, aug=aug, model=model, opt=opt, raw=raw, gen=gen):
            x = batch["image"].contiguous(memory_format=mf)
            loss, _ = raw.loss(model, aug, x, batch, gen)
            opt.zero_grad(set_to_none=True)
            fabric.backward(loss)
            opt.step()
            raw.after_step(0, 100)

        row = {"what": method, "views": views, "target": target_mode if method == "byol" else None,
               "depthwise": dw, "batch_size": b}
        row["pipeline"] = timed(step, loader(pool, b), b)
        row["in_memory"] = timed(step, in_memory(pool, b), b)
        first = next(in_memory(pool, b))
        fixed = _FixedViews(aug, first["image"].contiguous(memory_format=mf), gen)
        row["model_only"] = timed(lambda batch, s=step: s(batch, aug=fixed), (first for _ in range(n_steps)), b)
        with torch.no_grad():
            total = forward_flops(lambda: raw.loss(raw, fixed, first["image"], first, gen))
            no_grad = (forward_flops(lambda: (raw._target(fixed.views[0]), raw._target(fixed.views[1])))
                       if method == "byol" else 0)
        row["gflop_per_image"] = (3 * (total - no_grad) + no_grad) / b / 1e9
        rows.append(row)
        print(f"  {method} {views} {row['target'] or ''} {dw}: {row['pipeline']:.1f} / {row['in_memory']:.1f} / "
              f"{row['model_only']:.1f} img/s", flush=True)

    # --- fine-tuning
    for dw in ([] if args.no_finetune else args.depthwise):
        depthwise.FAST_WEIGHT_GRAD = dw == "fast"
        b = args.batch_size
        ds = SliceDataset(cache, labelled, with_labels=True)
        torch.manual_seed(0)
        model = build_unet(args.encoder, num_classes=len(vs.labels), **dec).to(memory_format=mf)
        opt2 = make_optimizer("adam", model, 1e-4, 0.0)
        model, opt2 = fabric.setup(model, opt2)
        seg_aug = SegAugment(output_size=args.image_size)
        loss_fn = segmentation_loss("dice_ce", num_classes=len(vs.labels))
        gen = torch.Generator(device=fabric.device).manual_seed(0)

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

        row = {"what": "finetune", "views": None, "target": None, "depthwise": dw, "batch_size": b}
        row["pipeline"] = timed(ft_step, loader(ds, b), b)
        row["in_memory"] = timed(ft_step, in_memory(ds, b), b)
        first = next(in_memory(ds, b))
        xa, ya = seg_aug(first["image"], first["label"], gen)
        xa = xa.contiguous(memory_format=mf)
        row["model_only"] = timed(ft_model_only, ((xa, ya) for _ in range(n_steps)), b)
        raw = model.module if hasattr(model, "module") else model
        row["gflop_per_image"] = 3 * forward_flops(lambda: raw(xa)) / b / 1e9
        rows.append(row)

    results["matmul_gflop_per_s"] = round(matmul_gflops(fabric.device), 1)
    for row in rows:
        row["ratio"] = round(row["pipeline"] / row["in_memory"], 3)
        row["achieved_gflop_per_s"] = round(row["gflop_per_image"] * row["model_only"], 2)
        row["share_of_matmul"] = round(row["achieved_gflop_per_s"] / results["matmul_gflop_per_s"], 3)
        row["gflop_per_image"] = round(row["gflop_per_image"], 4)
        for s in ("pipeline", "in_memory", "model_only"):
            row[s] = round(row[s], 1)

    print(f"{args.spec} at {args.image_size}px, {args.encoder}, {fabric.device} "
          f"({results['gpu'] or str(results['torch_threads']) + ' threads'}), precision {args.precision}"
          f"{', channels_last' if args.channels_last else ''}; img/s; "
          f"matmul {results['matmul_gflop_per_s']:.1f} GFLOP/s")
    print(f"{'':32s} {'batch':>5s} {'pipeline':>9s} {'in-memory':>10s} {'model-only':>11s} {'ratio':>6s} "
          f"{'GFLOP/img':>10s} {'GFLOP/s':>8s} {'matmul':>7s}")
    for row in rows:
        name = " ".join(str(x) for x in (row["what"], row["views"], row["target"], "dw-" + row["depthwise"]) if x)
        print(f"{name:32s} {row['batch_size']:5d} {row['pipeline']:9.1f} {row['in_memory']:10.1f} "
              f"{row['model_only']:11.1f} {row['ratio']:6.3f} {row['gflop_per_image']:10.3f} "
              f"{row['achieved_gflop_per_s']:8.2f} {row['share_of_matmul']:7.1%}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
    return 0


class _FixedViews:
    """An augmentation that returns the same, already made views every call (the model-only timing)."""

    def __init__(self, aug, x, generator):
        self.views = aug.views_with_geometry(x, generator)

    def __call__(self, x, generator):
        return self.views[:2]

    def views_with_geometry(self, x, generator):
        return self.views


def _inference_mode(fn):
    import torch

    def run(x):
        with torch.inference_mode():
            out = fn(x)
        return out.clone()  # an inference tensor cannot be saved for the loss's backward
    return run


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
