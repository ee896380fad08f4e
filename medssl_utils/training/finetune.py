"""Supervised fine-tuning of a U-Net from an encoder initialisation, with test evaluation."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader

from medssl_utils.data import (SliceDataset, budget_fraction, budget_slices, labelled_slices, load_dataset, make_split,
                               slice_cache)
from medssl_utils.data.specs import parse_spec
from medssl_utils.data.transforms import SegAugment
from medssl_utils.errors import DataError, ParameterError
from medssl_utils.losses import segmentation_loss
from medssl_utils.models import build_unet, describe_lineage
from medssl_utils.models.checkpoints import is_medssl_checkpoint, read_weights_file
from medssl_utils.models.init_spec import check_init
from medssl_utils.models.unet import PerImageNorm, pretraining_input, standardize_images
from medssl_utils.progress import progress
from medssl_utils.rundir import read_json_object, RunDir, write_json
from medssl_utils.training import loop
from medssl_utils.training.config import PRECISIONS, FinetuneConfig
from medssl_utils.training.evaluate import bn_recalibrated, evaluate_val, recalibration_rows, test_volumes
from medssl_utils.training.probe import dense_probe, prepare_probe_data


@dataclass
class FinetuneData:
    vs: object
    cache: object
    split: object
    train_rows: np.ndarray
    val_rows: np.ndarray
    test_volumes: list


_LAST_DATA: dict = {}  # the latest prepared data, by what determines it (one entry)


def prepare_finetune_data(cfg: FinetuneConfig) -> FinetuneData:
    """The labelled budget, validation slices and test volumes of a run.

    The notebook shows the data before training and ``finetune`` needs it again: within one
    process the last result is reused when the dataset spec, image size, split and budget are
    the same and no file of the dataset changed (the slice cache's own key: paths, sizes and
    modification times).
    """
    vs = load_dataset(cfg.dataset).labelled()
    key = (cfg.dataset, cfg.image_size, cfg.split, cfg.split_seed, cfg.labelled_slices, cfg.labelled_fraction,
           cfg.seed, vs.fingerprint())
    if _LAST_DATA.get("key") != key:
        _LAST_DATA.clear()
        _LAST_DATA.update(key=key, data=_prepare_finetune_data(cfg, vs))
    return _LAST_DATA["data"]


def _prepare_finetune_data(cfg: FinetuneConfig, vs) -> FinetuneData:
    if not vs.volumes:
        raise DataError(f"{cfg.dataset}: has no labelled volumes to fine-tune on")
    cache = slice_cache(vs, image_size=cfg.image_size, progress=cfg.progress is not False)
    split = make_split(cache.index, loop.resolve_split(vs.format, cfg.split), seed=cfg.split_seed)
    pool = labelled_slices(cache.index, split, "train")
    if cfg.labelled_slices is not None:
        rows = budget_slices(pool, cfg.labelled_slices, seed=cfg.seed)
    else:
        rows = budget_fraction(cache.index, pool, cfg.labelled_fraction, seed=cfg.seed)
    val_rows = labelled_slices(cache.index, split, "val")
    if len(val_rows) == 0:
        raise DataError(f"{cfg.dataset}: the '{split.scheme}' split has no validation patients; "
                        "use a larger dataset or split='random'")
    test_ids = set(split.test)
    test_volumes = [v for v in vs.volumes if v.case_id in test_ids]
    if not test_volumes:
        raise DataError(f"{cfg.dataset}: the '{split.scheme}' split has no labelled test volumes")
    return FinetuneData(vs, cache, split, rows, val_rows, test_volumes)


def check_no_leakage(lineage: list, dataset: str, split) -> None:
    """Refuse weights whose pretraining pool held this run's validation or test patients."""
    target = str(parse_spec(dataset))
    held = set(split.val) | set(split.test)
    for stage in lineage or []:
        for spec, pool in (stage.get("pool") or {}).items():
            if str(parse_spec(spec)).split("?")[0] != target.split("?")[0]:
                continue
            leaked = sorted(held & set(pool.get("train_cases", [])))
            if leaked:
                raise DataError(f"init weights were pretrained ({stage.get('method')}) on {spec} including patients "
                                f"that this run validates or tests on ({', '.join(leaked[:5])}"
                                f"{' …' if len(leaked) > 5 else ''}); pretrain with the same split "
                                f"(split={pool.get('split')!r}, split_seed={pool.get('split_seed')})")



def check_input_norm(lineage: list, input_norm: str, init) -> None:
    """Refuse fine-tuning inputs normalised otherwise than the init's last pretraining stage saw them."""
    seen = pretraining_input(lineage)
    if seen is not None and seen != input_norm:
        what = {"image": "per-image z-scored views", "volume": "slices normalised per volume (as cached)"}
        raise ParameterError(f"input_norm={input_norm!r}: init {init} was pretrained on {what[seen]}, so fine-tuning "
                             f"must feed the same: set input_norm={seen!r} (for every arm of a comparison, random "
                             "init included), or pretrain with the other input (HSSL: method_options.standardize)")


def _init_probe(cfg: FinetuneConfig, rd: RunDir, model, device) -> dict | None:
    """The dense probe of the starting encoder (seed = the run's seed), computed once per run directory."""
    path = rd.path / "init_probe.json"
    done, _ = read_json_object(path)
    if done is not None:
        return done

    pdata = prepare_probe_data(cfg.dataset, cfg.image_size, cfg.split, cfg.split_seed, cfg.probe_val_slices)
    if pdata is None:
        return None
    transform = standardize_images if cfg.input_norm == "image" else None
    result = dense_probe(model.encoder, pdata, cfg.seed, train_slices=cfg.probe_slices, steps=cfg.probe_steps,
                         device=device, channels_last=cfg.channels_last, transform=transform)
    if rd.writer:
        write_json(path, result)
    return result


def finetune(cfg: FinetuneConfig | None = None, **params) -> dict:
    """Run (or resume, or return the finished) fine-tuning described by ``cfg`` / ``params``."""
    return loop.run_guarded(cfg or FinetuneConfig(**params), "finetune", _finetune)


def _finetune(cfg: FinetuneConfig, rd: RunDir, t0: float) -> dict:
    fabric = loop.make_fabric(cfg.device, cfg.precision, cfg.devices)
    with fabric.rank_zero_first():
        data = prepare_finetune_data(cfg)
    kind, path = check_init(cfg.init)
    load_decoder = cfg.load_decoder
    if load_decoder == "auto":  # a medssl checkpoint's pretrained decoder; foreign weights have none
        if kind == "path":
            obj = read_weights_file(path)
            load_decoder = is_medssl_checkpoint(obj) and obj.get("decoder") is not None
        else:
            load_decoder = False
    num_classes = len(data.vs.labels)
    torch.manual_seed(cfg.seed)
    model = build_unet(cfg.encoder, num_classes=num_classes, init=cfg.init, decoder_channels=cfg.decoder_channels,
                       load_decoder=bool(load_decoder))
    lineage = model.medssl_init["lineage"]
    check_no_leakage(lineage, cfg.dataset, data.split)
    check_input_norm(lineage, cfg.input_norm, cfg.init)
    if cfg.input_norm == "image":
        model = PerImageNorm(model)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    start_weights = loop.conv_weights(model.encoder)  # the init: encoder_shift is measured from here
    init_probe = _init_probe(cfg, rd, model, fabric.device) if cfg.probe_init else None
    sched = cfg.schedule()
    base_lr, warmup = sched["lr"], sched["warmup_steps"]
    encoder_params = list(model.encoder.parameters())
    optimizer = loop.make_optimizer("adam", model, base_lr, 0.0,
                                    scaled={id(p): cfg.encoder_lr_scale for p in encoder_params})
    model, optimizer = fabric.setup(model, optimizer)
    loss_fn = segmentation_loss(sched["loss"], num_classes=num_classes)
    aug = SegAugment(output_size=cfg.image_size, **cfg.augment)
    ds = SliceDataset(data.cache, data.train_rows)
    global_batch = cfg.batch_size * fabric.world_size  # batch_size is per process
    start, earlier_s = 0, 0.0  # earlier_s: time the interrupted sessions spent up to their last save
    last = rd.checkpoints / "last.pt"
    if last.is_file():
        start, extra = loop.load_state(last, loop.unwrap(model), optimizer)
        earlier_s = float(extra.get("elapsed_s", 0.0))
        rd.load_history(start)
    loader = fabric.setup_dataloaders(
        DataLoader(ds, batch_sampler=loop.StreamBatchSampler(len(ds), cfg.batch_size, cfg.seed, start, cfg.max_steps,
                                                        rank=fabric.global_rank, world=fabric.world_size),
                   num_workers=cfg.num_workers, pin_memory=fabric.device.type == "cuda"),
        use_distributed_sampler=False)
    names = [data.vs.labels[k] for k in sorted(data.vs.labels) if k > 0]
    bn_rows = recalibration_rows(data.train_rows, cfg.recalibrate_bn, cfg.seed)

    def evaluation_mode():
        """The model in eval mode with BatchNorm statistics recomputed for its current weights."""
        return bn_recalibrated(model, data.cache, bn_rows, cfg.eval_batch_size, fabric.device, cfg.channels_last)

    def validate(step: int) -> dict:
        te = time.perf_counter()
        with evaluation_mode():
            dice = evaluate_val(model, data.cache, data.val_rows, num_classes, cfg.eval_batch_size, fabric.device,
                                cfg.channels_last)
        row = {"step": step, "epoch": step * global_batch / len(ds), "time_s": round(time.perf_counter() - t0, 3),
               "val_dice": float(np.mean(dice[1:])), **{f"val_dice_{n}": float(d) for n, d in zip(names, dice[1:])},
               "encoder_shift": loop.encoder_shift(loop.unwrap(model).encoder, start_weights)}
        nonlocal eval_time
        eval_time += time.perf_counter() - te
        return row

    eval_time, train_time, images, run_loss, run_n = 0.0, 0.0, 0, 0.0, 0
    if start == 0:
        rd.log(validate(0))
    bar = progress(cfg.max_steps, "fine-tune", cfg.progress, initial=start)
    tick = time.perf_counter()
    model.train()
    try:
        for step, batch in zip(range(start, cfg.max_steps), loader):
            loop.set_lr(optimizer, loop.lr_at(step, cfg.max_steps, base_lr, warmup, sched["warmup_start_lr"]))
            x, y = batch["image"], batch["label"]
            x, y = aug(x, y, loop.step_generator(cfg.seed, step, fabric.global_rank, x.device))
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            loss = loss_fn(model(x), y)
            loop.check_finite(loss, step)
            loop.optimise(fabric, model, optimizer, loss, sched["grad_clip"],
                          frozen=encoder_params if step < cfg.freeze_encoder_steps else ())
            loop.check_finite_weights(model, step)
            run_loss += float(loss.detach())
            run_n += 1
            images += x.shape[0] * fabric.world_size
            bar.update(1)
            done = step + 1
            if done % cfg.log_every == 0 or done % cfg.eval_every == 0 or done == cfg.max_steps:
                el = time.perf_counter() - tick
                train_time += el
                row = {"step": done, "epoch": done * global_batch / len(ds),
                       "time_s": round(time.perf_counter() - t0, 3),
                       "loss": loop.mean_over_ranks(fabric, run_loss / run_n),
                       "lr": optimizer.param_groups[0]["lr"], "images_per_s": images / el if el > 0 else None}
                if done % cfg.eval_every == 0 or done == cfg.max_steps:
                    row.update({k: v for k, v in validate(done).items()
                                if k.startswith("val_") or k == "encoder_shift"})
                    bar.set_postfix_str(f"loss {row['loss']:.3f} val Dice {row['val_dice']:.3f}")
                    if fabric.is_global_zero:
                        loop.save_state(last, done, loop.unwrap(model), optimizer,
                                        {"elapsed_s": earlier_s + time.perf_counter() - t0})
                    rd.log(row)
                    rd.flush_history()
                else:
                    rd.log(row)
                run_loss, run_n, images = 0.0, 0, 0
                tick = time.perf_counter()
    except KeyboardInterrupt:
        rd.flush_history()
        raise
    finally:
        bar.close()
    loop.check_ranks_in_sync(fabric, loop.unwrap(model))
    loop.check_finite_weights(model, cfg.max_steps, buffers=True)
    te = time.perf_counter()
    with evaluation_mode():
        test, rows = test_volumes(model, data, cfg, rd, fabric.device)
    test_time = time.perf_counter() - te
    import pandas as pd

    rd.write_text("test_metrics.csv", pd.DataFrame(rows).to_csv(index=False))
    rd.flush_history()
    vals = [r["val_dice"] for r in rd.rows if r.get("val_dice") is not None]
    result = {
        "status": "complete", "kind": "finetune", "error": None, "dataset": cfg.dataset, "init": cfg.init,
        "lineage": lineage, "lineage_name": describe_lineage(lineage), "load_decoder": bool(load_decoder),
        "steps": cfg.max_steps, "epochs": cfg.max_steps * global_batch / len(ds),
        "labelled_slices": int(len(data.train_rows)), "labelled_fraction": cfg.labelled_fraction,
        "labelled_patients": int(data.cache.index.loc[data.train_rows, "case_id"].nunique()),
        "seed": cfg.seed, "split": data.split.scheme, "test": test,
        "val_final_dice": vals[-1] if vals else None, "val_best_dice": max(vals) if vals else None,
        "schedule": {**sched, "base_lr": base_lr, "recalibrate_bn_slices": int(len(bn_rows))},
        "input_norm": cfg.input_norm,
        "encoder_shift": loop.encoder_shift(loop.unwrap(model).encoder, start_weights),
        "init_probe": init_probe,
        "timings": {"total_s": round(earlier_s + time.perf_counter() - t0, 2), "resumed_at_step": start or None,
                    "train_s": round(train_time, 2),
                    "eval_s": round(eval_time + test_time, 2),
                    "images_per_s": round((cfg.max_steps - start) * global_batch / train_time, 1)
                    if train_time else None},
        "device": str(fabric.device), "devices": fabric.world_size, "precision": PRECISIONS[str(cfg.precision)],
    }
    rd.write_result(result)  # rank 0 only (RunDir.writer)
    return result

