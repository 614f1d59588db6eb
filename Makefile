# Two commands: `make demo` and `make test`. Everything else is set up by them.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The demo needs the runtime only; the test command adds the dev tools (pytest, mypy, moto...).
RUNTIME := $(VENV)/.runtime-stamp
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint typecheck docs docs-serve pytest stop bench histories clean

$(RUNTIME): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $(RUNTIME)

$(STAMP): $(RUNTIME)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

## demo: start the dev server (Web UI on :8233) and a worker, run the four example pipelines
# The examples' tools come from [tool.stepflow] in pyproject.toml, as for any command run here.
# triage.yaml shows conditions, a join and a sub-pipeline (translate.yaml, a child run);
# code_task_planned.yaml a plan step: the model writes the steps, checked before they run.
demo: $(RUNTIME)
	$(BIN)/stepflow dev start
	$(BIN)/stepflow run examples/research_report.yaml --input topic="durable execution"
	$(BIN)/stepflow run examples/code_task.yaml
	$(BIN)/stepflow run examples/triage.yaml
	$(BIN)/stepflow run examples/code_task_planned.yaml
	@echo "Their files are in $${STEPFLOW_WORKSPACE:-.stepflow/workspace} (reports/, todo-app/, tickets/)."
	@echo "The other branch of the triage: $(BIN)/stepflow run examples/triage.yaml \\"
	@echo "  --input message='How do retries with backoff work?' --input language=de"
	@echo "The server keeps running so the links work; 'make stop' stops it."
	@echo "A pipeline that waits for people (docs/guides/people-in-the-loop.md):"
	@echo "  $(BIN)/stepflow run examples/release_notes.yaml --id notes-1 --no-wait"
	@echo "  $(BIN)/stepflow watch notes-1      # then, in another terminal:"
	@echo "  $(BIN)/stepflow input notes-1 highlights 2 && $(BIN)/stepflow approve notes-1 sign-off"

## stop: stop the background worker and dev server that `make demo` started
stop:
	@if [ -x $(BIN)/stepflow ]; then $(BIN)/stepflow dev stop; else echo "nothing to stop"; fi

## test: lint, type-check, build the docs strictly and run the whole suite against a real Temporal dev server
test: lint typecheck docs pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

## docs: build the site into site/ (strict: a broken link or a missing page fails)
# The reference pages are generated from the code at each build (docs/_hooks/reference.py).
# NO_MKDOCS_2_WARNING: Material's banner about MkDocs 2.0 says nothing about this site.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

## docs-serve: serve the site on http://127.0.0.1:8000, rebuilt as pages change
docs-serve: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

# The browser test needs Debian's chromium: installed here when missing and we may (root or
# passwordless sudo); never fails, the test skips saying why. tests/run.py exits with pytest's
# own status, never the SDK's exit-134 abort at shutdown.
pytest: $(STAMP)
	@bash tests/setup/install_chromium.sh
	$(BIN)/python tests/run.py

## bench: the side-by-side measurements (not part of `make test`)
bench: $(STAMP)
	@test $(VENV)/.bench-stamp -nt pyproject.toml || \
		{ $(BIN)/pip install --quiet -e '.[dev,bench]' && touch $(VENV)/.bench-stamp; }
	$(BIN)/python bench/overhead.py
	$(BIN)/python bench/context.py
	$(BIN)/python bench/agents.py

## histories: record the workflow histories that tests/test_replay.py replays (add, never replace)
histories: $(STAMP)
	$(BIN)/python -m tests.support.record_histories

clean: stop
	rm -rf $(VENV) .stepflow .pytest_cache .mypy_cache .ruff_cache site
