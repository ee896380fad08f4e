# medssl — the two commands. Each creates the virtual environment when it is missing.
#   make test    unit tests + every notebook executed with papermill at toy size
#   make study   the quick study end to end (studies/quick.yaml), then its report
#   make docs    the course as a website, from make study's executed notebooks (make docs-student: no solutions)
# VENV may point anywhere (CI keeps it under ~/.cache so it is reused between clones).

VENV ?= .venv
PY := $(VENV)/bin/python
BOOTSTRAP_PY ?= python3
# The dependency stamp changes whenever pyproject.toml changes, so edits to the dependency
# list reinstall; the package itself is re-linked (editable, no deps) on every run because a
# shared VENV may have been made from another clone.
DEPS_HASH := $(shell $(BOOTSTRAP_PY) -c "import hashlib;print(hashlib.sha256(open('pyproject.toml','rb').read()).hexdigest()[:12])")
STAMP := $(VENV)/.medssl-deps-$(DEPS_HASH)

.PHONY: venv test test-quick lint reference study docs docs-student benchmarks teaching clean-cache

$(STAMP): pyproject.toml
	@test -x $(PY) || $(BOOTSTRAP_PY) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned to the builds on this machine's disk (see docs/gpu.md)
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev,cluster,tracking,docs]'
	$(PY) -m ipykernel install --prefix $(VENV) --name python3 >/dev/null
	rm -f $(VENV)/.medssl-deps-*
	touch $(STAMP)

venv: $(STAMP)
	@$(PY) -m pip install -q --no-deps --no-build-isolation -e . >$(VENV)/.medssl-link.log 2>&1 \
		|| { cat $(VENV)/.medssl-link.log; exit 1; }

TEST_WORKERS ?= 2

test: venv  # everything, in TEST_WORKERS pytest-xdist workers (one file per worker at a time, each on its own cores)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test-quick: venv  # tests/unit alone, without its slow tests (no notebooks, SLURM, browser, DDP or GPU)
	$(PY) -m pytest -q -m "not slow" tests/unit

lint: venv  # ruff (style, pyflakes) and import-linter (the layers); make test runs both too
	$(VENV)/bin/ruff check medssl_utils tests benchmarks notebooks
	cd . && PYTHONPATH=. $(VENV)/bin/lint-imports

reference: venv  # docs/reference.md from the code (a test fails when the committed page is stale)
	$(VENV)/bin/medssl reference --out docs/reference.md

STUDY ?= studies/quick.yaml
WORKERS ?= 2

STUDY_RESULTS = results/$(basename $(notdir $(STUDY)))

# the study's runs (01, 02 in each run directory), its report, then 00 (defaults) and 03 (over the study's
# results) executed with papermill into STUDY_RESULTS/notebooks/: the four notebooks the site shows
study: venv
	$(VENV)/bin/medssl study run $(STUDY) --workers $(WORKERS)
	$(VENV)/bin/medssl report $(STUDY_RESULTS)
	mkdir -p $(STUDY_RESULTS)/notebooks
	$(VENV)/bin/papermill --no-progress-bar -k python3 notebooks/00_explore_data.ipynb \
		$(STUDY_RESULTS)/notebooks/00_explore_data.ipynb
	$(VENV)/bin/papermill --no-progress-bar -k python3 notebooks/03_analysis.ipynb \
		$(STUDY_RESULTS)/notebooks/03_analysis.ipynb -p results_dir $(STUDY_RESULTS) \
		-p out_dir $(STUDY_RESULTS)/notebooks/report

RESULTS ?= results/quick
SITE_JOBS ?= 1
docs: venv  # the course site from make study's executed notebooks: build/docs/html/index.html (docs/development.md)
	$(VENV)/bin/medssl site build $(RESULTS) --out build/docs -j $(SITE_JOBS)

docs-student: venv  # the same without the cells tagged solution: build/docs-student/html/index.html
	$(VENV)/bin/medssl site build $(RESULTS) --student --out build/docs-student -j $(SITE_JOBS)

benchmarks: venv
	$(PY) benchmarks/data.py

TEACHING ?= teaching
teaching: venv   # student copies (solutions replaced by prompts) and instructor copies of the notebooks
	$(VENV)/bin/medssl teach $(TEACHING)

clean-cache:
	rm -rf $${MEDSSL_CACHE_DIR:-$$HOME/.cache/medssl}/slices $${MEDSSL_CACHE_DIR:-$$HOME/.cache/medssl}/phantoms
