"""``medssl teach OUT --format nbgrader`` graded with nbgrader's own command line (issue 20, part 1).

One course folder at toy size (the labs' parameters set with ``papermill --prepare-only``, as an
instructor would): ``nbgrader generate_assignment <lab> --no-db`` makes the student version;
three students submit — the reference solutions, the unmodified student version, and one plausible
wrong answer (Dice without the empty-structure convention) — and ``nbgrader autograde`` /
``nbgrader export`` grade them. The written answers are graded by hand (here through nbgrader's
gradebook, as its formgrader does).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import papermill as pm
import pytest

from medssl_utils import teach
from training_kit import fin, pre

LABS = ("00_explore_data", "01_pretrain", "02_finetune", "03_analysis")
TOY = dict(encoder="test_resnet", image_size=32, decoder_channels=[16, 8, 8, 8, 8], device="cpu", probe_slices=8,
           probe_val_slices=8, probe_steps=10)
CARDIAC = "phantom:cardiac?cases=4"
WRONG_DICE = ("if total else 1.0", "if total else 0.0")  # an absent structure scored 0: the usual slip


def nbgrader(course: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=course, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, f"nbgrader {' '.join(args)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _toy_results(root: Path) -> Path:
    """A toy study for 03_analysis: BYOL pretraining, random and BYOL starts fine-tuned, two seeds each."""
    results = root / "results"
    pre_dir = results / "pretrain" / "byol-cardiac"
    pre(pre_dir, epochs=1)
    for strategy, init in (("random", "random"), ("byol-cardiac", str(pre_dir / "checkpoints" / "final.pt"))):
        for seed in (0, 1):
            fin(results / "finetune" / strategy / "n6" / f"seed{seed}", init=init, seed=seed, max_steps=6, eval_every=3)
    return results


def _parameters(results: Path) -> dict[str, dict]:
    return {
        "00_explore_data": dict(dataset="phantom:cardiac?cases=3", image_size=32, n_views=2,
                                gallery=["phantom:cardiac?cases=3", "natural?quadrants=0"]),
        "01_pretrain": dict(method="byol", datasets=[CARDIAC], epochs=1, batch_size=48, save_epochs=[1],
                            method_options={"hidden_dim": 64, "predictor_hidden_dim": 64, "projection_dim": 16},
                            optimizer="adamw", run_dir="runs/byol", probe_seeds=1, **TOY),
        "02_finetune": dict(dataset=CARDIAC, init="random", labelled_slices=6, max_steps=6, eval_every=3,
                            batch_size=4, lr=1e-3, run_dir="runs/finetune", **TOY),
        "03_analysis": dict(results_dir=str(results), out_dir="report"),
    }


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def _grade_id(cell: dict) -> str | None:
    return cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")


def _submission(release: Path, source: Path, edit=None) -> str:
    """The student version with every solution cell answered as the source does (``edit`` changes one)."""
    answers = {_grade_id(c): c["source"] for c in _cells(source) if _grade_id(c)}
    nb = json.loads(release.read_text())
    for cell in nb["cells"]:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if meta.get("solution"):
            cell["source"] = answers[meta["grade_id"]]
            if edit:
                cell["source"] = edit(meta["grade_id"], "".join(cell["source"]))
    return json.dumps(nb)


@pytest.fixture(scope="module")
def graded(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("nbgrader")
    course = root / "course"
    teach.make_nbgrader_course(course)
    params = _parameters(_toy_results(root))
    for lab in LABS:  # the instructor sets each lab's parameters in its source notebook
        src = course / "source" / lab / f"{lab}.ipynb"
        pm.execute_notebook(str(src), str(src), parameters=params[lab], prepare_only=True)
        nbgrader(course, "generate_assignment", lab, "--no-db")
    released = {lab: (course / "release" / lab / f"{lab}.ipynb").read_text() for lab in LABS}
    for lab in LABS:  # the same, recorded in the gradebook (autograde needs the assignment there)
        nbgrader(course, "generate_assignment", lab, "--force")

    def wrong(grade_id, source):
        return source.replace(*WRONG_DICE) if grade_id == "solution_dice_per_structure" else source

    students = {"reference": LABS, "stubs": LABS, "wrong": ("02_finetune",)}
    for student, labs in students.items():
        for lab in labs:
            src, rel = course / "source" / lab / f"{lab}.ipynb", course / "release" / lab / f"{lab}.ipynb"
            out = course / "submitted" / student / lab / f"{lab}.ipynb"
            out.parent.mkdir(parents=True)
            if student == "stubs":
                shutil.copy(rel, out)
            else:
                assert WRONG_DICE[0] in src.read_text() or lab != "02_finetune"
                out.write_text(_submission(rel, src, wrong if student == "wrong" else None))
    for lab in LABS:
        nbgrader(course, "autograde", lab, "--create")
    nbgrader(course, "export")
    auto = {(r["student_id"], r["assignment"]): (float(r["score"]), float(r["max_score"]))
            for r in csv.DictReader((course / "grades.csv").open())}
    return {"course": course, "released": released, "auto": auto}


def test_generate_assignment_makes_the_student_version(graded):
    course = graded["course"]
    for lab in LABS:
        source, student = _cells(course / "source" / lab / f"{lab}.ipynb"), json.loads(graded["released"][lab])
        text = "".join("".join(c["source"]) for c in student["cells"])
        solutions = [c for c in source if c.get("metadata", {}).get("nbgrader", {}).get("solution")]
        assert solutions
        for cell in solutions:
            for line in teach.solution_code(cell):
                if len(line) > 12 and not line.startswith(("def ", '"""')):
                    assert line not in text, f"{lab}: solution line left in the student version: {line}"
        assert teach.CODE_STUB in text and teach.TEXT_STUB in text
        tests = [c for c in student["cells"] if (_grade_id(c) or "").startswith("test_")]
        assert tests and all(c["metadata"]["nbgrader"]["locked"] for c in tests)


def test_reference_solutions_get_full_marks(graded):
    """Every autograded point; the written answers wait for the instructor, who gives them full marks."""
    from nbgrader.api import Gradebook

    course = graded["course"]
    for lab in LABS:
        score, max_score = graded["auto"][("reference", lab)]
        written = sum(1 for c in _cells(course / "source" / lab / f"{lab}.ipynb")
                      if (_grade_id(c) or "").startswith("answer_")) * teach.WRITTEN_POINTS
        assert written > 0 and score == max_score - written == teach.CODE_POINTS, (lab, score, max_score)
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        for lab in LABS:
            sub = gb.find_submission(lab, "reference")
            manual = [g for nb in sub.notebooks for g in nb.grades if g.needs_manual_grade]
            assert manual and all(g.cell.name.startswith("answer_") for g in manual)
            for g in manual:
                g.manual_score = g.max_score
            gb.db.commit()
            assert gb.find_submission(lab, "reference").score == gb.find_submission(lab, "reference").max_score


def test_unmodified_student_version_gets_zero(graded):
    for lab in LABS:
        assert graded["auto"][("stubs", lab)][0] == 0.0, lab


def test_a_plausible_wrong_answer_loses_exactly_its_exercise(graded):
    """Dice that scores a structure absent from both volumes 0 instead of 1: that test fails, nothing else."""
    from nbgrader.api import Gradebook

    ref, _ = graded["auto"][("reference", "02_finetune")]
    wrong, _ = graded["auto"][("wrong", "02_finetune")]
    assert wrong == ref - teach.CODE_POINTS
    with Gradebook(f"sqlite:///{graded['course'] / 'gradebook.db'}") as gb:
        grades = {g.cell.name: g.score for nb in gb.find_submission("02_finetune", "wrong").notebooks
                  for g in nb.grades if not g.needs_manual_grade}
    assert grades == {"test_dice_per_structure": 0.0}
