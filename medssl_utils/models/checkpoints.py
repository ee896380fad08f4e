"""medssl checkpoints: encoder (and decoder) weights plus the lineage that produced them.

A medssl checkpoint is a plain ``dict`` written with :func:`torch.save` and read back with
``torch.load(..., weights_only=True)``, so it holds only tensors, strings, numbers, lists and
dicts::

    {
        "medssl_checkpoint": 1,          # format marker and version
        "encoder_name": "resnet50",      # timm name the encoder was built from
        "in_channels": 1,
        "encoder": {...},                # state dict of the smp encoder: "model.conv1.weight", ...
        "decoder": {...} or None,        # state dict of the smp U-Net decoder, when pretrained
        "lineage": [stage, ...],         # oldest first (see below)
        "extra": {...},                  # anything else the writer wants to keep (epoch, ...)
        "medssl_version": "0.1.0",
        "created": "2025-01-01T12:00:00+00:00",
    }

**Lineage** is the list of stages that produced the weights, oldest first. It usually starts
with the *start* of the chain, one of::

    {"method": "random"}
    {"method": "timm", "weights": "resnet50.a1_in1k", "data": ["imagenet"]}
    {"method": "file", "path": "/abs/byol_imagenet.pth", "prefix": "online_backbone."}

followed by one dict per training stage, e.g.::

    {"method": "byol", "data": ["natural"], "epochs": 5, "init": "random",
     "parent": None, "created": "2025-01-01T12:00:00+00:00"}

``parent`` is the checkpoint the stage started from (``None`` for a start that is not a file).
:func:`describe_lineage` names the whole chain from the file alone, e.g.
``"random → BYOL(natural, 5 ep) → BYOL(phantom:cardiac, 3 ep)"``.

A typical pretraining run saves with::

    save_checkpoint(path, encoder_state=encoder_state(model), encoder_name="resnet50",
                    in_channels=1, lineage_stage={"method": "byol", "data": ["natural"],
                    "epochs": 5, "init": init, "parent": parent_path_or_None},
                    parent_lineage=model.medssl_init["lineage"])
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from medssl_utils import __version__
from medssl_utils.errors import DataError, ParameterError
from medssl_utils.validate import check_int
from medssl_utils.fileio import atomic_file
from medssl_utils.rundir import now

FORMAT_KEY = "medssl_checkpoint"
FORMAT_VERSION = 1

#: How :func:`describe_lineage` spells method names; other methods are shown as written.
METHOD_NAMES = {"byol": "BYOL", "simclr": "SimCLR", "hssl": "HSSL", "supervised": "supervised"}

_REQUIRED = {"encoder_name": str, "in_channels": int, "encoder": Mapping, "lineage": list}


# ----------------------------------------------------------------------------- module states
def unwrap_model(module: nn.Module) -> nn.Module:
    """The user's module behind DDP / Fabric / torch.compile wrappers."""
    for _ in range(8):
        inner = getattr(module, "module", None) or getattr(module, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            break
        module = inner
    return module


def smp_encoder(module: nn.Module) -> nn.Module:
    module = unwrap_model(module)
    enc = getattr(module, "encoder", None)
    if isinstance(enc, nn.Module):
        return enc
    if isinstance(getattr(module, "model", None), nn.Module) and hasattr(module, "out_channels"):
        return module  # already an smp encoder (TimmUniversalEncoder)
    raise ParameterError(
        f"expected a segmentation_models_pytorch U-Net or encoder, got {type(module).__name__}")


def encoder_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """CPU copy of the encoder's state dict, ready for :func:`save_checkpoint`.

    ``model`` is a U-Net from :func:`~medssl_utils.models.build_unet` (or any module with an
    ``encoder`` attribute holding an smp encoder), or the smp encoder itself; DDP / Fabric
    wrappers are looked through. Keys are those of the smp encoder: ``model.conv1.weight``,
    ``model.layer1.0.conv1.weight``, ...
    """
    return {k: v.detach().to("cpu", copy=True) for k, v in smp_encoder(model).state_dict().items()}


def decoder_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """CPU copy of a U-Net's decoder state dict (``model.decoder``), for :func:`save_checkpoint`."""
    model = unwrap_model(model)
    dec = getattr(model, "decoder", None)
    if not isinstance(dec, nn.Module):
        raise ParameterError(f"expected a U-Net with a .decoder, got {type(model).__name__}")
    return {k: v.detach().to("cpu", copy=True) for k, v in dec.state_dict().items()}


# ----------------------------------------------------------------------------- reading files
def read_weights_file(path: str | os.PathLike, what: str = "weights file") -> object:
    """Load a ``.pt/.pth/.ckpt/.tar`` (``torch.load``, ``weights_only=True``) or ``.safetensors`` file.

    Raises :class:`DataError` naming the path when the file is missing, unreadable, or holds
    Python objects that ``weights_only`` loading refuses (``argparse.Namespace``, as in timm's
    training checkpoints, is allowed).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{what} {path} does not exist")
    if not path.is_file():
        raise DataError(f"{what} {path} is not a file")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
            return load_file(str(path), device="cpu")
        except Exception as e:  # noqa: BLE001 - any failure means the file is unusable
            raise DataError(f"cannot read {what} {path} as safetensors: {e}") from e
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if found:
            raise DataError(
                f"{what} {path} holds Python objects besides tensors ({found.group(1)}); medssl loads "
                "weights with torch.load(weights_only=True) and will not unpickle them. If you trust "
                "the file, extract its state dict once, e.g. torch.save(torch.load(PATH, "
                "weights_only=False)['state_dict'], 'weights.pth'), and use init='file:weights.pth'"
            ) from e
        raise DataError(f"cannot read {what} {path}: not a PyTorch checkpoint or corrupted ({e})") from e
    except Exception as e:  # noqa: BLE001 - zip/EOF/key errors all mean a damaged file
        raise DataError(
            f"cannot read {what} {path}: truncated, corrupted or not a PyTorch checkpoint "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e


def is_medssl_checkpoint(obj: object) -> bool:
    """True when ``obj`` (a loaded file) carries the medssl checkpoint marker."""
    return isinstance(obj, Mapping) and FORMAT_KEY in obj


def validate_checkpoint(obj: object, path: str | os.PathLike = "<checkpoint>") -> dict:
    """Check a loaded medssl checkpoint's format; returns it as a dict or raises DataError."""
    if not is_medssl_checkpoint(obj):
        raise DataError(
            f"{path} is not a medssl checkpoint (no '{FORMAT_KEY}' marker); for a torchvision, "
            "timm, solo-learn, lightly or BYOL-PyTorch file use init='file:PATH'")
    version = obj[FORMAT_KEY]
    if not isinstance(version, int) or version < 1 or version > FORMAT_VERSION:
        raise DataError(f"{path}: medssl checkpoint format version {version!r} is not supported "
                        f"(this medssl reads versions 1..{FORMAT_VERSION}); update medssl")
    for key, typ in _REQUIRED.items():
        if not isinstance(obj.get(key), typ):
            raise DataError(f"{path}: medssl checkpoint field '{key}' is missing or not a {typ.__name__}")
    for name in ("encoder", "decoder"):
        state = obj.get(name)
        if state is not None and not (isinstance(state, Mapping)
                                      and all(isinstance(v, torch.Tensor) for v in state.values())):
            raise DataError(f"{path}: medssl checkpoint field '{name}' is not a state dict of tensors")
    if not all(isinstance(s, Mapping) and isinstance(s.get("method"), str) for s in obj["lineage"]):
        raise DataError(f"{path}: medssl checkpoint lineage must be a list of dicts with a 'method'")
    return dict(obj)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a file written by :func:`save_checkpoint` (``weights_only=True``) and validate it.

    Returns the checkpoint dict (see the module docstring). Raises :class:`DataError` when the
    file is missing, damaged, or not a medssl checkpoint.
    """
    return validate_checkpoint(read_weights_file(path, "medssl checkpoint"), path)


# ----------------------------------------------------------------------------- writing


def _json_safe(obj, what: str):
    """Round-trip through JSON: lineage must be plain data (it also goes into result.json)."""
    def default(o):
        if isinstance(o, os.PathLike):
            return os.fspath(o)
        raise TypeError(f"{type(o).__name__} value {o!r} is not JSON-like")

    try:
        return json.loads(json.dumps(obj, default=default))
    except (TypeError, ValueError) as e:
        raise ParameterError(f"{what} must hold only JSON-like values (str, numbers, lists, dicts): {e}") from e


def _stage(stage: Mapping) -> dict:
    if not isinstance(stage, Mapping) or not isinstance(stage.get("method"), str) or not stage["method"]:
        raise ParameterError(f"lineage_stage={stage!r}: expected a dict with at least a 'method' name")
    out = dict(stage)
    data = out.get("data", [])
    out["data"] = [str(data)] if isinstance(data, (str, os.PathLike)) else [str(d) for d in data]
    out.setdefault("epochs", None)
    out.setdefault("init", None)
    out["parent"] = None if out.get("parent") is None else str(out["parent"])
    out.setdefault("created", now())
    return _json_safe(out, "lineage_stage")


def save_checkpoint(path: str | os.PathLike, *, encoder_state: Mapping[str, torch.Tensor],
                    decoder_state: Mapping[str, torch.Tensor] | None = None, encoder_name: str,
                    in_channels: int, lineage_stage: Mapping, parent_lineage: Sequence[Mapping] = (),
                    extra: Mapping | None = None) -> Path:
    """Write a medssl checkpoint atomically (temporary file, then ``os.replace``).

    Args:
        path: destination file (parent folders are created).
        encoder_state: :func:`encoder_state` of the model (keys ``model.…`` of the smp encoder).
        decoder_state: :func:`decoder_state`, for methods that pretrain the decoder (HSSL).
        encoder_name: the timm encoder name the model was built from (``"resnet50"``).
        in_channels: input channels of the encoder's first convolution.
        lineage_stage: the stage that produced these weights: ``method`` (required), ``data``
            (list of dataset specs), ``epochs``, ``init`` (the init string the stage started
            from), ``parent`` (the checkpoint it started from, or None); ``created`` is filled in.
        parent_lineage: the lineage the stage started from, usually ``model.medssl_init["lineage"]``.
        extra: more plain data to keep (epoch, step, optimizer state, ...).

    Returns the path written.
    """
    if not isinstance(encoder_name, str) or not encoder_name:
        raise ParameterError(f"encoder_name={encoder_name!r}: expected a timm model name")
    check_int("in_channels", in_channels, 1)
    for name, state in (("encoder_state", encoder_state), ("decoder_state", decoder_state)):
        if state is None and name == "decoder_state":
            continue
        if not isinstance(state, Mapping) or not state or not all(
                isinstance(v, torch.Tensor) for v in state.values()):
            raise ParameterError(f"{name}: expected a non-empty state dict of tensors")
    if isinstance(parent_lineage, Mapping) or not all(
            isinstance(s, Mapping) and "method" in s for s in parent_lineage):
        raise ParameterError("parent_lineage: expected a list of stage dicts (e.g. model.medssl_init['lineage'])")
    if extra is not None and not isinstance(extra, Mapping):
        raise ParameterError(f"extra: expected a dict, got {type(extra).__name__}")
    lineage = _json_safe([dict(s) for s in parent_lineage], "parent_lineage") + [_stage(lineage_stage)]
    obj = {
        FORMAT_KEY: FORMAT_VERSION,
        "encoder_name": encoder_name,
        "in_channels": in_channels,
        "encoder": {k: v.detach().cpu() for k, v in encoder_state.items()},
        "decoder": None if decoder_state is None else {k: v.detach().cpu() for k, v in decoder_state.items()},
        "lineage": lineage,
        "extra": dict(extra or {}),
        "medssl_version": _version(),
        "created": now(),
    }
    path = Path(path).expanduser()
    with atomic_file(path) as tmp:
        torch.save(obj, tmp)
    return path


def _version() -> str:
    return __version__


# ----------------------------------------------------------------------------- naming
def _start_from_init(init: str) -> str:
    text = str(init)
    low = text.lower()
    if low == "random":
        return "random"
    if low in ("timm", "imagenet"):
        return "ImageNet (timm)"
    if low.startswith("file:"):
        return f"file {Path(text[5:]).name}"
    return f"checkpoint {Path(text).name}"


def _describe_stage(stage: Mapping) -> str:
    method = str(stage.get("method", "?"))
    if method == "random":
        return "random"
    if method == "timm":
        data = [str(d).lower() for d in stage.get("data") or []]
        return "ImageNet (timm)" if "imagenet" in data else f"timm {stage.get('weights', '')}".strip()
    if method == "file":
        return f"file {Path(str(stage.get('path', '?'))).name}"
    parts = []
    data = stage.get("data")
    if data:
        parts.append("+".join(str(d) for d in ([data] if isinstance(data, str) else data)))
    if stage.get("epochs") is not None:
        parts.append(f"{stage['epochs']:g} ep" if isinstance(stage["epochs"], float) else f"{stage['epochs']} ep")
    name = METHOD_NAMES.get(method.lower(), method)
    return f"{name}({', '.join(parts)})" if parts else name


def describe_lineage(lineage: Sequence[Mapping]) -> str:
    """Name a chain of stages, oldest first, e.g. ``"ImageNet (timm) → BYOL(cardiac, 3 ep)"``.

    Start stages are named ``random``, ``ImageNet (timm)`` (or ``timm TAG`` for non-ImageNet
    tags) and ``file NAME``; a chain without a start stage is given one from its first stage's
    ``init``. An empty lineage is ``"unknown"``.
    """
    lineage = list(lineage or [])
    if not lineage:
        return "unknown"
    names = [_describe_stage(s) for s in lineage]
    first = lineage[0]
    if first.get("method") not in ("random", "timm", "file") and first.get("init"):
        names.insert(0, _start_from_init(first["init"]))
    return " → ".join(names)
