# Two entry points for a fresh machine (Python 3.11+ and make are all it needs):
#   make run    install into .venv, ingest DICOM (default: pydicom's bundled test files) into dicom.db, serve the API
#   make test   install into .venv with the test tools, lint, run the whole test suite (on two processes, which
#               tests/conftest.py tells what to keep together; a plain `.venv/bin/pytest` runs it on one)
# (The browser tests drive Debian's Chromium, /usr/bin/chromium, and skip, saying so, without it; .ci/run
# installs it.)
VENV ?= .venv
DB ?= sqlite:///dicom.db
DICOM ?=
PORT ?= 8000
PYTHON ?= python3

# What running needs, and that plus the test tools.
STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e .
	touch $@

$(DEV_STAMP): $(STAMP)
	$(VENV)/bin/pip install --quiet -e ".[dev]"
	touch $@

.PHONY: install run ingest serve test lint
install: $(DEV_STAMP)

ingest: $(STAMP)
	@dicom="$(DICOM)"; [ -n "$$dicom" ] || dicom=$$($(VENV)/bin/python -c 'import pydicom, pathlib; print(pathlib.Path(pydicom.__file__).parent / "data")'); \
	echo "ingesting $$dicom into $(DB)"; \
	$(VENV)/bin/dicom-ingest "$$dicom" --db "$(DB)"; status=$$?; \
	if [ $$status -gt 1 ]; then exit $$status; fi  # 1 = some files failed (listed above): still serve the rest

serve: $(STAMP)
	$(VENV)/bin/dicom-api --db "$(DB)" --port $(PORT)

run: ingest serve

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(VENV)/bin/pytest -q -n 2 --dist loadfile
