"""Volumes → normalised, resized 2D slices, cached on disk as memory-mapped arrays.

Intensity normalisation (per volume, before slicing; a volume's own ``meta["modality"]``,
when a reader sets one, overrides the dataset's — e.g. CT and MR series in one DICOM folder):

* MR, photographs: clip to the volume's 0.5th–99.5th percentiles, then z-score with the mean
  and standard deviation of the clipped volume. Float throughout: no integer arithmetic that
  could overflow or blank a slice (the published Work A code normalised uint16 data with the
  wrong scale).
* CT: clip to a Hounsfield window (default −160…240 HU, an abdominal soft-tissue window) and
  map it linearly to [−1, 1].

Geometry: each z-slice (X, Y) is padded to a square (centred, with the volume's minimum
normalised value for images and 0 for labels) and resized to ``image_size`` × ``image_size``
(bilinear with antialiasing for images, nearest for labels). The padding and original size
are stored per slice so predictions can be mapped back onto the original voxel grid.

Cache: ``$MEDSSL_CACHE_DIR/slices/<key>/`` holds ``images.npy`` (N, S, S) float16,
``labels.npy`` (N, S, S) uint8, ``index.csv`` (one row per slice) and ``meta.json``. The key
hashes the dataset's files (paths, sizes, mtimes), the selected volumes and the
preprocessing, so a changed file or setting builds a new cache. Volumes are processed one at
a time into pre-allocated memory maps, so memory stays bounded by one volume; the folder is
written under a temporary name and renamed into place when complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from medssl_utils.cache import cache_root
from medssl_utils.data.volume import Volume, VolumeSet
from medssl_utils.errors import DataError, ParameterError
from medssl_utils.fileio import atomic_folder, discard_folder
from medssl_utils.progress import progress as progress_bar

CACHE_FORMAT = 1


@dataclass(frozen=True)
class Preprocessing:
    """How volumes become slices. ``image_size`` is the side of the square output in pixels."""

    image_size: int = 128
    mr_percentiles: tuple[float, float] = (0.5, 99.5)
    ct_window: tuple[float, float] = (-160.0, 240.0)

    def __post_init__(self):
        if not isinstance(self.image_size, int) or not 8 <= self.image_size <= 2048:
            raise ParameterError(f"image_size={self.image_size!r}; expected an integer in 8..2048")
        lo, hi = self.mr_percentiles
        if not 0 <= lo < hi <= 100:
            raise ParameterError(f"mr_percentiles={self.mr_percentiles}; expected 0 <= low < high <= 100")
        if not self.ct_window[0] < self.ct_window[1]:
            raise ParameterError(f"ct_window={self.ct_window}; expected (low, high) with low < high")

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]


def normalise_volume(image: np.ndarray, modality: str, prep: Preprocessing = Preprocessing(),
                     where: str = "volume") -> np.ndarray:
    """Normalise one volume's intensities (see module docstring); returns float32."""
    image = np.asarray(image, dtype=np.float32)
    if modality.upper() == "CT":
        lo, hi = prep.ct_window
        out = (np.clip(image, lo, hi) - (lo + hi) / 2) / ((hi - lo) / 2)
        return out.astype(np.float32)
    lo, hi = np.percentile(image, prep.mr_percentiles)
    clipped = np.clip(image, lo, hi)
    std = float(clipped.std())
    if not std > 0:
        raise DataError(f"{where}: intensities are constant ({float(lo)}); nothing to normalise")
    return ((clipped - clipped.mean()) / std).astype(np.float32)


def square_geometry(x: int, y: int) -> tuple[int, int, int]:
    """(side, pad_x, pad_y): the square a (x, y) slice is centred in before resizing."""
    side = max(x, y)
    return side, (side - x) // 2, (side - y) // 2


def resize_volume(image: np.ndarray, label: np.ndarray | None, size: int):
    """Pad each z-slice of (X, Y, Z) to a square and resize to (Z, size, size)."""
    x, y, _ = image.shape
    side, px, py = square_geometry(x, y)
    img = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[:, None]  # (Z, 1, X, Y)
    pads = (py, side - y - py, px, side - x - px)
    img = F.pad(img, pads, value=float(image.min()))
    if side != size:
        img = F.interpolate(img, size=(size, size), mode="bilinear", align_corners=False, antialias=side > size)
    lab = None
    if label is not None:
        lt = torch.from_numpy(np.ascontiguousarray(label.transpose(2, 0, 1)))[:, None].float()
        lt = F.pad(lt, pads, value=0.0)
        if side != size:
            lt = F.interpolate(lt, size=(size, size), mode="nearest-exact")
        lab = lt[:, 0].round().to(torch.uint8).numpy()
    return img[:, 0].numpy(), lab


def restore_slices(slices: np.ndarray, orig_x: int, orig_y: int) -> np.ndarray:
    """Inverse of the slice geometry for label maps: (Z, S, S) class ids → (X, Y, Z)."""
    side, px, py = square_geometry(orig_x, orig_y)
    t = torch.from_numpy(np.ascontiguousarray(slices))[:, None].float()
    if t.shape[-1] != side:
        t = F.interpolate(t, size=(side, side), mode="nearest-exact")
    t = t[:, 0, px:px + orig_x, py:py + orig_y]
    return t.round().to(torch.uint8).numpy().transpose(1, 2, 0)


class SliceCache:
    """Preprocessed slices of one dataset, memory-mapped from disk.

    ``images`` (N, S, S) float16 and ``labels`` (N, S, S) uint8 open lazily (and re-open in
    each DataLoader worker, since memory maps must not be pickled); ``index`` is a DataFrame
    with one row per slice: volume_id, case_id, subset, phase, frame, z, n_z, position
    (0 at the first slice, 1 at the last), has_label, spacing and geometry.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.meta = json.loads((self.path / "meta.json").read_text())
        self.index = pd.read_csv(self.path / "index.csv", keep_default_na=False,
                                 dtype={"case_id": str, "volume_id": str, "phase": str, "subset": str})
        self._images = None
        self._labels = None

    def __getstate__(self):
        return {**self.__dict__, "_images": None, "_labels": None}

    @property
    def images(self) -> np.ndarray:
        if self._images is None:
            self._images = np.load(self.path / "images.npy", mmap_mode="r")
        return self._images

    @property
    def labels(self) -> np.ndarray:
        if self._labels is None:
            self._labels = np.load(self.path / "labels.npy", mmap_mode="r")
        return self._labels

    @property
    def label_names(self) -> dict[int, str]:
        return {int(k): v for k, v in self.meta["labels"].items()}

    @property
    def image_size(self) -> int:
        return int(self.meta["preprocessing"]["image_size"])

    def __len__(self) -> int:
        return len(self.index)

    def __repr__(self) -> str:
        n_lab = int(self.index["has_label"].sum()) if len(self.index) else 0
        return (f"SliceCache({self.meta['spec']!r}, slices={len(self)} ({n_lab} labelled), "
                f"size={self.image_size}, path={str(self.path)!r})")


def _slice_rows(vol: Volume, n_z: int, start: int) -> list[dict]:
    x, y = vol.shape[:2]
    side, px, py = square_geometry(x, y)
    base = {
        "volume_id": vol.volume_id, "case_id": vol.case_id, "subset": vol.meta.get("subset", ""),
        "phase": vol.meta.get("phase") or "",
        "frame": vol.meta.get("frame") if vol.meta.get("frame") is not None else -1,
        "group": vol.meta.get("group") or "", "has_label": vol.has_label, "n_z": n_z,
        "spacing_x": vol.spacing[0], "spacing_y": vol.spacing[1], "spacing_z": vol.spacing[2],
        "orig_x": x, "orig_y": y, "pad_x": px, "pad_y": py,
    }
    return [{"slice": start + z, **base, "z": z, "position": z / (n_z - 1) if n_z > 1 else 0.5}
            for z in range(n_z)]


def cache_key(vs: VolumeSet, prep: Preprocessing) -> str:
    return f"{vs.fingerprint()}-{prep.key()}-v{CACHE_FORMAT}"


def slice_cache(vs: VolumeSet, prep: Preprocessing | None = None, *, image_size: int | None = None,
                cache_dir: Path | None = None, progress: bool = False) -> SliceCache:
    """Return the slice cache for ``vs`` (building it on first use). See module docstring."""
    if prep is None:
        prep = Preprocessing(image_size=image_size or 128)
    elif image_size is not None and image_size != prep.image_size:
        raise ParameterError(f"image_size={image_size} contradicts preprocessing.image_size={prep.image_size}")
    if not vs.volumes:
        raise DataError(f"{vs.spec}: no volumes selected; nothing to slice")
    root = Path(cache_dir) if cache_dir is not None else cache_root() / "slices"
    final = root / cache_key(vs, prep)
    if final.exists():
        problem = cache_problem(final)
        if problem is None:
            return SliceCache(final)
        print(f"slice cache {final}: {problem}; rebuilding it", file=sys.stderr)
        discard_folder(final)
    return SliceCache(_build(vs, prep, final, progress))


def _npy_problem(path: Path, shape: tuple, dtype) -> str | None:
    """Why ``path`` is not a complete .npy array of ``shape`` and ``dtype`` (None when it is)."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version not in ((1, 0), (2, 0)):
                return f"{path.name} is .npy version {version}, not one medssl writes"
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            header = read(f)  # (shape, fortran_order, dtype)
            offset = f.tell()
    except FileNotFoundError:
        return f"{path.name} is missing"
    except (OSError, ValueError) as exc:
        return f"{path.name} has no readable .npy header ({' '.join(str(exc).split())[:80]})"
    if tuple(header[0]) != tuple(shape) or np.dtype(header[2]) != np.dtype(dtype):
        return f"{path.name} holds {header[2]} {tuple(header[0])}, expected {np.dtype(dtype)} {tuple(shape)}"
    size, expected = path.stat().st_size, offset + int(np.prod(shape)) * np.dtype(dtype).itemsize
    if size != expected:
        return f"{path.name} is {size} bytes, expected {expected} (cut short)" if size < expected else \
            f"{path.name} is {size} bytes, expected {expected}"
    return None


def cache_problem(path: str | os.PathLike) -> str | None:
    """Why the slice cache entry ``path`` cannot be served (None when it is complete): ``meta.json``
    readable, ``index.csv`` with one row per slice, ``images.npy`` / ``labels.npy`` of the shape,
    type and byte size ``meta.json`` states. Reads headers and sizes only."""
    path = Path(path)
    try:
        meta = json.loads((path / "meta.json").read_text())
        n, s = int(meta["n_slices"]), int(meta["preprocessing"]["image_size"])
    except FileNotFoundError:
        return "meta.json is missing"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"meta.json is unreadable ({type(exc).__name__})"
    if meta.get("cache_format") != CACHE_FORMAT:
        return f"cache format {meta.get('cache_format')!r}, expected {CACHE_FORMAT}"
    for name, dtype in (("images.npy", np.float16), ("labels.npy", np.uint8)):
        why = _npy_problem(path / name, (n, s, s), dtype)
        if why:
            return why
    try:
        with open(path / "index.csv", "rb") as f:
            rows = sum(1 for _ in f) - 1
    except FileNotFoundError:
        return "index.csv is missing"
    if rows != n:
        return f"index.csv has {rows} rows, expected {n}"
    return None



def _build(vs: VolumeSet, prep: Preprocessing, final: Path, progress: bool) -> Path:
    t0 = time.perf_counter()
    counts = [v.shape[2] for v in vs.volumes]
    n, s = int(sum(counts)), prep.image_size
    final.parent.mkdir(parents=True, exist_ok=True)
    with atomic_folder(final) as tmp:  # built concurrently by another process: theirs is kept
        images = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.float16, shape=(n, s, s))
        labels = np.lib.format.open_memmap(tmp / "labels.npy", mode="w+", dtype=np.uint8, shape=(n, s, s))
        rows: list[dict] = []
        start = 0
        bar = progress_bar(len(vs.volumes), f"slicing {vs.spec}", progress)  # no widget: keeps the kernel "busy"
        for vol, n_z in zip(vs.volumes, counts):
            where = vol.sources[0] if vol.sources else vol.volume_id
            image, label = vol.load()
            norm = normalise_volume(image, vol.meta.get("modality") or vs.modality, prep, where=where)
            img_s, lab_s = resize_volume(norm, label, s)
            images[start:start + n_z] = img_s.astype(np.float16)
            if lab_s is not None:
                labels[start:start + n_z] = lab_s
            rows += _slice_rows(vol, n_z, start)
            start += n_z
            bar.update(1)
        bar.close()
        images.flush()
        labels.flush()
        del images, labels
        pd.DataFrame(rows).to_csv(tmp / "index.csv", index=False)
        meta = {
            "spec": vs.spec, "format": vs.format, "root": str(vs.root) if vs.root else None,
            "labels": {str(k): v for k, v in vs.labels.items()}, "modality": vs.modality,
            "domain": vs.domain, "task": vs.task, "group": vs.group, "preprocessing": asdict(prep),
            "n_slices": n, "n_volumes": len(vs.volumes), "build_seconds": round(time.perf_counter() - t0, 3),
            "cache_format": CACHE_FORMAT,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    return final
