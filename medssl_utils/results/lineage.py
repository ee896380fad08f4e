"""What a run's encoder start was, read from its lineage: roles in the two works' terms, pretraining
categories, pretraining families and epochs, the study stage a checkpoint came from. Pure functions of
the lineage list a run records (``result.json["lineage"]``, written by :mod:`medssl_utils.models.checkpoints`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path

from medssl_utils.results.columns import as_float

#: Lineage start stages (not pretraining).
_START_METHODS = {"random", "timm", "file"}
_EPOCH_SUFFIX = re.compile(r"^(?P<family>.+?)\s*@\s*(?P<epochs>\d+(?:\.\d+)?)\s*ep(?:ochs?)?$", re.IGNORECASE)
_LINEAGE_EPOCHS = re.compile(r",\s*(?P<epochs>\d+(?:\.\d+)?) ep\)$")


def stage_checkpoint(init) -> tuple[str | None, float]:
    """``(stage, epoch)`` of an init that is a study stage's checkpoint (``…/pretrain/<stage>/checkpoints/
    epoch_<E>.pt`` or ``final.pt``, epoch NaN for final); ``(None, NaN)`` otherwise."""
    if not isinstance(init, str) or not init.endswith(".pt"):
        return None, math.nan
    path = Path(init[5:] if init.startswith("file:") else init)
    if path.parent.name != "checkpoints" or path.parent.parent.parent.name != "pretrain":
        return None, math.nan
    match = re.fullmatch(r"epoch_(\d+)\.pt", path.name)
    return path.parent.parent.name, float(match[1]) if match else math.nan


def pretraining_category(lineage: list[Mapping], init) -> str:
    """Category of the encoder start: scratch, ImageNet (supervised), external weights,
    single-domain SSL or multi-domain SSL (last pretraining stage on more than one dataset)."""
    stages = [s for s in lineage if str(s.get("method", "")).lower() not in _START_METHODS]
    if stages:
        data = stages[-1].get("data") or []
        return "multi-domain SSL" if isinstance(data, (list, tuple)) and len(data) > 1 else "single-domain SSL"
    start = str(lineage[0].get("method")).lower() if lineage else str(init or "").lower()
    if start.startswith("file"):
        start = "file"
    return {"random": "scratch", "timm": "ImageNet (supervised)", "file": "external weights"}.get(start, "unknown")


#: What an encoder initialisation is in Work A's / Work B's terms (:func:`role_of`).
ROLES = {
    "scratch": "random init",
    "imagenet": "supervised ImageNet",
    "generalist-ssl": "SSL on other data (e.g. BYOL ImageNet, or natural photographs as its stand-in)",
    "specialist": "SSL on the target domain from random init",
    "hierarchical-supervised": "supervised ImageNet -> SSL on the target domain",
    "hierarchical-ssl": "SSL on other data -> SSL on the target domain",
    "hierarchical-external": "external weights (e.g. a BYOL ImageNet file:) -> SSL on the target domain",
    "multi-domain": "SSL on several domains including the target (HSSL)",
    "external": "external weights",
    "other": "other",
}


def _base_spec(spec) -> str:
    return str(spec).split("?", 1)[0].rstrip("/")


def role_of(lineage: list[Mapping], init, dataset: str | None) -> str:
    """The role (:data:`ROLES`) of a fine-tuning run's initialisation, from its lineage and target dataset.

    SSL stages are the lineage's stages after its start (random / timm / file). The last stage
    decides: on several datasets → ``multi-domain``; on the target dataset (same kind and path,
    options ignored) → ``specialist`` from random, ``hierarchical-supervised`` after supervised
    ImageNet, ``hierarchical-ssl`` after an SSL stage on other data, ``hierarchical-external``
    after a ``file:`` start (e.g. a BYOL ImageNet checkpoint); on other data only →
    ``generalist-ssl``. Without SSL stages: ``scratch``, ``imagenet`` (timm weights tagged
    ImageNet) or ``external`` (a ``file:`` start).
    """
    lineage = [s for s in lineage if isinstance(s, Mapping)]
    start = str(lineage[0].get("method", "")).lower() if lineage else str(init or "").lower()
    stages = [s for s in lineage if str(s.get("method", "")).lower() not in _START_METHODS]
    if not stages:
        if start == "random":
            return "scratch"
        if start == "timm":
            data = lineage[0].get("data") if lineage else None
            return "imagenet" if not data or "imagenet" in [str(d).lower() for d in data] else "external"
        return "external" if start.startswith("file") else "other"
    data = stages[-1].get("data") or []
    data = [data] if isinstance(data, str) else list(data)
    if len(data) > 1:
        return "multi-domain"
    on_target = dataset is not None and bool(data) and _base_spec(data[0]) == _base_spec(dataset)
    if not on_target:
        return "generalist-ssl"
    if len(stages) > 1:
        return "hierarchical-ssl"
    if start == "timm":
        return "hierarchical-supervised"
    if start.startswith("file"):
        return "hierarchical-external"
    return "specialist" if start == "random" else "other"


def pretrain_epochs(strategy: str, lineage: list[Mapping]) -> tuple[str, float]:
    """``(family, epochs)`` per the module docstring; epochs NaN when unknown."""
    match = _EPOCH_SUFFIX.match(strategy)
    if match:
        return match["family"], float(match["epochs"])
    stages = [s for s in lineage if str(s.get("method", "")).lower() not in _START_METHODS]
    epochs = as_float(stages[-1].get("epochs")) if stages else math.nan
    return _LINEAGE_EPOCHS.sub(")", strategy), epochs
