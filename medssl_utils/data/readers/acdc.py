"""Reader for the ACDC cardiac cine-MRI dataset (Bernard et al., IEEE TMI 2018).

Both published layouts are accepted, with ``.nii`` or ``.nii.gz`` files:

* 2017 challenge release: ``ROOT/training/patient001/`` (and ``ROOT/testing/patient101/``)
* 2023 re-release:        ``ROOT/database/training/patient001/`` and ``.../testing/...``

Patient folders are ``patientNNN`` with three or more digits (the phantom writes
``patient1000`` and up past 999 cases). A ``patient…`` entry that is not a readable folder
(a file, a dangling or self-looping symbolic link) is an error, never skipped.

``ROOT`` may also be the ``database``/``training`` folder itself, or a single patient folder.
Each patient folder holds ``Info.cfg`` (ED, ES, Group, Height, Weight, NbFrame), the two
annotated frames ``patientNNN_frameMM.nii.gz`` with ``..._gt.nii.gz`` label maps (0 background,
1 RV cavity, 2 myocardium, 3 LV cavity) and the cine series ``patientNNN_4d.nii.gz``.

Every patient yields an ED and an ES volume (labelled when the ``_gt`` file exists) and, when
``cine=True``, one unlabelled volume per cine frame (``phase="cine"``), the source of
unlabelled slices for self-supervised pretraining.
"""

from __future__ import annotations

import re
from pathlib import Path

from medssl_utils.data.nifti import check_label_header, find_nifti, read_array, read_header, volume_shape
from medssl_utils.data.readers.base import Option, Reader
from medssl_utils.data.volume import Volume, VolumeSet, check_label_values
from medssl_utils.errors import DataError

ACDC_LABELS = {0: "background", 1: "RV", 2: "MYO", 3: "LV"}
PATIENT_RE = re.compile(r"^patient(\d{3,})$")
LAYOUTS = (
    "ROOT/training/patientNNN (ACDC 2017)",
    "ROOT/database/training/patientNNN (ACDC 2023)",
)


def parse_info_cfg(path: Path) -> dict:
    """Parse ``Info.cfg`` into a dict; ED, ES, NbFrame as int, Height/Weight as float."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: Info.cfg not found; every ACDC patient folder has one")
    info: dict = {}
    for lineno, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        if ":" not in line:
            raise DataError(f"{path}:{lineno}: expected 'Key: value', got {line.strip()!r}")
        key, value = (s.strip() for s in line.split(":", 1))
        if key in info and info[key] != value:
            raise DataError(f"{path}:{lineno}: '{key}' given again ({info[key]!r}, now {value!r}); expected it once")
        info[key] = value
    for key in ("ED", "ES"):
        if key not in info:
            raise DataError(f"{path}: missing '{key}:' line; Info.cfg must name the ED and ES frames")
    out: dict = {"Group": info.get("Group")}
    for key in ("ED", "ES", "NbFrame"):
        if key in info:
            try:
                out[key] = int(float(info[key]))
            except ValueError:
                raise DataError(f"{path}: '{key}: {info[key]}' is not a frame number") from None
    for key in ("Height", "Weight"):
        if key in info:
            try:
                out[key] = float(info[key])
            except ValueError:
                raise DataError(f"{path}: '{key}: {info[key]}' is not a number") from None
    for key in ("ED", "ES"):
        if out[key] < 1:
            raise DataError(f"{path}: {key} frame {out[key]} must be >= 1 (frames are 1-based)")
    return out


def find_patient_dirs(root: Path) -> list[tuple[str, Path]]:
    """``(subset, patient_dir)`` pairs found in any accepted layout under ``root``."""
    root = Path(root)
    if PATIENT_RE.match(root.name) and root.is_dir():
        return [(root.parent.name if root.parent.name in ("training", "testing") else "training", root)]
    found: list[tuple[str, Path]] = []
    for base in (root, root / "database"):
        for subset in ("training", "testing"):
            d = base / subset
            if d.is_dir():
                found += [(subset, p) for p in _patients_in(d)]
        if found:
            return found
    if root.name in ("training", "testing"):
        return [(root.name, p) for p in _patients_in(root)]
    return [("training", p) for p in _patients_in(root)]


def _patients_in(folder: Path) -> list[Path]:
    """``patientNNN`` folders of ``folder``, sorted by number; broken entries are errors."""
    out: dict[int, Path] = {}
    for p in sorted(folder.iterdir()):
        m = PATIENT_RE.match(p.name)
        if not m:
            continue
        if not p.is_dir():
            what = ("a symbolic link that does not lead to a folder (dangling or looping)" if p.is_symlink()
                    else "not a folder")
            raise DataError(f"{p}: {what}; expected an ACDC patient folder")
        number = int(m.group(1))
        if number in out:
            raise DataError(f"{p}: patient number {number} also used by {out[number].name}; "
                            "expected one folder per patient")
        out[number] = p
    return [out[k] for k in sorted(out)]


def read_acdc(root: Path, *, cine: bool = True, subsets=("training", "testing"), spec: str | None = None) -> VolumeSet:
    """Read an ACDC download (either layout). See the module docstring."""
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"{root}: path does not exist")
    if not root.is_dir():
        raise DataError(f"{root}: expected the ACDC folder, got a file")
    patients = [(s, p) for s, p in find_patient_dirs(root) if s in subsets]
    if not patients:
        raise DataError(f"{root}: no ACDC patient folders found; expected one of: {'; '.join(LAYOUTS)}")
    volumes: list[Volume] = []
    for subset, pdir in patients:
        volumes += _patient_volumes(pdir, subset, cine=cine)
    return VolumeSet(
        spec=spec or f"acdc:{root}", format="acdc", root=root, labels=dict(ACDC_LABELS), modality="MR",
        volumes=volumes, domain="cardiac", task="ACDC", group="MR",
    )


def _patient_volumes(pdir: Path, subset: str, *, cine: bool) -> list[Volume]:
    pid = pdir.name
    info = parse_info_cfg(pdir / "Info.cfg")
    base_meta = {"subset": subset, "group": info.get("Group"), "height": info.get("Height"),
                 "weight": info.get("Weight"), "patient": int(PATIENT_RE.match(pid).group(1))}
    vols = []
    for phase in ("ED", "ES"):
        frame = info[phase]
        stem = f"{pid}_frame{frame:02d}"
        img_path = find_nifti(pdir, stem)
        if img_path is None:
            raise DataError(f"{pdir / (stem + '.nii.gz')}: not found, but Info.cfg says {phase}: {frame}")
        gt_path = find_nifti(pdir, stem + "_gt")
        vols.append(_volume(pid, img_path, gt_path, (), {**base_meta, "phase": phase, "frame": frame}))
    if cine:
        cine_path = find_nifti(pdir, f"{pid}_4d")
        if cine_path is not None:
            hdr = read_header(cine_path)
            if len(hdr.shape) != 4:
                raise DataError(f"{cine_path}: expected a 4D cine series (X, Y, Z, T), got shape {hdr.shape}")
            n = hdr.shape[3]
            if "NbFrame" in info and info["NbFrame"] != n:
                raise DataError(f"{cine_path}: has {n} frames but Info.cfg says NbFrame: {info['NbFrame']}")
            for t in range(n):
                vols.append(_volume(pid, cine_path, None, (t,), {**base_meta, "phase": "cine", "frame": t + 1},
                                    header=hdr))
    return vols


def _volume(pid, img_path, gt_path, index, meta, header=None) -> Volume:
    hdr = header or read_header(img_path)
    shape = volume_shape(hdr, extra_axes=len(index))
    load_label = None
    sources = [str(img_path)]
    if gt_path is not None:
        check_label_header(read_header(gt_path), hdr)
        load_label = lambda p=gt_path: _checked_label(p)  # noqa: E731
        sources.append(str(gt_path))
    return Volume(
        case_id=pid, spacing=hdr.spacing, shape=shape, affine=hdr.affine,
        load_image=lambda p=img_path, i=index: read_array(p, index=i),
        load_label=load_label, meta=meta, sources=tuple(sources),
    )


def _checked_label(path: Path):
    lab = read_array(path, kind="label")
    check_label_values(lab, ACDC_LABELS, path)
    return lab


def _read(target: str, opts: dict, spec: str) -> VolumeSet:
    return read_acdc(Path(target), cine=opts["cine"], subsets=opts["subsets"], spec=spec)


def _detect(root: Path) -> bool:
    """ACDC when a patient folder holds Info.cfg (a DICOM export may also have patientNNN folders)."""
    try:
        dirs = find_patient_dirs(root)
    except DataError:
        return True  # a broken patient entry: the ACDC reader names it
    return any((p / "Info.cfg").is_file() for _, p in dirs)


READER = Reader(
    kind="acdc", target="path", read=_read, example="/data/ACDC", detect=_detect,
    doc="ACDC download, 2017 or 2023 layout, .nii or .nii.gz",
    layout="ACDC (" + "; ".join(LAYOUTS) + ")",
    options=(
        Option("cine", "bool", default=True, doc="read the 4D cine frames as unlabelled volumes"),
        Option("subsets", "list", default=("training", "testing"), choices=("training", "testing"),
               doc="which subsets to read"),
    ),
)
