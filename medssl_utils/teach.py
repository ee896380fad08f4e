"""Teaching copies of the notebooks, and the checks their exercises call.

The notebooks are written once, with exercises and their solutions (fastbook's way: teaching
copies are generated, never hand-maintained). Two cell tags drive the copies:

* ``exercise``: the question (kept in every copy);
* ``solution``: the answer. In a **student copy** a markdown answer becomes a prompt to compare
  one's prediction with the result, and a code answer loses the code between ``### BEGIN SOLUTION`` and
  ``### END SOLUTION`` (or, without markers, the whole cell), replaced by
  ``raise NotImplementedError(...)`` naming what to write; the check cell after it then tells
  the student whether their version agrees with medssl's.

``medssl teach OUT`` (or :func:`make_copies`) writes ``OUT/student/*.ipynb`` and
``OUT/instructor/*.ipynb`` (the notebooks with their solutions and a banner), all without
outputs.

``medssl teach OUT --format nbgrader`` (or :func:`make_nbgrader_course`) writes an nbgrader course
folder instead: ``OUT/source/<lab>/<lab>.ipynb`` (one lab per notebook) with nbgrader's cell
metadata — code solutions are ``solution`` cells, each followed by an autograded ``grade`` cell
(:data:`GRADED_TESTS`: tests written against values worked out by hand, never against medssl's
own functions), written answers are manually graded answer cells, questions are locked — and
``OUT/nbgrader_config.py``. ``nbgrader generate_assignment <lab>`` makes the student version,
``nbgrader autograde <lab>`` grades submissions.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from datetime import datetime
from pathlib import Path

import numpy as np

from medssl_utils.errors import DataError
from medssl_utils.fileio import atomic_write

EXERCISE, SOLUTION = "exercise", "solution"
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
ANSWER_PROMPT = ("**Your prediction, and what happened.** Write down what you predicted for the exercise above "
                 "(before running its cells), then what the result shows and what surprised you. The "
                 "instructor copy discusses it.\n\n…")
INSTRUCTOR_BANNER = ("> **Instructor copy.** Cells tagged `solution` hold the answers. Students get "
                     "`student/{name}`, where each is replaced by a prompt (made by `medssl teach`).")


class ExerciseMismatch(AssertionError):
    """An exercise's answer differs from medssl's reference; the message says by how much."""


# ------------------------------------------------------------------------------------------ copies

def _tags(cell: dict) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _stub(code: str, where: str) -> str:
    """The student's version of a code solution: marked blocks (or the whole cell) replaced."""
    names = re.findall(r"^\s*def (\w+)\(", code, flags=re.M)
    what = f"`{names[0]}`" if names else "this cell"
    message = f"exercise: write {what} (see the question above), then run the check below"
    lines, out, inside = code.splitlines(), [], False
    if BEGIN not in code and END not in code:
        return f"# Your code here\nraise NotImplementedError({message!r})\n"
    for i, line in enumerate(lines, 1):
        stripped = line.strip()
        if stripped == BEGIN:
            if inside:
                raise DataError(f"{where}: line {i}: '{BEGIN}' inside another solution block")
            inside = True
            indent = line[: len(line) - len(line.lstrip())]
            out.append(f"{indent}raise NotImplementedError({message!r})")
        elif stripped == END:
            if not inside:
                raise DataError(f"{where}: line {i}: '{END}' without '{BEGIN}'")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise DataError(f"{where}: '{BEGIN}' is never closed by '{END}'")
    return "\n".join(out) + "\n"


def solution_code(cell: dict) -> list[str]:
    """The lines of a solution cell that a student copy must not contain (non-blank, stripped)."""
    code = _source(cell)
    if cell["cell_type"] == "code" and BEGIN in code:
        keep, inside = [], False
        for line in code.splitlines():
            if line.strip() == BEGIN:
                inside = True
            elif line.strip() == END:
                inside = False
            elif inside:
                keep.append(line)
        code = "\n".join(keep)
    return [line.strip() for line in code.splitlines() if line.strip()]


def _cleared(cell: dict) -> dict:
    cell = copy.deepcopy(cell)
    if cell["cell_type"] == "code":
        cell["outputs"], cell["execution_count"] = [], None
    return cell


def _check_tags(nb: dict, where: str) -> None:
    seen_exercise = False
    for i, cell in enumerate(nb["cells"]):
        tags = _tags(cell)
        if EXERCISE in tags and SOLUTION in tags:
            raise DataError(f"{where}: cell {i} is tagged both '{EXERCISE}' and '{SOLUTION}'")
        seen_exercise |= EXERCISE in tags
        if SOLUTION in tags and not seen_exercise:
            raise DataError(f"{where}: cell {i} is tagged '{SOLUTION}' but no '{EXERCISE}' cell comes before it")


def student_copy(nb: dict, where: str = "notebook") -> dict:
    """``nb`` with every ``solution`` cell replaced by a prompt (and no outputs)."""
    _check_tags(nb, where)
    out = copy.deepcopy(nb)
    cells = []
    for i, cell in enumerate(nb["cells"]):
        cell = _cleared(cell)
        if SOLUTION in _tags(cell):
            tags = [t for t in _tags(cell) if t != SOLUTION] + ["student"]
            text = ANSWER_PROMPT if cell["cell_type"] == "markdown" else _stub(_source(cell), f"{where}: cell {i}")
            cell = {**cell, "source": text, "metadata": {**cell.get("metadata", {}), "tags": tags}}
        cells.append(cell)
    out["cells"] = cells
    return out


def instructor_copy(nb: dict, name: str, where: str = "notebook") -> dict:
    """``nb`` with a banner after its title (and no outputs); the solutions stay."""
    _check_tags(nb, where)
    out = copy.deepcopy(nb)
    banner = {"cell_type": "markdown", "metadata": {"tags": ["instructor"]},
              "source": INSTRUCTOR_BANNER.format(name=name)}
    if any("id" in c for c in nb["cells"]):
        banner["id"] = "medssl-instructor-banner"
    out["cells"] = [_cleared(c) for c in nb["cells"][:1]] + [banner] + [_cleared(c) for c in nb["cells"][1:]]
    return out


RECORD = ".medssl-teach.json"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_record(out: Path) -> dict[str, str]:
    try:
        files = json.loads((out / RECORD).read_text()).get("files", {})
        return {str(k): str(v) for k, v in files.items()} if isinstance(files, dict) else {}
    except (OSError, ValueError, AttributeError):
        return {}


def make_copies(out: str | Path, notebooks: str | Path | None = None, *, force: bool = False) -> dict[str, list[Path]]:
    """Write ``out/student/*.ipynb`` and ``out/instructor/*.ipynb`` from ``notebooks`` (default:
    the repository's ``notebooks/``). Returns the written paths by kind.

    ``out/.medssl-teach.json`` records the hash of every file written. A file that exists and differs
    both from that record and from what would be written now (an instructor adapted it, or medssl
    did not write it) is never overwritten silently: a :class:`DataError` names every such file,
    and nothing is written. ``force=True`` writes anyway and keeps each such file beside it as
    ``NAME.edited-<time>.ipynb``."""
    out = Path(out)
    plan = []  # (kind, name relative to out, target, bytes); every notebook is checked before anything is written
    for p, nb in _read_notebooks(notebooks):
        for kind, copied in (("student", student_copy(nb, str(p))),
                             ("instructor", instructor_copy(nb, p.name, str(p)))):
            plan.append((kind, f"{kind}/{p.name}", out / kind / p.name, _notebook_bytes(copied)))
    return _write_plan(out, plan, force=force)


def _read_notebooks(notebooks: str | Path | None) -> list[tuple[Path, dict]]:
    src = Path(notebooks) if notebooks is not None else Path(__file__).resolve().parents[1] / "notebooks"
    paths = sorted(src.glob("*.ipynb"))
    if not paths:
        raise DataError(f"{src}: no notebooks (*.ipynb) to make teaching copies of")
    out = []
    for p in paths:
        try:
            out.append((p, json.loads(p.read_text())))
        except (OSError, ValueError) as exc:
            raise DataError(f"{p}: not a readable notebook ({exc})") from None
    return out


def _notebook_bytes(nb: dict) -> bytes:
    return (json.dumps(nb, indent=1, ensure_ascii=False) + "\n").encode("utf-8")


def _write_plan(out: Path, plan: list, *, force: bool) -> dict[str, list[Path]]:
    """Write ``plan`` (``(kind, name relative to out, target, bytes)``) under the record described
    in :func:`make_copies` (edited files refused, or with ``force`` kept beside). Returns the
    written paths by kind."""
    written: dict[str, list[Path]] = {}
    record = _read_record(out)
    edited = []
    for _, rel, target, data in plan:
        if target.is_file():
            now = _sha(target.read_bytes())
            if now != record.get(rel) and now != _sha(data):
                edited.append(target)
    if edited and not force:
        raise DataError(f"{len(edited)} teaching cop{'y' if len(edited) == 1 else 'ies'} changed since medssl teach "
                        f"wrote {'it' if len(edited) == 1 else 'them'}: {', '.join(str(p) for p in edited)}; "
                        "nothing was written. Move your edits elsewhere, or pass --force (force=True) to "
                        "write new copies and keep each edited file beside it as NAME.edited-<time>.ipynb")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for target in edited:
        keep = target.with_name(f"{target.stem}.edited-{stamp}{target.suffix}")
        os.replace(target, keep)
        print(f"kept the edited {target} as {keep.name}")
    for kind, rel, target, data in plan:
        atomic_write(target, data)
        record[rel] = _sha(data)
        written.setdefault(kind, []).append(target)
    atomic_write(out / RECORD, json.dumps({"files": dict(sorted(record.items()))}, indent=1) + "\n")
    return written


# --------------------------------------------------------------------------- nbgrader course

FORMATS = ("copies", "nbgrader")
#: Points of an autograded code exercise, and of a written answer (graded by hand in nbgrader).
CODE_POINTS, WRITTEN_POINTS = 2, 1
NBGRADER_SCHEMA = 3
#: nbgrader's replacement for a code solution region and for a written answer in the student version.
CODE_STUB = 'raise NotImplementedError("exercise: write this part (see the question above)")'
TEXT_STUB = ("**Your prediction, and what happened.** Write down what you predicted (before running the cells "
             "above), then what the result shows and what surprised you.")

#: The autograded test of each code exercise, by the function it asks for. Written against values
#: worked out by hand (in the comments) — never against medssl's own functions, which a student
#: could call instead of writing theirs — and so that the usual wrong answers fail.
GRADED_TESTS: dict[str, str] = {
    "normalise_mr": '''\
# Graded test (2 points): normalise_mr on a volume whose numbers can be checked by hand.
import numpy as np

x = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
x[0, 0, 0], x[9, 9, 9] = -5000.0, 1e5  # two outliers: clipping must come before the z-score
out = np.asarray(normalise_mr(x))
assert out.shape == (10, 10, 10), f"shape {out.shape}, expected (10, 10, 10)"
# percentiles 0.5 / 99.5 of the sorted values (linear interpolation): 4.995 and 994.005; the clipped
# volume has mean 499.5 and standard deviation 288.6235, so 4.995 -> -1.71332, 994.005 -> +1.71332
# and the voxel holding 555 -> (555 - 499.5) / 288.6235 = 0.19229
assert abs(float(out.min()) + 1.71332) < 1e-4, f"minimum {out.min():.5f}, expected -1.71332"
assert abs(float(out.max()) - 1.71332) < 1e-4, f"maximum {out.max():.5f}, expected 1.71332"
assert abs(float(out[5, 5, 5]) - 0.19229) < 1e-4, f"value at 555: {out[5, 5, 5]:.5f}, expected 0.19229"
assert abs(float(out.mean())) < 1e-4 and abs(float(out.std()) - 1) < 1e-4, "mean 0 and SD 1 expected"
''',
    "byol_loss": '''\
# Graded test (2 points): byol_loss on vectors whose cosines are known.
import math

import torch

p1 = torch.tensor([[1.0, 0.0], [0.0, 2.0]], requires_grad=True)
p2 = torch.tensor([[0.0, 1.0], [1.0, 1.0]], requires_grad=True)
t1 = torch.tensor([[1.0, 0.0], [-1.0, -1.0]], requires_grad=True)
t2 = torch.tensor([[3.0, 0.0], [1.0, 1.0]], requires_grad=True)
loss = byol_loss(p1, p2, t1, t2)
assert torch.is_tensor(loss) and loss.dim() == 0, "the loss should be a scalar tensor"
# cos(p1, t2) = 1 and 1/sqrt(2); cos(p2, t1) = 0 and -1; loss = (-(1 + 0.70711) / 2 + 0.5) / 2
expected = (-(1 + 1 / math.sqrt(2)) / 2 + 0.5) / 2  # -0.176777
assert abs(loss.item() - expected) < 1e-5, f"loss {loss.item():.6f}, expected {expected:.6f}"
loss.backward()
assert p1.grad is not None and p2.grad is not None, "the gradient should flow into the predictions"
assert all(t.grad is None or float(t.grad.abs().sum()) == 0 for t in (t1, t2)), \\
    "no gradient may flow into the targets (detach them)"
''',
    "dice_per_structure": '''\
# Graded test (2 points): dice_per_structure on a small volume counted by hand.
import numpy as np

gt = np.array([[[0, 1, 1, 2], [0, 1, 2, 2], [0, 0, 4, 0]]])
pred = np.array([[[0, 1, 0, 2], [0, 1, 2, 0], [1, 0, 0, 0]]])
d = dice_per_structure(pred, gt, [1, 2, 3, 4])
assert sorted(d) == [1, 2, 3, 4], f"keys {sorted(d)}, expected [1, 2, 3, 4]"
# label 1: 3 predicted, 3 annotated, 2 shared -> 4/6; label 2: 2 and 3, 2 shared -> 4/5;
# label 3: in neither -> 1 (nothing to find, nothing wrongly found); label 4: missed -> 0
for k, expected in {1: 4 / 6, 2: 4 / 5, 3: 1.0, 4: 0.0}.items():
    assert abs(float(d[k]) - expected) < 1e-6, f"label {k}: Dice {d[k]}, expected {expected:.4f}"
''',
    "test_error_by_cell": '''\
# Graded test (2 points): test_error_by_cell on a table whose means and SDs are counted by hand.
import math

import pandas as pd

rows = [("finetune", "complete", "random", 0, 0.6), ("finetune", "complete", "random", 1, 0.8),
        ("finetune", "complete", "byol", 0, 0.7), ("finetune", "complete", "byol", 1, 0.9),
        ("finetune", "complete", "byol", 2, 0.8),
        ("finetune", "failed", "byol", 3, 0.1),          # not complete: left out
        ("finetune", "complete", "byol", 4, math.nan),   # no test Dice: left out
        ("pretrain", "complete", "byol", 0, math.nan)]   # not a fine-tuning run: left out
runs = pd.DataFrame([dict(kind=k, status=s, dataset="cardiac", strategy=st, budget=8, seed=sd, test_mean_dice=d)
                     for k, s, st, sd, d in rows])
out = test_error_by_cell(runs).sort_index()
assert list(out.index) == [("cardiac", "byol", 8), ("cardiac", "random", 8)], f"index {list(out.index)}"
assert out.shape == (2, 2), f"shape {out.shape}: expected two columns, mean and SD"
# byol: errors 0.3, 0.1, 0.2 -> mean 0.2, sample SD 0.1; random: 0.4, 0.2 -> mean 0.3, SD 0.14142
for got, expected in zip(out.to_numpy().ravel(), [0.2, 0.1, 0.3, math.sqrt(0.02)]):
    assert abs(float(got) - expected) < 1e-6, f"{out}\\nexpected means 0.2 / 0.3 and sample SDs 0.1 / 0.14142"
''',
}
NBGRADER_CONFIG = '''\
"""nbgrader's configuration for the medssl course (written by `medssl teach OUT --format nbgrader`).

Run nbgrader from this folder: `nbgrader generate_assignment 02_finetune` (the student version in
release/), `nbgrader autograde 02_finetune`, `nbgrader generate_feedback 02_finetune`, `nbgrader export`.
"""
c = get_config()  # noqa: F821 - defined by the config loader

c.CourseDirectory.course_id = "medssl"
c.ClearSolutions.code_stub = {"python": %(code_stub)r}
c.ClearSolutions.text_stub = %(text_stub)r
# The labs train networks; a cell may run for minutes (nbgrader's default is 30 s per cell).
c.Execute.timeout = 3600
'''
GRADED_BANNER = ("> **Graded lab.** Each code exercise is graded automatically by the test cell after it "
                 "({code} points each); each written answer is read by your instructor ({written} point each). "
                 "Cells you should not change are read-only.")


def _nbgrader_meta(grade_id: str, *, solution: bool = False, grade: bool = False, locked: bool = False,
                   points: int | None = None) -> dict:
    meta = {"grade": grade, "grade_id": grade_id, "locked": locked, "schema_version": NBGRADER_SCHEMA,
            "solution": solution}
    if points is not None:
        meta["points"] = points
    return meta


def nbgrader_source(nb: dict, lab: str, where: str = "notebook") -> dict:
    """``nb`` as the source version of an nbgrader assignment (no outputs): code solutions become
    ``solution`` cells followed by their autograded test (:data:`GRADED_TESTS`, placed after the
    formative ``teach.check`` cell when there is one), written answers become manually graded
    answer cells, questions and tests are locked. Raises :class:`DataError` for a code solution
    without a test (name the function in :data:`GRADED_TESTS`)."""
    _check_tags(nb, where)
    cells = [_cleared(c) for c in nb["cells"]]
    out, k_exercise, k_answer, pending = [], 0, 0, None

    def add(cell, meta):
        cell.setdefault("metadata", {})["nbgrader"] = meta
        if meta.get("locked") and not meta.get("solution"):
            cell["metadata"]["deletable"] = cell["metadata"]["editable"] = False
        out.append(cell)

    def flush_test():
        nonlocal pending
        if pending is not None:
            func = pending
            test = {"cell_type": "code", "execution_count": None, "outputs": [], "source": GRADED_TESTS[func],
                    "id": f"nbgrader-test-{func}".replace("_", "-"), "metadata": {"tags": ["graded-test"]}}
            add(test, _nbgrader_meta(f"test_{func}", grade=True, locked=True, points=CODE_POINTS))
            pending = None

    for i, cell in enumerate(cells):
        tags = _tags(cell)
        if pending is not None and not (cell["cell_type"] == "code" and "teach.check(" in _source(cell)):
            flush_test()
        if EXERCISE in tags:
            k_exercise += 1
            add(cell, _nbgrader_meta(f"exercise_{k_exercise}", locked=True))
        elif SOLUTION in tags and cell["cell_type"] == "code":
            names = re.findall(r"^def (\w+)\(", _source(cell), flags=re.M)
            if not names or names[0] not in GRADED_TESTS:
                raise DataError(f"{where}: cell {i}: a code solution graded by nbgrader must define one of "
                                f"{sorted(GRADED_TESTS)} (found {names or 'no function'}); add its test to "
                                "medssl_utils.teach.GRADED_TESTS")
            _stub(_source(cell), f"{where}: cell {i}")  # the markers are well formed
            add(cell, _nbgrader_meta(f"solution_{names[0]}", solution=True))
            pending = names[0]
        elif SOLUTION in tags:
            k_answer += 1
            add(cell, _nbgrader_meta(f"answer_{k_answer}", solution=True, grade=True, points=WRITTEN_POINTS))
        elif pending is not None:  # the formative check after a solution: kept, read-only, then the test
            add(cell, _nbgrader_meta(f"check_{pending}", locked=True))
            flush_test()
        else:
            out.append(cell)
        if i == 0:
            banner = {"cell_type": "markdown", "id": "medssl-graded-banner", "metadata": {"tags": ["graded"]},
                      "source": GRADED_BANNER.format(code=CODE_POINTS, written=WRITTEN_POINTS)}
            add(banner, _nbgrader_meta("graded_banner", locked=True))
    flush_test()
    result = copy.deepcopy(nb)
    result["cells"] = out
    return result


def make_nbgrader_course(out: str | Path, notebooks: str | Path | None = None, *,
                         force: bool = False) -> dict[str, list[Path]]:
    """Write an nbgrader course folder: ``out/source/<lab>/<lab>.ipynb`` for each notebook
    (:func:`nbgrader_source`; the lab is the notebook's name) and ``out/nbgrader_config.py``.
    Edited files are refused, or kept beside with ``force``, as in :func:`make_copies`.
    Returns the written paths by kind (``source``, ``config``)."""
    out = Path(out)
    plan = []
    for p, nb in _read_notebooks(notebooks):
        lab = p.stem
        if not re.fullmatch(r"[A-Za-z0-9_-]+", lab):
            raise DataError(f"{p}: nbgrader needs lab names of letters, digits, '_' and '-'; rename the notebook")
        plan.append(("source", f"source/{lab}/{p.name}", out / "source" / lab / p.name,
                     _notebook_bytes(nbgrader_source(nb, lab, str(p)))))
    config = NBGRADER_CONFIG % {"code_stub": CODE_STUB, "text_stub": TEXT_STUB}
    plan.append(("config", "nbgrader_config.py", out / "nbgrader_config.py", config.encode("utf-8")))
    return _write_plan(out, plan, force=force)


def add_cli(sub) -> None:
    """``medssl teach OUT [--format copies|nbgrader] [--notebooks DIR] [--force]``."""
    p = sub.add_parser("teach", help="write student copies (solutions replaced by prompts) and instructor copies, "
                                     "or an nbgrader course (--format nbgrader)")
    p.add_argument("out", help="output folder: OUT/student and OUT/instructor, or (nbgrader) OUT/source/<lab> and "
                               "OUT/nbgrader_config.py")
    p.add_argument("--format", choices=FORMATS, default="copies",
                   help="copies (default): ungraded student and instructor copies; nbgrader: a course folder "
                        "for nbgrader generate_assignment / autograde")
    p.add_argument("--notebooks", default=None, help="folder of notebooks (default: the repository's notebooks/)")
    p.add_argument("--force", action="store_true",
                   help="overwrite edited copies (each kept beside as NAME.edited-<time>.ipynb)")
    p.set_defaults(func=_cmd_teach)


def _cmd_teach(args) -> int:
    make = make_nbgrader_course if args.format == "nbgrader" else make_copies
    written = make(args.out, args.notebooks, force=args.force)
    if args.format == "nbgrader":
        labs = [p.parent.name for p in written["source"]]
        print(f"source     {len(labs)} labs in {Path(args.out) / 'source'} ({', '.join(labs)}), "
              f"{written['config'][0]}")
        print(f"next: cd {args.out} && nbgrader generate_assignment {labs[0]} --no-db  (the student version "
              "in release/)")
        return 0
    for kind, paths in written.items():
        print(f"{kind:10s} {len(paths)} notebooks in {Path(args.out) / kind}")
    return 0


# ------------------------------------------------------------------------------ exercise checks

def _as_array(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    if isinstance(x, dict):
        x = [x[k] for k in sorted(x)]
    return np.asarray(x, dtype=np.float64)


def check(name: str, mine, reference, *, atol: float = 1e-5, rtol: float = 1e-4) -> None:
    """Compare an exercise's answer with medssl's; print one line, or raise :class:`ExerciseMismatch`.

    ``mine`` and ``reference``: numbers, arrays, tensors, or dicts with the same keys.
    """
    if isinstance(mine, dict) or isinstance(reference, dict):
        if not (isinstance(mine, dict) and isinstance(reference, dict)) or set(mine) != set(reference):
            raise ExerciseMismatch(f"{name}: expected a dict with keys {sorted(reference)}, got "
                                   f"{sorted(mine) if isinstance(mine, dict) else type(mine).__name__}")
    a, b = _as_array(mine), _as_array(reference)
    if a.shape != b.shape:
        raise ExerciseMismatch(f"{name}: shape {a.shape} differs from the reference's {b.shape}")
    both_nan = np.isnan(a) & np.isnan(b)  # e.g. a distance that is undefined in both
    a, b = np.where(both_nan, 0.0, a), np.where(both_nan, 0.0, b)
    worst = float(np.abs(a - b).max()) if a.size else 0.0
    if not np.allclose(a, b, atol=atol, rtol=rtol):
        raise ExerciseMismatch(f"{name}: differs from medssl's reference by up to {worst:.3g} "
                               f"(allowed {atol:g} + {rtol:g}·|reference|)")
    print(f"✓ {name} agrees with medssl's reference (largest difference {worst:.2g})")


def byol_outputs(view1, view2, *, encoder: str = "resnet18", seed: int = 0) -> dict:
    """What BYOL's loss is computed from, for two views ``(B, 1, H, W)`` of the same images.

    A fresh BYOL (``encoder`` with small heads, seeded) gives the online predictions ``p1``,
    ``p2`` and the target projections ``t1``, ``t2`` of each view, and ``loss``: the value
    medssl's :class:`~medssl_utils.models.byol.BYOL` computes from them in training.
    """
    import torch

    from medssl_utils.models import build_unet  # timm, lightly: only for the exercise's self-check
    from medssl_utils.models.byol import BYOL

    torch.manual_seed(seed)
    unet = build_unet(encoder, num_classes=2, init="random")
    byol = BYOL(unet.encoder, feature_dim=unet.encoder.out_channels[-1], projection_dim=32, hidden_dim=64,
                predictor_hidden_dim=64).eval()  # eval: batch norm uses fixed statistics, so calls repeat exactly
    with torch.no_grad():
        _, p1 = byol._online(view1)
        _, p2 = byol._online(view2)
        t1, t2 = byol._target(view1), byol._target(view2)
        loss, _ = byol(view1, view2)
    return {"p1": p1, "p2": p2, "t1": t1, "t2": t2, "loss": float(loss)}
