"""Reader for a plain folder: ``ROOT/images/*.nii[.gz]`` and optional ``ROOT/labels/``.

A label file has the same name as its image. Every image is one single-channel volume (2D
images are one slice). A file in ``labels/`` with no image of the same name is an error,
not ignored; so is a folder named like a NIfTI file.
"""

from __future__ import annotations

from pathlib import Path

from medssl_utils.data.nifti import is_nifti
from medssl_utils.data.readers.base import Option, Reader
from medssl_utils.data.readers.msd import _volume
from medssl_utils.data.volume import VolumeSet
from medssl_utils.errors import DataError


def read_folder(root: Path, *, modality: str = "MR", spec: str | None = None) -> VolumeSet:
    """``ROOT/images`` (+ optional ``ROOT/labels`` with matching file names)."""
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"{root}: path does not exist")
    img_dir, lab_dir = root / "images", root / "labels"
    if not img_dir.is_dir():
        raise DataError(f"{root}: expected a folder with images/ (and optionally labels/) holding .nii/.nii.gz files")
    images = _nifti_files(img_dir)
    if not images:
        raise DataError(f"{img_dir}: no .nii or .nii.gz files")
    labels = _nifti_files(lab_dir) if lab_dir.is_dir() else []
    orphans = sorted({p.name for p in labels} - {p.name for p in images})
    if orphans:
        raise DataError(f"{lab_dir / orphans[0]}: no image of the same name in {img_dir}"
                        + (f" ({len(orphans)} such label files)" if len(orphans) > 1 else ""))
    volumes = []
    for img in images:
        lab = lab_dir / img.name
        volumes.append(_volume(img, lab if lab.is_file() else None, "training", 0, 1, None))
    return VolumeSet(spec=spec or f"folder:{root}", format="folder", root=root, labels={}, modality=modality,
                     volumes=volumes, domain=root.name, task=root.name, group="CT" if modality == "CT" else "MR")


def _nifti_files(folder: Path) -> list[Path]:
    out = []
    for p in sorted(folder.iterdir()):
        if not is_nifti(p):
            continue
        if not p.is_file():
            raise DataError(f"{p}: not a file (a folder, or a broken symbolic link); expected a NIfTI image")
        out.append(p)
    return out


def _read(target: str, opts: dict, spec: str) -> VolumeSet:
    return read_folder(Path(target), modality=opts["modality"], spec=spec)


READER = Reader(
    kind="folder", target="path", read=_read, example="/data/mine",
    detect=lambda root: (Path(root) / "images").is_dir()
    and any(is_nifti(p) for p in (Path(root) / "images").iterdir()),
    doc="images/*.nii[.gz] with optional labels/ of the same file names",
    layout="folder (images/ and labels/ with matching .nii.gz names)",
    options=(Option("modality", "str", default="MR", choices=("MR", "CT"),
                    doc="CT is normalised with a Hounsfield window, MR with percentiles"),),
)
