"""The ``real`` source: real images shipped by pydicom-data, pydicom, nibabel and Debian's mricron-data."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest

from medssl_utils.data import load_dataset, parse_spec
from medssl_utils.data.readers import real
from medssl_utils.errors import DataError, ParameterError

NEEDS_MRICRON = not real.MRICRON_TEMPLATES.is_dir()


def require_mricron():
    if NEEDS_MRICRON:
        if os.environ.get("CI"):
            pytest.fail(".ci/run installs mricron-data; /usr/share/mricron/templates is missing")
        pytest.skip("Debian's mricron-data is not installed here (apt-get install mricron-data)")


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the real source tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_every_image_loads_offline_with_its_tags(no_network):
    require_mricron()
    vs = load_dataset("real")
    assert vs.format == "real" and vs.domain == vs.task == "real" and vs.group == "mixed"
    assert [v.case_id for v in vs.volumes] == [r.name for r in real.REAL_IMAGES]
    for vol, image in zip(vs.volumes, real.REAL_IMAGES):
        assert vol.volume_id == image.name
        assert (vol.meta["modality"], vol.meta["region"], vol.meta["source"]) == (image.modality, image.region, image.source)
        img, lab = vol.load()
        assert img.shape == vol.shape and img.dtype == np.float32 and np.isfinite(img).all() and img.std() > 0
        assert (lab is not None) == (image.labels is not None)
    by = {v.case_id: v for v in vs.volumes}
    assert by["ct-head"].load()[0].min() <= -1000  # Hounsfield units: air
    assert by["ct-head-enhanced"].shape[2] == 2 and by["ct-head-enhanced"].spacing[2] == pytest.approx(10.0)
    assert by["mr-brain-epi"].shape == (128, 96, 24)
    img, lab = by["mr-brain-colin27"].load()
    assert lab.max() == 116 and len(np.unique(lab)) == 117 and vs.labels[1] == "Precentral_L"
    assert img[lab > 0].mean() > img[lab == 0].mean()  # AAL regions lie on brain, not background
    # pydicom-data's files are read where its wheel put them
    assert "data_store" in by["xr-chest"].sources[0]


def test_filters_and_tags_for_a_pretraining_pool(no_network):
    vs = load_dataset("real?modality=CT")
    assert [v.case_id for v in vs.volumes] == ["ct-head", "ct-head-enhanced", "ct-spine"]
    assert (vs.domain, vs.task, vs.group, vs.modality) == ("real-CT", "real-CT", "CT", "CT")
    vs = load_dataset("real?sources=pydicom-data,pydicom&modality=CR,US&region=chest,heart")
    assert [v.case_id for v in vs.volumes] == ["xr-chest", "us-heart"]
    assert (vs.domain, vs.group) == ("real-CR+US-chest+heart", "mixed") and vs.labels == {}
    with pytest.raises(ParameterError, match=r"option modality='PET'; expected a comma-separated list of CR, CT"):
        parse_spec("real?modality=PET")
    with pytest.raises(DataError, match=r"no real image has sources \['nibabel'\], modality \['CT'\]"):
        load_dataset("real?sources=nibabel&modality=CT")


def test_missing_sources_are_named(monkeypatch):
    monkeypatch.setattr(real, "MRICRON_TEMPLATES", real.MRICRON_TEMPLATES / "nowhere")
    with pytest.raises(DataError, match=r"mricron-data package \(apt-get install mricron-data\), or leave them out "
                                        r"with real\?sources=pydicom-data,pydicom,nibabel"):
        load_dataset("real")
    assert len(load_dataset("real?sources=pydicom-data,pydicom,nibabel").volumes) == 13
    find = real.importlib.util.find_spec
    monkeypatch.setattr(real.importlib.util, "find_spec", lambda name: None if name == "data_store" else find(name))
    with pytest.raises(DataError, match=r"needs pydicom-data \(pip install pydicom-data\), which is not installed"):
        load_dataset("real?sources=pydicom-data")


def test_real_joins_a_multi_domain_pretraining_pool():
    from medssl_utils.training.config import PretrainConfig
    from medssl_utils.training.pretrain import prepare_pretrain_data

    cfg = PretrainConfig(method="hssl", datasets=["real?sources=pydicom-data,pydicom,nibabel", "natural?quadrants=0"],
                         image_size=32, batch_size=4, epochs=1, run_dir="unused", progress=False)
    data = prepare_pretrain_data(cfg)
    md = data.dataset
    assert md.tasks == ["natural", "real"] and md.groups == ["mixed", "photo"]
    item = md[0]
    assert item["image"].shape == (1, 32, 32) and md.tasks[item["task"]] == "real"
    # only training cases enter the pool: 13 real images, random split -> 1 test, 1 validation held out
    assert len(data.pools["real?sources=pydicom-data,pydicom,nibabel"]["train_cases"]) == 11


def test_hssl_real_study_compares_pools_that_differ_only_by_real_images():
    from pathlib import Path

    import medssl_utils.study as st

    s = st.load_study(Path(__file__).resolve().parents[2] / "studies" / "hssl-real.yaml")
    stages = {r.name: r.params for r in s.runs if r.kind == "pretrain"}
    assert set(stages) == {"hssl-phantoms", "hssl-phantoms-real"}
    a, b = stages["hssl-phantoms"], stages["hssl-phantoms-real"]
    assert b["datasets"] == a["datasets"] + ["real"] and len(a["datasets"]) == 4
    assert {k: v for k, v in a.items() if k not in ("datasets", "run_dir")} == \
        {k: v for k, v in b.items() if k not in ("datasets", "run_dir")}
    ft = [r for r in s.runs if r.kind == "finetune"]
    assert {r.name for r in ft} == {"scratch", "hssl-phantoms", "hssl-phantoms-real"}
    assert {r.task for r in ft} == {"cardiac", "abdomen", "brain", "prostate"}
    assert all(not str(r.params["dataset"]).startswith("real") for r in ft)
