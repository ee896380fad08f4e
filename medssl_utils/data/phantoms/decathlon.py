"""Writing phantoms in the Medical Segmentation Decathlon (MSD) layout.

A task folder ``TaskNN_Name/`` holds ``dataset.json``, ``imagesTr/``, ``labelsTr/`` and
``imagesTs/`` with ``.nii.gz`` volumes; like the real archives, a macOS AppleDouble file
``._<name>`` sits beside every volume (readers must skip them). Training cases are
numbered from 1, test cases from 101 (``<prefix>_001.nii.gz``, ``<prefix>_101.nii.gz``;
from ``cases + 1`` when there are more than 100 training cases).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from medssl_utils.data.nifti import write_nifti
from medssl_utils.fileio import atomic_write
from medssl_utils.data.phantoms.common import case_rng, write_appledouble


@dataclass(frozen=True)
class MsdTask:
    """How to write one MSD-layout phantom task."""

    folder: str  # e.g. "Task91_PhantomAbdomenCT"
    prefix: str  # file name prefix, e.g. "abdomen"
    domain_code: int  # mixed into every case's seed
    make_case: Callable  # rng -> (image, label, spacing)
    name: str
    description: str
    modality: dict
    labels: dict

    def tensor_image_size(self) -> str:
        return "4D" if len(self.modality) > 1 else "3D"


def test_numbers(n_train: int) -> list[int]:
    """Case numbers of the test cases: ``max(1, n_train // 3)`` of them from 101 (or n_train + 1)."""
    first = max(101, n_train + 1)
    return list(range(first, first + max(1, n_train // 3)))


def dataset_json(task: MsdTask, n_train: int) -> dict:
    """The ``dataset.json`` content for ``n_train`` training cases and their test cases."""
    tests = test_numbers(n_train)
    return {
        "name": task.name,
        "description": task.description,
        "reference": "medssl synthetic phantom (no patient data)",
        "licence": "CC0 1.0 (synthetic data)",
        "release": "1.0 medssl phantom",
        "tensorImageSize": task.tensor_image_size(),
        "modality": dict(task.modality),
        "labels": dict(task.labels),
        "numTraining": n_train,
        "numTest": len(tests),
        "training": [{"image": f"./imagesTr/{task.prefix}_{i:03d}.nii.gz",
                      "label": f"./labelsTr/{task.prefix}_{i:03d}.nii.gz"} for i in range(1, n_train + 1)],
        "test": [f"./imagesTs/{task.prefix}_{i:03d}.nii.gz" for i in tests],
    }


def _write_volume(path: Path, data: np.ndarray, spacing) -> None:
    write_nifti(path, data, spacing)
    write_appledouble(path.with_name("._" + path.name))


def write_case(task: MsdTask, root: Path, number: int, seed: int, *, training: bool) -> None:
    """Generate case ``number`` and write its image (and, for training, label) under ``root``."""
    image, label, spacing = task.make_case(case_rng(seed, task.domain_code, number))
    name = f"{task.prefix}_{number:03d}.nii.gz"
    if training:
        _write_volume(root / "imagesTr" / name, image, spacing)
        _write_volume(root / "labelsTr" / name, label, spacing)
    else:
        _write_volume(root / "imagesTs" / name, image, spacing)


def write_msd(task: MsdTask, out_dir: Path, cases: int, seed: int, *, workers: int = 2) -> Path:
    """Write ``cases`` training and ``max(1, cases // 3)`` test cases; returns the task folder."""
    root = Path(out_dir) / task.folder
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    jobs = [(k, True) for k in range(1, cases + 1)] + [(k, False) for k in test_numbers(cases)]

    def one(job):
        write_case(task, root, job[0], seed, training=job[1])

    if workers <= 1:
        for job in jobs:
            one(job)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(one, jobs))  # list() re-raises the first error
    atomic_write(root / "dataset.json", json.dumps(dataset_json(task, cases), indent=4) + "\n")
    return root
