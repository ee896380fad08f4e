"""Self-supervised pretraining (BYOL, SimCLR, HSSL) of a U-Net encoder (and, for HSSL, decoder)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from medssl_utils.data import load_dataset, make_split, MultiDomainDataset, slice_cache, SliceDataset
from medssl_utils.data.splits import unlabelled_pool
from medssl_utils.data.transforms import SSLAugment, ssl_preset
from medssl_utils.errors import ParameterError
from medssl_utils.models import (build_unet, decoder_state, describe_lineage, encoder_state, export_encoder,
                                 load_checkpoint, save_checkpoint)
from medssl_utils.models.knn import knn_evaluate
from medssl_utils.progress import progress
from medssl_utils.rundir import RunDir
from medssl_utils.training import loop
from medssl_utils.models.methods import method_class
from medssl_utils.training.config import PRECISIONS, PretrainConfig
from medssl_utils.training.probe import dense_probe, prepare_probe_data

#: Augmentation settings a method changes from SSLAugment's defaults (``augment`` overrides them).
#: HSSL: the second view of every pair is histogram-equalised, so its intensity statistics say
#: nothing about the dataset or modality and the task / group levels must use the anatomy.


@dataclass
class PretrainData:
    dataset: object  # MultiDomainDataset
    pools: dict
    bank: object | None
    query: object | None
    knn_by: str | None
    weights: np.ndarray | None
    probes: list = None  # training.probe.ProbeData of each labelled dataset of the pool


def prepare_pretrain_data(cfg: PretrainConfig) -> PretrainData:
    """Unlabelled pools of every dataset (training patients only), tagged and aggregated."""
    parts, pools, banks, queries = [], {}, [], []
    rng = np.random.default_rng(cfg.seed)
    for spec in cfg.datasets:
        vs = load_dataset(spec)
        cache = slice_cache(vs, image_size=cfg.image_size, progress=cfg.progress is not False)
        scheme = loop.resolve_split(vs.format, cfg.split)
        split = make_split(cache.index, scheme, seed=cfg.split_seed)
        rows = unlabelled_pool(cache.index, split)
        parts.append(SliceDataset(cache, rows, with_labels=False))
        pools[spec] = {"split": scheme, "split_seed": cfg.split_seed, "train_cases": list(split.train)}
        query_rows = cache.index.index[cache.index.case_id.isin(split.val)].to_numpy()
        banks.append(SliceDataset(cache, np.sort(rng.choice(rows, min(len(rows), cfg.knn_max_bank // len(cfg.datasets)),
                                                              replace=False)), with_labels=False))
        if len(query_rows):
            queries.append(SliceDataset(cache, np.sort(rng.choice(query_rows, min(len(query_rows), cfg.knn_max_query
                                                                                  // len(cfg.datasets)),
                                                                  replace=False)), with_labels=False))
    md = MultiDomainDataset(parts)
    tags = {p.cache.meta["spec"]: p.tag_ids for p in md.parts}
    bank = MultiDomainDataset(banks)
    query = MultiDomainDataset(queries) if queries else None
    for d in (bank, query):
        for p in (d.parts if d else []):
            p.tag_ids = tags[p.cache.meta["spec"]]
    knn_by = "task" if len(md.tasks) > 1 else "position"
    if query is not None and knn_by == "position":
        pos = np.concatenate([p.cache.index["position"].to_numpy()[p.rows] for p in query.parts])
        if np.unique(np.minimum((pos * 3).astype(int), 2)).size < 2:
            query = None  # e.g. single-slice photographs: position carries no label
    weights = None
    if cfg.balanced and len(md.parts) > 1:
        doms = np.concatenate([np.full(len(p), p.tag_ids["domain"]) for p in md.parts])
        weights = 1.0 / np.bincount(doms)[doms]
    probes = []
    if cfg.probe_every:
        for spec in cfg.datasets:
            pd_ = prepare_probe_data(spec, cfg.image_size, cfg.split, cfg.split_seed, cfg.probe_val_slices,
                                     progress=cfg.progress is not False)
            if pd_ is not None:
                probes.append(pd_)
    return PretrainData(md, pools, bank, query if cfg.knn_every else None, knn_by, weights, probes)


def _build_ssl(cfg: PretrainConfig, unet, data: PretrainData):
    return method_class(cfg.method).from_unet(unet, data.dataset, **cfg.method_options)


def warmup_steps(warmup_epochs: float | None, steps_per_epoch: int, total: int) -> int:
    """Warm-up steps of a pretraining run of ``total`` steps, bounded by the run's length.

    ``None`` (the default): one epoch, but at most 10 % of the run — a run capped by
    ``max_steps`` (e.g. a large multi-domain pool) still spends most of its steps at the peak
    rate and in the decay. An explicit ``warmup_epochs`` longer than the run is an error.
    """
    if warmup_epochs is None:
        return min(steps_per_epoch, max(total // 10, 1))
    steps = int(round(warmup_epochs * steps_per_epoch))
    if steps > total:
        raise ParameterError(f"warmup_epochs={warmup_epochs}: {steps} warm-up steps but the run has only {total} "
                             f"steps ({steps_per_epoch} per epoch, max_steps/epochs); lower it or leave it None")
    return steps


def ssl_augment(cfg: PretrainConfig):
    """The two-view augmentation a run uses: the preset, then the method's changes, then ``augment``."""
    return SSLAugment(output_size=cfg.image_size, **{**ssl_preset(cfg.augment_preset, cfg.image_size),
                                                     **method_class(cfg.method).augment, **cfg.augment})


def pretrain(cfg: PretrainConfig | None = None, **params) -> dict:
    """Run (or resume, or return the finished) pretraining described by ``cfg`` / ``params``."""
    return loop.run_guarded(cfg or PretrainConfig(**params), "pretrain", _pretrain)


def _pretrain(cfg: PretrainConfig, rd: RunDir, t0: float) -> dict:
    fabric = loop.make_fabric(cfg.device, cfg.precision, cfg.devices)
    with fabric.rank_zero_first():  # rank 0 builds phantoms/slice caches; the others then read them
        data = prepare_pretrain_data(cfg)
    n = len(data.dataset)
    steps_per_epoch = n // (cfg.batch_size * fabric.world_size)
    if steps_per_epoch < 1:
        raise ParameterError(f"batch_size={cfg.batch_size}: larger than the unlabelled pool ({n} slices)")
    total = cfg.epochs * steps_per_epoch if cfg.max_steps is None else min(cfg.epochs * steps_per_epoch, cfg.max_steps)
    torch.manual_seed(cfg.seed)
    unet = build_unet(cfg.encoder, num_classes=2, init=cfg.init, decoder_channels=cfg.decoder_channels)
    start_lineage = unet.medssl_init["lineage"]
    start_weights = loop.conv_weights(unet.encoder)  # encoder_shift is measured from here
    model = _build_ssl(cfg, unet, data)
    raw_ssl = model
    # what the encoder was fed: HSSL z-scores every view per image (standardize=True); fine-tuning must match
    input_norm = raw_ssl.input_norm
    transform = None
    if input_norm == "image":
        from medssl_utils.models.hssl import standardize_views as transform  # only for HSSL runs: imports lightly, timm
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    wd = cfg.weight_decay if cfg.weight_decay is not None else (1.5e-6 if cfg.optimizer == "lars" else 1e-4)
    base_lr = cfg.lr or loop.default_lr(cfg.optimizer, cfg.batch_size * fabric.world_size)
    optimizer = loop.make_optimizer(cfg.optimizer, model, base_lr, wd)
    model, optimizer = fabric.setup(model, optimizer)
    warmup = warmup_steps(cfg.warmup_epochs, steps_per_epoch, total)
    start, earlier_s = 0, 0.0  # earlier_s: time the interrupted sessions spent up to their last save
    last = rd.checkpoints / "last.pt"
    if last.is_file():
        start, extra = loop.load_state(last, loop.unwrap(model), optimizer)
        earlier_s = float(extra.get("elapsed_s", 0.0))
        rd.load_history(start)
    aug = ssl_augment(cfg)
    loader = fabric.setup_dataloaders(
        DataLoader(data.dataset, batch_sampler=loop.StreamBatchSampler(n, cfg.batch_size, cfg.seed, start, total,
                                                                  data.weights, fabric.global_rank, fabric.world_size),
                   num_workers=cfg.num_workers, pin_memory=fabric.device.type == "cuda"),
        use_distributed_sampler=False)
    stage = {"method": cfg.method, "data": list(cfg.datasets), "init": cfg.init,
             "parent": cfg.init if Path(str(cfg.init)).suffix == ".pt" else None,
             "encoder": cfg.encoder, "image_size": cfg.image_size, "seed": cfg.seed, "pool": data.pools,
             "input_norm": input_norm}

    def save_medssl(path: Path, epochs_done: int) -> str:
        raw = loop.unwrap(model)
        # a decoder is saved only when the method trained it (HSSL with pretrain_decoder=True); BYOL, SimCLR
        # and encoder-only HSSL leave it random, and a random decoder must never load as "pretrained"
        dec = decoder_state(unet) if getattr(raw, "pretrain_decoder", False) else None
        if fabric.is_global_zero:
            save_checkpoint(path, encoder_state=encoder_state(unet), decoder_state=dec, encoder_name=cfg.encoder,
                            in_channels=1, lineage_stage={**stage, "epochs": epochs_done},
                            parent_lineage=start_lineage, extra={"step": (epochs_done * steps_per_epoch)})
        fabric.barrier()
        return str(path)

    def knn_now() -> dict | None:
        if data.query is None:
            return None

        return knn_evaluate(loop.unwrap(model), data.bank, data.query, by=data.knn_by, device=fabric.device)

    probe_rows: list[dict] = []
    if start and (rd.path / "probes.csv").is_file():
        import pandas as pd

        probe_rows = [r for r in pd.read_csv(rd.path / "probes.csv").to_dict("records") if r["step"] <= start]

    def probe_now(done: int) -> float | None:
        """Dense linear probe of the online encoder on every labelled dataset, every probe seed."""
        if not data.probes:  # every process probes the same weights (only rank 0 writes probes.csv)
            return None

        values = []
        for pdata in data.probes:
            for seed in range(cfg.probe_seeds):
                r = dense_probe(unet.encoder, pdata, seed, train_slices=cfg.probe_slices, steps=cfg.probe_steps,
                                device=fabric.device, channels_last=cfg.channels_last, transform=transform)
                probe_rows.append({"step": done, "epoch": round(done / steps_per_epoch, 4), "dataset": pdata.dataset,
                                   "seed": seed, "dense_dice": r["dense_dice"],
                                   **{f"dice_{k}": v for k, v in r["dice"].items()},
                                   "train_slices": r["train_slices"], "val_slices": r["val_slices"]})
                values.append(r["dense_dice"])
        import pandas as pd

        rd.write_text("probes.csv", pd.DataFrame(probe_rows).to_csv(index=False))
        return float(np.mean(values))

    def evaluation_row(done: int, knn: bool, probe: bool) -> dict | None:
        """k-NN and / or dense probe, and how far the encoder moved, as one history row (or None)."""
        row = {}
        if knn:
            res = knn_now()
            if res is not None:
                row.update({"knn_acc": res["acc"], "knn_chance_majority": res["chance_majority"],
                            "knn_chance_frequency": res["chance_frequency"]})
        if probe:
            value = probe_now(done)
            if value is not None:
                row["probe_dice"] = value
        if not row:
            return None
        return {"step": done, "epoch": done / steps_per_epoch, "time_s": round(time.perf_counter() - t0, 3), **row,
                "encoder_shift": loop.encoder_shift(unet.encoder, start_weights)}

    checkpoints = {str(e): str(rd.checkpoints / f"epoch_{e}.pt") for e in cfg.save_epochs
                   if (rd.checkpoints / f"epoch_{e}.pt").is_file()}
    if start == 0:
        row = evaluation_row(0, bool(cfg.knn_every), bool(cfg.probe_every))
        if row is not None:
            rd.log({**row, "epoch": 0, "time_s": 0.0})
    bar = progress(total, f"pretrain {cfg.method}", cfg.progress, initial=start)
    # images/s and train_s count training only: the clock pauses for checkpoints and k-NN probes
    train_time, window, images, run_loss, run_n = 0.0, 0.0, 0, 0.0, 0
    tick = time.perf_counter()
    step = start
    try:
        for step, batch in zip(range(start, total), loader):
            loop.set_lr(optimizer, loop.lr_at(step, total, base_lr, warmup))
            x = batch["image"]
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            g = loop.step_generator(cfg.seed, step, fabric.global_rank, x.device)
            loss, logs = raw_ssl.loss(model, aug, x, batch, g)  # model: the Fabric wrapper (DDP sees the forward)
            epoch = step // steps_per_epoch + 1
            loop.check_finite(loss, step, epoch)
            loop.optimise(fabric, model, optimizer, loss, cfg.grad_clip)
            momentum = raw_ssl.after_step(step, total)
            loop.check_finite_weights(model, step, epoch)
            run_loss += float(loss.detach())
            run_n += 1
            images += x.shape[0] * fabric.world_size
            bar.update(1)
            done = step + 1
            if done % cfg.log_every == 0 or done == total:
                el = window + time.perf_counter() - tick
                train_time += el
                row = {"step": done, "epoch": done / steps_per_epoch, "time_s": round(time.perf_counter() - t0, 3),
                       "loss": loop.mean_over_ranks(fabric, run_loss / run_n), "lr": optimizer.param_groups[0]["lr"],
                       "images_per_s": images / el if el > 0 else None}
                if momentum is not None:
                    row["momentum"] = momentum
                row.update({k: float(v) for k, v in logs.items() if k != "loss"})
                rd.log(row)
                bar.set_postfix_str(f"loss {row['loss']:.4f}")
                run_loss, run_n, images, window = 0.0, 0, 0, 0.0
                tick = time.perf_counter()
            if done % steps_per_epoch == 0 or done == total:
                window += time.perf_counter() - tick
                ep = done // steps_per_epoch
                if done % steps_per_epoch == 0 and ep in cfg.save_epochs:
                    checkpoints[str(ep)] = save_medssl(rd.checkpoints / f"epoch_{ep}.pt", ep)
                saved = done % steps_per_epoch == 0 and ep in cfg.save_epochs
                knn = bool(cfg.knn_every) and (ep % cfg.knn_every == 0 or done == total)
                probe = bool(cfg.probe_every) and (ep % cfg.probe_every == 0 or done == total or saved)
                row = evaluation_row(done, knn, probe)
                if row is not None:
                    rd.log(row)
                if fabric.is_global_zero:
                    loop.save_state(rd.checkpoints / "last.pt", done, loop.unwrap(model), optimizer,
                                    {"elapsed_s": earlier_s + time.perf_counter() - t0})
                rd.flush_history()
                tick = time.perf_counter()
    except KeyboardInterrupt:
        rd.flush_history()
        raise
    finally:
        bar.close()
    loop.check_ranks_in_sync(fabric, loop.unwrap(model))
    loop.check_finite_weights(model, total, buffers=True)
    epochs_done = total / steps_per_epoch
    final = save_medssl(rd.checkpoints / "final.pt", round(epochs_done, 3) if epochs_done % 1 else int(epochs_done))
    encoder_export = str(rd.checkpoints / "encoder.safetensors")  # the encoder alone, timm's names (docs/export.md)
    if fabric.is_global_zero:
        export_encoder(final, encoder_export)
    rd.flush_history()

    lineage = load_checkpoint(final)["lineage"]
    knn_rows = [r for r in rd.rows if r.get("knn_acc") is not None]
    probe = _probe_summary(probe_rows, total, cfg)
    result = {
        "status": "complete", "kind": "pretrain", "error": None, "method": cfg.method, "datasets": cfg.datasets,
        "init": cfg.init, "lineage": lineage, "lineage_name": describe_lineage(lineage), "steps": total,
        "epochs": epochs_done, "seed": cfg.seed, "slices_in_pool": n, "checkpoint": final, "checkpoints": checkpoints,
        "encoder_export": encoder_export,
        "knn": {"by": data.knn_by, "first": knn_rows[0]["knn_acc"] if knn_rows else None,
                "last": knn_rows[-1]["knn_acc"] if knn_rows else None,
                "chance_majority": knn_rows[-1]["knn_chance_majority"] if knn_rows else None,
                "chance_frequency": knn_rows[-1]["knn_chance_frequency"] if knn_rows else None,
                "batchnorm": "recomputed on the bank before every evaluation"},
        "probe": probe,
        "encoder_shift": loop.encoder_shift(unet.encoder, start_weights),
        "final_loss": next((r["loss"] for r in reversed(rd.rows) if "loss" in r), None),
        "input_norm": input_norm,
        "augment": {k: list(v) if isinstance(v, tuple) else v for k, v in aug.config().items()},
        "optimizer": cfg.optimizer,
        "schedule": {"base_lr": base_lr, "warmup_steps": warmup, "steps_per_epoch": steps_per_epoch,
                     **raw_ssl.schedule(total)},
        "timings": {"total_s": round(earlier_s + time.perf_counter() - t0, 2), "resumed_at_step": start or None,
                    "train_s": round(train_time, 2),
                    "images_per_s": round((total - start) * cfg.batch_size * fabric.world_size / train_time, 1)
                    if train_time else None},
        "device": str(fabric.device), "devices": fabric.world_size, "precision": PRECISIONS[str(cfg.precision)],
    }
    rd.write_result(result)  # rank 0 only (RunDir.writer)
    return result


def _probe_summary(rows: list[dict], total: int, cfg: PretrainConfig) -> dict | None:
    """result.json's ``probe``: the dense probe of the final encoder (mean over seeds and datasets),
    its spread, and the probe at step 0 (the init), from the rows of ``probes.csv``."""
    if not rows:
        return None
    import pandas as pd

    table = pd.DataFrame(rows)

    def at(step):
        sub = table[table["step"] == step]
        if not len(sub):
            return None
        per_seed = sub.groupby("seed")["dense_dice"].mean()
        return {"step": int(step), "dense_dice": float(per_seed.mean()),
                "sd_over_seeds": float(per_seed.std(ddof=1)) if len(per_seed) > 1 else None,
                "per_seed": [float(v) for v in per_seed], "per_dataset": {
                    str(d): float(v) for d, v in sub.groupby("dataset")["dense_dice"].mean().items()}}

    final = at(int(table["step"].max()))
    return {**final, "first": at(0), "seeds": sorted(int(s) for s in table["seed"].unique()),
            "datasets": sorted(str(d) for d in table["dataset"].unique()),
            "train_slices": int(table["train_slices"].max()), "val_slices": int(table["val_slices"].max()),
            "classifier_steps": cfg.probe_steps, "file": "probes.csv",
            "protocol": "per-pixel logistic regression on the frozen encoder's stage 1-5 features upsampled to the "
                        "image, BatchNorm statistics recomputed on the probe's training slices (training.probe)"}
