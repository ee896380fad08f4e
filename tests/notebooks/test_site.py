"""The course site (``make docs``, ``medssl_utils.site``): built from executed notebooks, opened in chromium.

One build of each edition is shared by the file's slow tests: the four notebooks executed at toy size
(``site.execute_toy_notebooks``, the layout of a study's results folder) into a temporary folder, then
the instructor and the student site built from them exactly as ``make docs`` / ``make docs-student``
build them (warnings as errors, links checked). Two pages are opened in Debian's chromium through
playwright, started the way ``labdriver`` starts it (no browser download; ``MEDSSL_REQUIRE_BROWSER=1``
turns the skip into a failure). The fast tests (where executed notebooks are looked for, the picked
fine-tuning run, the link check, one-line errors) need no build.
"""

from __future__ import annotations

import html as htmlmod
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from labdriver import REPO, chromium_session
from medssl_utils import site
from medssl_utils.errors import DataError

NOTEBOOKS = REPO / "notebooks"


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def _page_words(path: Path) -> list[str]:
    """The words a reader can see in a built file (tags dropped, entities decoded)."""
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix == ".html":
        text = re.sub(r"<(script|style)\b.*?</\1>", " ", text, flags=re.S | re.I)
        text = htmlmod.unescape(re.sub(r"<[^>]+>", "", text))
    return _words(text)


def _shingles(words: list[str], n: int = 8) -> set[tuple[str, ...]]:
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def _cell_text(cell: dict) -> str:
    src = "".join(cell.get("source", ""))
    outs = "".join("".join(o.get("text", "")) + "".join(o.get("data", {}).get("text/plain", ""))
                   for o in cell.get("outputs", []))
    return src + "\n" + outs


def _published_pages() -> set:
    """8-word runs of the pages both editions publish alike (README, docs/*.md: a how-to page may report the
    same result an answer discusses)."""
    return set().union(*(_shingles(_words(p.read_text())) for p in [REPO / "README.md", *(REPO / "docs").glob("*.md")]))


def solution_shingles(nb: dict) -> dict[int, set]:
    """Per solution cell: its 8-word runs that no other cell of the notebook and no page of docs/ has (what only
    the solution shows)."""
    others = _published_pages().union(*(_shingles(_words(_cell_text(c))) for c in nb["cells"]
                                        if site.SOLUTION not in c.get("metadata", {}).get("tags", [])))
    return {i: _shingles(_words("".join(c["source"]))) - others for i, c in enumerate(nb["cells"])
            if site.SOLUTION in c.get("metadata", {}).get("tags", [])}


# ------------------------------------------------------------------------------ fast: no build

def _write_run(run: Path, *, val=None, grid=None, seeds=(0,), combo=None, executed=True) -> None:
    run.mkdir(parents=True)
    cell = {"cell_type": "code", "source": "1", "metadata": {}, "execution_count": 1 if executed else None,
            "outputs": [{"output_type": "execute_result", "data": {"text/plain": "1"}, "metadata": {},
                         "execution_count": 1}] if executed else []}
    (run / "notebook.ipynb").write_text(json.dumps({"cells": [cell], "metadata": {}, "nbformat": 4,
                                                    "nbformat_minor": 5}))
    if val is not None:
        (run / "result.json").write_text(json.dumps({"status": "complete", "val_final_dice": val}))
    if grid is not None:
        (run / "study.json").write_text(json.dumps({"combo": combo, "grid": list(grid), "selection_seeds": list(seeds)}))


def _results(tmp_path: Path, scores: dict[str, float] | None = None) -> Path:
    root = tmp_path / "results"
    for name in ("00_explore_data", "03_analysis"):
        _write_run(root / "notebooks" / name)
        (root / "notebooks" / name / "notebook.ipynb").rename(root / "notebooks" / f"{name}.ipynb")
    _write_run(root / "pretrain" / "byol-cardiac")
    cell = root / "finetune" / "byol-cardiac" / "n16"
    if scores is None:
        _write_run(cell / "seed0", val=0.5)
    else:
        for combo, val in scores.items():
            _write_run(cell / combo / "seed0", val=val, grid=list(scores), combo=combo)
    return root


def test_tutorial_sources_in_a_results_folder(tmp_path):
    root = _results(tmp_path)
    found = site.tutorial_sources(root)
    assert list(found) == list(site.TUTORIALS)
    assert found["00_explore_data"] == root / "notebooks" / "00_explore_data.ipynb"
    assert found["01_pretrain"] == root / "pretrain" / "byol-cardiac" / "notebook.ipynb"
    assert found["02_finetune"] == root / "finetune" / "byol-cardiac" / "n16" / "seed0" / "notebook.ipynb"


@pytest.mark.parametrize("scores,picked", [
    ({"encoder_lr_scale-1": 0.40, "encoder_lr_scale-0.1": 0.55}, "encoder_lr_scale-0.1"),
    ({"encoder_lr_scale-1": 0.5502, "encoder_lr_scale-0.1": 0.5498}, "encoder_lr_scale-1"),  # tie at 3 decimals
])
def test_the_finetune_page_is_the_picked_setting_at_seed_0(tmp_path, scores, picked):
    found = site.tutorial_sources(_results(tmp_path, scores))
    assert found["02_finetune"].parent.parent.name == picked


def test_a_missing_or_unexecuted_notebook_is_one_line(tmp_path):
    root = _results(tmp_path)
    (root / "notebooks" / "03_analysis.ipynb").unlink()
    with pytest.raises(DataError) as err:
        site.prepare_source(root, tmp_path / "src")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(str(root / "notebooks" / "03_analysis.ipynb")) and "make study" in msg
    assert not (tmp_path / "src").exists()  # checked before anything is written
    unexecuted = json.loads((NOTEBOOKS / "03_analysis.ipynb").read_text())
    (root / "notebooks" / "03_analysis.ipynb").write_text(json.dumps(unexecuted))
    with pytest.raises(DataError, match=r"03_analysis.ipynb: has no outputs, so it was never executed"):
        site.prepare_source(root, tmp_path / "src")
    with pytest.raises(DataError, match=r"no-such: no such results folder; run `make study` first"):
        site.tutorial_sources(tmp_path / "no-such")


def test_the_command_fails_with_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "medssl_utils", "site", "build", str(tmp_path / "none")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "run `make study` first" in r.stderr, r.stderr


def test_link_check_finds_each_broken_link(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "_static").mkdir()
    (tmp_path / "img.png").write_bytes(b"png")
    (tmp_path / "_static" / "macros.html").write_text('<a href="{{ pathto(x) }}">theme template, not a page</a>')
    (tmp_path / "index.html").write_text(
        '<h1 id="top">t</h1><a href="#top">ok</a><a href="sub/page.html#there">ok</a><img src="img.png">'
        '<a href="https://example.org/x">external</a><a href="mailto:a@b">mail</a>'
        '<a href="#nowhere">bad anchor</a><a href="missing.html">bad file</a><a href="/abs.html">absolute</a>')
    (tmp_path / "sub" / "page.html").write_text('<p id="there">x</p><a href="../index.html#top">ok</a>'
                                                '<img src="../../outside.png"><a href="../index.html#gone">x</a>')
    assert site.check_links(tmp_path) == [
        "index.html: #nowhere: no id 'nowhere' in index.html",
        "index.html: missing.html: no such file in the site",
        "index.html: /abs.html: an absolute path (the site must work from any folder)",
        "sub/page.html: ../../outside.png: points outside the site",
        "sub/page.html: ../index.html#gone: no id 'gone' in index.html",
    ]


def test_every_notebook_has_solution_text_the_check_can_see():
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        found = solution_shingles(json.loads(path.read_text()))
        assert found and all(found.values()), f"{path.name}: a solution cell without text of its own: {found}"


# ------------------------------------------------------------------------------ slow: one build per edition

@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("site")
    results = site.execute_toy_notebooks(tmp / "results")
    return {"results": results, "instructor": site.build(results, tmp / "instructor"),
            "student": site.build(results, tmp / "student", student=True)}


@pytest.mark.slow
def test_tutorial_pages_are_the_notebooks_as_executed(built):
    sources = site.tutorial_sources(built["results"])
    for name in site.TUTORIALS:
        page = (built["instructor"] / "tutorials" / f"{name}.html").read_text()
        executed = json.loads(sources[name].read_text())
        pngs = sum("image/png" in o.get("data", {}) for c in executed["cells"] for o in c.get("outputs", []))
        assert pngs >= 1 and page.count("<img") >= pngs, f"{name}: {pngs} figures executed, {page.count('<img')} shown"
    # the 02 page is the BYOL arm's run: its injected parameters name that run directory
    page = " ".join(_page_words(built["instructor"] / "tutorials" / "02_finetune.html"))
    assert " ".join(_words(str(sources["02_finetune"].parent))) in page
    api = (built["instructor"] / "api" / "medssl_utils.selection.html").read_text()
    assert 'id="medssl_utils.selection.pick"' in api  # the API reference holds the docstrings


@pytest.mark.slow
def test_student_edition_has_no_solution_text(built):
    instructor = set().union(*(_shingles(_page_words(p)) for p in (built["instructor"] / "tutorials").glob("*.html")))
    student_files = [p for p in built["student"].rglob("*") if p.is_file() and p.suffix in (".html", ".txt", ".js",
                                                                                              ".ipynb", ".json")]
    student = set().union(*(_shingles(_page_words(p)) for p in student_files))
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        for i, runs in solution_shingles(json.loads(path.read_text())).items():
            assert runs & instructor, f"{path.name} cell {i}: its solution is not on the instructor page"
            leaked = runs & student
            assert not leaked, f"{path.name} cell {i}: solution text in the student site: {' '.join(next(iter(leaked)))}"
    assert "student edition" in (built["student"] / "index.html").read_text()


@pytest.fixture(scope="module")
def browser():
    yield from chromium_session()


FIGURE_JS = """async () => { const imgs = [...document.querySelectorAll('article img')];
  await Promise.all(imgs.map(i => i.decode().catch(() => null)));
  return imgs.map(i => ({src: i.getAttribute('src'), w: i.naturalWidth, shown: i.getBoundingClientRect().width})); }"""
TABLE_JS = """() => [...document.querySelectorAll('article table')].map(t => ({
  rows: [...t.querySelectorAll('tbody tr')].filter(r => r.getBoundingClientRect().height > 0).length,
  cells: [...t.querySelectorAll('tbody td')].filter(c => c.innerText.trim()).length}))"""


@pytest.mark.slow
@pytest.mark.parametrize("page", ["tutorials/00_explore_data.html", "results.html"])
def test_a_figure_and_a_table_render_in_chromium(built, browser, page):
    tab = browser.new_page(viewport={"width": 1300, "height": 1000})
    try:
        tab.goto((built["instructor"] / page).as_uri(), wait_until="load")
        figures = tab.evaluate(FIGURE_JS)
        tables = tab.evaluate(TABLE_JS)
    finally:
        tab.close()
    assert any(f["w"] > 0 and f["shown"] > 0 for f in figures), f"{page}: no figure decoded: {figures}"
    assert not [f for f in figures if f["w"] == 0], f"{page}: images that did not decode: {figures}"
    assert any(t["rows"] > 0 and t["cells"] > 0 for t in tables), f"{page}: no table rows rendered: {tables}"
