"""``dicom:PATH``: a folder (searched recursively) or a single file of DICOM images, read with pydicom.

**Series.** Files are grouped by SeriesInstanceUID. A series whose images carry patient
geometry (ImagePositionPatient, ImageOrientationPatient, PixelSpacing) becomes one 3D
volume: slices are ordered by their position along the slice normal (the cross product of
the row and column directions), the in-plane spacing is PixelSpacing, and the spacing
between slices is the distance between consecutive ImagePositionPatient along the normal.
A single slice has no such distance: its spacing is SpacingBetweenSlices, else
SliceThickness (the fallback is recorded in ``meta["spacing_source"]`` and shown by
``medssl data summary``). Multi-frame (enhanced) objects contribute one slice per frame,
with position, orientation, spacing and rescale read from the per-frame and shared
functional groups.

Images without patient geometry (radiographs, ultrasound, secondary captures, nuclear
medicine planar images) are separate 2D images: one volume per file (a multi-frame file
is a stack of its frames); the in-plane spacing is PixelSpacing, else ImagerPixelSpacing
(at the detector), else the ultrasound region's physical delta, else 1 (pixels) — the
source is recorded in ``meta["spacing_source"]``.

**Intensities.** Rescale slope and intercept are applied (CT in Hounsfield units), or the
Modality LUT when a file has one; MONOCHROME1 images are negated so that bright means
dense, as in MONOCHROME2 (normalisation is per volume); colour images (RGB, YBR, palette colour) are converted to grey
with the ITU-R BT.601 luma weights. The modality is the Modality tag (CT uses the
Hounsfield window in normalisation, everything else percentiles).

**Voxel order.** Arrays are (columns, rows, slices): each frame is stored as
``pixels[::-1].T`` so that ``imshow(slice.T, origin="lower")`` shows it as a DICOM viewer
does; the affine maps voxels to RAS millimetres (DICOM's LPS with x and y negated).

**Labels.** A ``labels/`` folder at the top of PATH may hold DICOM-SEG objects (matched to
their series by ReferencedSeriesSequence; each frame placed by its referenced SOP instance,
else by its position) and NIfTI label maps named ``<SeriesInstanceUID>.nii.gz`` or
``<volume id>.nii.gz`` (e.g. ``P001_S3.nii.gz``), reoriented onto the series' grid through the
two affines; NIfTI labels need ``labels/labels.json`` naming the classes (``{"1": "liver"}``).
Without ``labels/`` every series is unlabelled.

**Refusals.** One line naming the file for: files with a .dcm suffix that are not DICOM,
unreadable headers, series with mixed orientations, image sizes or pixel spacings, slices
sharing a position, missing slices (a gap that is a multiple of the usual spacing),
unequal spacing, slices not stacked along their normal (gantry tilt), compressed pixel
data without an installed decoder, geometry missing from some images only, label files
that match no series or whose grid differs. By default any such series stops the read;
``bad_series=skip`` leaves those series out instead, each named in a warning and in
``VolumeSet.meta["skipped"]``. Files that are not DICOM Part 10 (no ``DICM`` prefix)
and DICOM objects without pixels (DICOMDIR, reports, RT plans) are left out and listed
in ``VolumeSet.meta["ignored"]``.
"""

from __future__ import annotations

import json
import re
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medssl_utils.data.nifti import read_array, read_header
from medssl_utils.data.readers.base import Option, Reader
from medssl_utils.data.volume import check_label_values, Volume, VolumeSet
from medssl_utils.errors import DataError

DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
ORIENTATION_TOL = 1e-3  # direction cosines
SPACING_TOL = 1e-3  # relative, in-plane spacing
GAP_TOL = 0.01  # relative (and 0.01 mm absolute) deviation of a slice gap from the usual one


@dataclass
class Slice:
    """One 2D image: a single-frame file, or one frame of a multi-frame file."""

    path: Path
    frame: int | None
    rows: int
    cols: int
    position: np.ndarray | None
    orientation: np.ndarray | None
    pixel_spacing: tuple[float, float] | None  # (between rows, between columns) in mm
    spacing_source: str
    thickness: float | None
    between: float | None  # SpacingBetweenSlices
    slope: float
    intercept: float
    sop_uid: str
    instance: int | None


@dataclass
class Series:
    uid: str
    modality: str
    number: int | None
    description: str
    patient: str
    body_part: str
    transfer_syntaxes: set[str] = field(default_factory=set)
    slices: list[Slice] = field(default_factory=list)

    @property
    def files(self) -> list[Path]:
        return sorted({s.path for s in self.slices})

    @property
    def has_geometry(self) -> bool:
        return all(s.position is not None and s.orientation is not None for s in self.slices)


@dataclass
class DicomScan:
    root: Path
    series: list[Series]
    ignored: list[str]  # "FILE: why", files left out on purpose
    problems: list[str]  # "FILE: why", files that could not be used
    labels: list[Path]
    broken: set[str] = field(default_factory=set)  # series uids with a file among the problems


# ---------------------------------------------------------------------------- scanning
def _pydicom():
    try:
        import pydicom
    except ImportError:  # pragma: no cover - a dependency
        raise DataError("dataset kind 'dicom' needs pydicom (pip install pydicom)") from None
    return pydicom


def has_dicm_prefix(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _files(root: Path) -> tuple[list[Path], list[Path]]:
    """(candidate image files, files under labels/) below ``root``, hidden files left out."""
    if root.is_file():
        return [root], []
    images, labels = [], []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or p.name.startswith("._"):
            continue
        if p.is_symlink() and not p.exists():
            raise DataError(f"{p}: a symbolic link that leads nowhere (dangling or looping)")
        if not p.is_file():
            continue
        (labels if rel.parts[0] == "labels" and len(rel.parts) > 1 else images).append(p)
    return images, labels


def detect(root: Path) -> bool:
    """True when a folder holds at least one DICOM Part 10 file (checks at most 200 files)."""
    root = Path(root)
    for i, p in enumerate(root.rglob("*")):
        if i >= 200:
            return False
        if p.is_file() and has_dicm_prefix(p):
            return True
    return False


def _float_list(value, n: int, what: str, path: Path) -> np.ndarray | None:
    if value is None:
        return None
    try:
        arr = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{path}: {what} {value!r} is not {n} numbers") from None
    if arr.shape != (n,) or not np.all(np.isfinite(arr)):
        raise DataError(f"{path}: {what} {list(value)} is not {n} finite numbers")
    return arr


def _get(ds, keyword, default=None):
    value = ds.get(keyword, default)
    return default if value is None or value == "" else value


def _seq_item(ds, *keywords):
    """The first item of nested sequences ``ds.K1[0].K2[0]…``, or None."""
    for kw in keywords:
        seq = ds.get(kw) if ds is not None else None
        if not seq:
            return None
        ds = seq[0]
    return ds


def _frame_value(frame_groups, shared, seq: str, keyword: str):
    for groups in (frame_groups, shared):
        item = _seq_item(groups, seq) if groups is not None else None
        if item is not None and keyword in item:
            return item.get(keyword)
    return None


def _plane_spacing(ds, path: Path) -> tuple[tuple[float, float] | None, str]:
    """In-plane spacing (between rows, between columns) of a file without functional groups.

    A spacing of 0 (some radiographs say ``0\\0``) means unknown: the next source is tried and
    the note kept; a series with patient geometry then refuses the missing spacing.
    """
    notes = []
    for keyword in ("PixelSpacing", "ImagerPixelSpacing", "NominalScannedPixelSpacing"):
        if _get(ds, keyword) is not None:
            sp = _float_list(ds.get(keyword), 2, keyword, path)
            if np.all(sp > 0):
                return (float(sp[0]), float(sp[1])), keyword + "".join(f"; {n}" for n in notes)
            notes.append(f"{keyword} {[float(v) for v in sp]} is not positive")
    region = _seq_item(ds, "SequenceOfUltrasoundRegions")
    if region is not None and region.get("PhysicalUnitsXDirection") == 3 and region.get("PhysicalUnitsYDirection") == 3:
        dx, dy = float(region.get("PhysicalDeltaX", 0)), float(region.get("PhysicalDeltaY", 0))
        if dx > 0 and dy > 0:
            return (10 * dy, 10 * dx), "SequenceOfUltrasoundRegions (cm)"
    return None, "none (pixels" + "".join(f"; {n}" for n in notes) + ")"


def _slices_of(ds, path: Path) -> list[Slice]:
    rows, cols = int(ds.Rows), int(ds.Columns)
    n_frames = int(_get(ds, "NumberOfFrames", 1) or 1)
    shared = _seq_item(ds, "SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    sop = str(_get(ds, "SOPInstanceUID", path.name))
    instance = _get(ds, "InstanceNumber")
    instance = int(instance) if instance is not None else None
    if per_frame is not None or shared is not None:  # enhanced multi-frame
        if per_frame is not None and len(per_frame) != n_frames:
            raise DataError(f"{path}: {len(per_frame)} per-frame functional groups for {n_frames} frames")
        out = []
        for f in range(n_frames):
            fg = per_frame[f] if per_frame is not None else None
            pos = _frame_value(fg, shared, "PlanePositionSequence", "ImagePositionPatient")
            ori = _frame_value(fg, shared, "PlaneOrientationSequence", "ImageOrientationPatient")
            sp = _frame_value(fg, shared, "PixelMeasuresSequence", "PixelSpacing")
            thick = _frame_value(fg, shared, "PixelMeasuresSequence", "SliceThickness")
            between = _frame_value(fg, shared, "PixelMeasuresSequence", "SpacingBetweenSlices")
            slope = _frame_value(fg, shared, "PixelValueTransformationSequence", "RescaleSlope")
            icpt = _frame_value(fg, shared, "PixelValueTransformationSequence", "RescaleIntercept")
            spacing = _float_list(sp, 2, "PixelSpacing", path)
            out.append(Slice(
                path=path, frame=f, rows=rows, cols=cols,
                position=_float_list(pos, 3, "ImagePositionPatient", path),
                orientation=_float_list(ori, 6, "ImageOrientationPatient", path),
                pixel_spacing=tuple(float(v) for v in spacing) if spacing is not None else None,
                spacing_source="PixelSpacing (functional groups)" if spacing is not None else "none (pixels)",
                thickness=float(thick) if thick is not None else None,
                between=float(between) if between is not None else None,
                slope=float(slope) if slope is not None else float(_get(ds, "RescaleSlope", 1.0)),
                intercept=float(icpt) if icpt is not None else float(_get(ds, "RescaleIntercept", 0.0)),
                sop_uid=sop, instance=instance))
        return out
    spacing, source = _plane_spacing(ds, path)
    pos = _float_list(_get(ds, "ImagePositionPatient"), 3, "ImagePositionPatient", path)
    ori = _float_list(_get(ds, "ImageOrientationPatient"), 6, "ImageOrientationPatient", path)
    thick, between = _get(ds, "SliceThickness"), _get(ds, "SpacingBetweenSlices")
    common = dict(path=path, rows=rows, cols=cols, orientation=ori, pixel_spacing=spacing, spacing_source=source,
                  thickness=float(thick) if thick is not None else None,
                  between=float(between) if between is not None else None,
                  slope=float(_get(ds, "RescaleSlope", 1.0)), intercept=float(_get(ds, "RescaleIntercept", 0.0)),
                  sop_uid=sop, instance=instance)
    if n_frames == 1:
        return [Slice(frame=None, position=pos, **common)]
    return [Slice(frame=f, position=None, **{**common, "orientation": None}) for f in range(n_frames)]


def _decoder_problem(transfer_syntax: str) -> str | None:
    """Why pixel data in ``transfer_syntax`` cannot be decoded here, or None."""
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(transfer_syntax)
    except NotImplementedError:
        return f"pixel data in an unsupported transfer syntax ({transfer_syntax})"
    if decoder.is_available:
        return None
    needs = "; ".join(decoder.missing_dependencies) or "a decoding plugin"
    return f"compressed pixel data ({decoder.UID.name}) and no decoder installed (install one of: {needs})"


def scan(root: Path) -> DicomScan:
    """Read every header below ``root`` (no pixel data) and group images into series."""
    pydicom = _pydicom()
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"{root}: path does not exist")
    files, label_files = _files(root)
    by_uid: dict[str, Series] = {}
    ignored, problems, broken = [], [], set()
    for path in files:
        suffixed = path.suffix.lower() in DICOM_SUFFIXES
        if not has_dicm_prefix(path):
            if suffixed:
                problems.append(f"{path}: has a DICOM suffix but no 'DICM' prefix; not a DICOM Part 10 file "
                                "(truncated, or another format)")
            else:
                ignored.append(f"{path}: not a DICOM Part 10 file (no 'DICM' prefix)")
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as exc:  # pydicom raises many types for broken headers
            problems.append(f"{path}: unreadable DICOM header ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})")
            continue
        if "Rows" not in ds or "Columns" not in ds:
            ignored.append(f"{path}: a DICOM object without an image ({_get(ds, 'Modality', '?')}, "
                           f"{getattr(_get(ds, 'SOPClassUID'), 'name', 'unknown SOP class')})")
            continue
        modality = str(_get(ds, "Modality", "OT")).upper()
        if modality == "SEG":
            ignored.append(f"{path}: a DICOM-SEG outside labels/; put it in {root / 'labels'} to use it")
            continue
        uid = str(_get(ds, "SeriesInstanceUID", f"no-uid:{path}"))
        try:
            slices = _slices_of(ds, path)
        except DataError as exc:
            problems.append(str(exc))
            broken.add(uid)
            continue
        series = by_uid.get(uid)
        if series is None:
            number = _get(ds, "SeriesNumber")
            series = by_uid[uid] = Series(
                uid=uid, modality=modality, number=int(number) if number is not None else None,
                description=str(_get(ds, "SeriesDescription", "")), patient=str(_get(ds, "PatientID", "")),
                body_part=str(_get(ds, "BodyPartExamined", "")))
        elif modality != series.modality:
            problems.append(f"{path}: Modality {modality} in series {uid} of modality {series.modality}")
            broken.add(uid)
            continue
        series.transfer_syntaxes.add(str(getattr(ds, "file_meta", {}).get("TransferSyntaxUID", "")))
        series.slices += slices
    return DicomScan(root, list(by_uid.values()), ignored, problems, label_files, broken)


# ---------------------------------------------------------------------------- geometry
@dataclass
class Geometry:
    """How a series' slices form volumes: one stacked volume, or one volume per file."""

    volumes: list[tuple[list[Slice], tuple[float, float, float], np.ndarray, str]]  # slices, spacing, affine, source


def series_geometry(series: Series) -> Geometry:
    """Order, space and check a series' slices; raises DataError naming a file on any inconsistency."""
    for ts in sorted(series.transfer_syntaxes):
        why = _decoder_problem(ts) if ts else None
        if why:
            raise DataError(f"{series.files[0]}: {why}")
    slices = series.slices
    with_geo = [s.position is not None and s.orientation is not None for s in slices]
    if any(with_geo) and not all(with_geo):
        a, b = slices[with_geo.index(True)], slices[with_geo.index(False)]
        raise DataError(f"{b.path}: has no ImagePositionPatient/ImageOrientationPatient, but {a.path.name} of the "
                        f"same series has; cannot stack series {series.uid}")
    first = slices[0]
    for s in slices[1:]:
        if (s.rows, s.cols) != (first.rows, first.cols):
            raise DataError(f"{s.path}: image size {s.rows}×{s.cols} differs from {first.rows}×{first.cols} of "
                            f"{first.path.name} in the same series")
    if not all(with_geo):
        return Geometry([_flat_volume([s for s in slices if s.path == p]) for p in series.files])
    return Geometry([_stacked_volume(series, slices)])


def _flat_volume(slices: list[Slice]):
    s0 = slices[0]
    dy, dx = s0.pixel_spacing or (1.0, 1.0)
    spacing = (dx, dy, 1.0)
    return slices, spacing, np.diag([*spacing, 1.0]), s0.spacing_source + ("; frames stacked, 1 per slice"
                                                                          if len(slices) > 1 else "")


def _stacked_volume(series: Series, slices: list[Slice]):
    s0 = slices[0]
    for s in slices[1:]:
        if np.max(np.abs(s.orientation - s0.orientation)) > ORIENTATION_TOL:
            raise DataError(f"{s.path}: mixed orientations in series {series.uid}: "
                            f"{_fmt(s.orientation)} here, {_fmt(s0.orientation)} in {s0.path.name}")
        if s.pixel_spacing is None or s0.pixel_spacing is None:
            bad = s if s.pixel_spacing is None else s0
            raise DataError(f"{bad.path}: no usable PixelSpacing ({bad.spacing_source}); "
                            "an image with patient geometry needs it")
        if np.max(np.abs(np.subtract(s.pixel_spacing, s0.pixel_spacing))) > SPACING_TOL * max(s0.pixel_spacing):
            raise DataError(f"{s.path}: PixelSpacing {list(s.pixel_spacing)} differs from "
                            f"{list(s0.pixel_spacing)} of {s0.path.name} in the same series")
    if s0.pixel_spacing is None:
        raise DataError(f"{s0.path}: no usable PixelSpacing ({s0.spacing_source}); "
                        "an image with patient geometry needs it")
    row_dir, col_dir = s0.orientation[:3], s0.orientation[3:]
    normal = np.cross(row_dir, col_dir)
    if not (abs(np.linalg.norm(row_dir) - 1) < 0.01 and abs(np.linalg.norm(col_dir) - 1) < 0.01
            and abs(np.dot(row_dir, col_dir)) < 0.01):
        raise DataError(f"{s0.path}: ImageOrientationPatient {_fmt(s0.orientation)} is not two orthogonal unit vectors")
    order = sorted(range(len(slices)), key=lambda i: float(np.dot(slices[i].position, normal)))
    slices = [slices[i] for i in order]
    d = np.array([np.dot(s.position, normal) for s in slices])
    dy, dx = s0.pixel_spacing
    if len(slices) == 1:
        if s0.between and s0.between > 0:
            dz, source = s0.between, "SpacingBetweenSlices (a single slice)"
        elif s0.thickness and s0.thickness > 0:
            dz, source = s0.thickness, "SliceThickness (a single slice: no distance between positions)"
        else:
            dz, source = 1.0, "none (a single slice without SliceThickness; 1 mm stated)"
        step = normal * dz
    else:
        gaps = np.diff(d)
        dz = float(np.median(gaps))
        i = int(np.argmin(gaps))
        if gaps[i] <= max(1e-4, 1e-3 * dz):
            raise DataError(f"{slices[i + 1].path}: shares its position ({d[i]:.2f} mm along the normal) with "
                            f"{slices[i].path.name}; several echoes, phases or acquisitions in one series "
                            f"{series.uid}?")
        bad = np.abs(gaps - dz) > max(0.01, GAP_TOL * dz)
        if bad.any():
            j = int(np.argmax(np.abs(gaps - dz)))
            ratio = gaps[j] / dz
            if ratio > 1.5 and abs(ratio - round(ratio)) < 0.1:
                raise DataError(f"{slices[j + 1].path}: missing slices: a gap of {gaps[j]:.2f} mm after "
                                f"{slices[j].path.name} where the series' spacing is {dz:.2f} mm "
                                f"(about {round(ratio) - 1} slice(s) missing)")
            raise DataError(f"{slices[j + 1].path}: unequal slice spacing in series {series.uid}: gaps from "
                            f"{gaps.min():.2f} to {gaps.max():.2f} mm ({gaps[j]:.2f} mm after {slices[j].path.name})")
        step = (slices[-1].position - slices[0].position) / (len(slices) - 1)
        lateral = step - normal * np.dot(step, normal)
        if np.linalg.norm(lateral) > 0.01 * min(dx, dy) + 1e-3:
            raise DataError(f"{slices[1].path}: slices are not stacked along their normal (shifted "
                            f"{np.linalg.norm(lateral):.2f} mm sideways per slice: gantry tilt or a sheared series)")
        source = "ImagePositionPatient"
    lps = np.eye(4)
    lps[:3, 0] = row_dir * dx
    lps[:3, 1] = -col_dir * dy
    lps[:3, 2] = step
    lps[:3, 3] = slices[0].position + col_dir * dy * (s0.rows - 1)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    return slices, (float(dx), float(dy), float(dz)), affine, source


def _fmt(v) -> str:
    return "[" + ", ".join(f"{x:.3g}" for x in v) + "]"


# ---------------------------------------------------------------------------- pixels
def decode_slices(slices: list[Slice]) -> np.ndarray:
    """(cols, rows, n) float32 of the slices, in order: rescaled, grey, MONOCHROME1 inverted."""
    pydicom = _pydicom()
    by_file: dict[Path, list[int]] = defaultdict(list)
    for i, s in enumerate(slices):
        by_file[s.path].append(i)
    out = np.empty((slices[0].cols, slices[0].rows, len(slices)), dtype=np.float32)
    for path, idx in by_file.items():
        try:
            ds = pydicom.dcmread(path)
            arr = ds.pixel_array
        except Exception as exc:  # pydicom raises many types for broken or undecodable pixel data
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DataError(f"{path}: could not decode pixel data ({type(exc).__name__}: {text[:160]})") from exc
        n_frames = int(_get(ds, "NumberOfFrames", 1) or 1)
        samples = int(_get(ds, "SamplesPerPixel", 1))
        if n_frames == 1:
            arr = arr[None]
        expected = (n_frames, slices[idx[0]].rows, slices[idx[0]].cols) + ((samples,) if samples > 1 else ())
        if arr.shape != expected:
            raise DataError(f"{path}: decoded pixel array has shape {arr.shape}; expected {expected}")
        for i in idx:
            s = slices[i]
            frame = _grey(arr[s.frame or 0], ds, s)
            if not np.all(np.isfinite(frame)):
                raise DataError(f"{path}: frame {s.frame or 0} holds NaN or infinite values after rescaling")
            out[:, :, i] = frame[::-1].T
    return out


def _grey(frame: np.ndarray, ds, s: Slice) -> np.ndarray:
    photometric = str(_get(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        frame = apply_color_lut(frame, ds)
    if frame.ndim == 3:  # RGB (pydicom converts YBR to RGB)
        return frame[..., :3].astype(np.float32) @ LUMA
    if ds.get("ModalityLUTSequence"):
        from pydicom.pixels import apply_modality_lut

        value = apply_modality_lut(frame, ds).astype(np.float32)
    else:
        value = frame.astype(np.float32) * np.float32(s.slope) + np.float32(s.intercept)
    if photometric == "MONOCHROME1":
        value = -value  # bright = dense, like MONOCHROME2 (normalisation is per volume, so a sign flip suffices)
    return value


# ---------------------------------------------------------------------------- labels
def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "unknown"


def _label_map_from_json(path: Path) -> dict[int, str]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(raw, dict) or not raw:
        raise DataError(f"{path}: expected a map of class id to name, e.g. {{\"1\": \"liver\"}}")
    out = {}
    for k, v in raw.items():
        if not (isinstance(k, str) and k.strip().isdigit() and 0 <= int(k) <= 255) or not isinstance(v, str) or not v:
            raise DataError(f"{path}: entry {k!r}: {v!r} is not 'id: name' with an id in 0..255")
        out[int(k)] = v
    out.setdefault(0, "background")
    return dict(sorted(out.items()))


class _Labels:
    """Label sources under ``labels/``: which series each file labels, and the class names."""

    def __init__(self, root: Path, files: list[Path]):
        self.root = root
        self.nifti: dict[str, Path] = {}  # stem (series uid or volume id) -> file
        self.seg: dict[str, Path] = {}  # referenced series uid -> SEG file
        self.names: dict[int, str] = {}
        pydicom = _pydicom()
        json_file = None
        for p in files:
            if p.name == "labels.json":
                json_file = p
            elif p.name.endswith((".nii", ".nii.gz")):
                stem = p.name[: -len(".nii.gz")] if p.name.endswith(".nii.gz") else p.name[:-4]
                self.nifti[stem] = p
            elif has_dicm_prefix(p):
                ds = pydicom.dcmread(p, stop_before_pixels=True)
                if str(_get(ds, "Modality", "")) != "SEG":
                    raise DataError(f"{p}: a DICOM {_get(ds, 'Modality', '?')} object in labels/; expected DICOM-SEG")
                if str(_get(ds, "SegmentationType", "BINARY")) != "BINARY":
                    raise DataError(f"{p}: SegmentationType {ds.SegmentationType}; medssl reads BINARY segmentations")
                ref = _seq_item(ds, "ReferencedSeriesSequence")
                if ref is None or not _get(ref, "SeriesInstanceUID"):
                    raise DataError(f"{p}: DICOM-SEG without ReferencedSeriesSequence; "
                                    "cannot tell which series it labels")
                uid = str(ref.SeriesInstanceUID)
                if uid in self.seg:
                    raise DataError(f"{p}: labels series {uid}, which {self.seg[uid].name} labels too")
                self.seg[uid] = p
                for item in ds.get("SegmentSequence") or []:
                    number = int(item.SegmentNumber)
                    name = str(_get(item, "SegmentLabel", f"segment {item.SegmentNumber}"))
                    if self.names.get(number, name) != name:
                        raise DataError(f"{p}: segment {number} is {name!r} here but {self.names[number]!r} in "
                                        "another label file; the class numbering must agree")
                    self.names[number] = name
            else:
                raise DataError(f"{p}: in labels/ but neither NIfTI, DICOM-SEG nor labels.json")
        if self.nifti:
            if json_file is None:
                raise DataError(f"{root / 'labels'}: holds NIfTI label maps but no labels.json naming the classes, "
                                "e.g. {\"1\": \"liver\"}")
            for k, v in _label_map_from_json(json_file).items():
                if k in self.names and self.names[k] != v:
                    raise DataError(f"{json_file}: class {k} is {v!r} but {self.names[k]!r} in a DICOM-SEG")
                self.names[k] = v
        if self.names:
            self.names = dict(sorted({0: "background", **self.names}.items()))
        self.used: set[Path] = set()

    def loader(self, series: Series, volume_id: str, slices: list[Slice], affine: np.ndarray):
        nifti = self.nifti.get(series.uid) or self.nifti.get(volume_id)
        seg = self.seg.get(series.uid)
        if nifti is not None and seg is not None:
            raise DataError(f"{nifti}: series {series.uid} is labelled by {seg.name} too; keep one")
        if nifti is not None:
            self.used.add(nifti)
            return nifti, lambda: _nifti_label(nifti, slices, affine, self.names)
        if seg is not None:
            self.used.add(seg)
            return seg, lambda: _seg_label(seg, slices, self.names)
        return None, None

    def check_all_used(self, volume_ids: list[str]) -> None:
        unused = sorted((set(self.nifti.values()) | set(self.seg.values())) - self.used)
        if unused:
            raise DataError(f"{unused[0]}: matches no series; a NIfTI label is named <SeriesInstanceUID> or a "
                            f"volume id ({', '.join(volume_ids[:4])}{' …' if len(volume_ids) > 4 else ''}), "
                            "a DICOM-SEG references its series")


def _nifti_label(path: Path, slices: list[Slice], affine: np.ndarray, names: dict[int, str]) -> np.ndarray:
    from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation, ornt_transform

    hdr = read_header(path)
    lab = read_array(path, kind="label")
    t = ornt_transform(io_orientation(hdr.affine), io_orientation(affine))
    lab = apply_orientation(lab, t)
    lab_affine = hdr.affine @ inv_ornt_aff(t, hdr.shape[:3] if len(hdr.shape) >= 3 else (*hdr.shape, 1))
    shape = (slices[0].cols, slices[0].rows, len(slices))
    tol = 0.05 * float(min(np.linalg.norm(affine[:3, :3], axis=0))) + 1e-3
    if lab.shape != shape or not np.allclose(lab_affine, affine, atol=tol):
        raise DataError(f"{path}: label grid (shape {lab.shape} after reorienting, affine "
                        f"{np.round(lab_affine[:3], 2).tolist()}) does not match the series' grid (shape {shape}, "
                        f"affine {np.round(affine[:3], 2).tolist()})")
    check_label_values(lab, names, path)
    return np.ascontiguousarray(lab, dtype=np.uint8)


def _seg_label(path: Path, slices: list[Slice], names: dict[int, str]) -> np.ndarray:
    pydicom = _pydicom()
    ds = pydicom.dcmread(path)
    try:
        frames = ds.pixel_array
    except Exception as exc:
        raise DataError(f"{path}: could not decode the segmentation frames ({type(exc).__name__}: {exc})") from exc
    n_frames = int(_get(ds, "NumberOfFrames", 1) or 1)
    if n_frames == 1:
        frames = frames[None]
    rows, cols = slices[0].rows, slices[0].cols
    if frames.shape[1:] != (rows, cols):
        raise DataError(f"{path}: segmentation frames are {frames.shape[1]}×{frames.shape[2]}; the series' images "
                        f"are {rows}×{cols}")
    by_sop = {s.sop_uid + (f"#{s.frame}" if s.frame is not None else ""): k for k, s in enumerate(slices)}
    first = slices[0].orientation
    normal = np.cross(first[:3], first[3:]) if first is not None else None
    depth = [float(np.dot(s.position, normal)) for s in slices] if normal is not None else None
    shared = _seq_item(ds, "SharedFunctionalGroupsSequence")
    out = np.zeros((cols, rows, len(slices)), dtype=np.uint8)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    if len(per_frame) != n_frames:
        raise DataError(f"{path}: {len(per_frame)} per-frame functional groups for {n_frames} frames")
    for f, fg in enumerate(per_frame):
        segment = _frame_value(fg, shared, "SegmentIdentificationSequence", "ReferencedSegmentNumber")
        if segment is None or int(segment) not in names:
            raise DataError(f"{path}: frame {f + 1} references segment {segment}, not one of {sorted(names)[1:]}")
        k = None
        src = _seq_item(fg, "DerivationImageSequence", "SourceImageSequence")
        if src is not None and _get(src, "ReferencedSOPInstanceUID"):
            ref_frame = _get(src, "ReferencedFrameNumber")
            key = str(src.ReferencedSOPInstanceUID) + (f"#{int(ref_frame) - 1}" if ref_frame is not None else "")
            k = by_sop.get(key, by_sop.get(str(src.ReferencedSOPInstanceUID)))
        if k is None:
            pos = _frame_value(fg, shared, "PlanePositionSequence", "ImagePositionPatient")
            if pos is not None and depth is not None:
                at = float(np.dot(_float_list(pos, 3, "ImagePositionPatient", path), normal))
                dist = np.abs(np.array(depth) - at)
                dz = float(np.median(np.abs(np.diff(depth)))) if len(depth) > 1 else 1.0
                k = int(np.argmin(dist)) if dist.min() < 0.05 * dz else None
        if k is None:
            raise DataError(f"{path}: frame {f + 1} matches no image of the series (neither its referenced SOP "
                            "instance nor its position)")
        mask = frames[f][::-1].T.astype(bool)
        clash = mask & (out[:, :, k] != 0) & (out[:, :, k] != int(segment))
        if clash.any():
            raise DataError(f"{path}: segment {int(segment)} overlaps segment {int(out[:, :, k][clash][0])} in "
                            f"{int(clash.sum())} voxels; medssl needs one class per voxel")
        out[:, :, k][mask] = int(segment)
    return out


# ---------------------------------------------------------------------------- reader
def read_dicom(root: Path, *, bad_series: str = "error", spec: str | None = None) -> VolumeSet:
    """Read every image series below ``root``; see the module docstring."""
    root = Path(root).expanduser()
    result = scan(root)
    if result.problems and bad_series == "error":
        raise DataError(result.problems[0] + _more(len(result.problems)))
    skipped = list(result.problems)
    labels = _Labels(root, result.labels)
    volumes: list[Volume] = []
    taken: dict[str, int] = defaultdict(int)
    for series in sorted(result.series, key=lambda s: (s.patient, s.number if s.number is not None else -1, s.uid)):
        if series.uid in result.broken:  # a file of it is among the problems: never read a series in part
            continue
        try:
            geo = series_geometry(series)
        except DataError as exc:
            if bad_series == "error":
                raise
            skipped.append(str(exc))
            continue
        case_id = _safe(series.patient) if series.patient else _safe(series.files[0].parent.name)
        base = f"S{series.number}" if series.number is not None else f"S{series.uid[-8:]}"
        for k, (slices, spacing, affine, source) in enumerate(geo.volumes):
            name = base if len(geo.volumes) == 1 else f"{base}-{k + 1}"
            taken[(case_id, name)] += 1
            if taken[(case_id, name)] > 1:
                name = f"{name}-{taken[(case_id, name)]}"
            volume_id = f"{case_id}_{name}"
            label_file, load_label = labels.loader(series, volume_id, slices, affine) if len(geo.volumes) == 1 \
                else (None, None)
            sources = tuple(str(p) for p in sorted({s.path for s in slices}))
            volumes.append(Volume(
                case_id=case_id, spacing=spacing, shape=(slices[0].cols, slices[0].rows, len(slices)), affine=affine,
                load_image=lambda sl=slices: decode_slices(sl), load_label=load_label,
                meta={"subset": "training", "series": name, "series_uid": series.uid, "modality": series.modality,
                      "description": series.description, "body_part": series.body_part, "spacing_source": source},
                sources=sources + ((str(label_file),) if label_file else ()),
            ))
    labels.check_all_used([v.volume_id for v in volumes])
    for why in skipped:
        warnings.warn(f"dicom: left out: {why}", stacklevel=2)
    if not volumes:
        why = (skipped[0] if skipped else result.ignored[0] if result.ignored else f"{root}: no files")
        raise DataError(f"{root}: no usable DICOM image series (first reason: {why})")
    modalities = sorted({v.meta["modality"] for v in volumes})
    modality = modalities[0] if len(modalities) == 1 else "mixed"
    return VolumeSet(
        spec=spec or f"dicom:{root}", format="dicom", root=root, labels=labels.names, modality=modality,
        volumes=volumes, domain=root.name, task=root.name, group=modality,
        meta={"ignored": result.ignored, "skipped": skipped, "modalities": modalities,
              "series": len({v.meta["series_uid"] for v in volumes})},
    )


def _more(n: int) -> str:
    return f" (and {n - 1} more problem{'s' * (n > 2)}: `medssl data summary` lists them all)" if n > 1 else ""


def _read(target: str, opts: dict, spec: str) -> VolumeSet:
    return read_dicom(Path(target), bad_series=opts["bad_series"], spec=spec)


READER = Reader(
    kind="dicom", target="path", read=_read, example="/data/dicom", detect=detect,
    doc="a folder of DICOM series (or one file); labels from labels/ (NIfTI or DICOM-SEG) when present",
    layout="dicom (a folder of DICOM Part 10 files, any depth)",
    options=(Option("bad_series", "str", default="error", choices=("error", "skip"),
                    doc="a series with a problem stops the read (error) or is left out with a warning (skip)"),),
)
