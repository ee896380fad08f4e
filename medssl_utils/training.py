"""Pretraining and fine-tuning loops on lightning Fabric (CPU, one GPU, several GPUs).

Both loops write a run directory (docs/run-format.md) and can be interrupted and resumed:
everything random is a pure function of ``(seed, step)`` — which slices form a batch
(:func:`stream_batch`), how they are augmented (a generator seeded per step) and the learning
rate (:func:`lr_at`) — and ``checkpoints/last.pt`` holds model and optimiser state. A run
resumed from ``last.pt`` therefore reaches exactly the result of an uninterrupted run on CPU.
A finished run (``result.json`` status ``complete``) is returned as is, never re-trained,
unless ``overwrite=True``.

Pretraining (``pretrain``): BYOL, SimCLR or HSSL on the unlabelled pool of one or several
datasets (slices of training patients only — test and validation patients never enter it),
two views per slice from :class:`~medssl_utils.data.SSLAugment`, optimiser LARS (BYOL's
recipe: lr = 0.2 × batch/256, no weight decay or adaptation on biases and norms), SGD or
AdamW with warm-up + cosine decay, BYOL's target momentum 0.99 → 1 (cosine). An online
k-NN probe (slice position base/mid/apex for one dataset, task for several) tracks whether
the representation improves. Checkpoints at ``save_epochs`` and at the end are medssl
checkpoints carrying their lineage.

Fine-tuning (``finetune``): a U-Net whose encoder starts from ``init`` (decoder random,
unless the checkpoint pretrained one), Adam with warm-up + cosine (Work A: lr 1e-4), joint
image/mask augmentation, Dice+CE or Jaccard loss, validation Dice every ``eval_every``
steps; at the end every test volume is predicted slice by slice, mapped back onto its
original voxel grid and scored per structure (Dice, HD, HD95 in mm; per-slice IoU); the
predictions are written as NIfTI with the original affine and ACDC naming.

Several processes (``devices=N``, DDP; gloo on CPU, NCCL on GPUs): ``batch_size`` is per
process, so one step sees N × batch_size slices — process r takes its own share of the same
seeded global batch — and an epoch has N times fewer steps. Fabric starts the extra processes
by re-running the calling script, so multi-process runs start from a script, not a notebook.
Rank 0 alone writes the run directory; rank 0 prepares the data first and the others then
read its caches; logged losses are means over the processes; at the end the processes
compare their weights and the run fails if they differ.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from medssl_utils import __version__
from medssl_utils.errors import DataError, MedsslError, ParameterError, check_choice
from medssl_utils.progress import progress
from medssl_utils.rundir import RunDir, now

METHODS = ("byol", "simclr", "hssl")
OPTIMIZERS = ("lars", "sgd", "adamw", "adam")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = {"32": "32-true", "32-true": "32-true", "bf16-mixed": "bf16-mixed", "16-mixed": "16-mixed"}
SPLITS = ("auto", "paper", "random", "official")
LOSSES = ("dice_ce", "jaccard")
# parameters that do not change what a run computes (may differ when resuming)
_RUNTIME_KEYS = {"device", "progress", "num_workers", "overwrite", "run_dir", "log_every", "devices"}


class TrainingError(MedsslError):
    """Training cannot go on (e.g. the loss became NaN)."""


# ----------------------------------------------------------------------------- configuration
@dataclass
class _Common:
    encoder: str = "resnet18"
    image_size: int = 128
    batch_size: int = 32
    lr: float | None = None
    seed: int = 0
    device: str = "auto"
    devices: int = 1
    precision: str = "32"
    channels_last: bool = False
    decoder_channels: tuple = (256, 128, 64, 32, 16)
    split: str = "auto"
    split_seed: int = 0
    grad_clip: float = 0.0
    num_workers: int = 0
    log_every: int = 10
    progress: bool | str = "auto"
    overwrite: bool = False
    run_dir: str | None = None

    def _check_common(self) -> None:
        from medssl_utils.params import check_int

        check_int("image_size", self.image_size, 32, 2048)
        if self.image_size % 32:
            raise ParameterError(f"image_size={self.image_size}: expected a multiple of 32 (the U-Net halves it 5 times)")
        check_int("batch_size", self.batch_size, 2, 65536)
        check_int("seed", self.seed, 0)
        check_int("split_seed", self.split_seed, 0)
        check_int("devices", self.devices, 1, 1024)
        check_int("num_workers", self.num_workers, 0, 256)
        check_int("log_every", self.log_every, 1)
        check_choice("device", self.device, DEVICES)
        check_choice("precision", str(self.precision), PRECISIONS)
        check_choice("split", self.split, SPLITS)
        if self.lr is not None and not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ParameterError(f"lr={self.lr!r}: expected a positive number or None (method default)")
        if not isinstance(self.grad_clip, (int, float)) or self.grad_clip < 0:
            raise ParameterError(f"grad_clip={self.grad_clip!r}: expected >= 0 (0 disables clipping)")
        self.decoder_channels = tuple(self.decoder_channels)
        if self.run_dir is None or not str(self.run_dir).strip():
            raise ParameterError("run_dir: expected a folder for this run's outputs")

    def as_params(self) -> dict:
        d = dataclasses.asdict(self)
        d["decoder_channels"] = list(self.decoder_channels)
        return d


@dataclass
class PretrainConfig(_Common):
    """Parameters of one self-supervised pretraining run (``notebooks/01_pretrain.ipynb``)."""

    method: str = "byol"
    datasets: list = field(default_factory=lambda: ["phantom:cardiac"])
    init: str = "random"
    epochs: int = 10
    max_steps: int | None = None
    optimizer: str = "lars"
    weight_decay: float | None = None
    warmup_epochs: float = 1.0
    save_epochs: list = field(default_factory=list)
    balanced: bool = True
    method_options: dict = field(default_factory=dict)
    augment: dict = field(default_factory=dict)
    knn_every: int = 1
    knn_max_bank: int = 2000
    knn_max_query: int = 500

    def __post_init__(self):
        from medssl_utils.params import check_int, check_specs

        self._check_common()
        check_choice("method", self.method, METHODS)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        self.datasets = [str(s) for s in check_specs("datasets", self.datasets)]
        check_int("epochs", self.epochs, 1)
        if self.max_steps is not None:
            check_int("max_steps", self.max_steps, 1)
        check_int("knn_every", self.knn_every, 0)
        if not isinstance(self.save_epochs, (list, tuple)):
            raise ParameterError(f"save_epochs={self.save_epochs!r}: expected a list of epoch numbers")
        for e in self.save_epochs:
            check_int("save_epochs[...]", e, 1, self.epochs)
        self.save_epochs = sorted(set(int(e) for e in self.save_epochs))
        if self.weight_decay is not None and self.weight_decay < 0:
            raise ParameterError(f"weight_decay={self.weight_decay}: expected >= 0")
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise ParameterError(f"warmup_epochs={self.warmup_epochs}: expected 0..epochs ({self.epochs})")
        for name in ("method_options", "augment"):
            if not isinstance(getattr(self, name), dict):
                raise ParameterError(f"{name}={getattr(self, name)!r}: expected a dict of keyword arguments")
        from medssl_utils.models.init import check_init

        check_init(self.init)


@dataclass
class FinetuneConfig(_Common):
    """Parameters of one fine-tuning run (``notebooks/02_finetune.ipynb``)."""

    dataset: str = "phantom:cardiac"
    init: str = "random"
    labelled_slices: int | None = None
    labelled_fraction: float | None = None
    max_steps: int = 1000
    eval_every: int = 50
    warmup_steps: int | None = None
    loss: str = "dice_ce"
    load_decoder: bool | str = "auto"
    augment: dict = field(default_factory=dict)
    save_predictions: bool = True
    eval_batch_size: int = 64

    def __post_init__(self):
        from medssl_utils.params import check_int, check_spec

        self._check_common()
        self.dataset = str(check_spec("dataset", self.dataset))
        check_int("max_steps", self.max_steps, 1)
        check_int("eval_every", self.eval_every, 1)
        check_int("eval_batch_size", self.eval_batch_size, 1)
        if self.warmup_steps is not None:
            check_int("warmup_steps", self.warmup_steps, 0, self.max_steps)
        check_choice("loss", self.loss, LOSSES)
        check_choice("load_decoder", self.load_decoder, ("auto", True, False))
        if (self.labelled_slices is None) == (self.labelled_fraction is None):
            raise ParameterError("give exactly one of labelled_slices (a number of slices) or labelled_fraction "
                                 f"(a fraction of training patients); got labelled_slices={self.labelled_slices!r}, "
                                 f"labelled_fraction={self.labelled_fraction!r}")
        if self.labelled_slices is not None:
            check_int("labelled_slices", self.labelled_slices, 1)
        elif not (isinstance(self.labelled_fraction, (int, float)) and 0 < self.labelled_fraction <= 1):
            raise ParameterError(f"labelled_fraction={self.labelled_fraction!r}: expected 0 < fraction <= 1")
        if not isinstance(self.augment, dict):
            raise ParameterError(f"augment={self.augment!r}: expected a dict of SegAugment keyword arguments")
        from medssl_utils.models.init import check_init

        check_init(self.init)


# ----------------------------------------------------------------------------- shared pieces
def _in_notebook_kernel() -> bool:
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if hasattr(ipython, "get_ipython") else None
    return type(shell).__name__ == "ZMQInteractiveShell"


def make_fabric(device: str = "auto", precision: str = "32", devices: int = 1):
    """A lightning Fabric for ``device`` (auto|cpu|cuda) and ``precision``, launched."""
    from lightning_fabric import Fabric

    check_choice("device", device, DEVICES)
    check_choice("precision", str(precision), PRECISIONS)
    prec = PRECISIONS[str(precision)]
    cuda = torch.cuda.is_available()
    if device == "cuda" and not cuda:
        raise ParameterError("device='cuda' but no CUDA GPU is visible; use device='cpu' or 'auto'")
    accel = "cuda" if (device == "cuda" or (device == "auto" and cuda)) else "cpu"
    if accel == "cpu" and prec == "16-mixed":
        raise ParameterError("precision='16-mixed' needs a GPU; on CPU use '32' or 'bf16-mixed'")
    if devices > 1:
        from lightning_fabric.utilities.imports import _IS_INTERACTIVE

        if _IS_INTERACTIVE or _in_notebook_kernel():
            raise ParameterError(f"devices={devices}: multi-process (DDP) training starts one process per device by "
                                 "re-running the calling script, which a notebook kernel cannot do; run it from a "
                                 "Python script (README: GPU notes) or use devices=1 here")
    strategy = "ddp" if devices > 1 else "auto"
    fabric = Fabric(accelerator=accel, devices=devices, precision=prec, strategy=strategy)
    fabric.launch()
    return fabric


def stream_batch(n: int, batch_size: int, seed: int, step: int, *, weights: np.ndarray | None = None,
                 rank: int = 0, world: int = 1) -> np.ndarray:
    """Indices of batch ``step`` (this rank's share) in an endless seeded stream over ``n`` items.

    The stream is a concatenation of "epochs": a seeded permutation of ``range(n)`` (or, with
    ``weights``, ``n`` draws with replacement, probability ∝ weights) per epoch, seeded by
    ``(seed, epoch)``. A batch is a function of ``(seed, step)`` only, so resuming needs no
    sampler state.
    """
    per_step = batch_size * world
    start = step * per_step + rank * batch_size
    out = np.empty(batch_size, dtype=np.int64)
    pos, filled = start, 0
    p = None if weights is None else np.asarray(weights, dtype=np.float64) / np.sum(weights)
    while filled < batch_size:
        epoch, offset = divmod(pos, n)
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(n) if p is None else rng.choice(n, size=n, replace=True, p=p)
        take = min(n - offset, batch_size - filled)
        out[filled:filled + take] = order[offset:offset + take]
        filled += take
        pos += take
    return out


class StreamBatchSampler(Sampler):
    """Batches ``start..stop-1`` of :func:`stream_batch` (a DataLoader ``batch_sampler``)."""

    def __init__(self, n, batch_size, seed, start, stop, weights=None, rank=0, world=1):
        self.args = (n, batch_size, seed)
        self.start, self.stop, self.weights, self.rank, self.world = start, stop, weights, rank, world

    def __len__(self):
        return max(self.stop - self.start, 0)

    def __iter__(self):
        n, b, seed = self.args
        for step in range(self.start, self.stop):
            yield stream_batch(n, b, seed, step, weights=self.weights, rank=self.rank, world=self.world).tolist()


def lr_at(step: int, total: int, base_lr: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if warmup > 0 and step < warmup:
        return base_lr * (step + 1) / warmup
    span = max(total - warmup, 1)
    return base_lr * 0.5 * (1 + math.cos(math.pi * min(step - warmup, span) / span))


def _step_generator(seed: int, step: int, rank: int, device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + step * 7919 + rank) % (2**63 - 1))
    return g


def _param_groups(module: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Biases and norm parameters (ndim <= 1) get no weight decay (and no LARS adaptation)."""
    decay, no_decay = [], []
    for p in module.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(name: str, module: torch.nn.Module, lr: float, weight_decay: float):
    groups = _param_groups(module, weight_decay)
    if name == "lars":
        from lightly.utils.lars import LARS

        return LARS(groups, lr=lr, momentum=0.9, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay)


def _default_lr(optimizer: str, batch_size: int) -> float:
    return {"lars": 0.2 * batch_size / 256, "sgd": 0.05 * batch_size / 256, "adamw": 1e-3, "adam": 1e-4}[optimizer]


def _set_lr(optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr


def _check_finite(loss: torch.Tensor, step: int, epoch: int | None = None) -> None:
    if not torch.isfinite(loss.detach()).all():
        where = f"step {step}" + (f" (epoch {epoch})" if epoch is not None else "")
        raise TrainingError(f"the loss became {float(loss.detach())} at {where}; the run stopped. "
                            "Lower lr, add grad_clip, or use precision='32'")


def _resolve_split(vs_format: str, split: str) -> str:
    return ("paper" if vs_format == "acdc" else "random") if split == "auto" else split


def _launcher_rank_zero() -> bool:
    """False in the extra processes a DDP launcher starts (they must not write the run's files).

    Called before Fabric exists: Fabric's launcher, torchrun and SLURM all set these variables
    in the processes they start; a plain process has none of them and is rank 0.
    """
    return all(int(os.environ.get(k, "0") or 0) == 0 for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


def _prepare_run(cfg, kind: str) -> tuple[RunDir, dict | None]:
    """Create/inspect the run directory. Returns (rundir, finished result or None).

    Only the writing process (rank 0) changes anything on disk; the others just look.
    """
    rd = RunDir(cfg.run_dir, writer=_launcher_rank_zero())
    params = {**cfg.as_params(), "kind": kind, "medssl_version": __version__}
    old = rd.read_result()
    if old and old.get("status") == "complete" and not cfg.overwrite:
        return rd, old
    old_params = rd.read_params()
    resume = (rd.checkpoints / "last.pt").is_file() and not cfg.overwrite
    if resume and old_params:
        changed = sorted(k for k in set(params) | set(old_params)
                         if k not in _RUNTIME_KEYS | {"started", "medssl_version"}
                         and old_params.get(k) != params.get(k))
        if changed:
            raise ParameterError(f"run_dir={cfg.run_dir} holds an unfinished run with other parameters "
                                 f"({', '.join(changed)}); use another run_dir or overwrite=True")
    if not rd.writer:
        return rd, None
    if cfg.overwrite and rd.path.exists():
        for f in ("result.json", "history.csv", "test_metrics.csv"):
            (rd.path / f).unlink(missing_ok=True)
        (rd.checkpoints / "last.pt").unlink(missing_ok=True)
    rd.path.mkdir(parents=True, exist_ok=True)
    rd.write_params({**params, "started": now()})
    return rd, None


def _save_state(path: Path, step: int, module, optimizer, extra: dict | None = None) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"step": step, "model": module.state_dict(), "optimizer": optimizer.state_dict(),
                "extra": extra or {}}, tmp)
    os.replace(tmp, path)


def _load_state(path: Path, module, optimizer) -> tuple[int, dict]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(f"{path}: cannot read the resume state ({exc}); delete it to start over") from exc
    module.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return int(state["step"]), state.get("extra", {})


def _unwrap(module):
    return getattr(module, "module", module)


def _run(cfg, kind: str, body) -> dict:
    """Prepare the run directory, return a finished result as is, else run ``body``; a failure
    is recorded in ``result.json`` (status ``failed``, one-line error) and re-raised."""
    rd, done = _prepare_run(cfg, kind)
    if done:
        return done
    t0 = time.perf_counter()
    try:
        return body(cfg, rd, t0)
    except (MedsslError, RuntimeError, ValueError) as exc:
        _fail(rd, kind, exc, t0)
        raise


def _optimise(fabric, model, optimizer, loss, grad_clip: float) -> None:
    optimizer.zero_grad(set_to_none=True)
    fabric.backward(loss)
    if grad_clip:
        fabric.clip_gradients(model, optimizer, max_norm=grad_clip)
    optimizer.step()


def _mean_over_ranks(fabric, value: float) -> float:
    """A logged number averaged over the processes (each saw its own share of the batch)."""
    if fabric.world_size == 1:
        return value
    return float(fabric.all_reduce(torch.tensor(float(value), dtype=torch.float64), reduce_op="mean"))


def _check_ranks_in_sync(fabric, module) -> None:
    """After multi-process training every process must hold the same weights; say so if not.

    Parameters only: BatchNorm running statistics are per process between forwards (DDP
    copies rank 0's at each forward), and rank 0's are the ones saved.
    """
    if fabric.world_size == 1:
        return
    sums = torch.stack([p.detach().double().sum() for p in module.parameters()]).to(fabric.device)
    every = fabric.all_gather(sums)  # (world, n)
    spread = float((every - every[0]).abs().max())
    if not spread <= 1e-9 * max(1.0, float(every.abs().max())):
        raise TrainingError(f"the {fabric.world_size} processes ended with different weights (largest difference "
                            f"of a tensor's sum: {spread:.3g}); their gradient exchange did not work")


def _fail(rd: RunDir, kind: str, exc: BaseException, t0: float) -> None:
    rd.flush_history()
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    rd.write_result({"status": "failed", "kind": kind, "error": f"{type(exc).__name__}: {msg}",
                     "timings": {"total_s": round(time.perf_counter() - t0, 2)}})


# ----------------------------------------------------------------------------- pretraining
@dataclass
class PretrainData:
    dataset: object  # MultiDomainDataset
    pools: dict
    bank: object | None
    query: object | None
    knn_by: str | None
    weights: np.ndarray | None


def prepare_pretrain_data(cfg: PretrainConfig) -> PretrainData:
    """Unlabelled pools of every dataset (training patients only), tagged and aggregated."""
    from medssl_utils.data import MultiDomainDataset, SliceDataset, load_dataset, make_split, slice_cache
    from medssl_utils.data.splits import unlabelled_pool

    parts, pools, banks, queries = [], {}, [], []
    rng = np.random.default_rng(cfg.seed)
    for spec in cfg.datasets:
        vs = load_dataset(spec)
        cache = slice_cache(vs, image_size=cfg.image_size, progress=cfg.progress is not False)
        scheme = _resolve_split(vs.format, cfg.split)
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
    return PretrainData(md, pools, bank, query if cfg.knn_every else None, knn_by, weights)


def _build_ssl(cfg: PretrainConfig, unet, data: PretrainData):
    feature_dim = unet.encoder.out_channels[-1]
    opts = dict(cfg.method_options)
    if cfg.method == "byol":
        from medssl_utils.models.byol import BYOL

        return BYOL(unet.encoder, feature_dim, **opts)
    if cfg.method == "simclr":
        from medssl_utils.models.simclr import SimCLR

        return SimCLR(unet.encoder, feature_dim, **opts)
    from medssl_utils.models.hssl import HSSL

    return HSSL(unet, num_tasks=len(data.dataset.tasks), num_groups=len(data.dataset.groups), **opts)


def pretrain(cfg: PretrainConfig | None = None, **params) -> dict:
    """Run (or resume, or return the finished) pretraining described by ``cfg`` / ``params``."""
    return _run(cfg or PretrainConfig(**params), "pretrain", _pretrain)


def _pretrain(cfg: PretrainConfig, rd: RunDir, t0: float) -> dict:
    from medssl_utils.data.transforms import SSLAugment
    from medssl_utils.models import build_unet, decoder_state, describe_lineage, encoder_state, save_checkpoint

    fabric = make_fabric(cfg.device, cfg.precision, cfg.devices)
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
    model = _build_ssl(cfg, unet, data)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    wd = cfg.weight_decay if cfg.weight_decay is not None else (1.5e-6 if cfg.optimizer == "lars" else 1e-4)
    base_lr = cfg.lr or _default_lr(cfg.optimizer, cfg.batch_size * fabric.world_size)
    optimizer = make_optimizer(cfg.optimizer, model, base_lr, wd)
    model, optimizer = fabric.setup(model, optimizer)
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    start = 0
    last = rd.checkpoints / "last.pt"
    if last.is_file():
        start, _ = _load_state(last, _unwrap(model), optimizer)
        rd.load_history(start)
    aug = SSLAugment(output_size=cfg.image_size, **cfg.augment)
    loader = fabric.setup_dataloaders(
        DataLoader(data.dataset, batch_sampler=StreamBatchSampler(n, cfg.batch_size, cfg.seed, start, total,
                                                                  data.weights, fabric.global_rank, fabric.world_size),
                   num_workers=cfg.num_workers, pin_memory=fabric.device.type == "cuda"),
        use_distributed_sampler=False)
    stage = {"method": cfg.method, "data": list(cfg.datasets), "init": cfg.init,
             "parent": cfg.init if Path(str(cfg.init)).suffix == ".pt" else None,
             "encoder": cfg.encoder, "image_size": cfg.image_size, "seed": cfg.seed, "pool": data.pools}

    def save_medssl(path: Path, epochs_done: int) -> str:
        raw = _unwrap(model)
        dec = decoder_state(unet) if cfg.method == "hssl" and getattr(raw, "pretrain_decoder", True) else None
        if fabric.is_global_zero:
            save_checkpoint(path, encoder_state=encoder_state(unet), decoder_state=dec, encoder_name=cfg.encoder,
                            in_channels=1, lineage_stage={**stage, "epochs": epochs_done},
                            parent_lineage=start_lineage, extra={"step": (epochs_done * steps_per_epoch)})
        fabric.barrier()
        return str(path)

    def knn_now() -> float | None:
        if data.query is None:
            return None
        from medssl_utils.models.knn import knn_probe

        return knn_probe(_unwrap(model), data.bank, data.query, by=data.knn_by, device=fabric.device)

    checkpoints = {str(e): str(rd.checkpoints / f"epoch_{e}.pt") for e in cfg.save_epochs
                   if (rd.checkpoints / f"epoch_{e}.pt").is_file()}
    if start == 0:
        acc = knn_now()
        if acc is not None:
            rd.log({"step": 0, "epoch": 0, "time_s": 0.0, "knn_acc": acc})
    bar = progress(total, f"pretrain {cfg.method}", cfg.progress, initial=start)
    # images/s and train_s count training only: the clock pauses for checkpoints and k-NN probes
    train_time, window, images, run_loss, run_n = 0.0, 0.0, 0, 0.0, 0
    tick = time.perf_counter()
    step = start
    try:
        for step, batch in zip(range(start, total), loader):
            _set_lr(optimizer, lr_at(step, total, base_lr, warmup))
            x = batch["image"]
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            g = _step_generator(cfg.seed, step, fabric.global_rank, x.device)
            v1, v2 = aug(x, g)
            if cfg.method == "hssl":
                loss, logs = model(v1, v2, batch["task"], batch["group"])
            else:
                loss, logs = model(v1, v2)
            epoch = step // steps_per_epoch + 1
            _check_finite(loss, step, epoch)
            _optimise(fabric, model, optimizer, loss, cfg.grad_clip)
            momentum = _unwrap(model).update_target(step, total) if cfg.method == "byol" else None
            run_loss += float(loss.detach())
            run_n += 1
            images += x.shape[0] * fabric.world_size
            bar.update(1)
            done = step + 1
            if done % cfg.log_every == 0 or done == total:
                el = window + time.perf_counter() - tick
                train_time += el
                row = {"step": done, "epoch": done / steps_per_epoch, "time_s": round(time.perf_counter() - t0, 3),
                       "loss": _mean_over_ranks(fabric, run_loss / run_n), "lr": optimizer.param_groups[0]["lr"],
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
                if cfg.knn_every and (ep % cfg.knn_every == 0 or done == total):
                    acc = knn_now()
                    if acc is not None:
                        rd.log({"step": done, "epoch": done / steps_per_epoch,
                                "time_s": round(time.perf_counter() - t0, 3), "knn_acc": acc})
                if fabric.is_global_zero:
                    _save_state(rd.checkpoints / "last.pt", done, _unwrap(model), optimizer)
                rd.flush_history()
                tick = time.perf_counter()
    except KeyboardInterrupt:
        rd.flush_history()
        raise
    finally:
        bar.close()
    _check_ranks_in_sync(fabric, _unwrap(model))
    epochs_done = total / steps_per_epoch
    final = save_medssl(rd.checkpoints / "final.pt", round(epochs_done, 3) if epochs_done % 1 else int(epochs_done))
    rd.flush_history()
    from medssl_utils.models import load_checkpoint

    lineage = load_checkpoint(final)["lineage"]
    knn_values = [r["knn_acc"] for r in rd.rows if r.get("knn_acc") is not None]
    result = {
        "status": "complete", "kind": "pretrain", "error": None, "method": cfg.method, "datasets": cfg.datasets,
        "init": cfg.init, "lineage": lineage, "lineage_name": describe_lineage(lineage), "steps": total,
        "epochs": epochs_done, "seed": cfg.seed, "slices_in_pool": n, "checkpoint": final, "checkpoints": checkpoints,
        "knn": {"by": data.knn_by, "first": knn_values[0] if knn_values else None,
                "last": knn_values[-1] if knn_values else None},
        "final_loss": next((r["loss"] for r in reversed(rd.rows) if "loss" in r), None),
        "timings": {"total_s": round(time.perf_counter() - t0, 2), "train_s": round(train_time, 2),
                    "images_per_s": round((total - start) * cfg.batch_size * fabric.world_size / train_time, 1)
                    if train_time else None},
        "device": str(fabric.device), "devices": fabric.world_size, "precision": PRECISIONS[str(cfg.precision)],
    }
    rd.write_result(result)  # rank 0 only (RunDir.writer)
    return result


# ----------------------------------------------------------------------------- fine-tuning
@dataclass
class FinetuneData:
    vs: object
    cache: object
    split: object
    train_rows: np.ndarray
    val_rows: np.ndarray
    test_volumes: list


def prepare_finetune_data(cfg: FinetuneConfig) -> FinetuneData:
    from medssl_utils.data import budget_fraction, budget_slices, labelled_slices, load_dataset, make_split, slice_cache

    vs = load_dataset(cfg.dataset).labelled()
    if not vs.volumes:
        raise DataError(f"{cfg.dataset}: has no labelled volumes to fine-tune on")
    cache = slice_cache(vs, image_size=cfg.image_size, progress=cfg.progress is not False)
    split = make_split(cache.index, _resolve_split(vs.format, cfg.split), seed=cfg.split_seed)
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
    from medssl_utils.data.specs import parse_spec

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


def _evaluate_val(model, cache, rows, num_classes, batch_size, device) -> np.ndarray:
    from medssl_utils.metrics import dice_counts, dice_from_counts

    tp = fp = fn = None
    was = model.training
    model.eval()
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            r = rows[i:i + batch_size]
            x = torch.from_numpy(np.asarray(cache.images[r], np.float32))[:, None].to(device)
            y = torch.from_numpy(np.asarray(cache.labels[r], np.int64)).to(device)
            counts = dice_counts(model(x), y, num_classes)
            tp, fp, fn = counts if tp is None else (tp + counts[0], fp + counts[1], fn + counts[2])
    model.train(was)
    return dice_from_counts(tp, fp, fn).cpu().numpy()


def predict_volume(model, cache, volume, batch_size: int, device) -> np.ndarray:
    """Class ids (X, Y, Z) on the volume's original voxel grid, predicted slice by slice."""
    from medssl_utils.data import restore_slices

    ix = cache.index
    rows = ix.index[ix.volume_id == volume.volume_id].to_numpy()
    rows = rows[np.argsort(ix.loc[rows, "z"].to_numpy())]
    preds = []
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            x = torch.from_numpy(np.asarray(cache.images[rows[i:i + batch_size]], np.float32))[:, None].to(device)
            preds.append(model(x).argmax(1).to(torch.uint8).cpu().numpy())
    first = ix.loc[rows[0]]
    return restore_slices(np.concatenate(preds), int(first.orig_x), int(first.orig_y))


def _test(model, data: FinetuneData, cfg: FinetuneConfig, rd: RunDir, device) -> tuple[dict, list]:
    from medssl_utils.data.nifti import write_nifti
    from medssl_utils.metrics import slice_iou, summarize_metrics, summarize_slice_iou, volume_metrics

    labels = {k: v for k, v in data.vs.labels.items() if k > 0}
    all_labels = list(data.vs.labels)
    rows, ious = [], []
    model.eval()
    for vol in data.test_volumes:
        pred = predict_volume(model, data.cache, vol, cfg.eval_batch_size, device)
        gt = vol.load()[1]
        res = volume_metrics(pred, gt, vol.spacing, labels)
        for lab, m in res.items():
            rows.append({"volume_id": vol.volume_id, "case_id": vol.case_id, "phase": vol.meta.get("phase") or "",
                         "label": lab, "name": labels[lab],
                         **{k: m[k] for k in ("dice", "hd", "hd95", "gt_empty", "pred_empty")}})
        ious.append(slice_iou(pred, gt, all_labels, axis=-1))
        if cfg.save_predictions and rd.writer:
            write_nifti(rd.path / "predictions" / f"{vol.volume_id}.nii.gz", pred, vol.spacing, affine=vol.affine)
    import pandas as pd

    table = pd.DataFrame(rows)
    summary = summarize_metrics(table.rename(columns={"volume_id": "volume"}))
    per_label = {}
    for _, r in summary.reset_index().iterrows():
        name = labels.get(int(r["label"]), str(r["label"]))
        per_label[name] = {k: (float(r[k]) if k in r and r[k] == r[k] else None)
                           for k in ("dice_mean", "dice_std", "hd_mean", "hd95_mean", "hd95_std")}
        per_label[name].update({k: int(r[k]) for k in ("n", "n_missed", "n_undefined_hd") if k in r})
    iou = summarize_slice_iou(np.concatenate(ious), all_labels)
    slice_summary = {data.vs.labels[int(k)]: v["iou_mean"] for k, v in iou["per_label"].items() if int(k) > 0}
    slice_summary["work_a_mean_iou"] = iou["work_a_mean_iou"]
    mean_dice = float(table["dice"].mean()) if len(table) else None
    return {"mean_dice": mean_dice, "per_label": per_label, "slice_iou": slice_summary,
            "volumes": len(data.test_volumes)}, rows


def finetune(cfg: FinetuneConfig | None = None, **params) -> dict:
    """Run (or resume, or return the finished) fine-tuning described by ``cfg`` / ``params``."""
    return _run(cfg or FinetuneConfig(**params), "finetune", _finetune)


def _finetune(cfg: FinetuneConfig, rd: RunDir, t0: float) -> dict:
    from medssl_utils.data import SliceDataset
    from medssl_utils.data.transforms import SegAugment
    from medssl_utils.losses import segmentation_loss
    from medssl_utils.models import build_unet, describe_lineage, load_checkpoint
    from medssl_utils.models.init import check_init

    fabric = make_fabric(cfg.device, cfg.precision, cfg.devices)
    with fabric.rank_zero_first():
        data = prepare_finetune_data(cfg)
    kind, path = check_init(cfg.init)
    load_decoder = cfg.load_decoder
    if load_decoder == "auto":
        load_decoder = kind == "path" and load_checkpoint(path).get("decoder") is not None
    num_classes = len(data.vs.labels)
    torch.manual_seed(cfg.seed)
    model = build_unet(cfg.encoder, num_classes=num_classes, init=cfg.init, decoder_channels=cfg.decoder_channels,
                       load_decoder=bool(load_decoder))
    lineage = model.medssl_init["lineage"]
    check_no_leakage(lineage, cfg.dataset, data.split)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    base_lr = cfg.lr or 1e-4
    optimizer = make_optimizer("adam", model, base_lr, 0.0)
    model, optimizer = fabric.setup(model, optimizer)
    loss_fn = segmentation_loss(cfg.loss, num_classes=num_classes)
    aug = SegAugment(output_size=cfg.image_size, **cfg.augment)
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else max(cfg.max_steps // 20, 0)
    ds = SliceDataset(data.cache, data.train_rows)
    global_batch = cfg.batch_size * fabric.world_size  # batch_size is per process
    start = 0
    last = rd.checkpoints / "last.pt"
    if last.is_file():
        start, _ = _load_state(last, _unwrap(model), optimizer)
        rd.load_history(start)
    loader = fabric.setup_dataloaders(
        DataLoader(ds, batch_sampler=StreamBatchSampler(len(ds), cfg.batch_size, cfg.seed, start, cfg.max_steps,
                                                        rank=fabric.global_rank, world=fabric.world_size),
                   num_workers=cfg.num_workers, pin_memory=fabric.device.type == "cuda"),
        use_distributed_sampler=False)
    names = [data.vs.labels[k] for k in sorted(data.vs.labels) if k > 0]

    def validate(step: int) -> dict:
        te = time.perf_counter()
        dice = _evaluate_val(model, data.cache, data.val_rows, num_classes, cfg.eval_batch_size, fabric.device)
        row = {"step": step, "epoch": step * global_batch / len(ds), "time_s": round(time.perf_counter() - t0, 3),
               "val_dice": float(np.mean(dice[1:])), **{f"val_dice_{n}": float(d) for n, d in zip(names, dice[1:])}}
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
            _set_lr(optimizer, lr_at(step, cfg.max_steps, base_lr, warmup))
            x, y = batch["image"], batch["label"]
            x, y = aug(x, y, _step_generator(cfg.seed, step, fabric.global_rank, x.device))
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            loss = loss_fn(model(x), y)
            _check_finite(loss, step)
            _optimise(fabric, model, optimizer, loss, cfg.grad_clip)
            run_loss += float(loss.detach())
            run_n += 1
            images += x.shape[0] * fabric.world_size
            bar.update(1)
            done = step + 1
            if done % cfg.log_every == 0 or done % cfg.eval_every == 0 or done == cfg.max_steps:
                el = time.perf_counter() - tick
                train_time += el
                row = {"step": done, "epoch": done * global_batch / len(ds),
                       "time_s": round(time.perf_counter() - t0, 3), "loss": _mean_over_ranks(fabric, run_loss / run_n),
                       "lr": optimizer.param_groups[0]["lr"], "images_per_s": images / el if el > 0 else None}
                if done % cfg.eval_every == 0 or done == cfg.max_steps:
                    row.update({k: v for k, v in validate(done).items() if k.startswith("val_")})
                    bar.set_postfix_str(f"loss {row['loss']:.3f} val Dice {row['val_dice']:.3f}")
                    if fabric.is_global_zero:
                        _save_state(last, done, _unwrap(model), optimizer)
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
    _check_ranks_in_sync(fabric, _unwrap(model))
    te = time.perf_counter()
    test, rows = _test(_unwrap(model), data, cfg, rd, fabric.device)
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
        "timings": {"total_s": round(time.perf_counter() - t0, 2), "train_s": round(train_time, 2),
                    "eval_s": round(eval_time + test_time, 2),
                    "images_per_s": round((cfg.max_steps - start) * global_batch / train_time, 1)
                    if train_time else None},
        "device": str(fabric.device), "devices": fabric.world_size, "precision": PRECISIONS[str(cfg.precision)],
    }
    rd.write_result(result)  # rank 0 only (RunDir.writer)
    return result


def load_run(run_dir) -> dict:
    """``result.json`` of a run directory (or a clear error)."""
    p = Path(run_dir) / "result.json"
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        raise DataError(f"{p}: not found; the run has not finished (or run_dir is wrong)") from None
