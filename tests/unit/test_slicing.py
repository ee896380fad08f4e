"""Normalisation, slice geometry and the on-disk slice cache."""

from __future__ import annotations

import os

import numpy as np
import pytest

from conftest import truncate
from medssl_utils.data import Preprocessing, load_dataset, normalise_volume, restore_slices, slice_cache
from medssl_utils.data.nifti import write_nifti
from medssl_utils.data.slicing import SliceCache, resize_volume
from medssl_utils.errors import DataError, ParameterError


def test_mr_normalisation_is_zscore_of_clipped():
    rng = np.random.default_rng(0)
    vol = rng.gamma(2.0, 300.0, size=(30, 30, 4)).astype(np.float32)
    vol[0, 0, 0] = 60000  # an outlier that a max-scaling would let dominate
    out = normalise_volume(vol, "MR")
    assert abs(out.mean()) < 1e-4 and abs(out.std() - 1) < 1e-3
    lo, hi = np.percentile(vol, (0.5, 99.5))
    assert out.max() == pytest.approx((hi - np.clip(vol, lo, hi).mean()) / np.clip(vol, lo, hi).std(), rel=1e-4)


def test_uint16_input_is_not_blanked():
    vol = (np.arange(16 * 16 * 2).reshape(16, 16, 2) * 100 % 65535).astype(np.uint16)
    out = normalise_volume(vol, "MR")
    assert out.dtype == np.float32 and np.isfinite(out).all() and out.std() > 0.5


def test_ct_window():
    vol = np.array([-1000, -160, 40, 240, 3000], np.float32).reshape(5, 1, 1)
    out = normalise_volume(vol, "CT", Preprocessing(ct_window=(-160, 240)))
    np.testing.assert_allclose(out.ravel(), [-1, -1, 0, 1, 1])


def test_constant_volume_error():
    with pytest.raises(DataError, match="vol.nii.gz: intensities are constant"):
        normalise_volume(np.ones((4, 4, 2)), "MR", where="vol.nii.gz")


def test_bad_preprocessing():
    with pytest.raises(ParameterError, match="image_size"):
        Preprocessing(image_size=3)
    with pytest.raises(ParameterError, match="mr_percentiles"):
        Preprocessing(mr_percentiles=(50, 10))


def test_resize_pads_to_square_and_restores_labels():
    rng = np.random.default_rng(0)
    lab = rng.integers(0, 4, size=(40, 24, 3)).astype(np.uint8)
    lab = np.repeat(np.repeat(lab[::4, ::4], 4, 0), 4, 1)  # blocky, so nearest resizing round-trips
    img = lab.astype(np.float32) * 10 + 5
    img_s, lab_s = resize_volume(img, lab, 80)
    assert img_s.shape == lab_s.shape == (3, 80, 80)
    # padding is centred along y: 40 - 24 = 16 -> 8 columns each side (16 at 80 px)
    assert (lab_s[:, :, :16] == 0).all() and (lab_s[:, :, -16:] == 0).all()
    assert np.allclose(img_s[:, :, :14], img.min()) and np.allclose(img_s[:, :, -14:], img.min())  # bilinear blends the edge
    np.testing.assert_array_equal(restore_slices(lab_s, 40, 24), lab)


def test_cache_roundtrip_and_reuse(acdc2017):
    vs = load_dataset(f"acdc:{acdc2017}")
    cache = slice_cache(vs, image_size=32)
    assert len(cache) == sum(v.shape[2] for v in vs.volumes) == 4 * 7 * 4
    assert cache.images.shape == (112, 32, 32) and cache.images.dtype == np.float16
    ix = cache.index
    assert list(ix["slice"]) == list(range(112))
    ed1 = ix[(ix.volume_id == "patient001_ED")]
    assert list(ed1["z"]) == [0, 1, 2, 3] and list(ed1["position"]) == pytest.approx([0, 1 / 3, 2 / 3, 1])
    assert ed1["has_label"].all() and not ix[ix.phase == "cine"]["has_label"].any()
    # the cached slices equal a fresh preprocessing of the volume
    vol = next(v for v in vs.volumes if v.volume_id == "patient001_ED")
    img, lab = vol.load()
    exp_img, exp_lab = resize_volume(normalise_volume(img, "MR"), lab, 32)
    np.testing.assert_allclose(cache.images[ed1.index], exp_img, atol=2e-3 * np.abs(exp_img).max())
    np.testing.assert_array_equal(cache.labels[ed1.index], exp_lab)
    # a second call reuses the folder (no rebuild: same mtime)
    mtime = os.stat(cache.path / "images.npy").st_mtime_ns
    again = slice_cache(load_dataset(f"acdc:{acdc2017}"), image_size=32)
    assert again.path == cache.path and os.stat(again.path / "images.npy").st_mtime_ns == mtime
    # another size or selection is another cache
    assert slice_cache(vs, image_size=16).path != cache.path
    assert slice_cache(vs.labelled(), image_size=32).path != cache.path


def test_cache_invalidated_by_changed_file(acdc2017):
    vs = load_dataset(f"acdc:{acdc2017}?cine=0")
    c1 = slice_cache(vs, image_size=16)
    f = acdc2017 / "training" / "patient002" / "patient002_frame01.nii.gz"
    write_nifti(f, np.random.default_rng(9).normal(size=(20, 16, 4)).astype(np.float32), (1.5, 1.5, 10))
    c2 = slice_cache(load_dataset(f"acdc:{acdc2017}?cine=0"), image_size=16)
    assert c2.path != c1.path


def test_failed_build_leaves_nothing(acdc2017, tmp_path):
    f = acdc2017 / "training" / "patient003" / "patient003_frame01.nii.gz"
    truncate(f, 0.5)
    vs = load_dataset(f"acdc:{acdc2017}?cine=0")
    with pytest.raises(DataError, match="patient003_frame01.nii.gz"):
        slice_cache(vs, image_size=16, cache_dir=tmp_path / "c")
    assert list((tmp_path / "c").iterdir()) == []


def test_cache_pickles_without_memmap(acdc2017):
    import pickle

    cache = slice_cache(load_dataset(f"acdc:{acdc2017}?cine=0"), image_size=16)
    _ = cache.images[0]
    clone = pickle.loads(pickle.dumps(cache))
    assert clone._images is None and np.array_equal(clone.images[3], cache.images[3])
    assert isinstance(clone, SliceCache)


def test_empty_selection_error(acdc2017):
    vs = load_dataset(f"acdc:{acdc2017}").select(lambda v: False)
    with pytest.raises(DataError, match="no volumes selected"):
        slice_cache(vs)
