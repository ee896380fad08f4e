"""The notebooks as papermill itself reads them (issue 19, part 4): ``papermill --help-notebook``
lists every declared parameter with its type and default and prints no warning, and running a
notebook by hand with ``-p`` for every parameter gives no "Passed unknown parameter"."""

from __future__ import annotations

import ast
import dataclasses
import logging
import re
import subprocess
import sys
from pathlib import Path

import papermill
import pytest

from medssl_utils import params

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


def _defaults(name: str) -> dict:
    """The declared defaults: the config class's (01, 02) or the parameters cell's (00, 03)."""
    cls = params.config_class(name)
    if cls is None:
        return params.read_cell(NOTEBOOKS / f"{name}.ipynb")[0]
    out = {f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
           for f in dataclasses.fields(cls) if f.init}
    out.update({k: params.read_cell(NOTEBOOKS / f"{name}.ipynb")[0][k] for k in params.NOTEBOOK_DEFAULTS if k in out})
    return out


@pytest.mark.parametrize("name", params.NOTEBOOKS)
def test_help_notebook_lists_every_parameter_with_type_and_default(name):
    proc = subprocess.run([sys.executable, "-m", "papermill", "--help-notebook", str(NOTEBOOKS / f"{name}.ipynb")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout + proc.stderr
    assert "Unable to parse" not in out and "WARNING" not in out.upper(), out
    listed = {m["name"]: (m["type"], m["default"])
              for m in re.finditer(r"^  (?P<name>\w+): (?P<type>.+?) \(default (?P<default>.*?)\)(?: {2,}.*)?$", proc.stdout,
                                   re.MULTILINE)}
    declared = params.declared(name)
    assert list(listed) == [p for p in params.read_cell(NOTEBOOKS / f"{name}.ipynb")[0]]
    assert set(listed) == set(declared)
    defaults = _defaults(name)
    for p, (type_name, default) in listed.items():
        assert type_name == params.papermill_annotation(declared[p].type), p
        value = ast.literal_eval(default)
        assert params._same(value, defaults[p]), (p, value, defaults[p])


@pytest.mark.parametrize("name", params.NOTEBOOKS)
def test_every_parameter_passed_by_hand_is_known_to_papermill(name, tmp_path, caplog):
    """papermill -p for each declared parameter (prepare_only: parameters injected, nothing run)."""
    values = _defaults(name)
    with caplog.at_level(logging.WARNING, logger="papermill"):
        nb = papermill.execute_notebook(str(NOTEBOOKS / f"{name}.ipynb"), str(tmp_path / "out.ipynb"),
                                        parameters=values, prepare_only=True, kernel_name="python3")
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    injected = next(c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", []))
    for p in values:
        assert re.search(rf"^{p} = ", injected.source, re.MULTILINE), p


def test_a_line_with_a_second_equals_sign_still_warns(tmp_path, caplog):
    """What the notebooks avoid: the warning this test suite would see if a default held '='."""
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell('dataset: str = "phantom:cardiac?cases=3"',
                                                                   metadata={"tags": ["parameters"]})],
                                  metadata={"kernelspec": {"name": "python3", "language": "python",
                                                           "display_name": "Python 3"}})
    nbformat.write(nb, tmp_path / "p.ipynb")
    with caplog.at_level(logging.WARNING, logger="papermill"):
        papermill.execute_notebook(str(tmp_path / "p.ipynb"), str(tmp_path / "out.ipynb"),
                                   parameters={"dataset": "natural"}, prepare_only=True)
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("Unable to parse line 1") for m in messages)
    assert "Passed unknown parameter: dataset" in messages
