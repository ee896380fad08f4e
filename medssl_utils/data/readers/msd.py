"""Reader for Medical Segmentation Decathlon task folders.

MSD (Antonelli et al., Nat. Commun. 2022): a task folder ``TaskNN_Name/`` holds
``dataset.json`` (``modality`` map, ``labels`` map, ``training`` list of image/label pairs,
``test`` list of images), ``imagesTr/``, ``labelsTr/`` and ``imagesTs/``. The real archives
carry a macOS ``._*`` resource fork beside every volume: those are ignored. Multi-modal
tasks store 4D images (X, Y, Z, C) with C equal to the number of modalities; one channel is
chosen by index or modality name (default the first). nnU-Net v2 style files
(``channel_names``, labels as name → id) are read too.

Every field of ``dataset.json`` that medssl uses is checked before any image is read:
the modality map (keys 0..C-1, string names), the label map (integer ids 0..255, string
names, no id twice), the ``training`` entries (``image`` and ``label`` paths as strings,
no image listed twice), ``test`` (paths as strings) and ``numTraining`` when present.
"""

from __future__ import annotations

import json
from pathlib import Path

from medssl_utils.data.nifti import check_label_header, read_array, read_header, strip_nifti_suffix, volume_shape
from medssl_utils.data.readers.base import Option, Reader
from medssl_utils.data.volume import Volume, VolumeSet, check_label_values
from medssl_utils.errors import DataError, ParameterError


def read_dataset_json(root: Path) -> dict:
    path = Path(root) / "dataset.json"
    if not path.is_file():
        raise DataError(f"{path}: not found; an MSD task folder (TaskNN_Name/) holds dataset.json")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
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
        if isinstance(v, str) and _is_int(k):
            cid, name = int(k), v  # MSD: {"0": "background"}
        elif isinstance(v, int) and not isinstance(v, bool):
            cid, name = v, k  # nnU-Net v2: {"background": 0}
        else:
            raise DataError(f"{path}: label entry {k!r}: {v!r} is not 'id: name' (MSD) or 'name: id' (nnU-Net v2); "
                            "region labels (lists of ids) are not supported")
        if not 0 <= cid <= 255:
            raise DataError(f"{path}: label id {cid} ({name!r}) is outside 0..255")
        if cid in out:
            raise DataError(f"{path}: label id {cid} is given twice ({out[cid]!r} and {name!r})")
        out[cid] = name
    out.setdefault(0, "background")
    return dict(sorted(out.items()))


def _is_int(text) -> bool:
    return isinstance(text, str) and text.strip().isdigit()


def _modalities(meta: dict, path: Path) -> list[str]:
    key = "modality" if "modality" in meta else "channel_names" if "channel_names" in meta else None
    if key is None:
        return ["unknown"]
    mod = meta[key]
    if not isinstance(mod, dict) or not mod:
        raise DataError(f"{path}: '{key}' must be a map of channel index to name, e.g. {{\"0\": \"T2\"}}; got {mod!r}")
    bad = [k for k in mod if not _is_int(k)]
    if bad:
        raise DataError(f"{path}: '{key}' key {bad[0]!r} is not a channel index; expected keys 0..{len(mod) - 1}")
    if sorted(int(k) for k in mod) != list(range(len(mod))):
        raise DataError(f"{path}: '{key}' keys {sorted(mod, key=int)} are not the channel indices 0..{len(mod) - 1}")
    names = [mod[k] for k in sorted(mod, key=int)]
    bad_names = [n for n in names if not isinstance(n, str) or not n.strip()]
    if bad_names:
        raise DataError(f"{path}: '{key}' name {bad_names[0]!r} is not a non-empty string")
    return names


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


def _entry_path(root: Path, rel, dataset_json: Path, what: str) -> Path:
    if not isinstance(rel, str) or not rel.strip():
        raise DataError(f"{dataset_json}: {what} is {rel!r}; expected a file path (string)")
    p = (root / rel).resolve() if not Path(rel).is_absolute() else Path(rel)
    if not p.is_file():
        raise DataError(f"{p}: listed in {dataset_json} but not found")
    return p


def _items(root: Path, meta: dict, dj: Path, include_test: bool) -> list[tuple[Path, Path | None, str]]:
    training = meta.get("training")
    if not isinstance(training, list):
        raise DataError(f"{dj}: missing 'training' list of {{'image': ..., 'label': ...}} entries")
    n = meta.get("numTraining")
    if isinstance(n, int) and not isinstance(n, bool) and n != len(training):
        raise DataError(f"{dj}: numTraining is {n} but the 'training' list has {len(training)} entries")
    items: list[tuple[Path, Path | None, str]] = []
    for i, entry in enumerate(training):
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            raise DataError(f"{dj}: training entry {i} is not {{'image': ..., 'label': ...}}")
        items.append((_entry_path(root, entry["image"], dj, f"training entry {i} image"),
                      _entry_path(root, entry["label"], dj, f"training entry {i} label"), "training"))
    test = meta.get("test", [])
    if not isinstance(test, list):
        raise DataError(f"{dj}: 'test' is {type(test).__name__}; expected a list of image paths")
    if include_test:
        for i, rel in enumerate(test):
            rel = rel.get("image") if isinstance(rel, dict) else rel
            items.append((_entry_path(root, rel, dj, f"test entry {i}"), None, "testing"))
    seen: dict[Path, int] = {}
    for i, (img, _, _) in enumerate(items):
        if img in seen:
            raise DataError(f"{img}: listed twice in {dj} (entries {seen[img]} and {i})")
        seen[img] = i
    return items


def read_msd(root: Path, *, channel=None, include_test: bool = True, spec: str | None = None) -> VolumeSet:
    """Read an MSD task folder; see the module docstring."""
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"{root}: path does not exist")
    if not root.is_dir():
        raise DataError(f"{root}: expected an MSD task folder, got a file")
    meta = read_dataset_json(root)
    dj = root / "dataset.json"
    labels = _label_map(meta, dj)
    modalities = _modalities(meta, dj)
    ch = resolve_channel(channel, modalities, str(root))
    task = str(meta.get("name") or root.name)
    items = _items(root, meta, dj, include_test)
    volumes = [_volume(img, lab, subset, ch, len(modalities), labels, dj) for img, lab, subset in items]
    modality = modalities[ch]
    return VolumeSet(
        spec=spec or f"msd:{root}", format="msd", root=root, labels=labels,
        modality="CT" if modality.upper() == "CT" else modality, volumes=volumes,
        domain=root.name, task=task, group="CT" if modality.upper() == "CT" else "MR",
        meta={"modalities": modalities, "channel": ch, "description": meta.get("description")},
    )


def _volume(img: Path, lab: Path | None, subset: str, channel: int, n_channels: int,
            labels: dict[int, str] | None, dataset_json: Path | None = None) -> Volume:
    """One image (+ label) whose channel count must be ``n_channels`` (a 3D image has one)."""
    hdr = read_header(img)
    has_channels = len(hdr.shape) == 4
    found = hdr.shape[3] if has_channels else 1
    if len(hdr.shape) <= 4 and found != n_channels:
        listed = f"{dataset_json} lists {n_channels} modalities" if dataset_json else "expected one channel"
        raise DataError(f"{img}: has {found} channel{'s' * (found != 1)} (shape {hdr.shape}) but {listed}")
    shape = volume_shape(hdr, extra_axes=1 if has_channels else 0)
    load_label = None
    sources = [str(img)]
    if lab is not None:
        check_label_header(read_header(lab), hdr)
        load_label = lambda p=lab: _checked_label(p, labels)  # noqa: E731
        sources.append(str(lab))
    return Volume(
        case_id=strip_nifti_suffix(img.name), spacing=hdr.spacing, shape=shape, affine=hdr.affine,
        load_image=lambda p=img, i=(channel,) if has_channels else (): read_array(p, index=i), load_label=load_label,
        meta={"subset": subset, "channel": channel}, sources=tuple(sources),
    )


def _checked_label(path: Path, labels: dict[int, str] | None):
    lab = read_array(path, kind="label")
    if labels:
        check_label_values(lab, labels, path)
    return lab


def _read(target: str, opts: dict, spec: str) -> VolumeSet:
    return read_msd(Path(target), channel=opts["channel"], include_test=opts["test"], spec=spec)


READER = Reader(
    kind="msd", target="path", read=_read, example="/data/Task05_Prostate",
    detect=lambda root: (Path(root) / "dataset.json").is_file(),
    doc="Medical Segmentation Decathlon task folder (dataset.json, imagesTr, labelsTr, imagesTs)",
    layout="Medical Segmentation Decathlon (TaskNN_Name/ with dataset.json, imagesTr/, labelsTr/)",
    options=(
        Option("channel", "str", doc="channel of multi-modal tasks: an index or a modality name (default: the first)"),
        Option("test", "bool", default=True, doc="also read imagesTs (unlabelled)"),
    ),
)
