"""Torch datasets over slice caches, and multi-domain aggregation.

A :class:`SliceDataset` serves rows of one :class:`~medssl_utils.data.slicing.SliceCache`
as dicts ``{"image": (1, S, S) float32, "label": (S, S) int64, "index": int,
"domain"/"task"/"group": int}`` — augmentation happens later, batched, on the training
device (:mod:`medssl_utils.data.transforms`). It implements ``__getitems__`` so a
DataLoader fetches a whole batch with one sorted read of the memory map.

:class:`MultiDomainDataset` concatenates several of them (HSSL's multi-domain aggregation)
and numbers the domain, task and group tags consistently across the parts;
:func:`balanced_sampler` draws every domain equally often regardless of its size.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, WeightedRandomSampler

from medssl_utils.data.slicing import SliceCache
from medssl_utils.errors import DataError, ParameterError


class SliceDataset(Dataset):
    """Rows ``rows`` of a slice cache (all rows when None). ``with_labels`` adds ``label``."""

    def __init__(self, cache: SliceCache, rows: Sequence[int] | None = None, *, with_labels: bool = True,
                 tag_ids: dict[str, int] | None = None):
        self.cache = cache
        self.rows = np.arange(len(cache)) if rows is None else np.asarray(rows, dtype=np.int64)
        if len(self.rows) == 0:
            raise DataError(f"{cache.meta['spec']}: the selection holds no slices")
        if self.rows.min() < 0 or self.rows.max() >= len(cache):
            raise ParameterError(f"rows must index 0..{len(cache) - 1} of {cache.meta['spec']}")
        if with_labels and not cache.index["has_label"].to_numpy()[self.rows].all():
            raise DataError(f"{cache.meta['spec']}: with_labels=True but some selected slices have no label")
        self.with_labels = with_labels
        self.tag_ids = tag_ids or {"domain": 0, "task": 0, "group": 0}

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.__getitems__([i])[0]

    def __getitems__(self, items: Sequence[int]) -> list[dict]:
        rows = self.rows[np.asarray(items, dtype=np.int64)]
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        images = np.asarray(self.cache.images[sorted_rows], dtype=np.float32)
        labels = np.asarray(self.cache.labels[sorted_rows], dtype=np.int64) if self.with_labels else None
        out: list[dict] = [{} for _ in items]
        for k, j in enumerate(order):
            d = {"image": torch.from_numpy(images[k][None]), "index": int(rows[j]), **self.tag_ids}
            if labels is not None:
                d["label"] = torch.from_numpy(labels[k])
            out[j] = d
        return out


class MultiDomainDataset(Dataset):
    """Concatenation of slice datasets, each slice tagged with domain, task and group ids.

    The names behind the ids are in ``domains``, ``tasks`` and ``groups`` (sorted lists), so
    ``dataset.tasks[sample["task"]]`` names a sample's task. ``part_of(i)`` says which
    part an item comes from.
    """

    def __init__(self, parts: Sequence[SliceDataset]):
        if not parts:
            raise ParameterError("MultiDomainDataset needs at least one dataset")
        self.parts = list(parts)
        metas = [p.cache.meta for p in self.parts]
        self.domains = sorted({m["domain"] for m in metas})
        self.tasks = sorted({m["task"] for m in metas})
        self.groups = sorted({m["group"] for m in metas})
        for p, m in zip(self.parts, metas):
            p.tag_ids = {"domain": self.domains.index(m["domain"]), "task": self.tasks.index(m["task"]),
                         "group": self.groups.index(m["group"])}
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def part_of(self, i: int) -> int:
        if not 0 <= i < len(self):
            raise IndexError(i)
        return int(np.searchsorted(self.offsets, i, side="right") - 1)

    def __getitem__(self, i: int) -> dict:
        p = self.part_of(i)
        return self.parts[p][i - int(self.offsets[p])]

    def __getitems__(self, items: Sequence[int]) -> list[dict]:
        items = np.asarray(items, dtype=np.int64)
        parts = np.searchsorted(self.offsets, items, side="right") - 1
        out: list[dict] = [{} for _ in range(len(items))]
        for p in np.unique(parts):
            where = np.nonzero(parts == p)[0]
            got = self.parts[p].__getitems__(items[where] - int(self.offsets[p]))
            for k, d in zip(where, got):
                out[k] = d
        return out

    def domain_of_items(self) -> np.ndarray:
        return np.concatenate([np.full(len(p), p.tag_ids["domain"]) for p in self.parts])


def balanced_sampler(dataset: MultiDomainDataset, num_samples: int | None = None, seed: int = 0,
                     by: str = "domain") -> WeightedRandomSampler:
    """Sample so each domain (or task/group) is drawn equally often, with replacement.

    Each item's weight is 1 / (size of its domain); ``num_samples`` defaults to the dataset
    length (one "epoch"). Seeded: the same seed draws the same sequence.
    """
    if by not in ("domain", "task", "group"):
        raise ParameterError(f"by={by!r}; expected domain, task or group")
    tags = np.concatenate([np.full(len(p), p.tag_ids[by]) for p in dataset.parts])
    counts = np.bincount(tags)
    weights = 1.0 / counts[tags]
    gen = torch.Generator().manual_seed(seed)
    return WeightedRandomSampler(torch.as_tensor(weights, dtype=torch.double),
                                 num_samples=num_samples or len(dataset), replacement=True, generator=gen)
