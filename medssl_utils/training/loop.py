"""Pieces both training loops share: Fabric, the seeded batch stream, schedules, optimisers,
run directories, resume state, and the checks that stop a run.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Sampler

from medssl_utils import __version__
from medssl_utils.errors import DataError, MedsslError, ParameterError, check_choice
from medssl_utils.fileio import atomic_file, remove_stale_temps
from medssl_utils.rundir import RunDir, now
from medssl_utils.training.config import _RUNTIME_KEYS, DEVICES, PRECISIONS, TrainingError
from medssl_utils.training.lars import LARS, WORK_A_LARS
from medssl_utils.training.tracking import open_trackers


def in_notebook_kernel() -> bool:
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
        from lightning_fabric.plugins.environments import SLURMEnvironment
        from lightning_fabric.utilities.imports import _IS_INTERACTIVE

        if SLURMEnvironment.detect() and int(os.environ.get("SLURM_NTASKS_PER_NODE", "0") or 0) == devices:
            # SLURM started one process (here: one notebook kernel) per device; nothing needs launching
            import lightning_fabric.connector

            lightning_fabric.connector._IS_INTERACTIVE = False
        elif _IS_INTERACTIVE or in_notebook_kernel():
            raise ParameterError(f"devices={devices}: multi-process (DDP) training starts one process per device by "
                                 "re-running the calling script, which a notebook kernel cannot do; run it from a "
                                 "Python script (docs/gpu.md) or use devices=1 here")
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


def lr_at(step: int, total: int, base_lr: float, warmup: int, start_lr: float | None = None) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``.

    Warm-up: ``base_lr * (step + 1) / warmup`` (medssl's default), or, with ``start_lr``, from
    ``start_lr`` at step 0 linearly to ``base_lr`` at step ``warmup`` (Work A's
    LinearWarmupCosineAnnealingLR, warm-up from 1e-6).
    """
    if warmup > 0 and step < warmup:
        if start_lr is None:
            return base_lr * (step + 1) / warmup
        return start_lr + (base_lr - start_lr) * step / warmup
    span = max(total - warmup, 1)
    return base_lr * 0.5 * (1 + math.cos(math.pi * min(step - warmup, span) / span))


def step_generator(seed: int, step: int, rank: int, device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + step * 7919 + rank) % (2**63 - 1))
    return g


def _param_groups(module: torch.nn.Module, weight_decay: float, scaled: dict | None = None) -> list[dict]:
    """Biases and norm parameters (ndim <= 1) get no weight decay (and no LARS adaptation).

    ``scaled``: ``{id(param): lr_scale}`` for parameters whose learning rate is a multiple of the
    schedule's (e.g. the encoder during fine-tuning); each group carries its ``lr_scale``, which
    :func:`set_lr` applies.
    """
    scaled = scaled or {}
    groups: dict[tuple, list] = {}
    for p in module.parameters():
        if p.requires_grad:
            key = (p.ndim > 1, float(scaled.get(id(p), 1.0)))
            groups.setdefault(key, []).append(p)
    order = sorted(groups, key=lambda k: (-k[1], not k[0]))  # scale 1 first, then decayed first: stable order
    return [{"params": groups[k], "weight_decay": weight_decay if k[0] else 0.0, "lr_scale": k[1]} for k in order]


def make_optimizer(name: str, module: torch.nn.Module, lr: float, weight_decay: float,
                   scaled: dict | None = None):
    """The optimiser ``name`` (lars, sgd, adamw, adam) over ``module``'s trainable parameters.

    ``lars`` is Work A's LARS (:mod:`medssl_utils.training.lars`: eta 0.02, clipped, biases and
    norms excluded); ``scaled`` as in :func:`_param_groups`.
    """
    groups = _param_groups(module, weight_decay, scaled)
    for g in groups:
        g["lr"] = lr * g["lr_scale"]
    if name == "lars":
        return LARS(groups, lr=lr, momentum=0.9, weight_decay=weight_decay, **WORK_A_LARS)
    # fused: one kernel per tensor doing the whole update, on CPU and CUDA alike (torch's default is
    # foreach on CUDA, a loop on CPU). The same update in another order of rounding. Measured on this CPU
    # over BYOL's 4.5 M parameters (154 tensors, one thread): AdamW 3.2 ms fused, 15.1 loop, 20.5
    # foreach; Adam 5.5 / 26.0 / 42.0; SGD 2.6 / 6.8 / 10.2 (docs/training.md, "Pretraining speed").
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, weight_decay=weight_decay, fused=True)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, fused=True)
    return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay, fused=True)


def default_lr(optimizer: str, batch_size: int) -> float:
    return {"lars": 0.2 * batch_size / 256, "sgd": 0.05 * batch_size / 256, "adamw": 1e-3, "adam": 1e-4}[optimizer]


def set_lr(optimizer, lr: float) -> None:
    """The schedule's ``lr`` for every group, times the group's ``lr_scale`` (1 unless set)."""
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)


def conv_weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Detached copies of the convolution weights (4-D parameters) of ``module``, by name."""
    return {n: p.detach().clone() for n, p in module.named_parameters() if p.ndim == 4}


def encoder_shift(module: torch.nn.Module, start: dict[str, torch.Tensor]) -> float | None:
    """How far ``module`` moved from ``start`` (:func:`conv_weights` taken earlier): the median over
    its convolution weights of ``|W - W0| / |W0|`` (Frobenius norms). None without such weights."""
    ratios = []
    with torch.no_grad():
        for n, p in module.named_parameters():
            w0 = start.get(n)
            if w0 is None or p.ndim != 4:
                continue
            w0 = w0.to(p.device)
            den = float(torch.linalg.vector_norm(w0))
            if den > 0:
                ratios.append(float(torch.linalg.vector_norm(p.detach().float() - w0.float())) / den)
    return float(np.median(ratios)) if ratios else None


def check_finite(loss: torch.Tensor, step: int, epoch: int | None = None) -> None:
    if not torch.isfinite(loss.detach()).all():
        where = f"step {step}" + (f" (epoch {epoch})" if epoch is not None else "")
        raise TrainingError(f"the loss became {float(loss.detach())} at {where}; the run stopped. "
                            "Lower lr, add grad_clip, or use precision='32'")


def check_finite_weights(module: torch.nn.Module, step: int, epoch: int | None = None, *,
                         buffers: bool = False) -> None:
    """Stop the run when any parameter (and, with ``buffers``, BatchNorm statistic) is NaN or inf
    (or so large that its L2 norm overflows float32).

    Called after every optimiser step: a finite loss does not guarantee finite weights (an
    update can overflow), and a run must never end ``complete`` with a broken model.
    """
    tensors = [p.detach() for p in module.parameters() if p.numel()]
    if buffers:
        tensors += [b.detach() for b in module.buffers() if b.is_floating_point() and b.numel()]
    if not tensors:
        return
    # one fused L2 norm per tensor (the inf-norm takes 20x longer on CPU): NaN/inf in a tensor makes its
    # norm non-finite, and so does a tensor so large (> ~1e19 per element) that its norm overflows
    norms = torch.stack(torch._foreach_norm(tensors, 2.0))
    if not bool(torch.isfinite(norms).all()):
        names = [n for n, p in list(module.named_parameters()) + (list(module.named_buffers()) if buffers else [])
                 if p.is_floating_point() and not bool(torch.isfinite(p.detach()).all())]
        where = f"step {step}" + (f" (epoch {epoch})" if epoch is not None else "")
        raise TrainingError(f"the weights became non-finite (NaN/inf) at {where}, e.g. {', '.join(names[:3])}; "
                            "the run stopped. Lower lr, add grad_clip, or use precision='32'")


def resolve_split(vs_format: str, split: str) -> str:
    return ("paper" if vs_format == "acdc" else "random") if split == "auto" else split


def _launcher_rank_zero() -> bool:
    """False in the extra processes a DDP launcher starts (they must not write the run's files).

    Called before Fabric exists: Fabric's launcher, torchrun and SLURM all set these variables
    in the processes they start; a plain process has none of them and is rank 0.
    """
    return all(int(os.environ.get(k, "0") or 0) == 0 for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


def prepare_run(cfg, kind: str) -> tuple[RunDir, dict | None]:
    """Create/inspect the run directory. Returns (rundir, finished result or None).

    Only the writing process (rank 0) changes anything on disk; the others just look.
    """
    rd = RunDir(cfg.run_dir, writer=_launcher_rank_zero())
    params = {**cfg.as_params(), "kind": kind, "medssl_version": __version__}
    old = None if cfg.overwrite else rd.read_result()  # an unreadable one stops here (overwrite=True replaces it)
    if old and old.get("status") == "complete" and not cfg.overwrite:
        return rd, old
    resume = (rd.checkpoints / "last.pt").is_file() and not cfg.overwrite
    old_params = rd.read_params() if resume else None
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
    removed = remove_stale_temps(rd.path)  # left by a writer killed mid-write (kill -9, a preempted job)
    if removed:
        print(f"{rd.path}: removed {len(removed)} temporary file(s) of writers no longer running: "
              + ", ".join(str(p.relative_to(rd.path)) for p in removed))
    rd.write_params({**params, "started": now()})
    return rd, None


def save_state(path: Path, step: int, module, optimizer, extra: dict | None = None) -> None:
    with atomic_file(path) as tmp:
        torch.save({"step": step, "model": module.state_dict(), "optimizer": optimizer.state_dict(),
                    "extra": extra or {}}, tmp)


def load_state(path: Path, module, optimizer) -> tuple[int, dict]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(f"{path}: cannot read the resume state ({exc}); delete it to start over") from exc
    try:
        module.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        return int(state["step"]), state.get("extra", {})
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
        why = " ".join(str(exc).split())[:200]
        raise DataError(f"{path}: the resume state does not fit this run ({type(exc).__name__}: {why}); "
                        "delete it to start over") from None


def unwrap(module):
    return getattr(module, "module", module)


def run_guarded(cfg, kind: str, body) -> dict:
    """Prepare the run directory, return a finished result as is, else run ``body``; a failure
    is recorded in ``result.json`` (status ``failed``, one-line error) and re-raised. The run's
    ``trackers`` (:mod:`medssl_utils.training.tracking`) are open while ``body`` runs (rank 0)."""
    rd, done = prepare_run(cfg, kind)
    if done:
        return done
    t0 = time.perf_counter()
    result = None
    try:
        if rd.writer and cfg.trackers:
            rd.trackers = open_trackers(cfg.trackers, rd.path, rd.read_params())
        result = body(cfg, rd, t0)
        return result
    except (MedsslError, RuntimeError, ValueError) as exc:
        _fail(rd, kind, exc, t0)
        raise
    finally:
        rd.close_trackers(result or {"status": "failed"})


def optimise(fabric, model, optimizer, loss, grad_clip: float, frozen=()) -> None:
    """One optimiser step; parameters in ``frozen`` keep their values (their gradients are dropped
    before clipping and the step, so they neither move nor enter the optimiser's moments)."""
    optimizer.zero_grad(set_to_none=True)
    fabric.backward(loss)
    for p in frozen:
        p.grad = None
    if grad_clip:
        fabric.clip_gradients(model, optimizer, max_norm=grad_clip)
    optimizer.step()


def mean_over_ranks(fabric, value: float) -> float:
    """A logged number averaged over the processes (each saw its own share of the batch)."""
    if fabric.world_size == 1:
        return value
    return float(fabric.all_reduce(torch.tensor(float(value), dtype=torch.float64), reduce_op="mean"))


def check_ranks_in_sync(fabric, module) -> None:
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


def load_run(run_dir) -> dict:
    """``result.json`` of a run directory (or a clear error)."""
    p = Path(run_dir) / "result.json"
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        raise DataError(f"{p}: not found; the run has not finished (or run_dir is wrong)") from None

