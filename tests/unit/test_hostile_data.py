"""Hostile but realistic data inputs (issue 10): each gets one line naming the file or option.

Every case here was accepted silently, altered silently or ended in a traceback before the
reader registry; each must now raise DataError / ParameterError (CLI: one line, exit 2) and
leave nothing half-written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import write_acdc_patient, write_msd_task
from medssl_utils.cli import main
from medssl_utils.data import load_dataset, parse_spec
from medssl_utils.data.nifti import write_nifti
from medssl_utils.errors import DataError, ParameterError


def cli(capsys, *args) -> tuple[int, str]:
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    return code, err


def one_line(err: str) -> bool:
    return err.count("\n") == 1 and err.startswith("medssl: error: ") and "Traceback" not in err


def save_raw(path: Path, data, zooms=None):
    """A NIfTI written with nibabel directly (write_nifti would not write a bad header)."""
    img = nib.Nifti1Image(np.asarray(data), np.eye(4))
    if zooms is not None:
        img.header["pixdim"][1:1 + len(zooms)] = zooms
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


# --- ACDC folders ----------------------------------------------------------------------

def test_four_digit_patient_folders_are_read(tmp_path):
    rng = np.random.default_rng(0)
    for number in (999, 1000):
        write_acdc_patient(tmp_path / "ACDC" / "training" / f"patient{number}", rng)
    vs = load_dataset(f"acdc:{tmp_path / 'ACDC'}?cine=0")
    assert vs.case_ids == ["patient999", "patient1000"]
    assert {v.meta["patient"] for v in vs.volumes} == {999, 1000}


def test_self_looping_symlink_patient_is_an_error(tmp_path):
    rng = np.random.default_rng(0)
    write_acdc_patient(tmp_path / "ACDC" / "training" / "patient001", rng)
    loop = tmp_path / "ACDC" / "training" / "patient002"
    os.symlink(loop, loop)
    with pytest.raises(DataError, match=r"patient002: a symbolic link that does not lead to a folder"):
        load_dataset(f"acdc:{tmp_path / 'ACDC'}")


def test_patient_entry_that_is_a_file_or_a_duplicate_number(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "ACDC" / "training"
    write_acdc_patient(root / "patient001", rng)
    (root / "patient002").write_text("not a folder")
    with pytest.raises(DataError, match=r"patient002: not a folder; expected an ACDC patient folder"):
        load_dataset(f"acdc:{tmp_path / 'ACDC'}")
    (root / "patient002").unlink()
    write_acdc_patient(root / "patient0001", rng)
    with pytest.raises(DataError, match=r"patient number 1 also used by"):
        load_dataset(f"acdc:{tmp_path / 'ACDC'}")


# --- NIfTI headers ---------------------------------------------------------------------

def test_zero_spacing_is_an_error_naming_the_file(tmp_path, capsys):
    save_raw(tmp_path / "ds" / "images" / "a.nii.gz", np.ones((8, 8, 3), np.float32), zooms=(1.5, 0.0, 2.0))
    with pytest.raises(DataError, match=r"a.nii.gz: voxel spacing \(1.5, 0.0, 2.0\) mm is not positive"):
        load_dataset(f"folder:{tmp_path / 'ds'}")
    code, err = cli(capsys, "data", "summary", tmp_path / "ds")
    assert code == 2 and one_line(err) and "a.nii.gz: voxel spacing" in err


def test_2d_image_is_reported_with_its_real_shape(tmp_path):
    pdir = tmp_path / "ACDC" / "training" / "patient001"
    write_acdc_patient(pdir, np.random.default_rng(0))
    save_raw(pdir / "patient001_frame01.nii.gz", np.ones((20, 16), np.int16))
    with pytest.raises(DataError, match=r"label shape \(20, 16, 4\) does not match image shape \(20, 16\) of "
                                        r"patient001_frame01.nii.gz"):
        load_dataset(f"acdc:{tmp_path / 'ACDC'}")
    save_raw(tmp_path / "ds" / "images" / "a.nii.gz", np.ones((16, 16), np.float32))
    save_raw(tmp_path / "ds" / "labels" / "a.nii.gz", np.zeros((16, 16, 3), np.uint8))
    with pytest.raises(DataError, match=r"label shape \(16, 16, 3\) does not match image shape \(16, 16\) of a.nii.gz"):
        load_dataset(f"folder:{tmp_path / 'ds'}")
    (tmp_path / "ds" / "labels" / "a.nii.gz").unlink()
    vol, = load_dataset(f"folder:{tmp_path / 'ds'}").volumes  # a 2D image alone is one slice
    assert vol.shape == (16, 16, 1) and vol.load()[0].shape == (16, 16, 1)


def test_folder_multichannel_image_and_orphan_label_are_refused(tmp_path):
    save_raw(tmp_path / "ds" / "images" / "a.nii.gz", np.ones((8, 8, 2, 3), np.float32))
    with pytest.raises(DataError, match=r"a.nii.gz: has 3 channels \(shape \(8, 8, 2, 3\)\) but expected one channel"):
        load_dataset(f"folder:{tmp_path / 'ds'}")
    save_raw(tmp_path / "ds" / "images" / "a.nii.gz", np.ones((8, 8, 2), np.float32))
    save_raw(tmp_path / "ds" / "labels" / "b.nii.gz", np.zeros((8, 8, 2), np.uint8))
    with pytest.raises(DataError, match=r"labels/b.nii.gz: no image of the same name"):
        load_dataset(f"folder:{tmp_path / 'ds'}")


# --- Decathlon dataset.json ------------------------------------------------------------

@pytest.fixture
def task(tmp_path) -> Path:
    return write_msd_task(tmp_path / "Task05_Prostate", np.random.default_rng(2), n_train=2, n_test=1)


def edit_json(root: Path, change) -> None:
    meta = json.loads((root / "dataset.json").read_text())
    change(meta)
    (root / "dataset.json").write_text(json.dumps(meta))


def test_channel_count_must_match_the_modality_map(task):
    img = task / "imagesTr" / "prostate_00.nii.gz"
    write_nifti(img, np.ones((18, 14, 5), np.int16), (0.6, 0.6, 3.6))  # 3D, but T2 + ADC listed
    with pytest.raises(DataError, match=r"prostate_00.nii.gz: has 1 channel \(shape \(18, 14, 5\)\) but .*dataset.json "
                                        r"lists 2 modalities"):
        load_dataset(f"msd:{task}")
    write_nifti(img, np.ones((18, 14, 5, 3), np.int16), (0.6, 0.6, 3.6))
    edit_json(task, lambda m: m.update(modality={"0": "T2"}))
    with pytest.raises(DataError, match=r"prostate_00.nii.gz: has 3 channels .* lists 1 modalities"):
        load_dataset(f"msd:{task}")


@pytest.mark.parametrize("change,expected", [
    (lambda m: m.update(modality=["T2", "ADC"]), r"'modality' must be a map of channel index to name"),
    (lambda m: m.update(modality={"T2": "0", "ADC": "1"}), r"'modality' key 'T2' is not a channel index"),
    (lambda m: m.update(modality={"0": "T2", "2": "ADC"}), r"'modality' keys \['0', '2'\] are not the channel indices 0..1"),
    (lambda m: m.update(modality={"0": "T2", "1": 5}), r"'modality' name 5 is not a non-empty string"),
    (lambda m: m.update(labels={"0": "background", "1": ["PZ"]}), r"label entry '1': \['PZ'\] is not 'id: name'"),
    (lambda m: m.update(labels={"0": "background", "300": "PZ"}), r"label id 300 \('PZ'\) is outside 0..255"),
    (lambda m: m.update(labels={"0": "background", "1": "PZ", "PZ2": 1}), r"label id 1 is given twice"),
    (lambda m: m["training"][0].update(label=7), r"training entry 0 label is 7; expected a file path"),
    (lambda m: m["training"][1].update(image=None), r"training entry 1 image is None; expected a file path"),
    (lambda m: m["training"][1].pop("label"), r"training entry 1 is not \{'image': ..., 'label': ...\}"),
    (lambda m: m.update(test={"a": 1}), r"'test' is dict; expected a list of image paths"),
    (lambda m: m.update(test=[["x"]]), r"test entry 0 is \['x'\]; expected a file path"),
    (lambda m: m.update(numTraining=5), r"numTraining is 5 but the 'training' list has 2 entries"),
    (lambda m: (m["training"].append(dict(m["training"][0])), m.update(numTraining=3)),
     r"prostate_00.nii.gz: listed twice"),
])
def test_malformed_dataset_json_is_one_line(task, capsys, change, expected):
    edit_json(task, change)
    with pytest.raises(DataError, match=expected):
        load_dataset(f"msd:{task}")
    code, err = cli(capsys, "data", "summary", task)
    assert code == 2 and one_line(err) and ("dataset.json" in err or "prostate_00" in err)


# --- spec strings ----------------------------------------------------------------------

def test_path_with_question_mark_has_an_escape(tmp_path, folder_ds):
    odd = tmp_path / "what?" / "ds"
    odd.parent.mkdir()
    folder_ds.rename(odd)
    with pytest.raises(ParameterError, match=r"'/ds' after '\?' is not key=value.*written as the option path="):
        parse_spec(f"folder:{odd}")
    spec = parse_spec(f"folder:?path={odd}&task=odd")
    assert spec.target == str(odd) and spec.opts == {"task": "odd"}
    assert parse_spec(str(spec)) == spec  # round trip keeps the escape
    vs = load_dataset(spec)
    assert len(vs.volumes) == 3 and vs.task == "odd"
    assert parse_spec("folder:?path=/a%26b%25c").target == "/a&b%c"
    with pytest.raises(ParameterError, match="either before '\\?' or as path=, not both"):
        parse_spec("folder:/x?path=/y")
    with pytest.raises(ParameterError, match="'mni' takes no path"):
        parse_spec("mni?path=/y")


def test_summary_reads_a_folder_whose_name_holds_a_question_mark(tmp_path, folder_ds, capsys):
    odd = tmp_path / "odd?name"
    folder_ds.rename(odd)
    code, _ = cli(capsys, "data", "summary", odd)
    assert code == 0


@pytest.mark.parametrize("spec,expected", [
    ("acdc:/x?cine=0&cine=1", r"option 'cine' is given twice"),
    ("acdc:/x?cine=", r"option cine=''; expected 1 or 0"),
    ("acdc:/x?subsets=train", r"option subsets='train'; expected a comma-separated list of training, testing"),
    ("acdc:/x?subsets=training,,testing", r"subsets='training,,testing'.*an item is empty"),
    ("acdc:/x?subsets=training,training", r"an item is repeated"),
    ("folder:/x?modality=ct", r"option modality='ct'; expected one of MR, CT"),
    ("phantom:cardiac?cases=1e3", r"option cases='1e3'; expected an integer in 1..2000"),
    ("phantom:cardiac?cases=0", r"option cases='0'; expected an integer in 1..2000"),
    ("phantom:cardiac?cases=2000000", r"option cases='2000000'; expected an integer in 1..2000"),
    ("phantom:cardiac?seed=-1", r"option seed='-1'; expected an integer in 0.."),
    ("phantom:lung", r"unknown phantom name 'lung'; expected one of \['abdomen-ct', 'brain-mr', 'cardiac'"),
    ("natural?quadrants=2", r"option quadrants='2'; expected 1 or 0"),
    ("mni?domain=", r"option domain=''; expected a non-empty string"),
    ("acdc:/x?cine", r"'cine' after '\?' is not key=value"),
    ("msd:/x?channel=T2&&test=0", r"'' after '\?' is not key=value"),
])
def test_bad_spec_options_are_refused_at_parse_time(spec, expected):
    with pytest.raises(ParameterError, match=expected) as err:
        parse_spec(spec)
    assert "\n" not in str(err.value) and "dataset spec" in str(err.value)


def test_typed_values_with_defaults():
    assert parse_spec("acdc:/x").values == {"cine": True, "subsets": ("training", "testing")}
    assert parse_spec("acdc:/x?cine=no&subsets=testing&task=t").values == {
        "cine": False, "subsets": ("testing",), "task": "t"}
    assert parse_spec("phantom:cardiac?cases=12").values == {"cases": 12, "seed": 0}


# --- phantoms on the command line ------------------------------------------------------

def test_phantoms_out_is_a_file(tmp_path, capsys):
    out = tmp_path / "out.txt"
    out.write_text("keep me")
    code, err = cli(capsys, "data", "phantoms", out, "--only", "brain-mr", "--cases", "1")
    assert code == 2 and one_line(err) and "out.txt: is a file; expected a folder" in err
    assert out.read_text() == "keep me"
    code, err = cli(capsys, "data", "phantoms", out / "sub", "--only", "brain-mr", "--cases", "1")
    assert code == 2 and one_line(err) and "out.txt" in err


def test_phantoms_cases_is_bounded(tmp_path, capsys):
    code, err = cli(capsys, "data", "phantoms", tmp_path / "out", "--cases", "2000000")
    assert code == 2 and one_line(err) and "cases=2000000: expected a whole number in 1..2000" in err
    assert not (tmp_path / "out").exists()


def test_interrupted_phantom_leaves_nothing_half_written(tmp_path, monkeypatch):
    from medssl_utils.data import phantoms
    from medssl_utils.data.phantoms import decathlon

    calls = []

    def failing(task, root, number, seed, training=True, _real=decathlon.write_case):
        calls.append(number)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return _real(task, root, number, seed, training=training)

    monkeypatch.setattr(decathlon, "write_case", failing)
    with pytest.raises(DataError, match=r"Task92_PhantomBrainMR: writing the phantom failed \(No space left on device\)"):
        phantoms.write_phantom("brain-mr", tmp_path / "out", cases=3, workers=1)
    assert list((tmp_path / "out").iterdir()) == []


# --- more of the same kinds ------------------------------------------------------------

@pytest.mark.parametrize("data,expected", [
    (np.ones((8, 8, 2), np.complex64), r"voxel type complex64 \(c\); expected real numbers"),
    (np.zeros((8, 8, 2), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")]), r"voxel type .* \(RGB\); expected real"),
])
def test_non_real_voxel_types_are_refused(tmp_path, data, expected):
    save_raw(tmp_path / "ds" / "images" / "a.nii.gz", data)
    with pytest.raises(DataError, match=r"a.nii.gz: " + expected):
        load_dataset(f"folder:{tmp_path / 'ds'}")


def test_empty_nifti_file_and_folder_named_like_one(tmp_path):
    (tmp_path / "ds" / "images").mkdir(parents=True)
    (tmp_path / "ds" / "images" / "a.nii.gz").write_bytes(b"")
    with pytest.raises(DataError, match=r"a.nii.gz: not a readable NIfTI file"):
        load_dataset(f"folder:{tmp_path / 'ds'}")
    (tmp_path / "ds" / "images" / "a.nii.gz").unlink()
    (tmp_path / "ds" / "images" / "a.nii.gz").mkdir()
    with pytest.raises(DataError, match=r"a.nii.gz: not a file \(a folder, or a broken symbolic link\)"):
        load_dataset(f"folder:{tmp_path / 'ds'}")


def test_info_cfg_with_a_key_given_twice(tmp_path):
    write_acdc_patient(tmp_path / "A" / "training" / "patient001", np.random.default_rng(0),
                       info_lines=["ED: 1", "ES: 3", "NbFrame: 5", "ED: 2"])
    with pytest.raises(DataError, match=r"Info.cfg:4: 'ED' given again \('1', now '2'\)"):
        load_dataset(f"acdc:{tmp_path / 'A'}")


def test_summary_of_a_file_or_an_empty_dicom_folder(tmp_path, capsys):
    f = tmp_path / "x.nii.gz"
    save_raw(f, np.ones((4, 4, 2), np.float32))
    code, err = cli(capsys, "data", "summary", f)
    assert code == 2 and one_line(err) and "x.nii.gz: expected a dataset folder, got a file" in err
    (tmp_path / "d").mkdir()
    with pytest.raises(DataError, match=r"d: no usable DICOM image series \(first reason: .*d: no files\)"):
        load_dataset(f"dicom:{tmp_path / 'd'}")


@pytest.mark.parametrize("shape,expected", [
    ((4, 0, 3), r"has an empty axis \(shape \(4, 0, 3\)\)"),
    ((4, 4, 2, 1, 2), r"has shape \(4, 4, 2, 1, 2\); expected a 2D or 3D image"),
])
def test_empty_axes_and_extra_axes_are_refused(tmp_path, shape, expected):
    save_raw(tmp_path / "ds" / "images" / "a.nii.gz", np.zeros(shape, np.float32))
    with pytest.raises(DataError, match=r"a.nii.gz: " + expected):
        load_dataset(f"folder:{tmp_path / 'ds'}")
