"""Backbone-only weights: a medssl checkpoint's encoder as one safetensors file in timm's own key names.

:func:`export_encoder` writes ``encoder.safetensors`` (every pretraining run writes one beside
``checkpoints/final.pt``; for an older run call it on the run's ``final.pt``). The file holds every
tensor of the encoder medssl trained, nothing else, under the names of
``timm.create_model(encoder_name, in_chans=1, num_classes=0)``:

- the smp ``tu-`` encoder keeps its timm module as ``.model``, so medssl's ``model.conv1.weight``
  is timm's ``conv1.weight``;
- timm's features-only wrapper (``FeatureListNet``) flattens ``nn.Sequential`` stages, so a ConvNeXt's
  ``model.stages_0.…`` is timm's ``stages.0.…`` (ResNets and EfficientNets need no renaming);
- tensors of timm's model that the encoder has not got are absent: the heads features-only backbones
  leave out (EfficientNet's ``conv_head`` and ``bn2``, ConvNeXt's ``head.norm``), and the layers past
  the encoder's depth. The header lists them (``not_in_export``); nothing is made up for them.

Before writing, the keys and shapes are checked against the encoder smp builds for the name (exactly,
at the checkpoint's depth) and against timm's model (every exported name exists there, same shape).

The header's metadata (safetensors metadata is text only): ``format`` (``pt``), ``medssl_export``
(format version), ``encoder_name``, ``in_chans``, ``encoder_depth``, ``lineage_name``, ``lineage``
(JSON), ``not_in_export`` (JSON list), ``source`` (the checkpoint), ``medssl_version``,
``timm_version``, ``created``. The medssl checkpoint stays the record; the export is a copy for other
code. Loading it: docs/export.md; :func:`load_exported` reads it back and loads it, by name and
strictly, into a timm model or an smp U-Net / encoder.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from medssl_utils import __version__
from medssl_utils.errors import DataError, ParameterError
from medssl_utils.fileio import atomic_file
from medssl_utils.models.checkpoints import (describe_lineage, is_medssl_checkpoint, load_checkpoint, smp_encoder,
                                             unwrap_model, validate_checkpoint)
from medssl_utils.models.unet import check_encoder_name
from medssl_utils.rundir import now
from medssl_utils.validate import check_int

#: The file a pretraining run writes beside ``checkpoints/final.pt``.
EXPORT_NAME = "encoder.safetensors"
#: Header key marking a medssl export, and its format version.
EXPORT_KEY = "medssl_export"
EXPORT_VERSION = 1
SMP_PREFIX = "model."  # the smp encoder's attribute holding the timm module
_SHOWN = 5  # key names an error message shows


# ----------------------------------------------------------------------------- key names
def _spellings(key: str) -> list[str]:
    """Other names timm's feature wrappers give ``key``: one ``_`` of its first name read as ``.``
    (``stages_0.blocks`` is ``stages.0.blocks``), and without FeatureGetterNet's ``model.``."""
    out = [key[len(SMP_PREFIX):]] if key.startswith(SMP_PREFIX) else []
    head, dot, tail = key.partition(".")
    out += [head[:i] + "." + head[i + 1:] + dot + tail for i, ch in enumerate(head) if ch == "_"]
    return out


def match_names(keys: Iterable[str], names: Iterable[str]) -> tuple[dict[str, str], list[str]]:
    """Map each of ``keys`` to the one of ``names`` it stands for: itself, else the one spelling of
    :func:`_spellings` found among ``names``. Returns ``(mapping, keys that match nothing)``."""
    names = set(names)
    mapping: dict[str, str] = {}
    unmatched: list[str] = []
    for key in keys:
        hits = [key] if key in names else [s for s in _spellings(key) if s in names]
        if len(hits) == 1 and hits[0] not in mapping.values():
            mapping[key] = hits[0]
        else:
            unmatched.append(key)
    return mapping, unmatched


def _listing(keys, what: str) -> str:
    keys = sorted(keys, key=lambda k: (k.endswith("num_batches_tracked"), k))
    more = f" and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else ""
    return f"{len(keys)} {what} ({', '.join(keys[:_SHOWN])}{more})"


def _meta_state(build) -> dict[str, torch.Size]:
    """Names and shapes of a model's state dict, built on the meta device (no memory, no init time)."""
    try:
        with torch.device("meta"):
            module = build()
    except Exception:  # noqa: BLE001 - a model that cannot be built on meta is built for real
        module = build()
    return {k: v.shape for k, v in module.state_dict().items()}


def timm_names(encoder_name: str, in_chans: int) -> dict[str, torch.Size]:
    """Names and shapes of ``timm.create_model(encoder_name, in_chans=in_chans, num_classes=0)``."""
    import timm

    return _meta_state(lambda: timm.create_model(encoder_name, in_chans=in_chans, num_classes=0))


def smp_names(encoder_name: str, in_chans: int, depth: int) -> dict[str, torch.Size]:
    """Names and shapes of the smp ``tu-`` encoder medssl builds (keys ``model.…``)."""
    from segmentation_models_pytorch.encoders import get_encoder

    return _meta_state(lambda: get_encoder(f"tu-{encoder_name}", in_channels=in_chans, depth=depth, weights=None))


def _differences(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Size]) -> list[str]:
    missing = set(expected) - set(state)
    unexpected = set(state) - set(expected)
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k])}" for k in sorted(set(state) & set(expected))
              if tuple(state[k].shape) != tuple(expected[k])]
    return ([_listing(missing, "missing")] if missing else []) + (
        [_listing(unexpected, "unexpected")] if unexpected else []) + (
        [f"{len(shapes)} of other shapes ({'; '.join(shapes[:3])})"] if shapes else [])


def encoder_depth(state: Mapping[str, torch.Tensor], encoder_name: str, in_chans: int, source: str = "<state>") -> int:
    """The depth (5 down to 1) at which smp's ``tu-`` encoder has exactly the keys and shapes of
    ``state`` (an smp encoder state dict); DataError naming the differences when none has."""
    tried = {}
    for depth in (5, 4, 3, 2, 1):
        try:
            diff = _differences(state, smp_names(encoder_name, in_chans, depth))
        except Exception as e:  # noqa: BLE001 - smp refuses some depths of some encoders
            diff = [f"smp cannot build it ({type(e).__name__}: {e})"]
        if not diff:
            return depth
        tried[depth] = diff
    raise DataError(f"{source}: the encoder tensors do not match the {encoder_name} encoder smp builds "
                    f"(tu-{encoder_name}, in_channels={in_chans}, depth 5): {'; '.join(tried[5])}")


def timm_state(encoder_state: Mapping[str, torch.Tensor], encoder_name: str, in_chans: int,
               source: str = "<state>") -> tuple[dict[str, torch.Tensor], list[str], int]:
    """An smp encoder state dict under timm's own names, checked.

    Returns ``(state, not_in_export, depth)``: the tensors under the names of
    ``timm.create_model(encoder_name, in_chans=in_chans, num_classes=0)``, that model's names the
    encoder has not got, and the encoder's depth. Raises DataError naming the keys that do not fit.
    """
    depth = encoder_depth(encoder_state, encoder_name, in_chans, source)
    names = timm_names(encoder_name, in_chans)
    inner = {k[len(SMP_PREFIX):]: v for k, v in encoder_state.items()}  # all start with it: checked by the depth
    mapping, unmatched = match_names(inner, names)
    if unmatched:
        raise DataError(f"{source}: {_listing(unmatched, 'encoder tensors')} have no counterpart in "
                        f"timm.create_model({encoder_name!r}, in_chans={in_chans}, num_classes=0)")
    state = {mapping[k]: v.detach().to("cpu").contiguous().clone() for k, v in inner.items()}
    diff = _differences(state, {k: names[k] for k in state})
    if diff:
        raise DataError(f"{source}: the encoder tensors do not fit timm's {encoder_name} model: {'; '.join(diff)}")
    return state, sorted(set(names) - set(state)), depth


# ----------------------------------------------------------------------------- writing
def _source_checkpoint(source, encoder_name, in_channels, lineage) -> tuple[dict, str]:
    """The checkpoint dict (``encoder_name``, ``in_channels``, ``encoder``, ``lineage``) and its name."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        return load_checkpoint(path), str(path.resolve())
    if is_medssl_checkpoint(source):
        return validate_checkpoint(source), "<checkpoint>"
    if isinstance(source, nn.Module):
        lineage = lineage if lineage is not None else (getattr(unwrap_model(source), "medssl_init", None)
                                                       or {}).get("lineage")
        source = {k: v.detach().cpu() for k, v in smp_encoder(source).state_dict().items()}
    if not isinstance(source, Mapping) or not source or not all(isinstance(v, torch.Tensor) for v in source.values()):
        raise ParameterError(f"export_encoder: source={type(source).__name__}: expected a medssl checkpoint "
                             "(path or loaded dict), a U-Net / smp encoder, or an smp encoder state dict")
    if not isinstance(encoder_name, str) or not encoder_name:
        raise ParameterError(f"encoder_name={encoder_name!r}: expected the timm name the encoder was built from "
                             "(needed when exporting a model or a state dict)")
    in_channels = 1 if in_channels is None else check_int("in_channels", in_channels, 1)
    return {"encoder_name": encoder_name, "in_channels": in_channels,
            "encoder": dict(source), "lineage": list(lineage or [])}, "<state dict>"


def export_encoder(source, path: str | os.PathLike, *, encoder_name: str | None = None,
                   in_channels: int | None = None, lineage=None) -> Path:
    """Write the encoder of ``source`` alone to ``path`` (safetensors, timm's key names), atomically.

    Args:
        source: a medssl checkpoint (its path, e.g. a run's ``checkpoints/final.pt``, or the dict
            :func:`~medssl_utils.models.load_checkpoint` returns); or a U-Net / smp encoder, or an
            smp encoder state dict (keys ``model.…``), with ``encoder_name`` (and ``in_channels``,
            default 1; ``lineage``, default the model's ``medssl_init`` lineage) given.
        path: the file to write (``.../checkpoints/encoder.safetensors``); parent folders are made.

    Returns ``path``. Raises :class:`DataError` naming the checkpoint when it is missing, damaged,
    or its encoder tensors do not match the encoder smp and timm build for its name.
    """
    from safetensors.torch import save_file
    import timm

    ckpt, where = _source_checkpoint(source, encoder_name, in_channels, lineage)
    try:
        name = check_encoder_name(ckpt["encoder_name"])
    except ParameterError as e:
        raise DataError(f"{where}: encoder_name: {e}") from e
    in_chans = int(ckpt["in_channels"])
    state, absent, depth = timm_state(ckpt["encoder"], name, in_chans, where)
    lineage = ckpt.get("lineage") or []
    metadata = {
        "format": "pt", EXPORT_KEY: str(EXPORT_VERSION), "encoder_name": name, "in_chans": str(in_chans),
        "encoder_depth": str(depth), "lineage_name": describe_lineage(lineage),
        "lineage": json.dumps(lineage, ensure_ascii=False), "not_in_export": json.dumps(absent),
        "source": where, "medssl_version": __version__, "timm_version": timm.__version__, "created": now(),
    }
    path = Path(path).expanduser()
    with atomic_file(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return path


# ----------------------------------------------------------------------------- reading
def _load_target(module: nn.Module) -> nn.Module:
    """The timm module to load into: an smp U-Net's (or encoder's) ``.model``, else ``module`` itself."""
    module = unwrap_model(module)
    enc = getattr(module, "encoder", None)
    if isinstance(enc, nn.Module):
        module = enc
    inner = getattr(module, "model", None)
    return inner if isinstance(inner, nn.Module) and hasattr(module, "out_channels") else module


def load_exported(path: str | os.PathLike, into: nn.Module | None = None) -> dict:
    """Read a file written by :func:`export_encoder`; with ``into``, load it into that model strictly.

    Args:
        path: the ``encoder.safetensors`` file.
        into: a timm model (``timm.create_model(name, in_chans=1, features_only=True)`` or
            ``num_classes=0``), or an smp U-Net / ``tu-`` encoder. Its tensors are filled by name
            (timm's features-only ``stages_0`` takes the file's ``stages.0``); a tensor of the model
            the file lacks, one of the file the model lacks, or a shape that differs is a DataError
            naming them — nothing is left at its initial value silently.

    Returns ``{"state_dict", "encoder_name", "in_chans", "encoder_depth", "lineage", "lineage_name",
    "not_in_export", "metadata"}`` (the state dict under timm's names, the header as text).
    """
    from safetensors import safe_open

    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"encoder export {path} {'is not a file' if path.exists() else 'does not exist'}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - any failure means the file is unusable
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DataError(f"cannot read encoder export {path}: truncated or not a safetensors file ({first})") from e
    if EXPORT_KEY not in metadata:
        raise DataError(f"{path} is not a medssl encoder export (no '{EXPORT_KEY}' in its safetensors metadata); "
                        "load other safetensors files with safetensors.torch.load_file")
    try:
        out = {"state_dict": state, "encoder_name": metadata["encoder_name"], "in_chans": int(metadata["in_chans"]),
               "encoder_depth": int(metadata["encoder_depth"]), "lineage": json.loads(metadata["lineage"]),
               "lineage_name": metadata["lineage_name"], "not_in_export": json.loads(metadata["not_in_export"]),
               "metadata": metadata}
    except (KeyError, ValueError) as e:
        raise DataError(f"{path}: medssl encoder export metadata is damaged ({type(e).__name__}: {e})") from e
    if into is not None:
        _load_into(state, into, path)
    return out


def _load_into(state: Mapping[str, torch.Tensor], into: nn.Module, path: Path) -> None:
    target = _load_target(into)
    own = target.state_dict()
    mapping, missing = match_names(own, state)
    unexpected = set(state) - set(mapping.values())
    problems = ([_listing(missing, "tensors of the model are not in the file")] if missing else []) + (
        [_listing(unexpected, "tensors of the file are not in the model")] if unexpected else [])
    shapes = [f"{k} {tuple(state[v].shape)} vs {tuple(own[k].shape)}" for k, v in mapping.items()
              if state[v].shape != own[k].shape]
    if shapes:
        problems.append(f"{len(shapes)} of other shapes (file vs model: {'; '.join(shapes[:3])})")
    if problems:
        raise DataError(f"{path} does not fit {type(target).__name__}: {'; '.join(problems)}. Build the model "
                        "with the file's encoder_name, in_chans and encoder_depth, and features_only=True where "
                        "the file's not_in_export names head layers (EfficientNet, ConvNeXt: docs/export.md)")
    target.load_state_dict({k: state[v] for k, v in mapping.items()}, strict=True)
