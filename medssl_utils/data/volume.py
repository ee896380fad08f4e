"""The two records every reader returns: :class:`Volume` and :class:`VolumeSet`.

A :class:`Volume` is one 3D image (optionally with its label map) that is decoded only when
asked for, so listing a large dataset is cheap and memory stays bounded. Arrays are in the
file's voxel order, shape (X, Y, Z); 2D slices are taken along Z.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from medssl_utils.errors import DataError

Loader = Callable[[], np.ndarray]


@dataclass
class Volume:
    """One 3D volume: image (+ optional label), spacing in mm, case id and metadata.

    ``meta`` keys used across medssl: ``phase`` (ED | ES | cine | None), ``frame`` (1-based
    frame number in a cine series), ``group`` (ACDC pathology group), ``subset``
    (training | testing), ``series`` (which of a case's series or images, part of the volume
    id), ``modality`` (overrides the set's modality for this volume's normalisation),
    ``domain``, ``task``, ``group_tag``. ``sources`` names the files
    behind the volume (for error messages and cache keys).
    """

    case_id: str
    spacing: tuple[float, float, float]
    shape: tuple[int, int, int]
    affine: np.ndarray
    load_image: Loader
    load_label: Loader | None = None
    meta: dict = field(default_factory=dict)
    sources: tuple[str, ...] = ()

    @property
    def has_label(self) -> bool:
        return self.load_label is not None

    @property
    def volume_id(self) -> str:
        """Unique within a dataset: case id plus frame or phase where there are several."""
        parts = [self.case_id]
        if self.meta.get("series"):  # several series (DICOM) or images per case
            parts.append(str(self.meta["series"]))
        if self.meta.get("phase") in ("ED", "ES"):
            parts.append(self.meta["phase"])
        elif self.meta.get("frame") is not None:
            parts.append(f"frame{int(self.meta['frame']):02d}")
        return "_".join(parts)

    def load(self) -> tuple[np.ndarray, np.ndarray | None]:
        """Decode image (float32) and label (uint8 or None), checking they match in shape."""
        image = self.load_image()
        label = self.load_label() if self.load_label is not None else None
        if image.shape != tuple(self.shape):
            raise DataError(f"{self.sources[0] if self.sources else self.case_id}: decoded shape "
                            f"{image.shape} differs from header shape {tuple(self.shape)}")
        if label is not None and label.shape != image.shape:
            raise DataError(
                f"{self.sources[-1]}: label shape {label.shape} does not match image shape {image.shape}"
            )
        return image, label

    def __repr__(self) -> str:  # keep notebook output short
        lab = "labelled" if self.has_label else "unlabelled"
        return f"Volume({self.volume_id!r}, shape={self.shape}, spacing={self.spacing}, {lab})"


@dataclass
class VolumeSet:
    """A dataset as read from disk (or made in memory): its volumes plus what they mean.

    ``labels`` maps class id to name (0 is background); empty for unlabelled sources.
    ``modality`` drives intensity normalisation: ``"CT"`` uses a Hounsfield window,
    everything else (MR, photographs) a percentile clip and z-score. ``domain``, ``task``
    and ``group`` tag every slice in multi-domain studies.
    """

    spec: str
    format: str
    root: Path | None
    labels: dict[int, str]
    modality: str
    volumes: list[Volume]
    domain: str
    task: str
    group: str
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.volumes)

    def __iter__(self):
        return iter(self.volumes)

    @property
    def case_ids(self) -> list[str]:
        seen: dict[str, None] = {}
        for v in self.volumes:
            seen.setdefault(v.case_id, None)
        return list(seen)

    def select(self, predicate: Callable[[Volume], bool]) -> "VolumeSet":
        """A copy holding only the volumes for which ``predicate`` is true."""
        return VolumeSet(**{**self.__dict__, "volumes": [v for v in self.volumes if predicate(v)]})

    def labelled(self) -> "VolumeSet":
        return self.select(lambda v: v.has_label)

    def unlabelled(self) -> "VolumeSet":
        return self.select(lambda v: not v.has_label)

    def fingerprint(self) -> str:
        """A hash of what the volumes are made from (paths, sizes, mtimes, selections).

        Changes whenever a source file is replaced, so caches keyed on it go stale safely.
        """
        h = hashlib.sha256()
        h.update(json.dumps([self.format, self.modality, sorted(self.labels.items())]).encode())
        for v in self.volumes:
            h.update(v.volume_id.encode())
            h.update(json.dumps({k: v.meta.get(k) for k in ("frame", "channel", "phase")}).encode())
            if v.meta.get("modality"):
                h.update(str(v.meta["modality"]).encode())
            for src in v.sources:
                p = Path(src)
                if p.exists():
                    st = p.stat()
                    h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
                else:
                    h.update(src.encode())
        return h.hexdigest()[:16]

    def __repr__(self) -> str:
        n_lab = sum(v.has_label for v in self.volumes)
        first = ", ".join(f"{k}: {v!r}" for k, v in list(self.labels.items())[:4])
        labels = self.labels if len(self.labels) <= 8 else "{" + first + f", … ({len(self.labels)} classes)}}"
        return (f"VolumeSet({self.spec!r}, format={self.format}, cases={len(self.case_ids)}, "
                f"volumes={len(self.volumes)} ({n_lab} labelled), labels={labels})")


def check_label_values(label, label_map: dict[int, str], path) -> None:
    """Raise if ``label`` holds a class id that ``label_map`` does not define."""
    present = np.unique(label)
    unknown = sorted(int(v) for v in present if int(v) not in label_map)
    if unknown:
        raise DataError(
            f"{path}: label values {unknown} are outside the dataset's label map "
            f"{sorted(label_map)} ({', '.join(f'{k}={v}' for k, v in sorted(label_map.items()))})"
        )
