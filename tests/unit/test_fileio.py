"""medssl_utils.fileio: atomic writes leave either the old file or the new one, never a half one."""

import os

import pytest

from medssl_utils import fileio


def test_atomic_write_bytes_and_text(tmp_path):
    path = tmp_path / "sub" / "a.json"
    assert fileio.atomic_write(path, "é\n") == path
    assert path.read_bytes() == "é\n".encode("utf-8")
    fileio.atomic_write(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.json"]  # no temporary left


def test_failed_writer_keeps_the_old_file_and_removes_its_temporary(tmp_path):
    path = tmp_path / "state.pt"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="disk full"):
        with fileio.atomic_file(path) as tmp:
            tmp.write_text("half")
            assert tmp.parent == path.parent and tmp.name.startswith(".state.pt.tmp-")
            raise RuntimeError("disk full")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.pt"]


def test_temp_sibling_keeps_a_format_suffix_and_names_the_process(tmp_path):
    plain = fileio.temp_sibling(tmp_path / "x.nii.gz")
    kept = fileio.temp_sibling(tmp_path / "x.nii.gz", ".nii.gz")
    assert plain.name == f".x.nii.gz.tmp-{os.getpid()}"
    assert kept.name == f".x.tmp-{os.getpid()}.nii.gz" and kept.parent == tmp_path
    assert fileio.temp_sibling(tmp_path / "y.nii", ".nii.gz").name == f".y.nii.tmp-{os.getpid()}"  # suffix absent


def test_atomic_folder_places_the_folder_or_nothing(tmp_path):
    final = tmp_path / "cache" / "key"
    final.parent.mkdir()
    with fileio.atomic_folder(final) as tmp:
        assert tmp.is_dir() and not any(tmp.iterdir()) and not final.exists()
        (tmp / "meta.json").write_text("{}")
    assert (final / "meta.json").read_text() == "{}"
    other = tmp_path / "cache" / "broken"
    with pytest.raises(ValueError):
        with fileio.atomic_folder(other) as tmp:
            (tmp / "images.npy").write_bytes(b"half")
            raise ValueError("interrupted")
    assert sorted(p.name for p in final.parent.iterdir()) == ["key"]


def test_atomic_folder_keeps_the_folder_another_process_placed_first(tmp_path):
    final = tmp_path / "key"
    with fileio.atomic_folder(final) as tmp:
        (tmp / "meta.json").write_text("mine")
        final.mkdir()  # the other process finished first
        (final / "meta.json").write_text("theirs")
    assert (final / "meta.json").read_text() == "theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key"]
