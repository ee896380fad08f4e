"""Shared fixtures: tiny datasets written in the exact official on-disk layouts.

The tests live in three folders: ``unit/`` (one module or a few at a time; ``make test-quick``),
``notebooks/`` (the notebooks executed with papermill, and in a real JupyterLab) and ``system/``
(a real SLURM, DDP processes, the GPU paths, the training protocols). Helpers here are imported by
name (``from conftest import truncate``; ``pythonpath = ["tests"]`` in pyproject.toml).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from medssl_utils.data.nifti import write_nifti
from study_kit import nbs  # noqa: F401 - the stand-in notebooks fixture, for every test folder

#: Folders of system tests: ``notebooks/`` (whole notebooks under papermill, chromium driving JupyterLab)
#: and ``system/`` (a real SLURM, several processes, a GPU, training protocols). Their tests are marked
#: ``system``; ``make test`` runs everything, ``make test-quick`` runs ``unit/`` without ``slow`` tests.
SYSTEM_TEST_FOLDERS = {"notebooks", "system"}


def pytest_configure(config):
    """Under pytest-xdist (``make test`` runs two workers) each worker gets its own share of the
    cores: pinned to them (its notebook kernels, SLURM jobs and subprocesses inherit it) and its
    torch / OpenMP threads set to match, so two workers never oversubscribe the machine."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker or not hasattr(os, "sched_setaffinity"):
        return
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < count:
        return
    share = cores[int(worker.removeprefix("gw")) % count::count]
    os.sched_setaffinity(0, share)
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(len(share))
    import torch

    torch.set_num_threads(len(share))


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.parent.name in SYSTEM_TEST_FOLDERS and item.path.parent.parent == Path(__file__).parent:
            item.add_marker(pytest.mark.system)

APPLEDOUBLE = bytes.fromhex("00051607") + b"\x00" * 80


@pytest.fixture
def one_thread():
    """torch on one thread for the test (other work shares the CPU cores; one thread is faster than two
    contended ones), restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="session")
def _session_cache(tmp_path_factory):
    """One cache folder for the whole session, never the user's: generated phantoms and slice
    caches are reused across tests (cache keys include each dataset's file paths and mtimes,
    so tests writing their own datasets never collide)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("MEDSSL_CACHE_DIR", str(tmp_path_factory.mktemp("medssl-cache")))
    yield
    mp.undo()


def _blob_volume(rng, shape, n_labels):
    """A random image with a label map that matches bright blobs (so tests can check alignment)."""
    x, y, z = shape
    label = np.zeros(shape, np.uint8)
    xx, yy = np.meshgrid(np.arange(x), np.arange(y), indexing="ij")
    for k in range(1, n_labels + 1):
        cx, cy = rng.uniform(0.25, 0.75) * x, rng.uniform(0.25, 0.75) * y
        r = max(2.0, min(x, y) * rng.uniform(0.1, 0.2))
        disk = (xx - cx) ** 2 + (yy - cy) ** 2 < r**2
        label[disk[:, :, None].repeat(z, 2)] = k
    image = (100 + 200 * label + rng.normal(0, 10, shape)).astype(np.int16)
    return image, label


def write_acdc_patient(pdir: Path, rng, *, shape=(20, 16, 4), frames=5, ed=1, es=3, group="NOR",
                       gt=True, suffix=".nii.gz", info_lines=None):
    pid = pdir.name
    pdir.mkdir(parents=True)
    lines = info_lines if info_lines is not None else [
        f"ED: {ed}", f"ES: {es}", f"Group: {group}", "Height: 180.0", f"NbFrame: {frames}", "Weight: 80.0"]
    (pdir / "Info.cfg").write_text("\n".join(lines) + "\n")
    cine = []
    labels = {}
    for t in range(1, frames + 1):
        img, lab = _blob_volume(rng, shape, 3)
        cine.append(img)
        labels[t] = lab
    cine = np.stack(cine, axis=-1)
    spacing = (1.5, 1.5, 10.0)
    write_nifti(pdir / f"{pid}_4d{suffix}", cine, spacing)
    for t in (ed, es):
        write_nifti(pdir / f"{pid}_frame{t:02d}{suffix}", cine[..., t - 1], spacing)
        if gt:
            write_nifti(pdir / f"{pid}_frame{t:02d}_gt{suffix}", labels[t], spacing)
    return cine


@pytest.fixture
def acdc2017(tmp_path) -> Path:
    """ACDC 2017 layout: training/patient001-003 (with gt), testing/patient101 (no gt)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "ACDC"
    for i, group in zip((1, 2, 3), ("NOR", "DCM", "HCM")):
        write_acdc_patient(root / "training" / f"patient{i:03d}", rng, group=group)
    write_acdc_patient(root / "testing" / "patient101", rng, gt=False,
                       info_lines=["ED: 1", "ES: 3", "Height: 170.0", "NbFrame: 5", "Weight: 70.0"])
    return root


@pytest.fixture
def acdc2023(tmp_path) -> Path:
    """ACDC 2023 layout (database/training, database/testing, all with gt), .nii (uncompressed)."""
    rng = np.random.default_rng(1)
    root = tmp_path / "ACDC2023"
    for i in range(1, 13):
        write_acdc_patient(root / "database" / "training" / f"patient{i:03d}", rng, suffix=".nii",
                           group=["NOR", "DCM", "HCM", "MINF", "RV"][i % 5])
    for i in (101, 102):
        write_acdc_patient(root / "database" / "testing" / f"patient{i:03d}", rng)
    return root


def write_msd_task(root: Path, rng, *, channels=("T2", "ADC"), n_train=4, n_test=2, shape=(18, 14, 5),
                   labels=("background", "PZ", "TZ"), appledouble=True):
    name = root.name.split("_", 1)[-1].lower()
    for d in ("imagesTr", "labelsTr", "imagesTs"):
        (root / d).mkdir(parents=True)
    training, test = [], []
    spacing = (0.6, 0.6, 3.6)
    for i in range(n_train + n_test):
        img, lab = _blob_volume(rng, shape, len(labels) - 1)
        if len(channels) > 1:
            img = np.stack([img + 50 * c for c in range(len(channels))], axis=-1)
        fname = f"{name}_{i:02d}.nii.gz"
        if i < n_train:
            write_nifti(root / "imagesTr" / fname, img, spacing)
            write_nifti(root / "labelsTr" / fname, lab, spacing)
            training.append({"image": f"./imagesTr/{fname}", "label": f"./labelsTr/{fname}"})
            dirs = ("imagesTr", "labelsTr")
        else:
            write_nifti(root / "imagesTs" / fname, img, spacing)
            test.append(f"./imagesTs/{fname}")
            dirs = ("imagesTs",)
        if appledouble:
            for d in dirs:
                (root / d / f"._{fname}").write_bytes(APPLEDOUBLE)
    meta = {
        "name": name.capitalize(), "description": "test task", "reference": "-", "licence": "CC-BY-SA 4.0",
        "release": "1.0 04/05/2018", "tensorImageSize": "4D" if len(channels) > 1 else "3D",
        "modality": {str(i): c for i, c in enumerate(channels)},
        "labels": {str(i): n for i, n in enumerate(labels)},
        "numTraining": n_train, "numTest": n_test, "training": training, "test": test,
    }
    (root / "dataset.json").write_text(json.dumps(meta, indent=4))
    return root


@pytest.fixture
def msd_prostate(tmp_path) -> Path:
    return write_msd_task(tmp_path / "Task05_Prostate", np.random.default_rng(2))


@pytest.fixture
def msd_ct(tmp_path) -> Path:
    return write_msd_task(tmp_path / "Task09_Spleen", np.random.default_rng(3), channels=("CT",),
                          labels=("background", "spleen"))


@pytest.fixture
def folder_ds(tmp_path) -> Path:
    rng = np.random.default_rng(4)
    root = tmp_path / "myfolder"
    for i in range(3):
        img, lab = _blob_volume(rng, (16, 16, 3), 2)
        write_nifti(root / "images" / f"case{i}.nii.gz", img, (1, 1, 2))
        if i < 2:
            write_nifti(root / "labels" / f"case{i}.nii.gz", lab, (1, 1, 2))
    (root / "images" / "._case0.nii.gz").write_bytes(APPLEDOUBLE)
    return root


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


os.environ.setdefault("MPLBACKEND", "Agg")
