"""Patient splits (no leakage), nested label budgets, unlabelled pools, datasets and aggregation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from medssl_utils.data import (
    MultiDomainDataset,
    SliceDataset,
    balanced_sampler,
    budget_fraction,
    budget_slices,
    labelled_slices,
    load_dataset,
    make_split,
    slice_cache,
    unlabelled_pool,
)
from medssl_utils.errors import DataError, ParameterError


def fake_index(n_train=100, n_test=0, slices=3, cine_frames=2):
    rows = []
    for subset, ids in (("training", range(1, n_train + 1)), ("testing", range(101, 101 + n_test))):
        for i in ids:
            for phase, frame, lab in [("ED", 1, True), ("ES", 5, True)] + [("cine", f, False) for f in range(1, cine_frames + 1)]:
                for z in range(slices):
                    rows.append({"case_id": f"patient{i:03d}", "subset": subset, "phase": phase,
                                 "frame": frame, "z": z, "has_label": lab})
    return pd.DataFrame(rows)


def test_paper_split_matches_publication():
    split = make_split(fake_index(100, 50), "paper")
    assert split.test == tuple(f"patient{i:03d}" for i in range(1, 100, 10))
    assert split.val == tuple(f"patient{i:03d}" for i in range(2, 100, 10))
    assert len(split.train) == 80 and len(split.held_out) == 50
    assert not set(split.train) & set(split.test) and not set(split.train) & set(split.val)


def test_random_split_seeded_disjoint_complete():
    ix = fake_index(40)
    a, b, c = (make_split(ix, "random", seed=s) for s in (0, 0, 1))
    assert a == b and a.test != c.test
    assert len(a.test) == 4 and len(a.val) == 4 and len(a.train) == 32
    assert sorted(a.train + a.val + a.test) == sorted(ix.case_id.unique())


def test_official_split_needs_labelled_testing():
    s = make_split(fake_index(20, 5), "official", val_fraction=0.2)
    assert len(s.test) == 5 and all(c >= "patient101" for c in s.test) and len(s.val) == 4
    with pytest.raises(DataError, match="needs cases of a 'testing' subset"):
        make_split(fake_index(20, 0), "official")
    ix = fake_index(20, 5)
    ix.loc[ix.subset == "testing", "has_label"] = False
    with pytest.raises(DataError, match="testing subset has no labels"):
        make_split(ix, "official")


def test_split_parameter_errors():
    with pytest.raises(ParameterError, match="scheme='kfold'"):
        make_split(fake_index(10), "kfold")
    with pytest.raises(ParameterError, match="val_fraction=1.5"):
        make_split(fake_index(10), "random", val_fraction=1.5)


def test_budgets_are_nested_and_seeded():
    ix = fake_index(100)
    rows = labelled_slices(ix, make_split(ix, "paper"))
    assert len(rows) == 80 * 2 * 3 and ix.loc[rows, "phase"].isin(["ED", "ES"]).all()
    sizes = [1, 3, 7, 15, 30, 75, 150, 300]
    sets = [set(budget_slices(rows, n, seed=3)) for n in sizes]
    for small, big in zip(sets, sets[1:]):
        assert small < big
    assert [len(s) for s in sets] == sizes
    assert set(budget_slices(rows, 30, seed=3)) != set(budget_slices(rows, 30, seed=4))
    assert (budget_slices(rows, 30, seed=3) == budget_slices(rows, 30, seed=3)).all()


def test_budget_errors():
    ix = fake_index(10)
    rows = labelled_slices(ix, make_split(ix, "random", seed=0))
    with pytest.raises(ParameterError, match="labelled_slices=0"):
        budget_slices(rows, 0)
    with pytest.raises(ParameterError, match=f"only {len(rows)} labelled training slices"):
        budget_slices(rows, len(rows) + 1)
    with pytest.raises(ParameterError, match="labelled_fraction=0"):
        budget_fraction(ix, rows, 0.0)


def test_fraction_budget_nested_by_patient():
    ix = fake_index(100)
    rows = labelled_slices(ix, make_split(ix, "paper"))
    f5, f10, f100 = (budget_fraction(ix, rows, f, seed=1) for f in (0.05, 0.10, 1.0))
    p5, p10 = set(ix.loc[f5, "case_id"]), set(ix.loc[f10, "case_id"])
    assert len(p5) == 4 and len(p10) == 8 and p5 < p10  # ceil(0.05*80)=4, ceil(0.1*80)=8
    assert len(f100) == len(rows)
    assert len(set(ix.loc[budget_fraction(ix, rows, 0.001), "case_id"])) == 1  # ceil → never empty


def test_unlabelled_pool_excludes_test_and_heldout():
    ix = fake_index(100, 50)
    split = make_split(ix, "paper")
    pool = unlabelled_pool(ix, split)
    cases = set(ix.loc[pool, "case_id"])
    assert cases == set(split.train)
    assert not cases & (set(split.test) | set(split.held_out) | set(split.val))
    with_val = set(ix.loc[unlabelled_pool(ix, split, include_val=True), "case_id"])
    assert with_val == set(split.train) | set(split.val)
    cine = unlabelled_pool(ix, split, phases=("cine",))
    assert (ix.loc[cine, "phase"] == "cine").all() and len(cine) == 80 * 2 * 3


def test_slice_dataset_and_loader(acdc2023):
    cache = slice_cache(load_dataset(f"acdc:{acdc2023}"), image_size=24)
    split = make_split(cache.index, "paper")
    rows = budget_slices(labelled_slices(cache.index, split), 10, seed=0)
    ds = SliceDataset(cache, rows)
    item = ds[0]
    assert item["image"].shape == (1, 24, 24) and item["image"].dtype == torch.float32
    assert item["label"].shape == (24, 24) and item["label"].dtype == torch.int64
    assert item["index"] == rows[0]
    batch = next(iter(DataLoader(ds, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0))))
    assert batch["image"].shape == (4, 1, 24, 24)
    for img, idx in zip(batch["image"], batch["index"]):  # __getitems__ keeps items in request order
        np.testing.assert_array_equal(img[0].numpy(), cache.images[int(idx)].astype(np.float32))
    cine = unlabelled_pool(cache.index, split, phases=("cine",))
    with pytest.raises(DataError, match="some selected slices have no label"):
        SliceDataset(cache, cine)
    assert "label" not in SliceDataset(cache, cine, with_labels=False)[0]


def test_multidomain_tags_and_balanced_sampling(acdc2023, msd_prostate, msd_ct):
    acdc = slice_cache(load_dataset(f"acdc:{acdc2023}?cine=0"), image_size=16)
    pro = slice_cache(load_dataset(f"msd:{msd_prostate}").labelled(), image_size=16)
    ct = slice_cache(load_dataset(f"msd:{msd_ct}").labelled(), image_size=16)
    md = MultiDomainDataset([SliceDataset(c) for c in (acdc, pro, ct)])
    assert len(md) == len(acdc) + len(pro) + len(ct)
    assert md.groups == ["CT", "MR"] and md.tasks == ["ACDC", "Prostate", "Spleen"]
    last = md[len(md) - 1]
    assert md.tasks[last["task"]] == "Spleen" and md.groups[last["group"]] == "CT"
    assert md.tasks[md[0]["task"]] == "ACDC"
    sampler = balanced_sampler(md, num_samples=3000, seed=0)
    drawn = np.array(list(sampler))
    parts = np.searchsorted(md.offsets, drawn, side="right") - 1
    frac = np.bincount(parts, minlength=3) / len(drawn)
    assert np.allclose(frac, 1 / 3, atol=0.04)  # ACDC has ~7x more slices, yet equal share
    assert (np.array(list(balanced_sampler(md, 50, seed=5))) == np.array(list(balanced_sampler(md, 50, seed=5)))).all()
    batch = next(iter(DataLoader(md, batch_size=16, sampler=balanced_sampler(md, 64, seed=1))))
    assert set(batch["task"].tolist()) <= {0, 1, 2} and batch["image"].shape == (16, 1, 16, 16)
