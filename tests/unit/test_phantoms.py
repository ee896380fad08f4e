"""Tests of the phantom generators: file layouts, dtypes, anatomy and determinism."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medssl_utils.data.phantoms import PHANTOMS, PhantomInfo, write_phantom
from medssl_utils.errors import ParameterError

INFO_RE = re.compile(
    r"ED: (\d+)\nES: (\d+)\nGroup: (NOR|DCM|HCM|MINF|RV)\nHeight: (\d+\.\d)\nNbFrame: (\d+)\nWeight: (\d+\.\d)\n"
)
MSD_KEYS = {"name", "description", "reference", "licence", "release", "tensorImageSize", "modality", "labels",
            "numTraining", "numTest", "training", "test"}
TASK_FOLDERS = {"abdomen-ct": "Task91_PhantomAbdomenCT", "brain-mr": "Task92_PhantomBrainMR",
                "prostate-mr": "Task93_PhantomProstateMR"}


def load(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(str(path)).dataobj)


def info_cfg(folder: Path) -> dict:
    m = INFO_RE.fullmatch((folder / "Info.cfg").read_text())
    assert m, f"{folder / 'Info.cfg'} does not match the ACDC format"
    ed, es, group, height, nb, weight = m.groups()
    return dict(ED=int(ed), ES=int(es), Group=group, Height=float(height), NbFrame=int(nb), Weight=float(weight))


@pytest.fixture(scope="module")
def cardiac(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cardiac")
    root = write_phantom("cardiac", out, cases=10, seed=3)
    assert root == out
    return root


@pytest.fixture(scope="module")
def cardiac_volumes(cardiac) -> list[dict]:
    """Per training patient: group, voxel volume (ml), ED/ES labels and images."""
    rows = []
    for folder in sorted((cardiac / "database" / "training").iterdir()):
        info = info_cfg(folder)
        name = folder.name
        ed_img = nib.load(str(folder / f"{name}_frame{info['ED']:02d}.nii.gz"))
        rows.append(dict(
            folder=folder, info=info, group=info["Group"],
            voxel_ml=float(np.prod(ed_img.header.get_zooms()[:3])) / 1000.0,
            ed=load(folder / f"{name}_frame{info['ED']:02d}_gt.nii.gz"),
            es=load(folder / f"{name}_frame{info['ES']:02d}_gt.nii.gz"),
            ed_img=np.asanyarray(ed_img.dataobj),
        ))
    return rows


@pytest.fixture(scope="module")
def msd(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("msd")
    return {name: write_phantom(name, out, cases=3, seed=5) for name in TASK_FOLDERS}


# ---------------------------------------------------------------------------------- API


def test_registry_describes_every_phantom():
    assert set(PHANTOMS) == {"cardiac", "abdomen-ct", "brain-mr", "prostate-mr"}
    for name, info in PHANTOMS.items():
        assert isinstance(info, PhantomInfo) and info.name == name
        assert info.format == ("acdc" if name == "cardiac" else "msd")
        assert info.default_cases >= 1 and info.description.endswith(".")
    assert PHANTOMS["cardiac"].default_cases == 60
    with pytest.raises(AttributeError):
        PHANTOMS["cardiac"].default_cases = 3  # frozen


def test_unknown_name_is_a_parameter_error_naming_the_choices(tmp_path):
    with pytest.raises(ParameterError) as err:
        write_phantom("lung-ct", tmp_path)
    for name in PHANTOMS:
        assert name in str(err.value)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("cases", [0, -2, 1.5, True, "3"])
def test_bad_cases_is_a_parameter_error(tmp_path, cases):
    with pytest.raises(ParameterError, match="cases"):
        write_phantom("cardiac", tmp_path, cases=cases)


def test_bad_seed_is_a_parameter_error(tmp_path):
    with pytest.raises(ParameterError, match="seed"):
        write_phantom("brain-mr", tmp_path, cases=1, seed=-1)


def test_existing_dataset_is_not_silently_mixed(tmp_path):
    root = write_phantom("prostate-mr", tmp_path, cases=3, seed=0)
    with pytest.raises(ParameterError, match="overwrite"):
        write_phantom("prostate-mr", tmp_path, cases=1, seed=0)
    write_phantom("prostate-mr", tmp_path, cases=1, seed=0, overwrite=True)
    assert sorted(p.name for p in (root / "imagesTr").glob("prostate_*")) == ["prostate_001.nii.gz"]


# ---------------------------------------------------------------------------------- cardiac layout


def test_cardiac_layout_is_acdc_2023(cardiac):
    db = cardiac / "database"
    assert sorted(p.name for p in db.iterdir()) == ["testing", "training"]
    assert sorted(p.name for p in (db / "training").iterdir()) == [f"patient{i:03d}" for i in range(1, 11)]
    assert sorted(p.name for p in (db / "testing").iterdir()) == ["patient101", "patient102", "patient103"]
    for folder in [*(db / "training").iterdir(), *(db / "testing").iterdir()]:
        info = info_cfg(folder)
        n = folder.name
        expected = {"Info.cfg", f"{n}_4d.nii.gz"}
        for frame in (info["ED"], info["ES"]):
            expected |= {f"{n}_frame{frame:02d}.nii.gz", f"{n}_frame{frame:02d}_gt.nii.gz"}
        assert {p.name for p in folder.iterdir()} == expected
        assert info["ED"] in (1, 2)
        assert 12 <= info["NbFrame"] <= 35
        assert 0.3 <= (info["ES"] - info["ED"]) / info["NbFrame"] <= 0.5
        assert 140 <= info["Height"] <= 210 and 35 <= info["Weight"] <= 160


def test_cardiac_groups_are_assigned_evenly(cardiac_volumes):
    groups = [r["group"] for r in cardiac_volumes]
    counts = {g: groups.count(g) for g in ("NOR", "DCM", "HCM", "MINF", "RV")}
    assert set(counts.values()) == {2}, counts


def test_cardiac_files_dtypes_shapes_and_spacing(cardiac):
    for folder in sorted((cardiac / "database" / "training").iterdir())[:5]:
        info = info_cfg(folder)
        n = folder.name
        cine_img = nib.load(str(folder / f"{n}_4d.nii.gz"))
        cine = np.asanyarray(cine_img.dataobj)
        assert cine.dtype == np.int16 and cine.ndim == 4
        nx, ny, nz, nt = cine.shape
        assert nt == info["NbFrame"] and 6 <= nz <= 10 and 128 <= nx <= 192 and 128 <= ny <= 192
        assert cine.min() >= 0 and 500 < cine.max() < 5000
        sx, sy, sz = cine_img.header.get_zooms()[:3]
        assert 1.3 <= sx <= 1.9 and 1.3 <= sy <= 1.9 and 5.0 <= sz <= 10.0
        for frame in (info["ED"], info["ES"]):
            img = nib.load(str(folder / f"{n}_frame{frame:02d}.nii.gz"))
            gt = nib.load(str(folder / f"{n}_frame{frame:02d}_gt.nii.gz"))
            data, lab = np.asanyarray(img.dataobj), np.asanyarray(gt.dataobj)
            assert data.dtype == np.int16 and lab.dtype == np.uint8
            assert data.shape == lab.shape == (nx, ny, nz)
            assert np.allclose(img.header.get_zooms(), (sx, sy, sz))
            assert set(np.unique(lab)) <= {0, 1, 2, 3}
            # the annotated frame is exactly frame MM of the cine series
            np.testing.assert_array_equal(data, cine[..., frame - 1])


def test_cardiac_patients_vary_in_pose_and_field_of_view(cardiac_volumes):
    shapes = {r["ed"].shape[:2] for r in cardiac_volumes}
    assert len(shapes) >= 5
    centroids = [np.argwhere(r["ed"] == 3)[:, :2].mean(0) / r["ed"].shape[:2] for r in cardiac_volumes]
    assert np.ptp(np.array(centroids), axis=0).max() > 0.1  # the heart is not always at the same place
    assert any(r["ed"].shape[0] != r["ed"].shape[1] for r in cardiac_volumes)  # some matrices are not square


# ---------------------------------------------------------------------------------- cardiac anatomy


def test_every_structure_is_labelled_at_end_diastole(cardiac_volumes):
    for r in cardiac_volumes:
        assert set(np.unique(r["ed"])) == {0, 1, 2, 3}, r["folder"].name


def test_lv_cavity_shrinks_from_ed_to_es_for_every_patient(cardiac_volumes):
    for r in cardiac_volumes:
        ed, es = int((r["ed"] == 3).sum()), int((r["es"] == 3).sum())
        assert es < ed, r["folder"].name
        assert (r["es"] == 1).sum() < (r["ed"] == 1).sum(), r["folder"].name


def test_myocardium_roughly_keeps_its_volume_over_the_cycle(cardiac_volumes):
    for r in cardiac_volumes:
        ratio = (r["es"] == 2).sum() / (r["ed"] == 2).sum()
        assert 0.7 < ratio < 1.3, (r["folder"].name, ratio)


def test_lv_ring_shrinks_towards_the_apex(cardiac_volumes):
    for r in cardiac_volumes:
        area = (r["ed"] >= 2).sum(axis=(0, 1)).astype(float)  # LV cavity + myocardium per slice
        z = np.flatnonzero(area)
        assert area[z[-1]] < 0.7 * area.max(), r["folder"].name  # the apical slice is small
        rv = (r["ed"] == 1).sum(axis=(0, 1))
        assert rv[z[-1]] < 0.6 * rv.max(), r["folder"].name  # the RV fades before the apex


def test_blood_is_bright_and_myocardium_dark(cardiac_volumes):
    for r in cardiac_volumes:
        img = r["ed_img"].astype(float)
        assert img[r["ed"] == 3].mean() > 1.8 * img[r["ed"] == 2].mean(), r["folder"].name
        assert img[r["ed"] == 1].mean() > 1.5 * img[r["ed"] == 2].mean(), r["folder"].name


def _by_group(rows, fn):
    out: dict[str, list[float]] = {}
    for r in rows:
        out.setdefault(r["group"], []).append(fn(r))
    return {g: float(np.mean(v)) for g, v in out.items()}


def test_group_effects_on_volumes_and_ejection_fraction(cardiac_volumes):
    lv_edv = _by_group(cardiac_volumes, lambda r: (r["ed"] == 3).sum() * r["voxel_ml"])
    rv_edv = _by_group(cardiac_volumes, lambda r: (r["ed"] == 1).sum() * r["voxel_ml"])
    myo = _by_group(cardiac_volumes, lambda r: (r["ed"] == 2).sum() * r["voxel_ml"])
    ef = _by_group(cardiac_volumes, lambda r: 1 - (r["es"] == 3).sum() / (r["ed"] == 3).sum())
    assert lv_edv["DCM"] > 1.4 * lv_edv["NOR"]
    assert ef["DCM"] < 0.35 < 0.5 < ef["NOR"] < 0.72
    assert myo["HCM"] > 1.3 * myo["NOR"] and lv_edv["HCM"] < lv_edv["NOR"] and ef["HCM"] > ef["NOR"]
    assert ef["MINF"] < 0.47 and ef["MINF"] < ef["NOR"] - 0.1
    assert rv_edv["RV"] > 1.3 * rv_edv["NOR"]


# ---------------------------------------------------------------------------------- MSD layout


@pytest.mark.parametrize("name", sorted(TASK_FOLDERS))
def test_msd_layout_and_dataset_json(msd, name):
    root = msd[name]
    assert root.name == TASK_FOLDERS[name] and root.parent.is_dir()
    meta = json.loads((root / "dataset.json").read_text())
    assert set(meta) == MSD_KEYS
    assert meta["numTraining"] == len(meta["training"]) == 3
    assert meta["numTest"] == len(meta["test"]) == 1
    assert meta["labels"]["0"] == "background" and len(meta["labels"]) == 3
    assert meta["tensorImageSize"] == ("4D" if name == "prostate-mr" else "3D")
    listed = set()
    for pair in meta["training"]:
        assert set(pair) == {"image", "label"}
        assert pair["image"].startswith("./imagesTr/") and pair["label"].startswith("./labelsTr/")
        listed |= {pair["image"], pair["label"]}
    assert all(t.startswith("./imagesTs/") and t.endswith("_101.nii.gz") for t in meta["test"])
    listed |= set(meta["test"])
    on_disk = set()
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        for f in (root / sub).iterdir():
            if f.name.startswith("._"):
                continue
            on_disk.add(f"./{sub}/{f.name}")
            fork = f.with_name("._" + f.name)
            assert fork.is_file(), f"no AppleDouble file beside {f}"
            assert fork.read_bytes()[:4] == b"\x00\x05\x16\x07"
    assert on_disk == listed
    for pair in meta["training"]:
        img = load(root / pair["image"])
        lab = load(root / pair["label"])
        assert img.dtype == np.int16 and lab.dtype == np.uint8
        assert img.shape[:3] == lab.shape and lab.ndim == 3
        assert set(np.unique(lab)) <= {int(k) for k in meta["labels"]}
        assert (lab == 1).sum() > 0


def test_ct_is_in_hounsfield_units(msd):
    root = msd["abdomen-ct"]
    img = nib.load(str(root / "imagesTr" / "abdomen_001.nii.gz"))
    data = np.asanyarray(img.dataobj).astype(float)
    lab = load(root / "labelsTr" / "abdomen_001.nii.gz")
    sx, sy, sz = img.header.get_zooms()
    assert 0.7 <= sx <= 0.9 and sx == sy and 2.5 <= sz <= 5.0
    assert data.min() >= -1024 and data.max() > 300  # bone
    air = data[:15, :15, :]  # a corner of the field of view
    assert abs(np.median(air) + 1000) < 30
    liver, tumour = data[lab == 1].mean(), data[lab == 2].mean()
    assert 60 < liver < 160 and tumour < liver - 15  # enhanced liver, hypodense tumour
    assert (data < -80).mean() > 0.1 and ((data > -150) & (data < -50)).sum() > 0  # air, fat


def test_brain_lesion_is_hyperintense(msd):
    root = msd["brain-mr"]
    img = nib.load(str(root / "imagesTr" / "brain_002.nii.gz"))
    data = np.asanyarray(img.dataobj).astype(float)
    lab = load(root / "labelsTr" / "brain_002.nii.gz")
    assert data.min() >= 0
    assert all(0.9 <= z <= 2.0 for z in img.header.get_zooms())
    brain = data[data > np.percentile(data, 60)]
    assert data[lab == 1].mean() > 1.2 * np.median(brain)
    assert (lab == 2).sum() > 0


def test_prostate_has_t2_and_adc_channels(msd):
    root = msd["prostate-mr"]
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["modality"] == {"0": "T2", "1": "ADC"}
    assert meta["labels"] == {"0": "background", "1": "PZ", "2": "TZ"}
    img = nib.load(str(root / "imagesTr" / "prostate_001.nii.gz"))
    data = np.asanyarray(img.dataobj).astype(float)
    lab = load(root / "labelsTr" / "prostate_001.nii.gz")
    assert data.ndim == 4 and data.shape[3] == 2
    sx, sy, sz = img.header.get_zooms()[:3]
    assert 0.5 <= sx <= 0.75 and 3.0 <= sz <= 4.0
    t2, adc = data[..., 0], data[..., 1]
    assert not np.allclose(t2 / t2.mean(), adc / adc.mean())
    assert t2[lab == 1].mean() > t2[lab == 2].mean()  # PZ brighter than TZ on T2
    assert adc[lab == 1].mean() > adc[lab == 2].mean()  # and higher ADC
    assert (lab == 2).sum() > 0 and np.allclose(load(root / "imagesTs" / "prostate_101.nii.gz").shape[3], 2)


def test_domains_differ_in_intensity_statistics(msd, cardiac):
    def stats(path, channel=None):
        d = load(path).astype(float)
        d = d[..., 0] if d.ndim == 4 else d
        return np.percentile(d, [1, 50, 99])

    ct = stats(msd["abdomen-ct"] / "imagesTr" / "abdomen_001.nii.gz")
    brain = stats(msd["brain-mr"] / "imagesTr" / "brain_001.nii.gz")
    prostate = stats(msd["prostate-mr"] / "imagesTr" / "prostate_001.nii.gz")
    heart = stats(cardiac / "database" / "training" / "patient001" / "patient001_frame01.nii.gz")
    assert ct[0] < -900 and min(brain[0], prostate[0], heart[0]) >= 0
    assert brain[1] < 0.1 * brain[2]  # mostly air around the head
    assert prostate[1] > 0.3 * prostate[2]  # field of view inside the body


# ---------------------------------------------------------------------------------- determinism


def _arrays(root: Path) -> dict[str, np.ndarray]:
    return {str(p.relative_to(root)): load(p) for p in sorted(root.rglob("*.nii.gz")) if not p.name.startswith("._")}


@pytest.mark.parametrize("name", ["cardiac", "abdomen-ct"])
def test_same_seed_same_data_other_seed_other_data(tmp_path, name):
    a = _arrays(write_phantom(name, tmp_path / "a", cases=1, seed=7))
    b = _arrays(write_phantom(name, tmp_path / "b", cases=1, seed=7, workers=1))
    c = _arrays(write_phantom(name, tmp_path / "c", cases=1, seed=8))
    assert a.keys() == b.keys() and len(a) >= 2
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    common = set(a) & set(c)
    assert common and all(a[k].shape != c[k].shape or not np.array_equal(a[k], c[k]) for k in common)
