"""``real``: real medical images that ship inside installed packages, usable with no network.

Each image is one case (its name is the case id), tagged with its modality and body region
(``Volume.meta["modality"]``, ``meta["region"]``); CT is normalised with the Hounsfield
window, everything else with percentiles. The set's tags for multi-domain pretraining are
domain and task ``real`` (``real-CT``, ``real-MR+CR``… when filtered by modality, with the
regions appended when filtered by region) and group = the modality when one remains, else
``mixed``.

============================  ============  ========  ===========  =============================================
name                          from          modality  region       what
============================  ============  ========  ===========  =============================================
``ct-head``                   pydicom-data  CT        head         axial head CT slice, 512², 5 mm (pydicom
                                                                   issue #693 regression file, uncompressed)
``ct-head-enhanced``          pydicom-data  CT        head         Enhanced CT, 2 frames 512², 10 mm apart
                                                                   (NEMA multi-frame CT sample CT0012)
``ct-spine``                  pydicom       CT        spine        axial CT through a vertebra, 128² (NEMA WG04
                                                                   CT1, downsized)
``mr-shoulder``               pydicom-data  MR        shoulder     shoulder MR, 1024² (NEMA WG04 MR2)
``mr-abdomen``                pydicom-data  MR        abdomen      axial abdominal MR (liver, kidneys), 484²,
                                                                   Siemens (GDCM sample)
``mr-head-enhanced``          pydicom-data  MR        head         Enhanced MR, 10 frames 64² (no geometry:
                                                                   frames stacked)
``xr-chest``                  pydicom-data  CR        chest        PA chest radiograph, 1841×1955, Philips CR
                                                                   (NEMA WG04 RG1; its PixelSpacing is 0: pixels)
``xr-tibia``                  pydicom-data  CR        leg          AP radiograph of the distal tibia
                                                                   (non-ossifying fibroma), 1760², Fuji CR
                                                                   (NEMA WG04 RG3)
``us-lymph-node``             pydicom-data  US        lymph-node   B-mode ultrasound of a lymph node, RGB 640×480
                                                                   (NEMA WG04 US1; the site is not stated)
``us-heart``                  pydicom-data  US        heart        transoesophageal echocardiogram, RGB 256×120
``nm-whole-body``             pydicom-data  NM        body         whole-body bone scintigraphy, 256×1024
                                                                   (NEMA WG04 NM1)
``mr-brain-epi``              nibabel       MR        brain        EPI (BOLD) brain MR, 128×96×24, 2×2×2.2 mm
                                                                   (first of the 2 volumes of example4d.nii.gz)
``mr-brain-t1-small``         nibabel       MR        brain        T1 brain MR, 33×41×25, 2 mm (anatomical.nii)
``mr-brain-colin27``          mricron       MR        brain        Colin27 T1 average (Holmes et al. 1998), 1 mm,
                                                                   181×217×181, labelled with the AAL atlas
                                                                   (116 regions, Tzourio-Mazoyer et al. 2002)
============================  ============  ========  ===========  =============================================

Sources and licences: ``pydicom-data`` (PyPI, MIT; its 73 DICOM files are inside the wheel,
under ``data_store/data``, and are read from there — nothing is downloaded), ``pydicom``'s own
test files (MIT; its README: images obtained from NEMA, GDCM and others, believed free of
restrictions), ``nibabel``'s test data (MIT, nibabel's COPYING names no other terms for these
two files), Debian's ``mricron-data`` (``/usr/share/mricron/templates``; Debian's copyright
file: BSD-3-clause, © Chris Rorden). ``mricron-data`` is not a Python package: ``apt-get
install mricron-data`` (``.ci/run`` does); without it ``real`` stops with a line saying so,
or leave it out with ``real?sources=pydicom-data,pydicom,nibabel``.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medssl_utils.data.nifti import read_array, read_header, volume_shape
from medssl_utils.data.readers.base import Option, Reader
from medssl_utils.data.readers.dicom import read_dicom
from medssl_utils.data.volume import check_label_values, Volume, VolumeSet
from medssl_utils.errors import DataError

MRICRON_TEMPLATES = Path("/usr/share/mricron/templates")
SOURCES = ("pydicom-data", "pydicom", "nibabel", "mricron")


@dataclass(frozen=True)
class RealImage:
    name: str
    source: str
    file: str
    modality: str
    region: str
    what: str
    frame: int | None = None  # for a 4D NIfTI: which volume
    labels: str | None = None  # a label map on the same grid (same source)


REAL_IMAGES: tuple[RealImage, ...] = (
    RealImage("ct-head", "pydicom-data", "693_UNCR.dcm", "CT", "head", "axial head CT slice"),
    RealImage("ct-head-enhanced", "pydicom-data", "eCT_Supplemental.dcm", "CT", "head", "Enhanced CT, 2 frames"),
    RealImage("ct-spine", "pydicom", "CT_small.dcm", "CT", "spine", "axial CT through a vertebra"),
    RealImage("mr-shoulder", "pydicom-data", "MR2_UNCR.dcm", "MR", "shoulder", "shoulder MR"),
    RealImage("mr-abdomen", "pydicom-data", "MR-SIEMENS-DICOM-WithOverlays.dcm", "MR", "abdomen", "axial abdominal MR"),
    RealImage("mr-head-enhanced", "pydicom-data", "emri_small.dcm", "MR", "head", "Enhanced MR, 10 frames"),
    RealImage("xr-chest", "pydicom-data", "RG1_UNCR.dcm", "CR", "chest", "PA chest radiograph"),
    RealImage("xr-tibia", "pydicom-data", "RG3_UNCR.dcm", "CR", "leg", "AP radiograph of the distal tibia"),
    RealImage("us-lymph-node", "pydicom-data", "US1_UNCR.dcm", "US", "lymph-node", "B-mode ultrasound of a lymph node"),
    RealImage("us-heart", "pydicom-data", "color-pl.dcm", "US", "heart", "transoesophageal echocardiogram"),
    RealImage("nm-whole-body", "pydicom-data", "JPEG2000_UNC.dcm", "NM", "body", "whole-body bone scintigraphy"),
    RealImage("mr-brain-epi", "nibabel", "example4d.nii.gz", "MR", "brain", "EPI brain MR", frame=0),
    RealImage("mr-brain-t1-small", "nibabel", "anatomical.nii", "MR", "brain", "small T1 brain MR"),
    RealImage("mr-brain-colin27", "mricron", "ch2.nii.gz", "MR", "brain", "Colin27 T1 with AAL labels",
              labels="aal.nii.gz"),
)
MODALITIES = tuple(sorted({r.modality for r in REAL_IMAGES}))
REGIONS = tuple(sorted({r.region for r in REAL_IMAGES}))


def _package_dir(module: str, sub: str, install: str) -> Path:
    spec = importlib.util.find_spec(module)  # locate without importing
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"dataset 'real' needs {install}, which is not installed; install the project "
                        f"(pip install -e .) or leave that source out with real?sources=…")
    return Path(list(spec.submodule_search_locations)[0]) / sub


def source_dir(source: str) -> Path:
    """Where a source's files are on this machine (raises DataError naming what to install)."""
    if source == "pydicom-data":
        return _package_dir("data_store", "data", "pydicom-data (pip install pydicom-data)")
    if source == "pydicom":
        return _package_dir("pydicom", "data/test_files", "pydicom (pip install pydicom)")
    if source == "nibabel":
        return _package_dir("nibabel", "tests/data", "nibabel (pip install nibabel)")
    if not MRICRON_TEMPLATES.is_dir():
        raise DataError(f"{MRICRON_TEMPLATES}: not found; the Colin27 T1 and AAL atlas of dataset 'real' come from "
                        "Debian's mricron-data package (apt-get install mricron-data), or leave them out with "
                        "real?sources=pydicom-data,pydicom,nibabel")
    return MRICRON_TEMPLATES


def _volume(image: RealImage, path: Path, label_names: dict[int, str]) -> Volume:
    if path.name.endswith((".dcm",)):
        vol, = read_dicom(path).volumes
        vol.case_id = image.name
        vol.meta = {**vol.meta, "series": None, "modality": image.modality, "region": image.region,
                    "source": image.source}
        return vol

    hdr = read_header(path)
    index = () if image.frame is None else (image.frame,)
    load_label = None
    sources = [str(path)]
    if image.labels:
        lab_path = path.with_name(image.labels)
        lab_hdr = read_header(lab_path)
        if lab_hdr.shape[:3] != hdr.shape[:3] or not np.allclose(lab_hdr.affine, hdr.affine, atol=1e-3):
            raise DataError(f"{lab_path}: not on the grid of {path.name}")
        load_label = lambda p=lab_path: _checked(p, label_names)  # noqa: E731
        sources.append(str(lab_path))
    return Volume(
        case_id=image.name, spacing=hdr.spacing, shape=volume_shape(hdr, extra_axes=len(index)), affine=hdr.affine,
        load_image=lambda p=path, i=index: read_array(p, index=i), load_label=load_label,
        meta={"subset": "training", "modality": image.modality, "region": image.region, "source": image.source,
              "frame": None},
        sources=tuple(sources),
    )


def _checked(path: Path, names: dict[int, str]) -> np.ndarray:
    lab = read_array(path, kind="label")
    check_label_values(lab, names, path)
    return lab


def aal_labels() -> dict[int, str]:
    """AAL region names by label value, from mricron-data's ``aal.nii.txt`` (index, name, code)."""
    path = source_dir("mricron") / "aal.nii.txt"
    names = {0: "background"}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 2 or not parts[0].isdigit():
            raise DataError(f"{path}:{lineno}: expected 'index name code', got {line!r}")
        names[int(parts[0])] = parts[1]
    return names


def read_real(spec: str = "real", *, sources=SOURCES, modality=MODALITIES, region=REGIONS) -> VolumeSet:
    """The images of :data:`REAL_IMAGES` from ``sources`` with a ``modality`` and ``region`` in those given."""
    chosen = [r for r in REAL_IMAGES if r.source in sources and r.modality in modality and r.region in region]
    if not chosen:
        raise DataError(f"dataset '{spec}': no real image has sources {list(sources)}, modality {list(modality)} "
                        f"and region {list(region)}; see the table in medssl_utils/data/readers/real.py")
    dirs = {s: source_dir(s) for s in sorted({r.source for r in chosen})}
    names = aal_labels() if any(r.labels for r in chosen) else {}
    volumes = []
    for image in chosen:
        path = dirs[image.source] / image.file
        if not path.is_file():
            raise DataError(f"{path}: missing from the installed {image.source}; reinstall it")
        volumes.append(_volume(image, path, names))
    mods = sorted({r.modality for r in chosen})
    tag = "real"
    if set(modality) != set(MODALITIES):
        tag += "-" + "+".join(mods)
    if set(region) != set(REGIONS):
        tag += "-" + "+".join(sorted({r.region for r in chosen}))
    return VolumeSet(spec=spec, format="real", root=None, labels=names, modality=mods[0] if len(mods) == 1 else "mixed",
                     volumes=volumes, domain=tag, task=tag, group=mods[0] if len(mods) == 1 else "mixed",
                     meta={"images": {r.name: {"modality": r.modality, "region": r.region, "source": r.source,
                                               "what": r.what} for r in chosen}})


def _read(target, opts: dict, spec: str) -> VolumeSet:
    return read_real(spec, sources=opts["sources"], modality=opts["modality"], region=opts["region"])


READER = Reader(
    kind="real", target=None, read=_read,
    doc="real CT, MR, radiographs, ultrasound and NM images shipped by pydicom-data, pydicom, nibabel and "
        "Debian's mricron-data (Colin27 + AAL)",
    options=(
        Option("sources", "list", default=SOURCES, choices=SOURCES, doc="which packages to take images from"),
        Option("modality", "list", default=MODALITIES, choices=MODALITIES, doc="keep images of these modalities"),
        Option("region", "list", default=REGIONS, choices=REGIONS, doc="keep images of these body regions"),
    ),
)
