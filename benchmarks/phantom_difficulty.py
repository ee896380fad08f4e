"""How hard is the cardiac phantom? Train a small 2D U-Net on it and report Dice.

The phantom must leave room for pretraining to matter: a U-Net trained on all labelled
slices should do well but not perfectly (mean Dice over RV/MYO/LV roughly 0.80-0.95),
and one trained from random init on a handful of labelled slices should be clearly worse.
This script measures both, standalone (numpy, nibabel, torch, segmentation_models_pytorch):

1. write the cardiac phantom (ACDC layout) into a temporary folder;
2. read every training patient's ED and ES frames with their ``_gt`` label maps;
3. normalise each volume (clip to its 0.5/99.5 percentiles, then z-score), pad each
   slice to a square and resize it to ``--image-size`` (bilinear images, nearest labels);
4. split by patient (80% train / 20% test);
5. train ``smp.Unet("resnet18", encoder_weights=None, ...)`` from random init with Adam,
   Dice + cross-entropy loss and random flips, for ``--steps`` steps on (a) all training
   slices and (b) ``--few`` randomly chosen training slices that show the heart. To fit a
   2-core CPU, training uses random ``--crop`` x ``--crop`` crops of the resized slices
   (most of them around the heart); evaluation runs on whole slices;
6. report per-structure Dice on the held-out patients, per 2D slice (slices where the
   structure is in neither the truth nor the prediction are skipped) and per 3D volume,
   and the wall time; print a table and write JSON (``--out``).

Run:  PYTHONPATH=. python benchmarks/phantom_difficulty.py --out difficulty.json
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

STRUCTURES = {1: "RV", 2: "MYO", 3: "LV"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=60, help="training patients in the phantom (default 60)")
    p.add_argument("--steps", type=int, default=300, help="optimiser steps per training run (default 300)")
    p.add_argument("--image-size", type=int, default=128, help="slices are resized to this square size")
    p.add_argument("--crop", type=int, default=64, help="training crop size (<= image size)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--few", type=int, default=8, help="labelled slices for the few-label run (0: skip it)")
    p.add_argument("--seed", type=int, default=0, help="phantom seed and training seed")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--data", type=Path, default=None,
                   help="use an existing phantom root (folder holding database/) instead of generating one")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    if args.crop > args.image_size:
        p.error("--crop must not exceed --image-size")
    return args


# ------------------------------------------------------------------------------- data

def normalise(volume: np.ndarray) -> np.ndarray:
    """Clip to the 0.5/99.5 percentiles, then z-score (float32, same shape)."""
    lo, hi = np.percentile(volume, [0.5, 99.5])
    v = np.clip(volume.astype(np.float32), np.float32(lo), np.float32(hi))
    return ((v - v.mean()) / (v.std() + 1e-6)).astype(np.float32)


def slices_of(image: np.ndarray, label: np.ndarray, size: int):
    """(X, Y, Z) volume -> (Z, size, size) image float32 and label int64, padded square then resized."""
    import torch
    import torch.nn.functional as F

    img = np.moveaxis(image, 2, 0)
    lab = np.moveaxis(label, 2, 0)
    _, h, w = img.shape
    side = max(h, w)
    ph, pw = side - h, side - w
    pad = ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2))
    img = np.pad(img, pad, constant_values=float(img.min()))
    lab = np.pad(lab, pad, constant_values=0)
    ti = F.interpolate(torch.from_numpy(img)[:, None], size=(size, size), mode="bilinear", align_corners=False)
    tl = F.interpolate(torch.from_numpy(lab.astype(np.float32))[:, None], size=(size, size), mode="nearest")
    return ti[:, 0].numpy(), tl[:, 0].numpy().astype(np.int64)


def load_phantom(root: Path, size: int) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """{patient: [(image (Z,S,S), label (Z,S,S)) for ED and ES]} for every training patient."""
    out: dict[str, list] = {}
    train_dir = root / "database" / "training"
    for pdir in sorted(train_dir.glob("patient*")):
        vols = []
        for gt in sorted(pdir.glob("*_frame[0-9][0-9]_gt.nii.gz")):
            img_path = gt.with_name(re.sub(r"_gt\.nii\.gz$", ".nii.gz", gt.name))
            image = np.asanyarray(nib.load(str(img_path)).dataobj).astype(np.float32)
            label = np.asanyarray(nib.load(str(gt)).dataobj).astype(np.int64)
            vols.append(slices_of(normalise(image), label, size))
        out[pdir.name] = vols
    if not out:
        raise SystemExit(f"no patients found under {train_dir}")
    return out


# ------------------------------------------------------------------------------- training

def sample_batch(images, labels, pool, rng, batch: int, crop: int):
    """A batch of random crops (70% centred near the heart) with random flips."""
    n, size, _ = images.shape
    xb = np.empty((batch, 1, crop, crop), np.float32)
    yb = np.empty((batch, crop, crop), np.int64)
    for b in range(batch):
        i = pool[rng.integers(len(pool))]
        fg = np.argwhere(labels[i] > 0)
        if len(fg) and rng.uniform() < 0.7:
            cy, cx = fg[rng.integers(len(fg))] + rng.integers(-crop // 4, crop // 4 + 1, size=2)
        else:
            cy, cx = rng.integers(0, size, size=2)
        y0 = int(np.clip(cy - crop // 2, 0, size - crop))
        x0 = int(np.clip(cx - crop // 2, 0, size - crop))
        im = images[i, y0:y0 + crop, x0:x0 + crop]
        lb = labels[i, y0:y0 + crop, x0:x0 + crop]
        if rng.uniform() < 0.5:
            im, lb = im[::-1], lb[::-1]
        if rng.uniform() < 0.5:
            im, lb = im[:, ::-1], lb[:, ::-1]
        xb[b, 0] = im
        yb[b] = lb
    return xb, yb


def make_model():
    import segmentation_models_pytorch as smp

    return smp.Unet("resnet18", encoder_weights=None, in_channels=1, classes=4,
                    decoder_channels=(128, 64, 32, 16, 8))


def train(images, labels, pool, args, seed: int, tag: str):
    """Train a fresh U-Net for ``args.steps`` steps on the slices ``pool``; returns (model, seconds)."""
    import segmentation_models_pytorch as smp
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = make_model()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.1)
    dice = smp.losses.DiceLoss("multiclass", from_logits=True)
    ce = torch.nn.CrossEntropyLoss()
    model.train()
    t0 = time.perf_counter()
    for step in range(args.steps):
        xb, yb = sample_batch(images, labels, pool, rng, args.batch_size, args.crop)
        x, y = torch.from_numpy(xb), torch.from_numpy(yb)
        logits = model(x)
        loss = dice(logits, y) + ce(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % max(1, args.steps // 10) == 0:
            print(f"  [{tag}] step {step + 1}/{args.steps} loss {loss.item():.3f} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return model, time.perf_counter() - t0


def predict(model, images: np.ndarray, batch: int = 32) -> np.ndarray:
    import torch

    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = torch.from_numpy(images[i:i + batch, None])
            out.append(model(x).argmax(1).numpy())
    return np.concatenate(out)


def dice(a: np.ndarray, b: np.ndarray) -> float | None:
    """Dice of two boolean masks; None when both are empty."""
    s = int(a.sum()) + int(b.sum())
    return None if s == 0 else 2.0 * int(np.logical_and(a, b).sum()) / s


def evaluate(model, volumes) -> dict:
    """Mean per-structure Dice over test slices (2D) and test volumes (3D)."""
    d2 = {k: [] for k in STRUCTURES}
    d3 = {k: [] for k in STRUCTURES}
    for image, label in volumes:
        pred = predict(model, image)
        for k in STRUCTURES:
            v = dice(pred == k, label == k)
            if v is not None:
                d3[k].append(v)
            for z in range(len(label)):
                v = dice(pred[z] == k, label[z] == k)
                if v is not None:
                    d2[k].append(v)

    def summary(d):
        res = {STRUCTURES[k]: float(np.mean(v)) if v else float("nan") for k, v in d.items()}
        res["mean"] = float(np.mean([res[n] for n in STRUCTURES.values()]))
        return res

    return {"dice2d": summary(d2), "dice3d": summary(d3)}


# ------------------------------------------------------------------------------- main

def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="phantom-difficulty-") as tmp:
        if args.data is None:
            from medssl_utils.data.phantoms import write_phantom

            t = time.perf_counter()
            root = write_phantom("cardiac", Path(tmp), cases=args.cases, seed=args.seed)
            gen_s = time.perf_counter() - t
            print(f"generated {args.cases} training patients in {gen_s:.1f} s", flush=True)
        else:
            root, gen_s = args.data, 0.0
        t = time.perf_counter()
        data = load_phantom(root, args.image_size)
        print(f"read and resized {len(data)} patients in {time.perf_counter() - t:.1f} s", flush=True)

    rng = np.random.default_rng(args.seed)
    patients = sorted(data)
    rng.shuffle(patients)
    n_train = max(1, int(round(0.8 * len(patients))))
    train_p, test_p = patients[:n_train], patients[n_train:] or patients[-1:]
    images = np.concatenate([im for p in train_p for im, _ in data[p]])
    labels = np.concatenate([lb for p in train_p for _, lb in data[p]])
    test_vols = [v for p in test_p for v in data[p]]
    all_pool = np.arange(len(images))
    heart = np.flatnonzero(labels.reshape(len(labels), -1).max(1) > 0)
    few_pool = rng.choice(heart, size=min(max(args.few, 0), len(heart)), replace=False)
    print(f"{len(train_p)} train / {len(test_p)} test patients; {len(images)} training slices, "
          f"{sum(len(v[1]) for v in test_vols)} test slices", flush=True)

    results = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               "generation_s": gen_s, "train_patients": len(train_p), "test_patients": len(test_p),
               "train_slices": int(len(images)), "few_slices": [int(i) for i in few_pool]}
    runs = [("all", all_pool)] + ([(f"few{args.few}", few_pool)] if args.few > 0 else [])
    for tag, pool in runs:
        model, secs = train(images, labels, pool, args, args.seed + 1, tag)
        t = time.perf_counter()
        res = evaluate(model, test_vols)
        res["train_s"], res["eval_s"] = secs, time.perf_counter() - t
        results[tag] = res
        print(f"  [{tag}] Dice 2D {res['dice2d']}  3D {res['dice3d']}", flush=True)
    results["wall_s"] = time.perf_counter() - t_start

    print(f"\n{'run':<8} {'metric':<7} " + " ".join(f"{n:>6}" for n in [*STRUCTURES.values(), "mean"]))
    for tag, _ in runs:
        for metric in ("dice2d", "dice3d"):
            r = results[tag][metric]
            print(f"{tag:<8} {metric:<7} " + " ".join(f"{r[n]:6.3f}" for n in [*STRUCTURES.values(), "mean"]))
    print(f"wall time {results['wall_s']:.0f} s")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
