"""Two ways of running one training step, interleaved on one model: the depthwise weight gradient
(models/depthwise.py) on and off, BYOL's views separate and batched, BYOL at batch 16 and 32, or the
optimiser step and BYOL's target update as they were (torch's foreach AdamW / Adam, lightly's
``update_momentum``) and as they are (fused, one ``torch._foreach_lerp_``), or float32 against bfloat16
autocast (what ``precision="bf16-mixed"`` runs on a CPU), or one step on one thread against two.

    python benchmarks/step_ab.py [--compare depthwise|views|batch|optimizer|bf16|threads] [--blocks 8]
        [--steps 8] [--threads 1] [--profile] [--out FILE]

This machine's speed drifts from minute to minute (its one-thread matmul read 57-100 GFLOP/s within
an hour), so two runs of ``train_throughput.py`` cannot tell a 10-20 % change. Here one model and one
batch are stepped in alternating blocks of ``--steps`` steps with ``FAST_WEIGHT_GRAD`` on and off
(``--blocks`` pairs, the order flipped every pair; ``--compare views``: ``byol.views`` "batched" and
"separate" instead, medssl's depthwise gradient on, BYOL only; ``--compare batch``: BYOL's views of 32
images instead of 16, counted per image, so the ratio is what a larger batch buys; ``--compare optimizer``:
a second optimiser over the same parameters, foreach instead of fused, and lightly's target update
instead of medssl's; ``--compare bf16``: the forward and loss under ``torch.autocast("cpu", torch.bfloat16)``,
as Fabric's bf16-mixed does; ``--compare threads``: ``torch.set_num_threads(2)`` against ``--threads``, so
the ratio says whether two runs of one thread each, as ``make study`` runs them, or one run of two threads
gets more images through two cores), so drift hits both alike; the ratio of each pair's images/s is
reported as median and range. Model-only steps (views /
augmented batch made once) at the quick study's setting: BYOL (separate views, batch 16, hidden 1024 /
projection 128) and fine-tuning (batch 8), tf_efficientnet_lite0 at 64 px, decoder 64-32-16-16-16,
channels_last.

``--profile`` compares nothing: it runs torch's profiler over ``--steps`` steps of each (as they are now)
and splits the step's CPU time into convolution arithmetic (oneDNN's convolution forward and backward
kernels, and medssl's direct depthwise weight gradient), BatchNorm, the optimiser, and everything else,
with the bound that follows (Amdahl): the step could be at most ``total / convolution`` times faster if
everything but the convolutions took no time at all. The profiler adds its own overhead to the many small
operations, so the split is approximate; its unprofiled step time is printed beside it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--compare", choices=("depthwise", "views", "batch", "optimizer", "bf16", "threads"),
                    default="depthwise")
    ap.add_argument("--blocks", type=int, default=8)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--profile", action="store_true", help="where a step's time goes, instead of a comparison")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    import torch

    from lightly.models.utils import update_momentum

    from medssl_utils.losses import segmentation_loss
    from medssl_utils.models import build_unet, depthwise
    from medssl_utils.models.byol import BYOL
    from medssl_utils.training.loop import _param_groups, make_optimizer

    torch.set_num_threads(args.threads)
    cl = torch.channels_last
    dec = (64, 32, 16, 16, 16)
    gen = torch.Generator().manual_seed(0)

    torch.manual_seed(0)
    unet = build_unet("tf_efficientnet_lite0", num_classes=2, decoder_channels=dec)
    byol = BYOL(unet.encoder, unet.encoder.out_channels[-1], hidden_dim=1024, projection_dim=128).to(memory_format=cl)
    opt = make_optimizer("adamw", byol, 1e-3, 1e-4)
    opts = {"byol": {True: opt, False: torch.optim.AdamW(_param_groups(byol, 1e-4), lr=1e-3, foreach=True)}}
    views = {b: [torch.randn(b, 1, 64, 64, generator=gen).contiguous(memory_format=cl) for _ in range(2)]
             for b in (16, 32)}
    current = {"batch": 16, "fused": True, "bf16": False}

    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=current["bf16"])

    def byol_step():
        with autocast():
            loss, _ = byol(*views[current["batch"]])
        o = opts["byol"][current["fused"]]
        o.zero_grad(set_to_none=True)
        loss.backward()
        o.step()
        if current["fused"]:
            byol.update_target(0, 100)
        else:  # as before: lightly's loop over the parameters
            m = byol.resolved_base_momentum(100)
            update_momentum(byol.encoder, byol.target_encoder, m)
            update_momentum(byol.projector, byol.target_projector, m)

    torch.manual_seed(0)
    model = build_unet("tf_efficientnet_lite0", num_classes=4, decoder_channels=dec).to(memory_format=cl)
    opt2 = make_optimizer("adam", model, 1e-4, 0.0)
    opts["finetune"] = {True: opt2, False: torch.optim.Adam(_param_groups(model, 0.0), lr=1e-4, foreach=True)}
    loss_fn = segmentation_loss("dice_ce", num_classes=4)
    x = torch.randn(8, 1, 64, 64, generator=gen).contiguous(memory_format=cl)
    y = torch.randint(0, 4, (8, 64, 64), generator=gen)

    def ft_step():
        with autocast():
            loss = loss_fn(model(x), y)
        o = opts["finetune"][current["fused"]]
        o.zero_grad(set_to_none=True)
        loss.backward()
        o.step()

    def switch(flag: bool) -> None:  # True: the candidate (the second of the comparison's labels)
        if args.compare == "depthwise":
            depthwise.FAST_WEIGHT_GRAD = flag
        elif args.compare == "views":
            byol.views = "batched" if flag else "separate"
        elif args.compare == "optimizer":
            current["fused"] = flag
        elif args.compare == "bf16":
            current["bf16"] = flag
        elif args.compare == "threads":
            torch.set_num_threads(2 if flag else args.threads)
        else:
            current["batch"] = 32 if flag else 16

    if args.profile:
        results = {"profile": {name: profile_step(step, args.steps) for name, step in
                               (("byol", byol_step), ("finetune", ft_step))}, "threads": args.threads}
    else:
        results = compare(args, byol, byol_step, ft_step, switch, current)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
    return 0


def profile_step(step, n: int) -> dict:
    """CPU time of ``n`` steps split by kind of work (see the module docstring), per step, in ms."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        step()
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    plain = (time.perf_counter() - t0) / n * 1e3
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(n):
            step()
    kinds = {"convolution": 0.0, "batch norm": 0.0, "optimiser": 0.0, "other": 0.0}
    for e in prof.events():
        chain, q = [], e.cpu_parent
        while q is not None:
            chain.append(q.name)
            q = q.cpu_parent
        if e.name in ("aten::mkldnn_convolution", "aten::convolution_backward") or (
                "_DepthwiseFunctionBackward" in chain and not any(c.startswith("aten::convolution") for c in chain)):
            kind = "convolution"
        elif any(c.startswith("Optimizer.step") for c in [e.name, *chain]):
            kind = "optimiser"
        elif "batch_norm" in e.name:
            kind = "batch norm"
        else:
            kind = "other"
        kinds[kind] += e.self_cpu_time_total / 1e3 / n
    total = sum(kinds.values())
    out = {"unprofiled_ms": plain, "profiled_ms": total, "ms": kinds, "share": {k: v / total for k, v in kinds.items()},
           "bound_if_only_convolutions": total / kinds["convolution"]}
    print(f"step {plain:.1f} ms unprofiled, {total:.1f} ms profiled: " + ", ".join(
        f"{k} {v:.1f} ms ({v / total:.0%})" for k, v in kinds.items())
        + f"; at most x{out['bound_if_only_convolutions']:.2f} if only the convolutions took time", flush=True)
    return out


def compare(args, byol, byol_step, ft_step, switch, current) -> dict:
    import torch

    from medssl_utils.models import depthwise

    labels = {"depthwise": ("PyTorch's", "medssl's"), "views": ("separate", "batched"),
              "batch": ("batch 16", "batch 32"), "optimizer": ("foreach + lightly EMA", "fused + lerp"),
              "bf16": ("float32", "bf16 autocast"), "threads": (f"{args.threads} thread(s)", "2 threads")}[args.compare]
    results = {"compare": args.compare, "threads": args.threads, "blocks": args.blocks, "steps": args.steps}
    steps = (("byol", byol_step, 16), ("finetune", ft_step, 8))
    for name, step, batch in (steps if args.compare in ("depthwise", "optimizer", "bf16", "threads") else steps[:1]):
        for flag in (False, True):  # warm-up, both paths
            switch(flag)
            for _ in range(3):
                step()
        rates = {True: [], False: []}
        for k in range(args.blocks):
            for flag in ((False, True) if k % 2 == 0 else (True, False)):
                switch(flag)
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    step()
                images = batch * (2 if args.compare == "batch" and flag else 1)
                rates[flag].append(args.steps * images / (time.perf_counter() - t0))
        depthwise.FAST_WEIGHT_GRAD, byol.views, current["batch"], current["fused"] = True, "separate", 16, True
        current["bf16"] = False
        torch.set_num_threads(args.threads)
        ratios = [f / t for f, t in zip(rates[True], rates[False])]
        results[name] = {"labels": labels, "base_images_per_s": rates[False], "candidate_images_per_s": rates[True],
                         "median_base": statistics.median(rates[False]),
                         "median_candidate": statistics.median(rates[True]),
                         "ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios)}
        r = results[name]
        print(f"{name:9s} model-only img/s, median of {args.blocks}: {labels[0]} {r['median_base']:.1f}, "
              f"{labels[1]} {r['median_candidate']:.1f}; ratio median {r['ratio_median']:.3f} "
              f"(range {r['ratio_min']:.3f}-{r['ratio_max']:.3f})", flush=True)
    return results


if __name__ == "__main__":
    sys.exit(main())
