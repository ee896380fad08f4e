"""What each HSSL level learns, and what a classifier on intensity statistics alone can do.

    python benchmarks/hssl_levels.py [--steps 200] [--encoder tf_efficientnet_lite0] [--image-size 64]
        [--batch-size 32] [--decoder 64 32 16 16 16] [--out results/hssl-levels]

1. The shortcut. HSSL's task and group levels are meant to teach anatomy, but the domains
   differ in intensity range (CT windowed to [-1, 1], MR z-scored). A logistic regression on
   13 intensity statistics of each augmented view (mean, std, min, max, 9 quantiles; rounded to
   1e-3, see ``intensity_features``) is
   trained on the training patients' slices and scored (balanced accuracy: the mean of the
   per-class recalls, chance = 1 / classes) on the validation patients' slices,
   on the views as augmented (raw), z-scored per image (standardized), and histogram-equalised
   (HSSL's second view). If it solves task/group from a kind of view, the classification levels
   could be solved on it without looking at anatomy.
2. The levels. HSSL is pretrained (``--steps`` steps, all four phantom domains) with every
   level, without the dense level, and without the task and group levels; then each
   checkpoint (and a random initialisation) is probed on the validation patients:
   - task / group: a logistic regression on the frozen, pooled encoder features;
   - dense: a per-pixel logistic regression on the frozen decoder's last feature map that
     predicts the cardiac phantom's segmentation labels (RV, MYO, LV), trained on labelled
     slices of training patients, scored as mean foreground Dice on validation patients.
   A level "learns something" when the probe of the variant that has it beats the variant
   without it and the random initialisation.
Writes ``OUT/levels.json`` and prints both tables. Pretraining runs are kept in ``OUT`` and
reused when the script runs again.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DOMAINS = ["phantom:cardiac?cases=32", "phantom:abdomen-ct", "phantom:brain-mr", "phantom:prostate-mr"]
VARIANTS = {
    "all levels": {"image": 1.0, "task": 1.0, "group": 1.0, "dense": 1.0},
    "no dense": {"image": 1.0, "task": 1.0, "group": 1.0, "dense": 0.0},
    "no task/group": {"image": 1.0, "task": 0.0, "group": 0.0, "dense": 1.0},
}


def intensity_features(x, decimals: int | None = 3):
    """(B, 13) statistics of each image of ``x`` (B, 1, H, W): mean, std, min, max, 9 quantiles,
    rounded to ``decimals`` (None: as computed).

    Why round: after equalisation and z-scoring every statistic is a function of the view's random
    gamma alone, up to float32 rounding residue of ~1e-5 that depends on how many equal values the
    image had (CT's windowed background has many). The 13 statistics are then almost collinear, and
    a standardised logistic regression amplifies exactly that residue: unrounded, it separates CT
    from MR on equalised views (balanced accuracy ~0.85) from numbers 1e-5 apart, which no
    intensity *distribution* carries. Rounding to 1e-3 keeps every real difference (the statistics
    are O(1)) and removes the residue; the unrounded figure is reported as its own row.
    """
    import torch

    flat = x.flatten(1).float()
    q = torch.quantile(flat, torch.linspace(0.1, 0.9, 9), dim=1).T
    features = torch.cat([flat.mean(1, keepdim=True), flat.std(1, keepdim=True), flat.amin(1, keepdim=True),
                          flat.amax(1, keepdim=True), q], dim=1).numpy()
    return features if decimals is None else features.round(decimals)


def _tags_and_images(md, rows_per_part=400, seed=0):
    """A balanced sample of (images, task, group) from a MultiDomainDataset."""
    import numpy as np
    import torch

    rng = np.random.default_rng(seed)
    xs, tasks, groups = [], [], []
    for part in md.parts:
        take = np.sort(rng.choice(len(part), min(len(part), rows_per_part), replace=False))
        items = [part[int(i)] for i in take]
        xs.append(torch.stack([it["image"] for it in items]))
        tasks += [it["task"] for it in items]
        groups += [it["group"] for it in items]
    return torch.cat(xs), np.asarray(tasks), np.asarray(groups)


def _accuracy(train_x, train_y, test_x, test_y) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from sklearn.metrics import balanced_accuracy_score

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced"))
    clf.fit(train_x, train_y)
    return float(balanced_accuracy_score(test_y, clf.predict(test_x)))


def shortcut_table(args) -> dict:
    import torch

    from medssl_utils.data import SSLAugment
    from medssl_utils.models.hssl import standardize_views
    from medssl_utils.training import PretrainConfig, prepare_pretrain_data

    cfg = PretrainConfig(method="hssl", datasets=DOMAINS, image_size=args.image_size, run_dir=str(args.out / "_probe"),
                         knn_max_bank=4000, knn_max_query=2000)
    data = prepare_pretrain_data(cfg)
    aug = SSLAugment(output_size=args.image_size)
    equalizing = SSLAugment(output_size=args.image_size, equalize_p=1.0)  # HSSL's second view
    out = {}
    for name, md, seed in (("train", data.dataset, 1), ("val", data.query, 2)):
        x, task, group = _tags_and_images(md, seed=seed)
        view = aug.view(x, torch.Generator().manual_seed(seed))
        equalized = equalizing.view(x, torch.Generator().manual_seed(seed))
        out[name] = {"raw": intensity_features(view), "standardized": intensity_features(standardize_views(view)),
                     "equalized": intensity_features(standardize_views(equalized)),
                     "equalized, unrounded": intensity_features(standardize_views(equalized), decimals=None),
                     "task": task, "group": group}
    table = {}
    for feed in ("raw", "standardized", "equalized", "equalized, unrounded"):
        table[feed] = {level: _accuracy(out["train"][feed], out["train"][level], out["val"][feed], out["val"][level])
                       for level in ("task", "group")}
    chance = {level: 1.0 / len(set(out["val"][level])) for level in ("task", "group")}
    return {"intensity_classifier": table, "chance": chance, "data": data}


def probe_checkpoint(init: str, data, args) -> dict:
    """task/group probes on pooled encoder features; dense probe on decoder features."""
    import torch

    from medssl_utils.models import build_unet
    from medssl_utils.models.hssl import standardize_views

    load_decoder = init not in ("random",)
    torch.manual_seed(0)
    unet = build_unet(args.encoder, num_classes=2, init=init, decoder_channels=tuple(args.decoder),
                      load_decoder=load_decoder).eval()

    def pooled(x):
        with torch.no_grad():
            return unet.encoder(standardize_views(x))[-1].mean(dim=(2, 3)).numpy()

    res = {}
    tr = _tags_and_images(data.dataset, seed=1)
    va = _tags_and_images(data.query, seed=2)
    ftr, fva = pooled(tr[0]), pooled(va[0])
    for i, level in ((1, "task"), (2, "group")):
        res[level] = _accuracy(ftr, tr[i], fva, va[i])
    res["dense_dice"] = dense_probe(unet, args)
    return res


def dense_probe(unet, args) -> float:
    """Mean foreground Dice of a per-pixel logistic regression on the frozen decoder features."""
    import numpy as np
    import torch
    from sklearn.linear_model import LogisticRegression

    from medssl_utils.data import labelled_slices, load_dataset, make_split, slice_cache
    from medssl_utils.models.hssl import standardize_views

    vs = load_dataset(DOMAINS[0]).labelled()
    cache = slice_cache(vs, image_size=args.image_size, progress=False)
    split = make_split(cache.index, "paper")

    def features(rows):
        x = torch.from_numpy(np.asarray(cache.images[rows], np.float32))[:, None]
        with torch.no_grad():
            f = unet.decoder(unet.encoder(standardize_views(x)))
        return f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]).numpy(), np.asarray(cache.labels[rows]).reshape(-1)

    rng = np.random.default_rng(0)
    train_rows = labelled_slices(cache.index, split, "train")
    val_rows = labelled_slices(cache.index, split, "val")
    fx, fy = features(np.sort(rng.choice(train_rows, min(64, len(train_rows)), replace=False)))
    keep = rng.choice(len(fy), min(len(fy), 60_000), replace=False)
    scaled = (fx[keep] - fx.mean(0)) / (fx.std(0) + 1e-6)
    clf = LogisticRegression(max_iter=1000, class_weight="balanced").fit(scaled, fy[keep])
    vx, vy = features(val_rows)
    pred = clf.predict((vx - fx.mean(0)) / (fx.std(0) + 1e-6))
    dices = []
    for label in (1, 2, 3):
        p, g = pred == label, vy == label
        dices.append(2 * np.sum(p & g) / max(p.sum() + g.sum(), 1))
    return float(np.mean(dices))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--encoder", default="tf_efficientnet_lite0")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--decoder", type=int, nargs="+", default=[64, 32, 16, 16, 16])
    ap.add_argument("--out", type=Path, default=Path("results/hssl-levels"))
    args = ap.parse_args(argv)

    from medssl_utils import training

    short = shortcut_table(args)
    data = short.pop("data")
    print("intensity-statistics classifier on validation patients' views (balanced accuracy):")
    for feed, accs in short["intensity_classifier"].items():
        print(f"  {feed:21s} task {accs['task']:.3f}  group {accs['group']:.3f}")
    print(f"  chance: task {short['chance']['task']:.3f}  group {short['chance']['group']:.3f}")

    probes = {"random init": probe_checkpoint("random", data, args)}
    for name, weights in VARIANTS.items():
        r = training.pretrain(method="hssl", datasets=DOMAINS, encoder=args.encoder, image_size=args.image_size,
                              decoder_channels=tuple(args.decoder), batch_size=args.batch_size, epochs=100,
                              max_steps=args.steps, optimizer="adamw", save_epochs=[], knn_every=0, device="cpu",
                              method_options={"weights": weights, "hidden_dim": 1024}, progress=False,
                              run_dir=str(args.out / name.replace(" ", "-").replace("/", "-")))
        probes[name] = {**probe_checkpoint(r["checkpoint"], data, args), "final_loss": r["final_loss"],
                        "train_s": r["timings"]["train_s"]}
    print(f"\nprobes on validation patients after {args.steps} steps "
          "(task/group: linear probe balanced accuracy on pooled encoder features; dense: per-pixel probe Dice "
          "on decoder features)")
    for name, p in probes.items():
        print(f"  {name:14s} task {p['task']:.3f}  group {p['group']:.3f}  dense Dice {p['dense_dice']:.3f}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "levels.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                      **short, "probes": probes}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
