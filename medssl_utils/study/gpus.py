"""GPUs of this machine for the local executor: which ones a study may use, and which run holds which.

``medssl study run STUDY --gpus 0,1,2,3`` (or ``--gpus all``) gives every run its own GPU through
its kernel's ``CUDA_VISIBLE_DEVICES``, the convention of nnU-Net and submitit's local executor:
inside the kernel the run sees one device, ``cuda:0``. ``--runs-per-gpu K`` lets K runs share
one GPU (small runs that leave most of it idle); a run with ``devices: N`` gets N different GPUs.

GPU ids are what ``CUDA_VISIBLE_DEVICES`` means on this machine: indices as ``nvidia-smi`` numbers
them, or ``GPU-…`` / ``MIG-…`` UUIDs. When the runner itself was started with
``CUDA_VISIBLE_DEVICES`` set (a shared workstation, a SLURM allocation), ``all`` means those
and an explicit id must be one of them. Nothing here touches CUDA: the runner (and the warm
kernels' zygote it forks kernels from) must not initialise it, or the kernels' own
``CUDA_VISIBLE_DEVICES`` would come too late (:mod:`medssl_utils.warmkernel`).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence

from medssl_utils.errors import ParameterError
from medssl_utils.validate import check_int

_ID = re.compile(r"^(\d+|(GPU|MIG)-[0-9A-Za-z/.-]+)$")


def visible_gpus(env: Mapping[str, str] | None = None, nvidia_smi: str | None = "auto") -> tuple[list[str], str]:
    """``(ids, source)``: the GPUs this process may hand out and where that came from.

    ``CUDA_VISIBLE_DEVICES`` in ``env`` (default ``os.environ``) wins (an empty value: no GPU);
    else ``nvidia-smi --query-gpu=index`` (``nvidia_smi``: its path, ``"auto"`` to look it up
    on PATH, None to not ask); else no GPU. Never initialises CUDA."""
    env = os.environ if env is None else env
    if "CUDA_VISIBLE_DEVICES" in env:
        value = env["CUDA_VISIBLE_DEVICES"]
        return [g.strip() for g in value.split(",") if g.strip()], f"CUDA_VISIBLE_DEVICES={value!r}"
    exe = shutil.which("nvidia-smi") if nvidia_smi == "auto" else nvidia_smi
    if not exe:
        return [], "no nvidia-smi on PATH and CUDA_VISIBLE_DEVICES is not set"
    try:
        out = subprocess.run([exe, "--query-gpu=index", "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return [], f"nvidia-smi failed ({type(exc).__name__})"
    return [line.strip() for line in out.splitlines() if line.strip()], "nvidia-smi"


def parse_gpus(spec: str | Sequence[str], env: Mapping[str, str] | None = None,
               nvidia_smi: str | None = "auto") -> list[str]:
    """The GPU ids of ``--gpus SPEC``: ``all``, or ids separated by commas (``0,1,2``), or a list.

    Raises :class:`ParameterError` naming ``gpus`` for an empty or repeated id, an id that is not
    an index or UUID, ``all`` with no GPU visible, and an id outside the runner's own
    ``CUDA_VISIBLE_DEVICES`` / ``nvidia-smi``'s list."""
    visible, source = visible_gpus(env, nvidia_smi)
    if isinstance(spec, str) and spec.strip().lower() == "all":
        if not visible:
            raise ParameterError(f"gpus=all: no GPU visible here ({source}); name the ids, e.g. --gpus 0,1")
        return visible
    ids = [g.strip() for g in (spec.split(",") if isinstance(spec, str) else spec)]
    if not ids or any(not g for g in ids):
        raise ParameterError(f"gpus={spec!r}: expected 'all' or GPU ids separated by commas, e.g. 0,1,2,3")
    bad = [g for g in ids if not _ID.match(g)]
    if bad:
        raise ParameterError(f"gpus={spec!r}: {bad[0]!r} is not a GPU index (0, 1, …) or UUID (GPU-…, MIG-…)")
    repeated = sorted({g for g in ids if ids.count(g) > 1})
    if repeated:
        raise ParameterError(f"gpus={spec!r}: {', '.join(repeated)} given twice (--runs-per-gpu K lets K runs share "
                             "one GPU)")
    if "CUDA_VISIBLE_DEVICES" in (os.environ if env is None else env) or visible:
        missing = [g for g in ids if g not in visible]
        if missing:
            raise ParameterError(f"gpus={spec!r}: {', '.join(missing)} not among the GPUs visible here "
                                 f"({', '.join(visible) or 'none'}; {source})")
    return ids


def run_devices(params: Mapping) -> int:
    """How many GPUs a run needs: its ``devices`` parameter (default 1)."""
    devices = params.get("devices", 1)
    return devices if isinstance(devices, int) and not isinstance(devices, bool) and devices > 1 else 1


class GpuSlots:
    """``runs_per_gpu`` slots on each GPU of ``gpus``; a run takes one slot on each of the GPUs it
    gets. :meth:`take` gives the least-loaded GPUs first (ties: the order given), so runs spread
    over the GPUs before any GPU is shared."""

    def __init__(self, gpus: Sequence[str], runs_per_gpu: int = 1):
        check_int("runs_per_gpu", runs_per_gpu, 1)
        if not gpus:
            raise ParameterError("gpus: expected at least one GPU id")
        self.gpus = list(gpus)
        self.runs_per_gpu = runs_per_gpu
        self.load = {g: 0 for g in self.gpus}

    @property
    def slots(self) -> int:
        return len(self.gpus) * self.runs_per_gpu

    def take(self, n: int) -> list[str] | None:
        """``n`` different GPUs with a free slot each (now taken), or None when fewer are free."""
        free = sorted((g for g in self.gpus if self.load[g] < self.runs_per_gpu),
                      key=lambda g: (self.load[g], self.gpus.index(g)))
        if len(free) < n:
            return None
        chosen = sorted(free[:n], key=self.gpus.index)
        for g in chosen:
            self.load[g] += 1
        return chosen

    def give(self, ids: Sequence[str]) -> None:
        for g in ids:
            self.load[g] -= 1
