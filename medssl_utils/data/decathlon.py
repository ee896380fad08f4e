"""Readers for Medical Segmentation Decathlon task folders and for plain image/label folders.

MSD (Antonelli et al., Nat. Commun. 2022): a task folder ``TaskNN_Name/`` holds
``dataset.json`` (``modality`` map, ``labels`` map, ``training`` list of image/label pairs,
``test`` list of images), ``imagesTr/``, ``labelsTr/`` and ``imagesTs/``. The real archives
carry a macOS ``._*`` resource fork beside every volume: those are ignored. Multi-modal
tasks store 4D images (X, Y, Z, C); one channel is chosen by index or modality name
(default the first). nnU-Net v2 style files (``channel_names``, labels as name → id) are
read too.

Folder: ``ROOT/images/*.nii[.gz]`` and optional ``ROOT/labels/`` with the same file names.
"""

from __future__ import annotations

import json
from pathlib import Path

from medssl_utils.data.nifti import is_nifti, read_array, read_header, strip_nifti_suffix
from medssl_utils.data.volume import Volume, VolumeSet, check_label_values
from medssl_utils.errors import DataError, ParameterError


def read_dataset_json(root: Path) -> dict:
    path = Path(root) / "dataset.json"
    if not path.is_file():
        raise DataError(f"{path}: not found; an MSD task folder (TaskNN_Name/) holds dataset.json")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise DataError(f"{path}: expected a JSON object at the top level")
    return meta


def _label_map(meta: dict, path: Path) -> dict[int, str]:
    labels = meta.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise DataError(f"{path}: missing 'labels' map (class id -> name)")
    out: dict[int, str] = {}
    for k, v in labels.items():
        try:
            out[int(k)] = str(v)  # MSD: {"0": "background"}
        except ValueError:
            try:
                out[int(v)] = str(k)  # nnU-Net v2: {"background": 0}
            except (TypeError, ValueError):
                raise DataError(f"{path}: label entry {k!r}: {v!r} is not 'id: name'") from None
    out.setdefault(0, "background")
    return dict(sorted(out.items()))


def _modalities(meta: dict) -> list[str]:
    mod = meta.get("modality") or meta.get("channel_names") or {"0": "unknown"}
    return [str(mod[k]) for k in sorted(mod, key=lambda x: int(x))]


def resolve_channel(channel, modalities: list[str], where: str) -> int:
    """Channel index from an int, a digit string or a modality name (case-insensitive)."""
    if channel is None:
        return 0
    if isinstance(channel, int) or str(channel).lstrip("-").isdigit():
        idx = int(channel)
        if not 0 <= idx < len(modalities):
            raise ParameterError(f"channel={channel!r} for {where}: expected 0..{len(modalities) - 1} "
                                 f"or one of {modalities}")
        return idx
    names = [m.lower() for m in modalities]
    if str(channel).lower() not in names:
        raise ParameterError(f"channel={channel!r} for {where}: expected one of {modalities} "
                             f"or an index 0..{len(modalities) - 1}")
    return names.index(str(channel).lower())


def _entry_path(root: Path, rel: str, dataset_json: Path) -> Path:
    p = (root / rel).resolve() if not Path(rel).is_absolute() else Path(rel)
    if not p.is_file():
        raise DataError(f"{p}: listed in {dataset_json} but not found")
    return p


def read_msd(root: Path, *, channel=None, include_test: bool = True, spec: str | None = None) -> VolumeSet:
    """Read an MSD task folder; see the module docstring."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: path does not exist")
    meta = read_dataset_json(root)
    dj = root / "dataset.json"
    labels = _label_map(meta, dj)
    modalities = _modalities(meta)
    ch = resolve_channel(channel, modalities, str(root))
    training = meta.get("training")
    if not isinstance(training, list):
        raise DataError(f"{dj}: missing 'training' list of {{'image': ..., 'label': ...}} entries")
    task = str(meta.get("name") or root.name)
    items: list[tuple[Path, Path | None, str]] = []
    for i, entry in enumerate(training):
        if not isinstance(entry, dict) or "image" not in entry:
            raise DataError(f"{dj}: training entry {i} is not {{'image': ..., 'label': ...}}")
        lab = _entry_path(root, entry["label"], dj) if entry.get("label") else None
        items.append((_entry_path(root, entry["image"], dj), lab, "training"))
    if include_test:
        for rel in meta.get("test") or []:
            rel = rel["image"] if isinstance(rel, dict) else rel
            items.append((_entry_path(root, rel, dj), None, "testing"))
    volumes = [_volume(img, lab, subset, ch, len(modalities), labels) for img, lab, subset in items]
    modality = modalities[ch]
    return VolumeSet(
        spec=spec or f"msd:{root}", format="msd", root=root, labels=labels,
        modality="CT" if modality.upper() == "CT" else modality, volumes=volumes,
        domain=root.name, task=task, group="CT" if modality.upper() == "CT" else "MR",
        meta={"modalities": modalities, "channel": ch, "description": meta.get("description")},
    )


def _volume(img: Path, lab: Path | None, subset: str, channel: int, n_channels: int,
            labels: dict[int, str] | None) -> Volume:
    hdr = read_header(img)
    shape = tuple(hdr.shape[:3]) if len(hdr.shape) >= 3 else (*hdr.shape, 1)
    index: tuple = ()
    if len(hdr.shape) == 4:
        if hdr.shape[3] != n_channels and n_channels > 1:
            raise DataError(f"{img}: has {hdr.shape[3]} channels but dataset.json lists {n_channels} modalities")
        index = (channel,)
    elif len(hdr.shape) > 4:
        raise DataError(f"{img}: expected a 3D or 4D (X, Y, Z, C) image, got shape {hdr.shape}")
    elif channel != 0:
        raise DataError(f"{img}: is single-channel; channel {channel} does not exist")
    load_label = None
    sources = [str(img)]
    if lab is not None:
        lhdr = read_header(lab)
        lshape = tuple(lhdr.shape[:3]) if len(lhdr.shape) >= 3 else (*lhdr.shape, 1)
        if lshape != shape or len(lhdr.shape) > 3:
            raise DataError(f"{lab}: label shape {lhdr.shape} does not match image shape {hdr.shape[:3]} of {img.name}")
        load_label = lambda p=lab: _checked_label(p, labels)  # noqa: E731
        sources.append(str(lab))
    case_id = strip_nifti_suffix(img.name)
    return Volume(
        case_id=case_id, spacing=hdr.spacing, shape=shape, affine=hdr.affine,
        load_image=lambda p=img, i=index: read_array(p, index=i), load_label=load_label,
        meta={"subset": subset, "channel": channel}, sources=tuple(sources),
    )


def _checked_label(path: Path, labels: dict[int, str] | None):
    lab = read_array(path, kind="label")
    if labels:
        check_label_values(lab, labels, path)
    return lab


def read_folder(root: Path, *, modality: str = "MR", spec: str | None = None) -> VolumeSet:
    """``ROOT/images`` (+ optional ``ROOT/labels`` with matching file names)."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: path does not exist")
    img_dir, lab_dir = root / "images", root / "labels"
    if not img_dir.is_dir():
        raise DataError(f"{root}: expected a folder with images/ (and optionally labels/) holding .nii/.nii.gz files")
    images = sorted(p for p in img_dir.iterdir() if is_nifti(p))
    if not images:
        raise DataError(f"{img_dir}: no .nii or .nii.gz files")
    volumes = []
    for img in images:
        lab = lab_dir / img.name
        volumes.append(_volume(img, lab if lab.is_file() else None, "training", 0, 1, None))
    return VolumeSet(spec=spec or f"folder:{root}", format="folder", root=root, labels={}, modality=modality,
                     volumes=volumes, domain=root.name, task=root.name, group="CT" if modality == "CT" else "MR")


def detect_format(root: Path) -> str:
    """``acdc``, ``msd`` or ``folder`` for a downloaded dataset folder, else raise."""
    from medssl_utils.data.acdc import LAYOUTS, find_patient_dirs

    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: path does not exist")
    if not root.is_dir():
        raise DataError(f"{root}: expected a dataset folder, got a file")
    if (root / "dataset.json").is_file():
        return "msd"
    if find_patient_dirs(root):
        return "acdc"
    if (root / "images").is_dir():
        return "folder"
    raise DataError(
        f"{root}: unrecognised layout; supported: ACDC ({'; '.join(LAYOUTS)}), "
        "Medical Segmentation Decathlon (TaskNN_Name/ with dataset.json, imagesTr/, labelsTr/), "
        "folder (images/ and labels/ with matching .nii.gz names)"
    )
