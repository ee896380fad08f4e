"""Synthetic phantoms written as real NIfTI datasets in the official ACDC and MSD layouts.

Real datasets cannot always be downloaded; these generators let the whole study run on
data that looks, file for file, like the real thing:

=========== ====== =================================================================
name        format what it is
=========== ====== =================================================================
cardiac     acdc   short-axis cine MR, 5 pathology groups, ED/ES labels RV/MYO/LV
abdomen-ct  msd    portal-venous abdominal CT in HU, labels liver / liver tumour
brain-mr    msd    FLAIR-like brain MR with skull, labels oedema / tumour core
prostate-mr msd    two-channel (T2, ADC) prostate MR, labels PZ / TZ
=========== ====== =================================================================

Each module's docstring explains its anatomy model and parameters: ``cardiac``,
``abdomen``, ``brain``, ``prostate`` (shared building blocks in ``common``, the MSD
layout in ``decathlon``). Every case draws from its own generator seeded by
(seed, domain, case number), so output is deterministic and independent of the order
(and number of threads) in which cases are written.

>>> from medssl_utils.data.phantoms import PHANTOMS, write_phantom
>>> root = write_phantom("cardiac", "/tmp/acdc-phantom", cases=10)  # doctest: +SKIP
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from medssl_utils.data.phantoms import abdomen, brain, cardiac, prostate
from medssl_utils.data.phantoms.common import MAX_CASES, check_seed  # noqa: F401 - MAX_CASES: part of the face
from medssl_utils.data.phantoms.decathlon import MsdTask, write_msd
from medssl_utils.errors import DataError, ParameterError
from medssl_utils.validate import check_int

__all__ = ["PHANTOMS", "PhantomInfo", "write_phantom", "MSD_TASKS"]


@dataclass(frozen=True)
class PhantomInfo:
    """What a phantom is: its name, file layout ("acdc" or "msd"), default size, one-line description."""

    name: str
    format: str
    default_cases: int
    description: str


PHANTOMS: dict[str, PhantomInfo] = {
    "cardiac": PhantomInfo(
        "cardiac", "acdc", 60,
        "Short-axis cine cardiac MR in the ACDC 2023 layout (4D cine, ED/ES frames labelled RV, "
        "myocardium, LV) across the groups NOR, DCM, HCM, MINF and RV."),
    "abdomen-ct": PhantomInfo(
        "abdomen-ct", "msd", 24,
        "Portal-venous abdominal CT in Hounsfield units (MSD layout) with liver and hypodense liver "
        "tumours labelled."),
    "brain-mr": PhantomInfo(
        "brain-mr", "msd", 24,
        "FLAIR-like axial brain MR with scalp and skull (MSD layout) with tumour oedema and tumour "
        "core labelled."),
    "prostate-mr": PhantomInfo(
        "prostate-mr", "msd", 24,
        "Two-channel (T2, ADC) prostate MR (MSD layout, like Task05) with peripheral and transition "
        "zones labelled."),
}

MSD_TASKS: dict[str, MsdTask] = {
    "abdomen-ct": MsdTask(
        folder="Task91_PhantomAbdomenCT", prefix="abdomen", domain_code=abdomen.DOMAIN_CODE,
        make_case=abdomen.make_case, name="PhantomAbdomenCT",
        description="Synthetic abdominal CT phantom: liver and liver tumour segmentation",
        modality={"0": "CT"}, labels=abdomen.LABELS),
    "brain-mr": MsdTask(
        folder="Task92_PhantomBrainMR", prefix="brain", domain_code=brain.DOMAIN_CODE,
        make_case=brain.make_case, name="PhantomBrainMR",
        description="Synthetic FLAIR-like brain MR phantom: oedema and tumour core segmentation",
        modality={"0": "FLAIR"}, labels=brain.LABELS),
    "prostate-mr": MsdTask(
        folder="Task93_PhantomProstateMR", prefix="prostate", domain_code=prostate.DOMAIN_CODE,
        make_case=prostate.make_case, name="PhantomProstateMR",
        description="Synthetic prostate MR phantom (T2 and ADC): peripheral and transition zone segmentation",
        modality=prostate.MODALITY, labels=prostate.LABELS),
}


def dataset_folder(name: str, out_dir) -> Path:
    """The folder ``write_phantom(name, out_dir)`` creates inside ``out_dir``."""
    out_dir = Path(out_dir)
    return out_dir / "database" if name == "cardiac" else out_dir / MSD_TASKS[name].folder


def write_phantom(name: str, out_dir, *, cases: int | None = None, seed: int = 0,
                  overwrite: bool = False, workers: int = 2) -> Path:
    """Write phantom ``name`` under ``out_dir`` and return the dataset root to hand to a reader.

    * ``cardiac``: returns ``out_dir``, which then holds ``database/training/patient001..``
      (``cases`` patients, default 60) and ``database/testing/patient101..``
      (``max(1, cases // 3)`` patients; numbered from ``cases + 1`` if ``cases`` > 100).
    * MSD kinds: returns ``out_dir/TaskNN_Name`` holding ``dataset.json``, ``imagesTr``,
      ``labelsTr`` (``cases`` cases, default 24) and ``imagesTs`` (``max(1, cases // 3)``).

    The same (name, cases, seed) always gives identical voxel arrays; different seeds give
    different data. If the dataset folder already exists and is not empty, this raises
    unless ``overwrite=True``, which deletes that folder first (and only that folder), so
    no stale cases from an earlier, larger run can remain. ``workers`` threads generate
    cases in parallel; the output does not depend on it. ``cases`` is at most
    :data:`MAX_CASES`. The dataset is generated in a hidden folder beside its destination
    and renamed into place when complete, so an error or interruption leaves nothing
    half-written.
    """
    if name not in PHANTOMS:
        raise ParameterError(f"phantom name {name!r} is unknown; expected one of {sorted(PHANTOMS)}")
    info = PHANTOMS[name]
    if cases is None:
        cases = info.default_cases
    check_int("cases", cases, 1, MAX_CASES)
    seed = check_seed(seed)
    check_int("workers", workers, 1)
    out_dir = Path(out_dir).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise ParameterError(f"{out_dir}: is a file; expected a folder to write the phantom into")
    target = dataset_folder(name, out_dir)
    if target.exists() and not target.is_dir():
        raise ParameterError(f"{target}: is a file; expected a folder (or nothing) there")
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise ParameterError(f"{target} already exists and is not empty; choose an empty out_dir "
                             "or pass overwrite=True to replace it")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = out_dir / f".tmp-{name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    except OSError as exc:
        raise DataError(f"{out_dir}: cannot write there ({exc.strerror or exc})") from None
    try:
        if name == "cardiac":
            cardiac.write_cardiac(tmp, cases, seed, workers=workers)
        else:
            write_msd(MSD_TASKS[name], tmp, cases, seed, workers=workers)
        if target.exists():
            shutil.rmtree(target)  # overwrite=True, or an empty folder
        os.replace(dataset_folder(name, tmp), target)
    except OSError as exc:
        raise DataError(f"{target}: writing the phantom failed ({exc.strerror or exc})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir if name == "cardiac" else target
