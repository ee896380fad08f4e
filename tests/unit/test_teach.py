"""Teaching copies: student copies hold no solution code, instructor copies hold all of it.

(The instructor copies are executed, solutions checked, in tests/notebooks/test_notebooks.py.)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medssl_utils import teach
from medssl_utils.cli import main
from medssl_utils.errors import DataError

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


@pytest.fixture(scope="module")
def copies(tmp_path_factory):
    out = tmp_path_factory.mktemp("teach")
    assert main(["teach", str(out)]) == 0
    return out


def _nb(path: Path) -> dict:
    return json.loads(path.read_text())


def _src(cell) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_student_copy_holds_no_solution(copies, path):
    source, student = _nb(path), _nb(copies / "student" / path.name)
    solutions = [c for c in source["cells"] if teach.SOLUTION in c["metadata"].get("tags", [])]
    exercises = [c for c in source["cells"] if teach.EXERCISE in c["metadata"].get("tags", [])]
    assert solutions and exercises, f"{path.name}: no exercise"  # every notebook teaches something
    assert any(c["cell_type"] == "code" for c in solutions), f"{path.name}: no implementation exercise"
    assert len(student["cells"]) == len(source["cells"])
    student_text = "\n".join(_src(c) for c in student["cells"])
    for cell in solutions:
        for line in teach.solution_code(cell):
            assert line not in student_text, f"{path.name}: solution line {line!r} in the student copy"
    assert not any(teach.SOLUTION in c["metadata"].get("tags", []) for c in student["cells"])
    assert not any(c.get("outputs") for c in student["cells"] if c["cell_type"] == "code")
    for cell in student["cells"]:
        if "student" in cell["metadata"].get("tags", []) and cell["cell_type"] == "code":
            namespace = {"np": np, "torch": None, "pd": None}
            with pytest.raises(NotImplementedError, match=r"exercise: write `\w+`"):
                exec(compile(_src(cell), path.name, "exec"), namespace)  # defines the stub
                fn = next(v for k, v in namespace.items() if callable(v) and not k.startswith("__"))
                fn(*[np.zeros(3)] * fn.__code__.co_argcount)
    assert [_src(c) for c in student["cells"] if teach.EXERCISE in c["metadata"].get("tags", [])] == [
        _src(c) for c in exercises]  # the questions stay


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_instructor_copy_is_the_notebook_with_a_banner(copies, path):
    source, instructor = _nb(path), _nb(copies / "instructor" / path.name)
    cells = instructor["cells"]
    assert "Instructor copy" in _src(cells[1]) and f"student/{path.name}" in _src(cells[1])
    assert [_src(c) for c in cells[:1] + cells[2:]] == [_src(c) for c in source["cells"]]


def test_student_prompts_keep_the_signature_and_docstring():
    cell = {"cell_type": "code", "metadata": {"tags": ["solution"]}, "outputs": [], "execution_count": None,
            "source": 'def f(x):\n    """Doc."""\n    ### BEGIN SOLUTION\n    return x + 1\n    ### END SOLUTION\n'}
    nb = {"cells": [{"cell_type": "markdown", "metadata": {"tags": ["exercise"]}, "source": "Q"}, cell]}
    stub = _src(teach.student_copy(nb)["cells"][1])
    assert stub.startswith('def f(x):\n    """Doc."""\n    raise NotImplementedError(') and "x + 1" not in stub
    answer = {"cell_type": "markdown", "metadata": {"tags": ["solution"]}, "source": "**Answer.** 42"}
    nb["cells"][1] = answer
    assert _src(teach.student_copy(nb)["cells"][1]) == teach.ANSWER_PROMPT


@pytest.mark.parametrize("cells,message", [
    ([("code", ["solution"], "x = 1")], "tagged 'solution' but no 'exercise' cell comes before it"),
    ([("markdown", ["exercise", "solution"], "Q")], "tagged both"),
    ([("markdown", ["exercise"], "Q"), ("code", ["solution"], "### BEGIN SOLUTION\nx = 1\n")], "never closed"),
    ([("markdown", ["exercise"], "Q"), ("code", ["solution"], "x = 1\n### END SOLUTION\n")], "without"),
])
def test_malformed_exercises_are_refused_with_one_line(tmp_path, cells, message):
    nb = {"cells": [{"cell_type": "markdown", "metadata": {}, "source": "# T"}] + [
        {"cell_type": k, "metadata": {"tags": t}, "source": s, **({"outputs": [], "execution_count": None}
                                                                  if k == "code" else {})} for k, t, s in cells],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    (tmp_path / "nb").mkdir()
    (tmp_path / "nb" / "x.ipynb").write_text(json.dumps(nb))
    with pytest.raises(DataError, match=message):
        teach.make_copies(tmp_path / "out", tmp_path / "nb")
    assert not (tmp_path / "out").exists()  # nothing is written when a notebook is malformed


def test_cli_reports_a_folder_without_notebooks(tmp_path, capsys):
    assert main(["teach", str(tmp_path / "out"), "--notebooks", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"medssl: error: {tmp_path}: no notebooks (*.ipynb) to make teaching copies of"


def test_check_prints_agreement_or_says_how_far_off(capsys):
    teach.check("f", {1: 0.5, 2: float("nan")}, {1: 0.5 + 1e-9, 2: float("nan")})
    assert capsys.readouterr().out.startswith("✓ f agrees with medssl's reference")
    with pytest.raises(teach.ExerciseMismatch, match=r"f: differs from medssl's reference by up to 0.1"):
        teach.check("f", [0.5, 0.6], [0.5, 0.7])
    with pytest.raises(teach.ExerciseMismatch, match=r"shape \(3,\) differs"):
        teach.check("f", [1, 2, 3], [1, 2])
    with pytest.raises(teach.ExerciseMismatch, match="expected a dict with keys"):
        teach.check("f", [1.0], {1: 1.0})


def test_byol_outputs_give_the_loss_medssl_trains_with():
    import torch

    g = torch.Generator().manual_seed(0)
    v1, v2 = torch.randn(4, 1, 32, 32, generator=g), torch.randn(4, 1, 32, 32, generator=g)
    out = teach.byol_outputs(v1, v2, encoder="test_resnet")
    cos = torch.nn.functional.cosine_similarity
    mine = -0.5 * (cos(out["p1"], out["t2"]).mean() + cos(out["p2"], out["t1"]).mean())
    assert float(mine) == pytest.approx(out["loss"], abs=1e-6)
    assert not np.isclose(out["loss"], float(-cos(out["p1"], out["t1"]).mean()))  # the views are crossed


# ============================================================================ nbgrader's format
NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


def _solutions() -> dict[str, str]:
    """{function name: its reference solution cell} over the notebooks."""
    import re

    out = {}
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        for cell in json.loads(path.read_text())["cells"]:
            src = "".join(cell["source"])
            if "solution" in cell.get("metadata", {}).get("tags", []) and cell["cell_type"] == "code":
                out[re.findall(r"^def (\w+)\(", src, flags=re.M)[0]] = src
    return out


def _grade(solution: str, test: str) -> None:
    """Run a graded test against ``solution`` in a fresh namespace (as a notebook kernel would)."""
    import pandas as pd
    import torch

    namespace = {"np": np, "torch": torch, "pd": pd}
    exec(solution, namespace)  # noqa: S102 - the notebooks' own solution cells
    exec(test, namespace)  # noqa: S102


#: A plausible wrong answer per exercise: the graded test must fail on it.
WRONG = {
    "normalise_mr": ("(clipped - clipped.mean()) / clipped.std()", "(clipped - image.mean()) / image.std()"),
    "byol_loss": ("t.detach()", "t"),
    "dice_per_structure": ("if total else 1.0", "if total else 0.0"),
    "test_error_by_cell": ("err.std(ddof=1)", "err.std(ddof=0)"),
}


def test_every_code_exercise_has_a_graded_test_written_against_values():
    assert set(_solutions()) == set(teach.GRADED_TESTS)
    for name, test in teach.GRADED_TESTS.items():
        assert "medssl" not in test and "teach." not in test, name  # values, never medssl's own functions
        assert f"{name}(" in test and "assert" in test


@pytest.mark.parametrize("name", sorted(teach.GRADED_TESTS))
def test_graded_tests_pass_the_reference_and_fail_stubs_and_wrong_answers(name):
    solution = _solutions()[name]
    _grade(solution, teach.GRADED_TESTS[name])
    import re

    stub = re.sub(r"### BEGIN SOLUTION.*### END SOLUTION", teach.CODE_STUB, solution, flags=re.S)
    with pytest.raises(NotImplementedError):
        _grade(stub, teach.GRADED_TESTS[name])
    right, wrong = WRONG[name]
    assert right in solution
    with pytest.raises(AssertionError):
        _grade(solution.replace(right, wrong), teach.GRADED_TESTS[name])


def test_nbgrader_source_marks_solutions_tests_answers_and_questions(tmp_path):
    written = teach.make_nbgrader_course(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in written["source"]] == [
        f"source/{n}/{n}.ipynb" for n in ("00_explore_data", "01_pretrain", "02_finetune", "03_analysis")]
    config = (tmp_path / "nbgrader_config.py").read_text()
    assert "c.Execute.timeout = 3600" in config and repr(teach.CODE_STUB) in config
    nb = json.loads((tmp_path / "source" / "02_finetune" / "02_finetune.ipynb").read_text())
    meta = [(c["cell_type"], c["metadata"]["nbgrader"]) for c in nb["cells"] if "nbgrader" in c["metadata"]]
    kinds = [(t, m["grade_id"], m["solution"], m["grade"], m["locked"], m.get("points")) for t, m in meta]
    assert kinds == [
        ("markdown", "graded_banner", False, False, True, None),
        ("markdown", "exercise_1", False, False, True, None),
        ("markdown", "answer_1", True, True, False, teach.WRITTEN_POINTS),
        ("markdown", "exercise_2", False, False, True, None),
        ("code", "solution_dice_per_structure", True, False, False, None),
        ("code", "check_dice_per_structure", False, False, True, None),
        ("code", "test_dice_per_structure", False, True, True, teach.CODE_POINTS),
    ]
    assert all(m["schema_version"] == 3 for _, m in meta)
    ids = [c["id"] for c in nb["cells"]]
    assert len(set(ids)) == len(ids)
    test = next(c for c in nb["cells"]
                if c["metadata"].get("nbgrader", {}).get("grade_id") == "test_dice_per_structure")
    assert test["source"] == teach.GRADED_TESTS["dice_per_structure"]


def test_nbgrader_course_refuses_an_ungraded_code_solution_and_edited_sources(tmp_path, capsys):
    src = tmp_path / "nbs"
    src.mkdir()
    nb = {"cells": [{"cell_type": "markdown", "metadata": {"tags": ["exercise"]}, "source": "Write f."},
                    {"cell_type": "code", "metadata": {"tags": ["solution"]}, "outputs": [], "execution_count": None,
                     "source": "def f(x):\n    ### BEGIN SOLUTION\n    return x\n    ### END SOLUTION\n"}],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    (src / "lab.ipynb").write_text(json.dumps(nb))
    with pytest.raises(DataError, match=r"lab.ipynb: cell 1: a code solution graded by nbgrader must define one of"):
        teach.make_nbgrader_course(tmp_path / "course", src)
    assert not (tmp_path / "course").exists()
    out = tmp_path / "c2"
    assert main(["teach", str(out), "--format", "nbgrader"]) == 0
    assert "4 labs in" in capsys.readouterr().out
    edited = out / "source" / "01_pretrain" / "01_pretrain.ipynb"
    edited.write_text(edited.read_text().replace("Graded lab", "Graded lab (week 3)"))
    with pytest.raises(DataError, match="01_pretrain.ipynb"):
        teach.make_nbgrader_course(out)
    teach.make_nbgrader_course(out, force=True)
    assert list(edited.parent.glob("01_pretrain.edited-*.ipynb"))
