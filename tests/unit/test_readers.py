"""Readers on files written in the exact official layouts, and every bad-input error."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import APPLEDOUBLE, truncate, write_acdc_patient
from medssl_utils.data import load_dataset
from medssl_utils.data.readers.acdc import parse_info_cfg
from medssl_utils.data.readers import detect_format
from medssl_utils.data.nifti import read_array, write_nifti
from medssl_utils.errors import DataError, ParameterError


# --- ACDC ---------------------------------------------------------------------------------

def test_acdc_2017_layout(acdc2017):
    vs = load_dataset(f"acdc:{acdc2017}")
    assert vs.format == "acdc" and vs.labels == {0: "background", 1: "RV", 2: "MYO", 3: "LV"}
    assert vs.case_ids == ["patient001", "patient002", "patient003", "patient101"]
    ed = [v for v in vs.volumes if v.meta["phase"] == "ED"]
    assert [v.meta["group"] for v in ed] == ["NOR", "DCM", "HCM", None]
    assert [v.has_label for v in ed] == [True, True, True, False]  # 2017 testing has no gt
    assert {v.meta["subset"] for v in ed} == {"training", "testing"}
    cine = [v for v in vs.volumes if v.meta["phase"] == "cine"]
    assert len(cine) == 4 * 5 and not any(v.has_label for v in cine)
    assert [v.meta["frame"] for v in cine[:5]] == [1, 2, 3, 4, 5]
    assert ed[0].spacing == (1.5, 1.5, 10.0) and ed[0].shape == (20, 16, 4)


def test_acdc_frames_match_cine(acdc2017):
    vs = load_dataset(f"acdc:{acdc2017}")
    p1 = [v for v in vs.volumes if v.case_id == "patient001"]
    es = next(v for v in p1 if v.meta["phase"] == "ES")
    cine3 = next(v for v in p1 if v.meta["phase"] == "cine" and v.meta["frame"] == 3)
    img, lab = es.load()
    np.testing.assert_array_equal(img, cine3.load()[0])
    assert img.dtype == np.float32 and lab.dtype == np.uint8 and set(np.unique(lab)) <= {0, 1, 2, 3}
    assert cine3.load()[1] is None


def test_acdc_2023_layout_and_nii(acdc2023):
    vs = load_dataset(f"acdc:{acdc2023}?cine=0")
    assert len(vs.case_ids) == 14 and all(v.meta["phase"] in ("ED", "ES") for v in vs.volumes)
    assert all(v.has_label for v in vs.volumes)  # 2023 testing ships gt
    assert vs.volumes[0].sources[0].endswith(".nii")
    # the database/ folder itself and the training/ folder are accepted roots too
    assert len(load_dataset(f"acdc:{acdc2023 / 'database'}?cine=0").case_ids) == 14
    assert len(load_dataset(f"acdc:{acdc2023 / 'database' / 'training'}?cine=0").case_ids) == 12
    only_train = load_dataset(f"acdc:{acdc2023}?cine=0&subsets=training")
    assert len(only_train.case_ids) == 12


def test_info_cfg_parsing(tmp_path):
    p = tmp_path / "Info.cfg"
    p.write_text("ED: 1\nES: 12\nGroup: DCM\nHeight: 184.0\nNbFrame: 30\nWeight: 95.0\n")
    assert parse_info_cfg(p) == {"ED": 1, "ES": 12, "Group": "DCM", "Height": 184.0, "NbFrame": 30, "Weight": 95.0}


def test_info_cfg_missing_es(tmp_path):
    write_acdc_patient(tmp_path / "training" / "patient001", np.random.default_rng(0),
                       info_lines=["ED: 1", "Group: NOR", "NbFrame: 5"])
    with pytest.raises(DataError, match=r"Info.cfg: missing 'ES:'"):
        load_dataset(f"acdc:{tmp_path}")


def test_acdc_frame_file_missing(acdc2017):
    (acdc2017 / "training" / "patient002" / "patient002_frame03.nii.gz").unlink()
    with pytest.raises(DataError, match=r"patient002_frame03.nii.gz: not found, but Info.cfg says ES: 3"):
        load_dataset(f"acdc:{acdc2017}")


def test_acdc_label_shape_mismatch(acdc2017):
    gt = acdc2017 / "training" / "patient001" / "patient001_frame01_gt.nii.gz"
    write_nifti(gt, np.zeros((20, 15, 4), np.uint8), (1.5, 1.5, 10))
    with pytest.raises(DataError, match=r"patient001_frame01_gt.nii.gz: label shape .* does not match"):
        load_dataset(f"acdc:{acdc2017}")


def test_acdc_label_values_outside_map(acdc2017):
    gt = acdc2017 / "training" / "patient001" / "patient001_frame01_gt.nii.gz"
    lab = np.zeros((20, 16, 4), np.uint8)
    lab[0, 0, 0] = 7
    write_nifti(gt, lab, (1.5, 1.5, 10))
    vol = next(v for v in load_dataset(f"acdc:{acdc2017}").volumes if v.volume_id == "patient001_ED")
    with pytest.raises(DataError, match=r"label values \[7\] are outside the dataset's label map \[0, 1, 2, 3\]"):
        vol.load()


def test_acdc_nbframe_mismatch(acdc2017):
    cfg = acdc2017 / "training" / "patient001" / "Info.cfg"
    cfg.write_text(cfg.read_text().replace("NbFrame: 5", "NbFrame: 30"))
    with pytest.raises(DataError, match="has 5 frames but Info.cfg says NbFrame: 30"):
        load_dataset(f"acdc:{acdc2017}")


# --- corrupt data --------------------------------------------------------------------------

def test_truncated_gz_names_file(acdc2017):
    f = acdc2017 / "training" / "patient003" / "patient003_frame01.nii.gz"
    truncate(f, 0.5)
    vol = next(v for v in load_dataset(f"acdc:{acdc2017}?cine=0").volumes if v.volume_id == "patient003_ED")
    with pytest.raises(DataError, match=r"patient003_frame01.nii.gz: corrupt or truncated"):
        vol.load()


def test_garbage_file_is_not_nifti(tmp_path):
    f = tmp_path / "x.nii.gz"
    f.write_bytes(b"this is not a nifti file at all" * 20)
    with pytest.raises(DataError, match=r"x.nii.gz: not a readable NIfTI file"):
        read_array(f)


def test_nan_intensities(tmp_path):
    img = np.ones((4, 4, 2), np.float32)
    img[1, 1, 1] = np.nan
    img[2, 2, 0] = np.inf
    write_nifti(tmp_path / "a.nii.gz", img, (1, 1, 1))
    with pytest.raises(DataError, match=r"a.nii.gz: 2 voxels are NaN or infinite"):
        read_array(tmp_path / "a.nii.gz")


def test_non_integer_label(tmp_path):
    write_nifti(tmp_path / "l.nii.gz", np.full((4, 4, 2), 0.5, np.float32), (1, 1, 1))
    with pytest.raises(DataError, match="non-integer"):
        read_array(tmp_path / "l.nii.gz", kind="label")


def test_missing_path_and_unknown_layout(tmp_path):
    with pytest.raises(DataError, match=r"nope: path does not exist"):
        load_dataset(f"acdc:{tmp_path / 'nope'}")
    (tmp_path / "random").mkdir()
    (tmp_path / "random" / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match=r"unrecognised layout; supported: ACDC .*Decathlon.*folder"):
        detect_format(tmp_path / "random")
    with pytest.raises(DataError, match="no ACDC patient folders found"):
        load_dataset(f"acdc:{tmp_path / 'random'}")


# --- Decathlon -----------------------------------------------------------------------------

def test_msd_reader_ignores_appledouble(msd_prostate):
    assert (msd_prostate / "imagesTr" / "._prostate_00.nii.gz").read_bytes() == APPLEDOUBLE
    vs = load_dataset(f"msd:{msd_prostate}")
    assert vs.format == "msd" and vs.labels == {0: "background", 1: "PZ", 2: "TZ"}
    assert len(vs.volumes) == 6 and sum(v.has_label for v in vs.volumes) == 4
    assert not any("._" in s for v in vs.volumes for s in v.sources)
    assert vs.meta["modalities"] == ["T2", "ADC"] and vs.modality == "T2" and vs.group == "MR"


def test_msd_channel_selection(msd_prostate):
    t2 = load_dataset(f"msd:{msd_prostate}").volumes[0].load()[0]
    adc = load_dataset(f"msd:{msd_prostate}?channel=ADC").volumes[0].load()[0]
    adc1 = load_dataset(f"msd:{msd_prostate}?channel=1").volumes[0].load()[0]
    assert t2.shape == adc.shape == (18, 14, 5)
    np.testing.assert_allclose(adc - t2, 50.0)  # the fixture offsets channel c by 50*c
    np.testing.assert_array_equal(adc, adc1)
    with pytest.raises(ParameterError, match=r"channel='DWI' .* expected one of \['T2', 'ADC'\]"):
        load_dataset(f"msd:{msd_prostate}?channel=DWI")
    with pytest.raises(ParameterError, match=r"channel='5'"):
        load_dataset(f"msd:{msd_prostate}?channel=5")


def test_msd_ct_group(msd_ct):
    vs = load_dataset(f"msd:{msd_ct}?test=0")
    assert vs.modality == "CT" and vs.group == "CT" and len(vs.volumes) == 4


def test_msd_listed_file_missing(msd_prostate):
    (msd_prostate / "labelsTr" / "prostate_01.nii.gz").unlink()
    with pytest.raises(DataError, match=r"labelsTr/prostate_01.nii.gz: listed in .*dataset.json but not found"):
        load_dataset(f"msd:{msd_prostate}")


def test_msd_label_outside_map(msd_ct):
    f = msd_ct / "labelsTr" / "spleen_00.nii.gz"
    lab = np.asarray(read_array(f, kind="label")).copy()
    lab[0, 0, 0] = 3
    write_nifti(f, lab, (0.6, 0.6, 3.6))
    vol = load_dataset(f"msd:{msd_ct}").volumes[0]
    with pytest.raises(DataError, match=r"spleen_00.nii.gz: label values \[3\] are outside"):
        vol.load()


def test_msd_bad_dataset_json(msd_ct):
    (msd_ct / "dataset.json").write_text("{not json")
    with pytest.raises(DataError, match="dataset.json: not valid JSON"):
        load_dataset(f"msd:{msd_ct}")


def test_msd_nnunet_v2_style(msd_ct):
    meta = json.loads((msd_ct / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "spleen": 1}
    meta["channel_names"] = meta.pop("modality")
    (msd_ct / "dataset.json").write_text(json.dumps(meta))
    vs = load_dataset(f"msd:{msd_ct}")
    assert vs.labels == {0: "background", 1: "spleen"} and vs.modality == "CT"


# --- folder, offline sources -----------------------------------------------------------

def test_folder_reader(folder_ds):
    vs = load_dataset(f"folder:{folder_ds}")
    assert [v.case_id for v in vs.volumes] == ["case0", "case1", "case2"]
    assert [v.has_label for v in vs.volumes] == [True, True, False]
    assert detect_format(folder_ds) == "folder"


def test_mni_template():
    vs = load_dataset("mni")
    (vol,) = vs.volumes
    img, lab = vol.load()
    assert img.shape == lab.shape == (197, 233, 189)
    counts = np.bincount(lab.ravel(), minlength=3)
    assert counts[1] > 100_000 and counts[2] > 100_000  # grey and white matter both present
    # white matter is brighter than grey matter on a T1 image
    assert img[lab == 2].mean() > img[lab == 1].mean()


def test_natural_photos():
    vs = load_dataset("natural")
    assert vs.labels == {} and len(vs.volumes) == 19 * 5
    cam = next(v for v in vs.volumes if v.case_id == "camera_full")
    img, lab = cam.load()
    assert lab is None and img.shape == cam.shape == (512, 512, 1)
    assert 0.0 <= img.min() < img.max() <= 1.0
    q = next(v for v in vs.volumes if v.case_id == "camera_q0")
    assert q.load()[0].shape == q.shape == (256, 256, 1)
    assert len(load_dataset("natural?quadrants=0").volumes) == 19


def test_fingerprint_changes_with_file(acdc2017):
    a = load_dataset(f"acdc:{acdc2017}?cine=0").fingerprint()
    assert a == load_dataset(f"acdc:{acdc2017}?cine=0").fingerprint()
    p = acdc2017 / "training" / "patient001" / "patient001_frame01.nii.gz"
    shutil.copy(p, p.with_name("tmp.nii.gz"))
    write_nifti(p, np.zeros((20, 16, 4), np.int16) + 5, (1.5, 1.5, 10))
    assert load_dataset(f"acdc:{acdc2017}?cine=0").fingerprint() != a
