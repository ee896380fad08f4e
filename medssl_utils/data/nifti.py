"""NIfTI reading and writing with errors that name the file.

nibabel reads headers eagerly and voxel data lazily, so a truncated ``.nii.gz`` only fails
when its data is touched; :func:`read_array` touches it and turns every low-level failure
(EOF, zlib, short read) into a :class:`~medssl_utils.errors.DataError` naming the file.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from medssl_utils.errors import DataError
from medssl_utils.fileio import atomic_file

NIFTI_SUFFIXES = (".nii.gz", ".nii")


def is_nifti(path: Path) -> bool:
    """True for ``*.nii``/``*.nii.gz`` files that are not macOS ``._*`` resource forks."""
    name = Path(path).name
    return name.endswith(NIFTI_SUFFIXES) and not name.startswith("._")


def strip_nifti_suffix(name: str) -> str:
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def find_nifti(directory: Path, stem: str) -> Path | None:
    """The file ``stem.nii.gz`` or ``stem.nii`` in ``directory`` (first that exists), else None."""
    for suffix in NIFTI_SUFFIXES:
        candidate = Path(directory) / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


@dataclass(frozen=True)
class Header:
    """What a NIfTI header says, read without touching the voxel data."""

    path: Path
    shape: tuple[int, ...]
    spacing: tuple[float, float, float]  # mm along the first three axes
    affine: np.ndarray


def read_header(path: Path) -> Header:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with _held_nibabel_log() as held:
        try:
            img = nib.load(str(path))
        except Exception as exc:  # nibabel raises many types for broken headers
            raise DataError(f"{path}: not a readable NIfTI file ({_reason(exc)})") from exc
    shape = tuple(int(s) for s in img.shape)
    if len(shape) < 2:
        raise DataError(f"{path}: expected an image with at least 2 dimensions, got shape {shape}")
    if any(s < 1 for s in shape):
        raise DataError(f"{path}: has an empty axis (shape {shape}); expected at least one voxel along every axis")
    dtype = np.dtype(img.get_data_dtype())
    if dtype.fields is not None or dtype.kind not in "biuf":
        raise DataError(f"{path}: voxel type {dtype} ({'RGB' if dtype.fields else dtype.kind}); expected real "
                        "numbers (integer or floating point), one value per voxel")
    pixdim = [float(z) for z in _raw_pixdim(path, img)[: min(3, len(shape))]]
    zooms = tuple(pixdim) + (1.0,) * (3 - len(pixdim))
    if any(not np.isfinite(z) or z <= 0 for z in zooms):
        raise DataError(f"{path}: voxel spacing {tuple(pixdim)} mm is not positive and finite; "
                        "expected the voxel size in mm in the header (pixdim)")
    for record in held:  # nibabel's notes on other header fixes, once ours passed
        nib.imageglobals.logger.handle(record)
    return Header(path=path, shape=shape, spacing=zooms, affine=np.asarray(img.affine, dtype=np.float64))


def volume_shape(hdr: Header, extra_axes: int = 0) -> tuple[int, int, int]:
    """(X, Y, Z) of the 3D volume a header describes; a 2D image is (X, Y, 1).

    ``extra_axes`` is how many axes after the third the caller selects from (a cine frame or
    an image channel); any further axis is an error naming the file and its real shape.
    """
    shape = hdr.shape
    if len(shape) > 3 + extra_axes:
        what = "a 2D or 3D image" if extra_axes == 0 else f"a 3D image with {extra_axes} extra axis"
        raise DataError(f"{hdr.path}: has shape {shape}; expected {what}")
    return tuple(shape[:3]) if len(shape) >= 3 else (*shape, 1)


def check_label_header(lab: Header, img: Header) -> None:
    """Raise unless label ``lab`` has the image's voxel grid (shapes as the files state them)."""
    lshape = tuple(lab.shape[:3]) if len(lab.shape) >= 3 else (*lab.shape, 1)
    ishape = tuple(img.shape[:3]) if len(img.shape) >= 3 else (*img.shape, 1)
    if lshape != ishape or len(lab.shape) > 3:
        raise DataError(f"{lab.path}: label shape {lab.shape} does not match image shape {img.shape} "
                        f"of {img.path.name}" + (" (a label map is one 3D or 2D array)" if len(lab.shape) > 3 else ""))


@contextlib.contextmanager
def _held_nibabel_log():
    """Hold nibabel's header-fix log lines (they name no file) so an error of ours replaces them."""
    logger = nib.imageglobals.logger
    records: list[logging.LogRecord] = []

    class Hold(logging.Handler):
        def emit(self, record):
            records.append(record)

    handlers, logger.handlers = logger.handlers, [Hold()]
    try:
        yield records
    finally:
        logger.handlers = handlers


def _raw_pixdim(path: Path, img) -> list[float]:
    """Voxel sizes as the file stores them: nibabel's loader silently replaces a 0 by 1 mm."""
    header_class = type(img.header)
    if "pixdim" not in img.header or not hasattr(header_class, "from_fileobj"):
        return [float(z) for z in img.header.get_zooms()[:3]]
    try:
        with nib.openers.ImageOpener(str(path)) as fobj:
            raw = header_class.from_fileobj(fobj, check=False)
    except Exception as exc:
        raise DataError(f"{path}: not a readable NIfTI header ({_reason(exc)})") from exc
    return [float(z) for z in raw["pixdim"][1:4]]


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


@functools.lru_cache(maxsize=2)
def _read_cached(path: str, mtime_ns: int, size: int) -> np.ndarray:
    """Whole-file decode, cached so the frames of one 4D cine file are decoded once."""
    try:
        img = nib.load(path)
    except Exception as exc:
        raise DataError(f"{path}: not a readable NIfTI file ({_reason(exc)})") from exc
    try:
        data = np.asanyarray(img.dataobj)
    except (EOFError, zlib.error, OSError, ValueError) as exc:
        raise DataError(f"{path}: corrupt or truncated NIfTI data ({_reason(exc)})") from exc
    except Exception as exc:
        raise DataError(f"{path}: could not read NIfTI data ({_reason(exc)})") from exc
    data.setflags(write=False)
    return data


def read_array(path: Path, *, index: tuple[int | None, ...] = (), kind: str = "image") -> np.ndarray:
    """Decode a NIfTI file's voxels.

    ``index`` picks along the axes after the third (e.g. ``(frame,)`` for a 4D cine file or
    ``(channel,)`` for a multi-modal image); ``None`` keeps an axis. ``kind`` is ``"image"``
    (float32, must be finite) or ``"label"`` (uint8, must hold non-negative integers).
    Returns an array of shape (X, Y, Z) in the file's voxel order.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    st = os.stat(path)
    data = _read_cached(str(path), st.st_mtime_ns, st.st_size)
    if data.ndim == 2:
        data = data[:, :, None]
    extra = data.ndim - 3
    idx = tuple(index) + (None,) * max(0, extra - len(index))
    if len(idx) > extra:
        raise DataError(f"{path}: has shape {data.shape}; cannot index extra axes {tuple(index)}")
    sel: list = [slice(None)] * 3
    for axis, i in enumerate(idx):
        size = data.shape[3 + axis]
        if i is None:
            sel.append(slice(None))
        elif not -size <= i < size:
            raise DataError(f"{path}: index {i} out of range for axis {3 + axis} of size {size}")
        else:
            sel.append(i)
    arr = data[tuple(sel)]
    while arr.ndim > 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise DataError(
            f"{path}: expected a 3D volume after selecting {tuple(index)}, got shape {arr.shape}; "
            "pick a frame or channel"
        )
    if kind == "label":
        return _as_label(arr, path)
    arr = np.asarray(arr, dtype=np.float32)
    bad = int(np.count_nonzero(~np.isfinite(arr)))
    if bad:
        raise DataError(f"{path}: {bad} voxels are NaN or infinite; expected finite intensities")
    return arr


def _as_label(arr: np.ndarray, path: Path) -> np.ndarray:
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise DataError(f"{path}: label map holds NaN or infinite values")
        rounded = np.rint(arr)
        if np.any(np.abs(arr - rounded) > 1e-3):
            raise DataError(f"{path}: label map holds non-integer values; expected integer class ids")
        arr = rounded
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise DataError(f"{path}: label values span {arr.min()}..{arr.max()}; expected class ids 0..255")
    return np.asarray(arr, dtype=np.uint8)


def write_nifti(path: Path, data: np.ndarray, spacing, *, affine: np.ndarray | None = None) -> Path:
    """Write ``data`` (X, Y, Z[, ...]) with voxel ``spacing`` in mm, atomically.

    Without an explicit ``affine`` the affine is diagonal with the spacing. The file is
    written beside its destination and renamed into place, so a crash leaves no half file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    spacing = tuple(float(s) for s in spacing)
    if affine is None:
        affine = np.diag([*spacing[:3], 1.0])
    img = nib.Nifti1Image(np.asarray(data), affine)
    zooms = list(img.header.get_zooms())
    zooms[: len(spacing)] = spacing[: len(zooms)]
    img.header.set_zooms(zooms)
    img.header.set_xyzt_units("mm", "sec")
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else ".nii"
    with atomic_file(path, suffix) as tmp:  # nibabel picks the format by the suffix
        nib.save(img, str(tmp))
    return path
