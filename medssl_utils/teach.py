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
    src = Path(notebooks) if notebooks is not None else Path(__file__).resolve().parents[1] / "notebooks"
    paths = sorted(src.glob("*.ipynb"))
    if not paths:
        raise DataError(f"{src}: no notebooks (*.ipynb) to make teaching copies of")
    out = Path(out)
    written: dict[str, list[Path]] = {"student": [], "instructor": []}
    copies = []
    for p in paths:
        try:
            nb = json.loads(p.read_text())
        except (OSError, ValueError) as exc:
            raise DataError(f"{p}: not a readable notebook ({exc})") from None
        copies.append((p.name, student_copy(nb, str(p)), instructor_copy(nb, p.name, str(p))))
    record = _read_record(out)
    plan = []  # (relative name, target, bytes)
    for name, student, instructor in copies:  # all checked before anything is written
        for kind, nb in (("student", student), ("instructor", instructor)):
            data = (json.dumps(nb, indent=1, ensure_ascii=False) + "\n").encode("utf-8")
            plan.append((f"{kind}/{name}", out / kind / name, data))
    edited = []
    for rel, target, data in plan:
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
    for rel, target, data in plan:
        atomic_write(target, data)
        record[rel] = _sha(data)
        written[rel.split("/", 1)[0]].append(target)
    atomic_write(out / RECORD, json.dumps({"files": dict(sorted(record.items()))}, indent=1) + "\n")
    return written


def add_cli(sub) -> None:
    """``medssl teach OUT [--notebooks DIR]``."""
    p = sub.add_parser("teach", help="write student copies (solutions replaced by prompts) and instructor copies")
    p.add_argument("out", help="output folder: OUT/student and OUT/instructor")
    p.add_argument("--notebooks", default=None, help="folder of notebooks (default: the repository's notebooks/)")
    p.add_argument("--force", action="store_true",
                   help="overwrite edited copies (each kept beside as NAME.edited-<time>.ipynb)")
    p.set_defaults(func=_cmd_teach)


def _cmd_teach(args) -> int:
    written = make_copies(args.out, args.notebooks, force=args.force)
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
