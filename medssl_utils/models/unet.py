"""Segmentation model factory: a segmentation_models_pytorch U-Net over any timm encoder.

``build_unet`` returns ``smp.Unet(encoder_name="tu-<encoder>", encoder_weights=None, ...)``
and initialises its encoder with :func:`~medssl_utils.models.init.load_encoder_init`, so the
model carries ``model.medssl_init`` (what was loaded, and the lineage of the weights). Its depthwise
convolutions get the faster CPU weight gradient of :mod:`medssl_utils.models.depthwise`.

Shapes: input ``(B, in_channels, H, W)`` with ``H`` and ``W`` divisible by ``2**encoder_depth``
(32 by default), output logits ``(B, num_classes, H, W)``.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Sequence

import torch
from torch import nn

from medssl_utils.errors import ParameterError
from medssl_utils.validate import check_int
from medssl_utils.models.convert import MIN_MATCH
from medssl_utils.models.depthwise import use_fast_depthwise
from medssl_utils.models.init import load_encoder_init
from medssl_utils.models.init_spec import check_init

DEFAULT_DECODER_CHANNELS = (256, 128, 64, 32, 16)
_INIT_OPTIONS = ("load_decoder", "weights_key", "min_match")


def check_encoder_name(encoder: str) -> str:
    """The timm model name for ``encoder`` (an optional ``tu-`` prefix is removed).

    Raises :class:`ParameterError` with close matches when timm does not know the name.
    """
    import timm

    if not isinstance(encoder, str) or not encoder.strip():
        raise ParameterError(f"encoder={encoder!r}: expected a timm model name such as 'resnet50'")
    name = encoder.strip()
    name = name[3:] if name.startswith("tu-") else name
    if not timm.is_model(name):
        close = difflib.get_close_matches(name.split(".")[0], timm.list_models(), n=3)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ParameterError(f"encoder={encoder!r} is not a timm model name{hint} "
                             "(timm.list_models() lists them)")
    return name


def _check_int(name: str, value, minimum: int = 1) -> int:
    check_int(name, value, minimum)
    return value


def check_decoder_channels(channels) -> tuple[int, ...]:
    """``channels`` as a tuple of 1 to 5 positive integers (one per decoder stage), else ParameterError."""
    if isinstance(channels, (str, bytes)) or not isinstance(channels, Sequence) or not 1 <= len(channels) <= 5:
        raise ParameterError(f"decoder_channels={channels!r}: expected 1 to 5 positive integers, "
                             "one per decoder stage, e.g. (256, 128, 64, 32, 16)")
    for c in channels:
        _check_int("decoder_channels[...]", c)
    return tuple(channels)


def _split_init_options(options: dict) -> dict:
    return {k: options.pop(k) for k in _INIT_OPTIONS if k in options}


def build_unet(encoder: str = "resnet18", num_classes: int = 4, init: str | os.PathLike = "random",
               in_channels: int = 1, decoder_channels: Sequence[int] = DEFAULT_DECODER_CHANNELS,
               **options) -> nn.Module:
    """A U-Net over the timm encoder ``encoder``, its encoder initialised from ``init``.

    Args:
        encoder: any timm model name smp can use as a ``tu-`` encoder (``"resnet50"``,
            ``"resnet18.a1_in1k"``, ``"efficientnet_b0"``, ...).
        num_classes: output channels (classes, background included).
        init: ``"random"``, ``"timm"``, ``"file:PATH"`` or the path of a medssl checkpoint
            (see :mod:`medssl_utils.models.init`).
        in_channels: image channels (1 for MRI / CT).
        decoder_channels: channels of each decoder stage, deepest first; its length sets the
            encoder depth unless ``encoder_depth`` is given. Small values (e.g. ``(32, 16, 8, 8, 8)``)
            make fast CPU models.
        **options: ``load_decoder`` (bool; load a medssl checkpoint's pretrained decoder),
            ``weights_key`` (part of a foreign file to use), ``min_match`` (default 0.9);
            anything else goes to ``segmentation_models_pytorch.Unet`` (e.g.
            ``decoder_attention_type="scse"``).

    Returns the ``smp.Unet``; ``model(x)`` maps ``(B, in_channels, H, W)`` to logits
    ``(B, num_classes, H, W)``. ``model.medssl_init`` describes the initialisation.
    """
    options = dict(options)
    init_options = _split_init_options(options)
    name = check_encoder_name(encoder)
    _check_int("num_classes", num_classes)
    _check_int("in_channels", in_channels)
    decoder_channels = check_decoder_channels(decoder_channels)
    options.setdefault("encoder_depth", len(decoder_channels))
    check_init(init, init_options.get("load_decoder", False))  # fail before building anything
    import segmentation_models_pytorch as smp

    try:
        model = smp.Unet(encoder_name=f"tu-{name}", encoder_weights=None, in_channels=in_channels,
                         classes=num_classes, decoder_channels=decoder_channels, **options)
    except TypeError as e:
        raise ParameterError(f"build_unet: {e} (extra options go to segmentation_models_pytorch.Unet)") from e
    except (ValueError, RuntimeError, KeyError, AssertionError) as e:
        raise ParameterError(f"build_unet(encoder={encoder!r}, decoder_channels={decoder_channels}, "
                             f"options={options}): segmentation_models_pytorch refused it: {e}") from e
    load_encoder_init(model, init, **init_options)
    use_fast_depthwise(model)
    return model


def build_encoder(encoder: str = "resnet18", init: str | os.PathLike = "random", in_channels: int = 1,
                  depth: int = 5, *, weights_key: str | None = None, min_match: float = MIN_MATCH,
                  **options) -> nn.Module:
    """The smp encoder alone (what SSL methods pretrain), initialised like :func:`build_unet`'s.

    Returns an smp ``TimmUniversalEncoder``: ``enc(x)`` maps ``(B, in_channels, H, W)`` to a list
    of ``depth + 1`` feature maps (the input first), channels ``enc.out_channels``, the last at
    stride ``2**depth``. Its state dict has the same keys as ``build_unet(...).encoder``, so
    :func:`~medssl_utils.models.encoder_state` of either can be saved and loaded into the other.
    """
    name = check_encoder_name(encoder)
    _check_int("in_channels", in_channels)
    _check_int("depth", depth)
    check_init(init)
    from segmentation_models_pytorch.encoders import get_encoder

    try:
        enc = get_encoder(f"tu-{name}", in_channels=in_channels, depth=depth, weights=None, **options)
    except (TypeError, ValueError, RuntimeError, KeyError, AssertionError) as e:
        raise ParameterError(f"build_encoder(encoder={encoder!r}, depth={depth}, options={options}): {e}") from e
    load_encoder_init(enc, init, weights_key=weights_key, min_match=min_match)
    use_fast_depthwise(enc)
    return enc


def standardize_images(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Each image of ``x`` (B, C, H, W) z-scored by its own mean and standard deviation."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    std = x.std(dim=(1, 2, 3), keepdim=True, unbiased=False)
    return (x - mean) / (std + eps)


class PerImageNorm(nn.Module):
    """A segmentation model whose every input image is first z-scored by itself
    (:func:`standardize_images`): ``input_norm="image"`` of fine-tuning, matching an encoder
    pretrained on per-image standardised views (HSSL's ``standardize=True``).

    ``.model`` is the wrapped model; ``.encoder`` / ``.decoder`` are its parts.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    @property
    def encoder(self) -> nn.Module:
        return self.model.encoder

    @property
    def decoder(self) -> nn.Module:
        return self.model.decoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(standardize_images(x))


def pretraining_input(lineage) -> str | None:
    """What the last pretraining stage of ``lineage`` fed its encoder: ``"image"`` (per-image
    z-scored views) or ``"volume"`` (slices as cached); None when the lineage has no pretraining
    stage (random, ImageNet, a foreign file). HSSL checkpoints written before the stage recorded
    ``input_norm`` standardised their views (``standardize=True`` was HSSL's default)."""
    stages = [s for s in lineage or [] if str(s.get("method", "")).lower() not in ("random", "timm", "file")]
    if not stages:
        return None
    last = stages[-1]
    return last.get("input_norm") or ("image" if str(last.get("method")).lower() == "hssl" else "volume")
