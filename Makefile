# The two commands of the README. Each one creates .venv and installs requirements.txt the
# first time (and again whenever requirements.txt or pyproject.toml change).
VENV ?= .venv
PYTHON ?= python3
INSTALLED := $(VENV)/.installed

.PHONY: book test unit lint sync

$(INSTALLED): requirements.txt pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -r requirements.txt
	touch $@

# Executes every chapter under the current profile (TUTORIAL_PROFILE, default: cpu or gpu)
# into _build/html; warnings are errors.
book: $(INSTALLED)
	TUTORIAL_NONINTERACTIVE=1 $(VENV)/bin/jupyter-book build --all --warningiserror --nitpick --keep-going .

# Package tests, notebook pairing checks, every chapter under the smoke profile (nbmake) and
# the book build (cpu profile on the bundled samples, tests/test_book.py). The slowest tests are
# listed at the end, so that a CI log says where its time went.
test: $(INSTALLED)
	TUTORIAL_PROFILE=smoke TUTORIAL_NONINTERACTIVE=1 $(VENV)/bin/python -m pytest tests --nbmake chapters --durations=25

# What a contributor runs: every test but the book build and its browser check, a few minutes.
unit: $(INSTALLED)
	TUTORIAL_PROFILE=smoke TUTORIAL_NONINTERACTIVE=1 $(VENV)/bin/python -m pytest tests -m "not book"

# Lint and format check of the package, tests and chapters (ruff, config in pyproject.toml).
lint: $(INSTALLED)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

# After editing a chapter (either file of the pair): re-pair every chapter with jupytext and
# strip outputs from the notebooks, which are committed without them (tests/test_chapters.py).
sync: $(INSTALLED)
	$(VENV)/bin/jupytext --sync chapters/[0-9][0-9]_*.py
	$(VENV)/bin/jupyter nbconvert --log-level=WARN --ClearOutputPreprocessor.enabled=True \
		--inplace chapters/[0-9][0-9]_*.ipynb
