"""Models: the U-Net factory, encoder initialisation and medssl checkpoints with lineage.

Public names (imported lazily, so ``import medssl_utils.models`` stays cheap)::

    build_unet(encoder="resnet18", num_classes=4, init="random", in_channels=1,
               decoder_channels=(256, 128, 64, 32, 16), **options) -> smp.Unet
    build_encoder(encoder="resnet18", init="random", in_channels=1, depth=5) -> smp encoder
    load_encoder_init(model, init, *, load_decoder=False, weights_key=None, min_match=0.9) -> dict
    encoder_state(model) / decoder_state(model) -> state dict (CPU copies)
    save_checkpoint(path, *, encoder_state, decoder_state=None, encoder_name, in_channels,
                    lineage_stage, parent_lineage=(), extra=None) -> Path
    load_checkpoint(path) -> dict
    describe_lineage(lineage) -> str
    export_encoder(checkpoint_or_state, path, *, encoder_name=None, in_channels=None, lineage=None) -> Path
    load_exported(path, into=None) -> dict

Submodules: ``unet`` (factory), ``init`` (the encoder initialisation entry point), ``init_spec``
(what an ``init`` string means, checked without torch), ``convert`` (foreign checkpoints into an
encoder), ``timm_weights`` (timm's pretrained weights, offline where a package ships them),
``checkpoints`` (medssl checkpoint format and lineage), ``export`` (the encoder alone, in timm's
key names, as safetensors: docs/export.md).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "build_unet": "unet",
    "build_encoder": "unet",
    "check_encoder_name": "unet",
    "load_encoder_init": "init",
    "parse_init": "init_spec",
    "check_init": "init_spec",
    "encoder_state": "checkpoints",
    "decoder_state": "checkpoints",
    "save_checkpoint": "checkpoints",
    "load_checkpoint": "checkpoints",
    "is_medssl_checkpoint": "checkpoints",
    "describe_lineage": "checkpoints",
    "export_encoder": "export",
    "load_exported": "export",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
