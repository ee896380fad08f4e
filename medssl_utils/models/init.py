"""Encoder initialisation: random, timm pretrained, foreign checkpoints, medssl checkpoints.

:func:`load_encoder_init` fills the encoder of a U-Net built by
:func:`~medssl_utils.models.build_unet` (or a bare smp encoder) and attaches
``model.medssl_init = {"init", "encoder", "in_channels", "report", "lineage"}`` saying exactly
what was loaded. The decoder always stays random, except when a medssl checkpoint with a
pretrained decoder is loaded with ``load_decoder=True``; the segmentation head is always random.

``init`` values
---------------
``"random"``
    timm's default initialisation (seeded by the caller's torch seed).
``"timm"`` (alias ``"imagenet"``)
    the encoder's timm pretrained weights (the default tag, or the tag in the encoder name,
    e.g. ``resnet50.a1_in1k``), from timm's local cache, else from an installed package that
    ships them (EfficientNet-Lite0/1/2: :mod:`medssl_utils.models.pretrained`), else from the
    internet. When they cannot be had, a :class:`DataError` says how to provide them offline.
    ``"imagenet"`` additionally refuses weights whose tag is not an ImageNet one.
``"file:PATH"`` or ``PATH``
    a checkpoint file. A medssl checkpoint (written by
    :func:`~medssl_utils.models.save_checkpoint`) is recognised by its marker and loads the
    encoder (and decoder on request) with its lineage; any other file is converted (below).

How a foreign checkpoint (torchvision, timm, solo-learn, lightly, BYOL-PyTorch) is converted
--------------------------------------------------------------------------------------------
1. The file is read with ``torch.load(weights_only=True)`` (or safetensors) and every tensor in
   it is listed under its dotted path: containers are flattened, so
   ``{"state_dict": {"backbone.conv1.weight": t}}`` lists ``state_dict.backbone.conv1.weight``.
2. The part of the file holding the encoder is found: for each key prefix (``""``,
   ``"state_dict.backbone."``, ``"online_backbone.module.encoder."``, ``"module."`` ...) count the
   tensors whose remaining name is an encoder tensor of the same shape (then: of any shape);
   the prefix with most matches wins. Ties
   prefer the online network over momentum / target / EMA / teacher copies, then the shorter
   prefix. ``weights_key="target_backbone"`` (any dotted prefix) forces the part to use.
3. Names are resolved exactly, or as child indices of ``nn.Sequential(*list(resnet.children())[:-1])``
   (lightly, BYOL-PyTorch: ``0.``→``conv1``, ``1.``→``bn1``, ``4.``→``layer1`` … ``7.``→``layer4``:
   the i-th child of the timm classifier model), or through timm's features-only renaming
   (``stem.0`` ↔ ``stem_0``).
4. The first convolution is adapted to the encoder's input channels with timm's
   ``adapt_input_conv``: RGB → 1 channel **sums** the three filters (Work A's choice: a grey
   image ``x`` then gives the same response as the RGB network fed ``(x, x, x)``); 1 → 3
   repeats the filter and divides by 3.
5. Any other shape mismatch, fewer than ``min_match`` (90%) of the encoder's tensors found, or
   more unexplained tensors beside them than ``1 - min_match`` of the encoder's count (resnet34
   weights offered to a resnet18) raises :class:`DataError`: a misspelt or wrong file never
   becomes a silent random init.
   Heads (classifier ``fc``, SSL projector / predictor, classifier-model layers the U-Net
   encoder does not use) are dropped and listed in the report.

The report (``model.medssl_init["report"]``) holds ``source``, ``format`` (``random``, ``timm``,
``foreign``, ``medssl``), ``prefix``, and lists of encoder keys ``matched`` (loaded), ``missing``
(encoder tensors the file lacks, BatchNorm ``num_batches_tracked`` counters not counted),
file keys ``unexpected`` (under the prefix, fitting nothing), ``dropped`` (heads),
``ignored`` (other parts of the file, by group), ``adapted`` (first-conv changes), ``decoder``
(``"random"`` or ``"loaded"``) and a one-line ``summary``.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from medssl_utils.errors import DataError, ParameterError
from medssl_utils.validate import check_number
from medssl_utils.models.checkpoints import (is_medssl_checkpoint, read_weights_file, smp_encoder, unwrap_model,
                                              validate_checkpoint)

from medssl_utils.models.convert import MIN_MATCH, NOT_WEIGHTS, load_state_into_encoder
from medssl_utils.models.init_spec import check_init
from medssl_utils.models.timm_weights import check_imagenet_tag, looks_imagenet, timm_pretrained_state

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- entry point
def _summary(init: str, report: dict) -> str:
    if report["format"] == "random":
        return f"init={init!r}: random encoder (timm default init); decoder {report['decoder']}"
    n = len([k for k in report["matched"] if not k.endswith(NOT_WEIGHTS)])
    text = (f"init={init!r}: loaded {n}/{report['n_encoder_tensors']} encoder tensors from "
            f"{report['source']} ({report['format']}, keys under {report['prefix']!r}); "
            f"{len(report['missing'])} missing, {len(report['unexpected'])} unexpected, "
            f"{len(report['dropped'])} head tensors dropped")
    if report["adapted"]:
        text += "; " + "; ".join(report["adapted"])
    return text + f"; decoder {report['decoder']}"


def load_encoder_init(model: nn.Module, init: str | os.PathLike = "random", *, load_decoder: bool = False,
                      weights_key: str | None = None, min_match: float = MIN_MATCH) -> dict:
    """Initialise the encoder of ``model`` (a U-Net or an smp encoder) from ``init``.

    Args:
        model: U-Net from :func:`~medssl_utils.models.build_unet`, or an smp encoder.
        init: ``"random"``, ``"timm"``, ``"file:PATH"`` or a path (see the module docstring).
        load_decoder: also load the decoder; needs a medssl checkpoint that holds one.
        weights_key: which part of a foreign file to use, as a dotted key prefix
            (``"target_backbone"``, ``"state_dict.momentum_backbone"``); default: best fit.
        min_match: fraction of encoder tensors the file must provide (default 0.9).

    Returns the dict also attached as ``model.medssl_init``:
    ``{"init", "encoder", "in_channels", "report", "lineage"}``.
    """
    module = unwrap_model(model)
    encoder = smp_encoder(module)
    kind, path = check_init(init, load_decoder)
    check_number("min_match", min_match, 0, 1, low_open=True, what="a fraction in (0, 1]")
    if weights_key is not None and not isinstance(weights_key, str):
        raise ParameterError(f"weights_key={weights_key!r}: expected a dotted key prefix such as 'target_backbone'")
    if load_decoder and encoder is module:
        raise ParameterError("load_decoder=True needs a U-Net (this model is an encoder only)")

    init_text = os.fspath(init) if isinstance(init, os.PathLike) else str(init).strip()
    decoder = "random"
    if kind == "random":
        report = {"source": None, "format": "random", "prefix": None, "matched": [], "missing": [],
                  "unexpected": [], "dropped": [], "ignored": [], "adapted": [], "n_encoder_tensors": 0}
        lineage = [{"method": "random"}]
    elif kind == "timm":
        name = getattr(encoder, "name", None)
        if not name:
            raise ParameterError("init='timm' needs an smp 'tu-' encoder that knows its timm name")
        if str(init).strip().lower() == "imagenet":
            check_imagenet_tag(name)
        state, weights, source = timm_pretrained_state(name)
        tag = weights.partition(".")[2]
        report = load_state_into_encoder(state, encoder, source=source, min_match=min_match)
        report["format"] = "timm"
        lineage = [{"method": "timm", "weights": weights, "data": ["imagenet"] if looks_imagenet(tag) else [tag],
                    "source": source}]
    else:
        obj = read_weights_file(path)
        if is_medssl_checkpoint(obj):
            ck = validate_checkpoint(obj, path)
            _check_same_arch(ck, encoder, path)
            if load_decoder and ck.get("decoder") is None:
                raise DataError(f"load_decoder=True but {path} holds no decoder (only methods that "
                                "pretrain the decoder, such as HSSL, save one)")
            report = load_state_into_encoder(ck["encoder"], encoder, source=str(path), min_match=min_match)
            report["format"] = "medssl"
            lineage = [dict(s) for s in ck["lineage"]]
            if load_decoder:
                _load_decoder(module, ck, path)
                decoder = "loaded"
            elif ck.get("decoder") is not None:
                decoder = "random (the checkpoint holds a pretrained decoder; load_decoder=True uses it)"
        else:
            if load_decoder:
                raise ParameterError(f"load_decoder=True: {path} is not a medssl checkpoint, so it has no "
                                     "decoder medssl can load")
            if not isinstance(obj, Mapping):
                raise DataError(f"{path} holds a {type(obj).__name__}, not a state dict (a mapping of names to "
                                "tensors); expected encoder weights")
            report = load_state_into_encoder(obj, encoder, source=str(path), weights_key=weights_key,
                                             min_match=min_match)
            lineage = [{"method": "file", "path": str(path.resolve()), "prefix": report["prefix"]}]
    report["decoder"] = decoder
    report["summary"] = _summary(init_text, report)
    if report["missing"]:
        warnings.warn(f"{report['summary']}: missing {report['missing'][:5]}", stacklevel=2)
    log.info(report["summary"])
    info = {"init": init_text, "encoder": getattr(encoder, "name", None),
            "in_channels": getattr(encoder, "_in_channels", None), "report": report, "lineage": lineage}
    module.medssl_init = info
    return info



def _arch(name: str) -> str:
    from timm.models import get_arch_name
    return get_arch_name(re.sub(r"^tu-", "", name))


def _check_same_arch(ck: dict, encoder: nn.Module, path: Path) -> None:
    name = getattr(encoder, "name", None)
    if name and _arch(ck["encoder_name"]) != _arch(name):
        raise DataError(f"{path} holds a {ck['encoder_name']!r} encoder but the model was built with "
                        f"encoder={name!r}; pass encoder={ck['encoder_name']!r}")


def _load_decoder(module: nn.Module, ck: dict, path: Path) -> None:
    broken = [k for k, v in ck["decoder"].items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if broken:
        raise DataError(f"{path}: {len(broken)} decoder tensors hold NaN or infinite values (e.g. "
                        f"{', '.join(broken[:3])}); these weights are broken and cannot start a run")
    try:
        module.decoder.load_state_dict(ck["decoder"], strict=True)
    except RuntimeError as e:
        raise DataError(f"{path}: the pretrained decoder does not fit this U-Net (built with other "
                        f"decoder_channels or encoder?): {' '.join(str(e).split())[:400]}") from e
