"""Does feeding grey slices at ImageNet's input scale matter for an ImageNet-initialised encoder?

    python benchmarks/imagenet_input_scale.py [--encoder tf_efficientnet_lite0] [--spec "phantom:cardiac?cases=32"]
        [--image-size 64] [--out FILE]

timm normalises tf_efficientnet_lite* with mean = std = 0.5 per RGB channel: a photograph
reaches the network in [-1, 1] with a standard deviation of about 0.5. medssl feeds z-scored MR
(std 1) or CT windowed to [-1, 1] to a first convolution whose RGB filters were summed. This
script measures, on slices of ``--spec``:

1. the spread of what the stem convolution produces: for ImageNet-normalised scikit-image
   photographs (fed as grey (x, x, x) to the RGB network) vs medssl's slices (fed to the
   summed one-channel stem) — the mismatch a user might worry about;
2. how much the U-Net's output changes when the slices are instead mapped to the photographs'
   mean and standard deviation (``a * x + b``): with BatchNorm in training mode (as in
   fine-tuning) and in evaluation mode after medssl's BatchNorm recalibration (as in every
   validation and test), against evaluation mode with the running statistics the ImageNet
   weights came with (what would happen without recalibration).
Relative changes are ``|f(a x + b) - f(x)| / |f(x)|`` (L2 over the batch's logits).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encoder", default="tf_efficientnet_lite0")
    ap.add_argument("--spec", default="phantom:cardiac?cases=32")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    import numpy as np
    import timm
    import torch
    from skimage import data as skdata
    from skimage.transform import resize

    from medssl_utils.data import load_dataset, slice_cache
    from medssl_utils.models import build_unet
    from medssl_utils.training.evaluate import bn_recalibrated

    torch.manual_seed(0)
    cache = slice_cache(load_dataset(args.spec).labelled(), image_size=args.image_size, progress=False)
    rows = np.sort(np.random.default_rng(0).choice(len(cache), 64, replace=False))
    x = torch.from_numpy(np.asarray(cache.images[rows], np.float32))[:, None]

    cfg = timm.data.resolve_data_config({}, model=timm.create_model(args.encoder))
    mean, std = float(np.mean(cfg["mean"])), float(np.mean(cfg["std"]))
    photos = []
    for name in ("camera", "coffee", "chelsea", "astronaut", "rocket", "coins", "moon", "page"):
        img = getattr(skdata, name)()
        grey = img if img.ndim == 2 else img[..., :3].mean(-1)
        photos.append(resize(grey / 255.0, (args.image_size, args.image_size), anti_aliasing=True))
    p = (torch.tensor(np.stack(photos), dtype=torch.float32)[:, None] - mean) / std  # ImageNet-normalised grey

    unet = build_unet(args.encoder, num_classes=4, init="imagenet", decoder_channels=(64, 32, 16, 16, 16))
    stem = unet.encoder.model.conv_stem if hasattr(unet.encoder.model, "conv_stem") else unet.encoder.model.conv1
    with torch.no_grad():
        s_slices, s_photos = stem(x), stem(p)
    a = float(p.std() / x.std())
    b = float(p.mean() - a * x.mean())
    xm = a * x + b  # the slices moved to the photographs' mean and spread

    class _Cache:  # bn_recalibrated reads images from a cache
        def __init__(self, images):
            self.images = images

    def outputs(inp, mode):
        with torch.no_grad():
            if mode == "train":
                unet.train()
                return unet(inp)
            if mode == "eval, ImageNet running statistics":
                unet.eval()
                return unet(inp)
            with bn_recalibrated(unet, _Cache(inp[:, 0].numpy()), np.arange(len(inp)), 64, "cpu"):
                return unet(inp)

    state = {k: v.clone() for k, v in unet.state_dict().items()}
    res = {"input": {"slices_mean": float(x.mean()), "slices_std": float(x.std()),
                     "photos_mean": float(p.mean()), "photos_std": float(p.std()), "a": a, "b": b},
           "stem_output_std": {"slices": float(s_slices.std()), "photos": float(s_photos.std())},
           "relative_output_change": {}}
    for mode in ("train", "eval, recalibrated BatchNorm", "eval, ImageNet running statistics"):
        unet.load_state_dict(state)  # train-mode forwards update running statistics: start each mode afresh
        f0 = outputs(x, mode)
        unet.load_state_dict(state)
        f1 = outputs(xm, mode)
        res["relative_output_change"][mode] = float((f1 - f0).norm() / f0.norm())
    print(f"{args.spec} slices at {args.image_size} px: mean {res['input']['slices_mean']:.3f}, std "
          f"{res['input']['slices_std']:.3f}; ImageNet-normalised photographs: mean {res['input']['photos_mean']:.3f}, "
          f"std {res['input']['photos_std']:.3f}")
    stem = res["stem_output_std"]
    print(f"stem output std: slices {stem['slices']:.3f}, photos {stem['photos']:.3f}")
    print(f"U-Net output change when slices are mapped to the photographs' scale (x -> {a:.3f} x + {b:.3f}):")
    for mode, v in res["relative_output_change"].items():
        print(f"  {mode:36s} {v:.4f}")
    if args.out:
        args.out.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
