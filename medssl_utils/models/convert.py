"""Foreign checkpoints into a timm encoder: find the part of the file that holds the encoder, map its
names (exact, ``nn.Sequential`` child indices, timm's features-only renaming), adapt the first
convolution, and refuse unless at least :data:`MIN_MATCH` of the encoder's tensors are filled.
The procedure step by step: :mod:`medssl_utils.models.init`."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping

import torch
from torch import nn

from medssl_utils.errors import DataError

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
NOT_WEIGHTS = "num_batches_tracked"


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
        self.weight_keys = [k for k in self.state if not k.endswith(NOT_WEIGHTS)]

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
