"""Data layer: readers → volumes → normalised 2D slices (cached) → torch datasets.

Typical use::

    from medssl_utils import data
    vs = data.load_dataset("phantom:cardiac")          # or "acdc:/data/ACDC", "msd:/data/Task05_Prostate"
    cache = data.slice_cache(vs, image_size=128)         # decoded + normalised once, memory-mapped after
    split = data.make_split(cache.index, "paper")        # by patient; Work A's published split
    rows = data.budget_slices(data.labelled_slices(cache.index, split), n=15, seed=0)
    ds = data.SliceDataset(cache, rows)
"""

from medssl_utils.data.datasets import MultiDomainDataset, SliceDataset, balanced_sampler
from medssl_utils.data.slicing import Preprocessing, SliceCache, normalise_volume, restore_slices, slice_cache
from medssl_utils.data.specs import DatasetSpec, load_dataset, parse_spec
from medssl_utils.data.splits import (
    Split,
    budget_fraction,
    budget_slices,
    labelled_slices,
    make_split,
    unlabelled_pool,
)
from medssl_utils.data.transforms import SegAugment, SSLAugment
from medssl_utils.data.volume import Volume, VolumeSet

__all__ = [
    "DatasetSpec", "MultiDomainDataset", "Preprocessing", "SSLAugment", "SegAugment", "SliceCache", "SliceDataset",
    "Split", "Volume",
    "VolumeSet", "balanced_sampler", "budget_fraction", "budget_slices", "labelled_slices", "load_dataset",
    "make_split", "normalise_volume", "parse_spec", "restore_slices", "slice_cache", "unlabelled_pool",
]
