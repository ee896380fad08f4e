"""The ``dicom:`` reader on small series written with pydicom: geometry, intensities, labels, refusals."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless, generate_uid

from medssl_utils.cli import main
from medssl_utils.data import load_dataset, slice_cache
from medssl_utils.data.readers.dicom import decode_slices, scan
from medssl_utils.errors import DataError

ROWS, COLS = 6, 8
AXIAL = (1, 0, 0, 0, 1, 0)
CORONAL = (1, 0, 0, 0, 0, -1)
SAGITTAL = (0, 1, 0, 0, 0, -1)
c, s = np.cos(0.3), np.sin(0.3)
OBLIQUE = (c, s, 0, 0, 0, -1)  # rotated about z, then tipped into a coronal-like plane


def pixels(k: int) -> np.ndarray:
    """A frame whose values say where they are: 100·slice + 10·row + column."""
    r, c_ = np.meshgrid(np.arange(ROWS), np.arange(COLS), indexing="ij")
    return (100 * k + 10 * r + c_).astype(np.uint16)


def base(modality="CT", series_uid=None, patient="P001", number=3, rows=ROWS, cols=COLS) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Modality, ds.PatientID, ds.SeriesNumber = modality, patient, number
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    return ds


def save(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_series(folder: Path, n=5, *, orientation=AXIAL, spacing=(0.7, 0.9), dz=2.5, origin=(10.0, -20.0, 30.0),
                 modality="CT", slope=1.0, intercept=-1024.0, thickness=99.0, positions=None, shuffle=True,
                 series_uid=None, patient="P001", number=3, names="IM{:04d}") -> list[Path]:
    """An n-slice series: slice k at origin + k·dz·normal (or ``positions``), files in shuffled order."""
    uid = series_uid or generate_uid()
    normal = np.cross(orientation[:3], orientation[3:])
    order = np.random.default_rng(0).permutation(n) if shuffle else np.arange(n)
    files = []
    for i, k in enumerate(order):
        ds = base(modality, uid, patient, number)
        pos = positions[k] if positions is not None else np.add(origin, k * dz * normal)
        ds.ImagePositionPatient = [float(x) for x in pos]
        ds.ImageOrientationPatient = [float(x) for x in orientation]
        ds.PixelSpacing = list(spacing)
        ds.SliceThickness = thickness
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.InstanceNumber = i + 1  # deliberately not the slice order
        ds.PixelData = pixels(int(k)).tobytes()
        files.append(save(ds, folder / names.format(i)))
    return files


def world(affine, i, j, k):
    return (affine @ [i, j, k, 1])[:3]


def lps_to_ras(p):
    return np.array([-p[0], -p[1], p[2]])


# --- geometry ----------------------------------------------------------------------------

@pytest.mark.parametrize("orientation", [AXIAL, CORONAL, SAGITTAL, OBLIQUE], ids=["axial", "coronal", "sagittal", "oblique"])
def test_series_is_ordered_spaced_and_placed(tmp_path, orientation):
    write_series(tmp_path / "ct", orientation=orientation, dz=2.5, thickness=99.0)
    vs = load_dataset(f"dicom:{tmp_path / 'ct'}")
    vol, = vs.volumes
    assert vs.format == "dicom" and vs.modality == "CT" and vs.labels == {}
    assert vol.shape == (COLS, ROWS, 5) and vol.volume_id == "P001_S3"
    assert np.allclose(vol.spacing, (0.9, 0.7, 2.5))  # (between columns, between rows, IPP distance) - not thickness
    assert vol.meta["spacing_source"] == "ImagePositionPatient"
    img, lab = vol.load()
    assert lab is None and img.dtype == np.float32
    for k in range(5):  # sorted by position, rescaled to HU, stored as pixels[::-1].T
        assert np.array_equal(img[:, :, k], pixels(k)[::-1].T.astype(np.float32) - 1024)
    # the affine puts voxel (i, j, k) where DICOM says: IPP_k + i·dx·row + (rows-1-j)·dy·col (LPS → RAS)
    normal = np.cross(orientation[:3], orientation[3:])
    for i, j, k in [(0, 0, 0), (COLS - 1, 0, 4), (3, ROWS - 1, 2)]:
        r = ROWS - 1 - j
        lps = np.add((10.0, -20.0, 30.0), k * 2.5 * normal) + i * 0.9 * np.array(orientation[:3]) \
            + r * 0.7 * np.array(orientation[3:])
        assert np.allclose(world(vol.affine, i, j, k), lps_to_ras(lps))


def test_descending_positions_and_file_names_do_not_matter(tmp_path):
    normal_pos = [np.array((0.0, 0.0, 50.0 - 3.0 * k)) for k in range(4)]
    write_series(tmp_path / "s", n=4, positions=normal_pos, names="z{:02d}.dcm")
    vol, = load_dataset(f"dicom:{tmp_path / 's'}").volumes
    img, _ = vol.load()
    # sorted along the normal (+z): the slice at z=41 (k=3) comes first
    assert [int(img[0, ROWS - 1, z] + 1024) // 100 for z in range(4)] == [3, 2, 1, 0]
    assert np.isclose(vol.spacing[2], 3.0) and np.isclose(world(vol.affine, 0, ROWS - 1, 0)[2], 41.0)


def test_enhanced_multiframe_equals_single_frame_series(tmp_path):
    single = write_series(tmp_path / "single", n=4, shuffle=False, slope=2.0, intercept=-10.0)
    ds = base("CT")
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"  # Enhanced CT
    ds.NumberOfFrames = 4
    shared = Dataset()
    shared.PlaneOrientationSequence = [Dataset()]
    shared.PlaneOrientationSequence[0].ImageOrientationPatient = list(AXIAL)
    shared.PixelMeasuresSequence = [Dataset()]
    shared.PixelMeasuresSequence[0].PixelSpacing = [0.7, 0.9]
    shared.PixelMeasuresSequence[0].SliceThickness = 99.0
    ds.SharedFunctionalGroupsSequence = [shared]
    frames = []
    for k in (2, 0, 3, 1):  # frames stored out of order: their positions decide
        fg = Dataset()
        fg.PlanePositionSequence = [Dataset()]
        fg.PlanePositionSequence[0].ImagePositionPatient = [10.0, -20.0, 30.0 + 2.5 * k]
        fg.PixelValueTransformationSequence = [Dataset()]
        fg.PixelValueTransformationSequence[0].RescaleSlope = 2.0
        fg.PixelValueTransformationSequence[0].RescaleIntercept = -10.0
        frames.append((fg, pixels(k)))
    ds.PerFrameFunctionalGroupsSequence = [fg for fg, _ in frames]
    ds.PixelData = np.stack([p for _, p in frames]).tobytes()
    save(ds, tmp_path / "enhanced" / "ct.dcm")
    a, = load_dataset(f"dicom:{tmp_path / 'single'}").volumes
    b, = load_dataset(f"dicom:{tmp_path / 'enhanced'}").volumes
    assert a.shape == b.shape == (COLS, ROWS, 4) and np.allclose(a.spacing, b.spacing)
    assert np.allclose(a.affine, b.affine)
    assert np.array_equal(a.load()[0], b.load()[0])
    assert np.array_equal(b.load()[0][:, :, 1], pixels(1)[::-1].T * 2.0 - 10.0)
    assert len(single) == 4


def test_series_and_patients_are_grouped_by_uid(tmp_path):
    folder = tmp_path / "mixed"
    write_series(folder, n=3, names="a{:02d}", patient="P1", number=2, modality="CT")
    write_series(folder, n=4, names="b{:02d}", patient="P1", number=5, modality="MR", intercept=0.0)
    write_series(folder / "deep" / "er", n=2, names="c{:02d}", patient="P2", number=2, modality="MR", intercept=0.0)
    (folder / "README.txt").write_text("exported by PACS")
    vs = load_dataset(f"dicom:{folder}")
    assert [(v.volume_id, v.shape[2], v.meta["modality"]) for v in vs.volumes] == [
        ("P1_S2", 3, "CT"), ("P1_S5", 4, "MR"), ("P2_S2", 2, "MR")]
    assert vs.modality == "mixed" and vs.case_ids == ["P1", "P2"]
    assert any("README.txt: not a DICOM Part 10 file" in x for x in vs.meta["ignored"])
    # each volume is normalised with its own modality: CT with the HU window, MR with percentiles
    cache = slice_cache(vs, image_size=16)
    ct_rows = cache.index["volume_id"] == "P1_S2"
    assert cache.images[np.flatnonzero(ct_rows)].max() <= 1.0 and cache.images[np.flatnonzero(ct_rows)].min() >= -1.0


def test_single_slice_spacing_fallback_is_stated(tmp_path):
    write_series(tmp_path / "one", n=1, thickness=4.0)
    vol, = load_dataset(f"dicom:{tmp_path / 'one'}").volumes
    assert vol.spacing[2] == 4.0 and vol.meta["spacing_source"].startswith("SliceThickness")


def test_images_without_geometry_are_separate_2d_images(tmp_path):
    for i, photometric in enumerate(("MONOCHROME1", "RGB")):
        ds = base("CR" if i == 0 else "US", series_uid="1.2.3.4", number=1)
        if photometric == "RGB":
            ds.SamplesPerPixel, ds.PlanarConfiguration = 3, 0
            ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
            rgb = np.zeros((ROWS, COLS, 3), np.uint8)
            rgb[..., 0] = 200
            ds.PixelData = rgb.tobytes()
        else:
            ds.ImagerPixelSpacing = [0.2, 0.3]
            ds.PixelData = pixels(0).tobytes()
        ds.PhotometricInterpretation = photometric
        ds.Modality = "CR"
        save(ds, tmp_path / "xr" / f"{i}.dcm")
    vs = load_dataset(f"dicom:{tmp_path / 'xr'}")
    mono, rgb = vs.volumes
    assert (mono.volume_id, rgb.volume_id) == ("P001_S1-1", "P001_S1-2")
    assert mono.spacing == (0.3, 0.2, 1.0) and mono.meta["spacing_source"] == "ImagerPixelSpacing"
    assert rgb.spacing == (1.0, 1.0, 1.0) and rgb.meta["spacing_source"] == "none (pixels)"
    assert np.array_equal(mono.load()[0][:, :, 0], -(pixels(0)[::-1].T.astype(np.float32)))  # MONOCHROME1: negated
    assert np.allclose(rgb.load()[0], 0.299 * 200)  # grey by BT.601 luma


# --- labels -------------------------------------------------------------------------------

def test_nifti_label_in_another_orientation_is_reoriented(tmp_path):
    files = write_series(tmp_path / "ds" / "ct", n=4)
    uid = pydicom.dcmread(files[0]).SeriesInstanceUID
    vol, = load_dataset(f"dicom:{tmp_path / 'ds'}").volumes
    truth = np.zeros(vol.shape, np.uint8)
    truth[2:5, 1:3, 1] = 1
    truth[0, 0, 3] = 2
    # store it flipped along x and with z reversed, with the matching affine
    flip = np.diag([-1.0, 1.0, -1.0, 1.0])
    flip[0, 3], flip[2, 3] = vol.shape[0] - 1, vol.shape[2] - 1
    stored = truth[::-1, :, ::-1]
    (tmp_path / "ds" / "labels").mkdir()
    nib.save(nib.Nifti1Image(stored, vol.affine @ flip), str(tmp_path / "ds" / "labels" / f"{uid}.nii.gz"))
    with pytest.raises(DataError, match=r"labels: holds NIfTI label maps but no labels.json"):
        load_dataset(f"dicom:{tmp_path / 'ds'}")
    (tmp_path / "ds" / "labels" / "labels.json").write_text(json.dumps({"1": "liver", "2": "spot"}))
    vs = load_dataset(f"dicom:{tmp_path / 'ds'}")
    assert vs.labels == {0: "background", 1: "liver", 2: "spot"}
    img, lab = vs.volumes[0].load()
    assert np.array_equal(lab, truth)


def test_nifti_label_on_another_grid_or_matching_nothing_is_refused(tmp_path):
    write_series(tmp_path / "ds" / "ct", n=4)
    vol, = load_dataset(f"dicom:{tmp_path / 'ds'}").volumes
    (tmp_path / "ds" / "labels").mkdir()
    (tmp_path / "ds" / "labels" / "labels.json").write_text(json.dumps({"1": "liver"}))
    shifted = vol.affine.copy()
    shifted[:3, 3] += 5.0
    nib.save(nib.Nifti1Image(np.zeros(vol.shape, np.uint8), shifted), str(tmp_path / "ds" / "labels" / "P001_S3.nii.gz"))
    with pytest.raises(DataError, match=r"P001_S3.nii.gz: label grid .* does not match the series' grid"):
        load_dataset(f"dicom:{tmp_path / 'ds'}").volumes[0].load()
    (tmp_path / "ds" / "labels" / "P001_S3.nii.gz").rename(tmp_path / "ds" / "labels" / "P009_S1.nii.gz")
    with pytest.raises(DataError, match=r"P009_S1.nii.gz: matches no series"):
        load_dataset(f"dicom:{tmp_path / 'ds'}")


def write_seg(path: Path, series_files: list[Path], masks: dict[int, dict[int, np.ndarray]]) -> Path:
    """A binary DICOM-SEG: ``masks[segment][slice index in position order] = (rows, cols) bool``."""
    refs = sorted((pydicom.dcmread(f, stop_before_pixels=True) for f in series_files),
                  key=lambda d: float(d.ImagePositionPatient[2]))
    ds = base("SEG", number=99)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.66.4"
    ds.SegmentationType = "BINARY"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 1, 0
    ds.ReferencedSeriesSequence = [Dataset()]
    ds.ReferencedSeriesSequence[0].SeriesInstanceUID = refs[0].SeriesInstanceUID
    ds.SegmentSequence = []
    frames, groups = [], []
    for number, per_slice in masks.items():
        item = Dataset()
        item.SegmentNumber, item.SegmentLabel = number, f"organ{number}"
        ds.SegmentSequence.append(item)
        for k, mask in per_slice.items():
            fg = Dataset()
            fg.SegmentIdentificationSequence = [Dataset()]
            fg.SegmentIdentificationSequence[0].ReferencedSegmentNumber = number
            fg.DerivationImageSequence = [Dataset()]
            fg.DerivationImageSequence[0].SourceImageSequence = [Dataset()]
            fg.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID = refs[k].SOPInstanceUID
            groups.append(fg)
            frames.append(mask.astype(np.uint8))
    ds.NumberOfFrames = len(frames)
    ds.PerFrameFunctionalGroupsSequence = groups
    ds.PixelData = pydicom.pixels.pack_bits(np.stack(frames))
    return save(ds, path)


def test_dicom_seg_labels_and_overlap_refusal(tmp_path):
    files = write_series(tmp_path / "ds" / "ct", n=4)
    a = np.zeros((ROWS, COLS), bool)
    a[1:3, 2:6] = True
    b = np.zeros((ROWS, COLS), bool)
    b[4, 0] = True
    write_seg(tmp_path / "ds" / "labels" / "seg.dcm", files, {1: {0: a, 2: a}, 2: {2: b}})
    vs = load_dataset(f"dicom:{tmp_path / 'ds'}")
    assert vs.labels == {0: "background", 1: "organ1", 2: "organ2"}
    _, lab = vs.volumes[0].load()
    assert np.array_equal(lab[:, :, 0], a[::-1].T.astype(np.uint8))
    assert lab[:, :, 1].sum() == 0 and lab[:, :, 3].sum() == 0
    assert lab[0, ROWS - 1 - 4, 2] == 2 and (lab[:, :, 2] == 1).sum() == a.sum()
    write_seg(tmp_path / "ds" / "labels" / "seg.dcm", files, {1: {1: a}, 2: {1: a}})
    with pytest.raises(DataError, match=r"seg.dcm: segment 2 overlaps segment 1 in 8 voxels"):
        load_dataset(f"dicom:{tmp_path / 'ds'}").volumes[0].load()


# --- refusals -----------------------------------------------------------------------------

def pos(*zs):
    return [np.array((0.0, 0.0, z)) for z in zs]


def strip_geometry(path: Path) -> None:
    ds = pydicom.dcmread(path)
    del ds.ImagePositionPatient, ds.ImageOrientationPatient
    ds.save_as(path, enforce_file_format=True)


def resize(path: Path) -> None:
    ds = pydicom.dcmread(path)
    ds.Rows = ROWS - 1
    ds.PixelData = pixels(0)[:-1].tobytes()
    ds.save_as(path, enforce_file_format=True)


@pytest.mark.parametrize("make,expected", [
    (lambda d: write_series(d, n=4, positions=pos(0, 2, 4, 8)),
     r"missing slices: a gap of 4.00 mm after .* where the series' spacing is 2.00 mm \(about 1 slice\(s\) missing\)"),
    (lambda d: write_series(d, n=4, positions=pos(0, 2, 4.7, 6.7)), r"unequal slice spacing .* gaps from 2.00 to 2.70 mm"),
    (lambda d: write_series(d, n=3, positions=pos(0, 2, 2)), r"shares its position .* several echoes"),
    (lambda d: write_series(d, n=3, positions=[np.array((0.0, 0.5 * k, 2.0 * k)) for k in range(3)]),
     r"slices are not stacked along their normal .*gantry tilt"),
    (lambda d: (write_series(d, n=2, series_uid="1.2.3", names="a{}"), write_series(d, n=2, series_uid="1.2.3",
                orientation=CORONAL, names="b{}", origin=(0, 50, 0))),
     r"mixed orientations in series 1.2.3"),
    (lambda d: (write_series(d, n=2, series_uid="1.2.4", names="a{}"),
                write_series(d, n=2, series_uid="1.2.4", names="b{}", modality="MR", origin=(0, 0, 90))),
     r"Modality MR in series 1.2.4 of modality CT"),
    (lambda d: (write_series(d, n=2, series_uid="1.2.5", names="a{}"), strip_geometry(d / "a1")),
     r"a1: has no ImagePositionPatient/ImageOrientationPatient, but a0 of the same series has"),
    (lambda d: (write_series(d, n=2, series_uid="1.2.6", names="a{}"), resize(d / "a1")),
     r"a1: image size 5×8 differs from 6×8"),
])
def test_inconsistent_series_are_refused_naming_a_file(tmp_path, make, expected, capsys):
    make(tmp_path / "bad")
    with pytest.raises(DataError, match=expected) as err:
        load_dataset(f"dicom:{tmp_path / 'bad'}")
    assert str(tmp_path / "bad") in str(err.value) and "\n" not in str(err.value)
    # the summary lists it as a problem (exit 1) when another series is fine, or stops (exit 2) when none is
    write_series(tmp_path / "bad" / "good", n=2)
    code = main(["data", "summary", str(tmp_path / "bad"), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 1 and out["format"] == "dicom" and out["series"] == 1
    assert out["problems"] and all(str(tmp_path / "bad") in p for p in out["problems"])
    assert [v["id"] for v in out["volumes"]] == ["P001_S3"]  # only the good series, never a bad one in part


def test_bad_series_skip_leaves_it_out_with_a_warning(tmp_path):
    write_series(tmp_path / "d", n=3, positions=pos(0, 2, 2), names="a{}")
    write_series(tmp_path / "d", n=2, names="b{}", number=7)
    with pytest.warns(UserWarning, match=r"dicom: left out: .*shares its position"):
        vs = load_dataset(f"dicom:{tmp_path / 'd'}?bad_series=skip")
    assert [v.volume_id for v in vs.volumes] == ["P001_S7"] and len(vs.meta["skipped"]) == 1


def test_compressed_pixel_data_without_decoder(tmp_path):
    from pydicom.pixels import get_decoder

    if get_decoder(JPEGLSLossless).is_available:  # pragma: no cover - depends on optional plugins
        pytest.skip("a JPEG-LS decoder is installed here")
    files = write_series(tmp_path / "c", n=2)
    for f in files:
        ds = pydicom.dcmread(f)
        ds.file_meta.TransferSyntaxUID = JPEGLSLossless
        ds.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8 not really jpeg-ls \xff\xd9"])
        ds["PixelData"].VR = "OB"
        ds.save_as(f, enforce_file_format=True)
    with pytest.raises(DataError, match=r"compressed pixel data \(JPEG-LS Lossless Image Compression\) and no decoder "
                                        r"installed \(install one of: .*pylibjpeg"):
        load_dataset(f"dicom:{tmp_path / 'c'}")


def test_files_that_are_not_dicom(tmp_path, capsys):
    write_series(tmp_path / "d", n=2)
    (tmp_path / "d" / "broken.dcm").write_bytes(b"\x00" * 50)
    with pytest.raises(DataError, match=r"broken.dcm: has a DICOM suffix but no 'DICM' prefix"):
        load_dataset(f"dicom:{tmp_path / 'd'}")
    (tmp_path / "d" / "broken.dcm").unlink()
    sr = base("SR")
    del sr.Rows, sr.Columns
    save(sr, tmp_path / "d" / "report")
    truncated = tmp_path / "d" / "IM0000"
    truncated.write_bytes(truncated.read_bytes()[:-20])
    vs = load_dataset(f"dicom:{tmp_path / 'd'}")  # headers are fine; the pixels are short
    assert any("report: a DICOM object without an image" in x for x in vs.meta["ignored"])
    with pytest.raises(DataError, match=r"IM0000: could not decode pixel data"):
        vs.volumes[0].load()
    assert main(["data", "summary", str(tmp_path / "d")]) == 1
    out = capsys.readouterr().out
    assert "format            dicom (CT)" in out and "IM0000: could not decode pixel data" in out
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match=r"e: no usable DICOM image series \(first reason: .*notes.txt: not a DICOM"):
        load_dataset(f"dicom:{tmp_path / 'e'}")


def test_summary_of_a_dicom_folder(tmp_path, capsys):
    write_series(tmp_path / "d" / "ct", n=3, dz=2.0)
    write_series(tmp_path / "d" / "mr", n=2, modality="MR", intercept=0.0, dz=5.0, number=4, spacing=(1.0, 1.0))
    assert main(["data", "summary", str(tmp_path / "d"), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["format"] == "dicom" and s["series"] == 2 and s["modalities"] == {"CT": 1, "MR": 1}
    assert s["spacing_mm"] == [[0.9, 1.0], [0.7, 1.0], [2.0, 5.0]] and s["problems"] == []
    assert [v["id"] for v in s["volumes"]] == ["P001_S3", "P001_S4"]


def test_decode_slices_rejects_a_frame_count_mismatch(tmp_path):
    files = write_series(tmp_path / "d", n=1)
    sl = scan(tmp_path / "d").series[0].slices
    ds = pydicom.dcmread(files[0])
    ds.Rows = ROWS - 1  # header no longer matches the scanned geometry
    ds.PixelData = pixels(0)[:-1].tobytes()
    ds.save_as(files[0], enforce_file_format=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataError, match=r"IM0000: decoded pixel array has shape \(1, 5, 8\); expected \(1, 6, 8\)"):
            decode_slices(sl)


def test_dicom_export_with_patient_folders_is_not_taken_for_acdc(tmp_path, capsys):
    write_series(tmp_path / "export" / "patient001" / "ct", n=2)
    assert main(["data", "summary", str(tmp_path / "export"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["format"] == "dicom"
