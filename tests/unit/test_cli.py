"""The ``medssl`` command: data summary, spec parsing, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import truncate
from medssl_utils.cli import main
from medssl_utils.data import parse_spec
from medssl_utils.errors import ParameterError


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "medssl_utils", *map(str, args)], capture_output=True, text=True)


def test_summary_json_acdc(acdc2017, capsys):
    assert main(["data", "summary", str(acdc2017), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    for key in ("format", "cases", "labelled_volumes", "unlabelled_frames", "label_values", "spacing_mm",
                "slices_labelled", "problems"):
        assert key in s
    assert s["format"] == "acdc" and s["cases"] == 4
    assert s["labelled_volumes"] == 6 and s["unlabelled_frames"] == 20
    assert s["label_values"] == [0, 1, 2, 3] and s["slices_labelled"] == 24
    assert s["spacing_mm"] == [[1.5, 1.5], [1.5, 1.5], [10.0, 10.0]] and s["problems"] == []
    assert s["groups"] == {"NOR": 1, "DCM": 1, "HCM": 1, "null": 1}  # 2017 testing: no Group line


def test_summary_msd_and_folder(msd_prostate, folder_ds, capsys):
    assert main(["data", "summary", str(msd_prostate), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["format"] == "msd" and s["cases"] == 6 and s["labelled_volumes"] == 4 and s["unlabelled_frames"] == 2
    assert s["label_values"] == [0, 1, 2] and s["spacing_mm"][2] == [3.6, 3.6]
    assert main(["data", "summary", str(folder_ds)]) == 0
    out = capsys.readouterr().out
    assert "format            folder" in out and "problems          none" in out


def test_summary_reports_problems_and_exit_1(acdc2017):
    truncate(acdc2017 / "training" / "patient002" / "patient002_frame03.nii.gz", 0.7)
    r = run_cli("data", "summary", acdc2017, "--json")
    assert r.returncode == 1
    s = json.loads(r.stdout)
    assert len(s["problems"]) == 1 and "patient002_frame03.nii.gz: corrupt or truncated" in s["problems"][0]


@pytest.mark.parametrize("make_path,expected", [
    (lambda tmp: tmp / "missing", "missing: path does not exist"),
    (lambda tmp: (tmp / "empty").mkdir() or tmp / "empty", "empty: unrecognised layout; supported: ACDC"),
])
def test_cli_errors_are_one_line(tmp_path, make_path, expected):
    r = run_cli("data", "summary", make_path(tmp_path))
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("medssl: error: ") and expected in r.stderr
    assert "Traceback" not in r.stderr


def test_spec_parsing():
    s = parse_spec("msd:/data/Task05_Prostate?channel=ADC&task=prostate")
    assert (s.kind, s.target, s.opts) == ("msd", "/data/Task05_Prostate", {"channel": "ADC", "task": "prostate"})
    assert str(s) == "msd:/data/Task05_Prostate?channel=ADC&task=prostate"
    assert parse_spec("mni").kind == "mni" and parse_spec("phantom:cardiac").target == "cardiac"
    with pytest.raises(ParameterError, match=r"unknown kind 'nifti'; expected one of \['acdc', 'msd'"):
        parse_spec("nifti:/x")
    with pytest.raises(ParameterError, match="'acdc' needs a path"):
        parse_spec("acdc")
    with pytest.raises(ParameterError, match=r"unknown option 'chanel' for 'msd'; allowed: \['channel', 'test'"):
        parse_spec("msd:/x?chanel=1")
    with pytest.raises(ParameterError, match="'mni' takes no path"):
        parse_spec("mni:/x")


def test_spec_tag_override(acdc2017):
    from medssl_utils.data import load_dataset

    vs = load_dataset(f"acdc:{acdc2017}?cine=0&task=heart&group=cardiac-mr")
    assert vs.task == "heart" and vs.group == "cardiac-mr"
    with pytest.raises(ParameterError, match="option cine='maybe'; expected 1 or 0"):
        load_dataset(f"acdc:{acdc2017}?cine=maybe")


def test_help_and_light_commands_import_no_heavy_library(tmp_path):
    """``medssl --help`` and the parser of every command load neither the report's libraries
    (pandas, seaborn, matplotlib) nor torch: they are imported by the commands that use them."""
    code = ("import sys\nfrom medssl_utils.cli import build_parser\nbuild_parser().parse_args(['report', 'x'])\n"
            "print(sorted(m for m in ('pandas', 'seaborn', 'matplotlib', 'torch', 'scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    assert "report" in run_cli("--help").stdout  # the report's parser is still there
    r = run_cli("report", tmp_path / "nothing-here")
    assert r.returncode == 2 and "nothing-here" in r.stderr  # and it still runs (imports the report on use)
