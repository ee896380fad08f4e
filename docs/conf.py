"""Sphinx configuration of the course site. Build it with ``make docs`` / ``make docs-student``
(``medssl site build``): the source folder is a copy made at build time (``build/docs/src/docs``),
with the executed notebooks in ``tutorials/`` and the API pages in ``api/`` (``medssl_utils/site.py``).

Nothing is executed (``nb_execution_mode = "off"``) and nothing is fetched: the theme and its assets
are installed packages. ``-t student`` marks the student edition (its notebooks have no solution cells).
"""

from medssl_utils import __version__

project = "medssl"
author = "the medssl authors"
copyright = "medssl authors"  # noqa: A001 - Sphinx's name
version = release = __version__

extensions = ["myst_nb", "sphinx.ext.autodoc", "sphinx.ext.napoleon"]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
root_doc = "index"
exclude_patterns = ["**/.ipynb_checkpoints", "figures/**/*.csv"]

# MyST: GitHub's heading anchors (the pages link "study.md#the-protocol-..." as GitHub renders them)
myst_enable_extensions = ["colon_fence", "dollarmath"]
myst_heading_anchors = 4

# myst-nb: the notebooks as `make study` executed them, never executed here
nb_execution_mode = "off"
nb_merge_streams = True
nb_output_stderr = "show"

# autodoc: the docstrings as written (Google / NumPy sections through napoleon; :func: / :class: roles)
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "none"  # the signatures stay readable; the docstrings say what each argument takes
napoleon_google_docstring = True
napoleon_numpy_docstring = False

student = tags.has("student")  # noqa: F821 - Sphinx provides `tags`
html_theme = "sphinx_book_theme"
html_title = "medssl — student edition" if student else "medssl"
html_theme_options = {
    "show_toc_level": 2,
    "use_download_button": True,
    "home_page_in_toc": True,
}
html_last_updated_fmt = None
