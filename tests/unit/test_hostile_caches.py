"""Hostile input, second series (issue 21): caches cut short, temporary files of killed writers,
teaching copies an instructor edited, dataset specs in ``medssl data summary`` — and their
neighbours that already worked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import truncate
from study_kit import make_study

from medssl_utils import fileio, teach
from medssl_utils import study as st
from medssl_utils.cli import main
from medssl_utils.data import load_dataset, slice_cache
from medssl_utils.data.slicing import cache_problem
from medssl_utils.data.summary import summarize
from medssl_utils.errors import DataError
from medssl_utils.study.formatting import format_status


def dead_pid() -> int:
    """The pid of a process that has ended (its number is not reused this quickly)."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


# ============================================================================ 1. slice caches cut short
def _cache(acdc2017, tmp_path):
    return slice_cache(load_dataset(f"acdc:{acdc2017}?cine=0"), image_size=16, cache_dir=tmp_path / "c")


@pytest.mark.parametrize("damage", ["images cut", "labels cut", "images header", "index gone", "index short",
                                    "meta garbage"])
def test_a_damaged_slice_cache_is_rebuilt_and_never_served(acdc2017, tmp_path, capsys, damage):
    good = _cache(acdc2017, tmp_path)
    images, labels = np.array(good.images), np.array(good.labels)
    path = good.path
    if damage == "images cut":
        truncate(path / "images.npy", 0.6)  # a full disk, a killed copy
    elif damage == "labels cut":
        truncate(path / "labels.npy", 0.9)
    elif damage == "images header":
        np.save(path / "images.npy", np.zeros((3, 16, 16), np.float16))  # another array under the name
    elif damage == "index gone":
        (path / "index.csv").unlink()
    elif damage == "index short":
        lines = (path / "index.csv").read_text().splitlines()
        (path / "index.csv").write_text("\n".join(lines[:-3]) + "\n")
    else:
        (path / "meta.json").write_text("{not json")
    assert cache_problem(path) is not None
    again = _cache(acdc2017, tmp_path)
    err = capsys.readouterr().err
    assert f"slice cache {path}:" in err and "rebuilding it" in err and len(err.strip().splitlines()) == 1
    assert again.path == path and cache_problem(path) is None
    np.testing.assert_array_equal(np.array(again.images), images)  # the rebuilt entry equals the first build
    np.testing.assert_array_equal(np.array(again.labels), labels)
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # the broken copy is gone


def test_a_complete_cache_is_reused_without_a_word(acdc2017, tmp_path, capsys):
    first = _cache(acdc2017, tmp_path)
    mtime = os.stat(first.path / "images.npy").st_mtime_ns
    _cache(acdc2017, tmp_path)
    assert capsys.readouterr().err == "" and os.stat(first.path / "images.npy").st_mtime_ns == mtime


def test_a_cut_short_phantom_in_the_cache_is_regenerated(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MEDSSL_CACHE_DIR", str(tmp_path / "cache"))
    vs = load_dataset("phantom:cardiac?cases=2")
    victim = Path(vs.volumes[0].sources[0])
    truncate(victim, 0.5)
    again = load_dataset("phantom:cardiac?cases=2")
    assert "regenerating it" in capsys.readouterr().err
    image, _ = again.volumes[0].load()  # readable again
    assert image.size > 0


def test_truncated_phantom_files_in_a_user_folder_still_name_the_file(tmp_path):
    """A neighbour that already worked: outside the cache medssl does not rewrite data, it names it."""
    from medssl_utils.data.phantoms import write_phantom

    root = write_phantom("cardiac", tmp_path / "p", cases=2)
    victim = sorted(root.rglob("*frame01.nii.gz"))[0]
    truncate(victim, 0.5)
    with pytest.raises(DataError, match=victim.name):
        for volume in load_dataset(f"acdc:{root}").volumes:
            volume.load()


# ============================================================================ 2. temporaries of killed writers
def test_stale_temps_are_found_and_removed_but_never_a_live_writers(tmp_path):
    ck = tmp_path / "checkpoints"
    ck.mkdir()
    (ck / "last.pt").write_bytes(b"state")
    dead = ck / f".last.pt.tmp-{dead_pid()}"
    dead.write_bytes(b"x" * 1000)
    nifti = tmp_path / f".pred.tmp-{dead_pid()}.nii.gz"
    nifti.write_bytes(b"y")
    folder = tmp_path / f".slices.tmp-{dead_pid()}"
    (folder / "inner").mkdir(parents=True)
    live = ck / f".last.pt.tmp-{os.getpid()}"
    live.write_bytes(b"writing")
    other = tmp_path / ".hidden-but-not-a-temp"
    other.write_bytes(b"z")
    assert fileio.stale_temps(tmp_path) == sorted([dead, nifti, folder])
    assert sorted(fileio.remove_stale_temps(tmp_path)) == sorted([dead, nifti, folder])
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted(
        ["checkpoints", "last.pt", live.name, other.name])


def test_a_run_that_starts_or_resumes_removes_its_stale_temps(tmp_path, capsys):
    from training_kit import fin

    run = tmp_path / "r"
    (run / "checkpoints").mkdir(parents=True)
    stale = run / "checkpoints" / f".last.pt.tmp-{dead_pid()}"
    stale.write_bytes(b"half a state")
    live = run / f".notes.txt.tmp-{os.getpid()}"
    live.write_text("mine")
    fin(run, max_steps=2, eval_every=2)
    assert not stale.exists() and live.exists()
    assert "removed 1 temporary file(s) of writers no longer running: checkpoints/" in capsys.readouterr().out


def test_study_status_mentions_stale_temps(tmp_path, nbs):
    path = make_study(tmp_path, nbs, finetune={"dataset": "phantom:cardiac", "labelled_slices": [4], "seeds": [0],
                                               "strategies": {"r": "random"}})
    run_dir = tmp_path / "results" / "finetune" / "r" / "n4" / "seed0"
    (run_dir / "checkpoints").mkdir(parents=True)
    stale = run_dir / "checkpoints" / f".last.pt.tmp-{dead_pid()}"
    stale.write_bytes(b"x" * 2_000_000)
    rows = st.study_status(path)
    assert rows[0]["stale_temps"] == [str(stale)]
    text = format_status(rows, "s")
    assert "1 temporary file(s) left by writers that are no longer running (2.0 MB" in text
    assert f"finetune/r/n4/seed0: checkpoints/{stale.name}" in text
    assert "temporary" not in format_status([{**rows[0], "stale_temps": []}], "s")


# ============================================================================ 3. teaching copies edited
def test_teach_refuses_to_overwrite_an_edited_copy_and_force_keeps_it(tmp_path, capsys):
    out = tmp_path / "lab"
    first = teach.make_copies(out)
    student = first["student"][0]
    fresh = student.read_bytes()
    assert teach.make_copies(out) == first  # unchanged copies: written again without a word
    student.write_text(student.read_text().replace('"cells": [', '"cells": [ ', 1))  # the instructor's edit
    edited = student.read_bytes()
    with pytest.raises(DataError, match=f"changed since medssl teach wrote it: {student}; nothing was written"):
        teach.make_copies(out)
    assert student.read_bytes() == edited
    assert main(["teach", str(out)]) == 2  # the command says the same in one line
    assert str(student) in capsys.readouterr().err
    teach.make_copies(out, force=True)
    assert student.read_bytes() == fresh
    kept = sorted(student.parent.glob(f"{student.stem}.edited-*.ipynb"))
    assert len(kept) == 1 and kept[0].read_bytes() == edited


def test_teach_refuses_a_file_it_did_not_write(tmp_path):
    out = tmp_path / "lab"
    (out / "instructor").mkdir(parents=True)
    mine = out / "instructor" / "02_finetune.ipynb"
    mine.write_text("{}")  # the instructor's own file, there before medssl teach ran
    with pytest.raises(DataError, match="02_finetune.ipynb"):
        teach.make_copies(out)
    assert mine.read_text() == "{}" and not (out / "student").exists()


# ============================================================================ 4. data summary takes specs
def test_summary_takes_dataset_specs(tmp_path, folder_ds, msd_prostate, monkeypatch, capsys):
    monkeypatch.setenv("MEDSSL_CACHE_DIR", str(tmp_path / "cache"))
    s = summarize("phantom:cardiac?cases=2", decode=False)
    assert s["format"] == "phantom" and s["cases"] == 3 and s["path"] == "phantom:cardiac?cases=2"
    ct = summarize(f"folder:{folder_ds}?modality=CT", decode=False)
    assert ct["format"] == "folder" and ct["modality"] == "CT" and ct["path"] == str(folder_ds)
    assert summarize(str(folder_ds), decode=False)["modality"] == "MR"  # a plain folder still works
    adc = summarize(f"msd:{msd_prostate}?channel=ADC", decode=False)
    assert adc["format"] == "msd" and adc["modality"] == "ADC"
    assert main(["data", "summary", f"folder:{folder_ds}?modality=CT", "--json", "--headers-only"]) == 0
    assert json.loads(capsys.readouterr().out)["modality"] == "CT"
    with pytest.raises(DataError, match="nowhere: path does not exist"):
        summarize(str(tmp_path / "nowhere"))
    with pytest.raises(Exception, match="option modality='PET'"):
        summarize(f"folder:{folder_ds}?modality=PET")
