# Two commands for a fresh machine: `make demo` and `make test`.
# Both install from constraints.txt, the one pinned set (README: "Python and pinned versions").
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PINS := constraints.txt
NEWEST := .venv-newest

.PHONY: demo test lint venv pins try-newest clean

$(STAMP): setup.py $(PINS)
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else \
	  "calrec pins its dependencies for Python 3.11; this is Python %d.%d (make PYTHON=...)" \
	  % sys.version_info[:2])'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --constraint $(PINS) pip
	# torch 2.13.0 (CPU) is only the tests' independent reference implementation.
	$(BIN)/pip install -q --constraint $(PINS) torch==2.13.0
	$(BIN)/pip install -q --constraint $(PINS) -e ".[all,test]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/calrec pipeline run-local --preset demo --output runs/demo

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n 2 --dist loadgroup tests

# Rewrites constraints.txt and the images' hash locks (docker/locks/) from setup.py's ranges:
# today's versions kept, or the newest releases with UPGRADE=1. Review and commit both.
pins: $(STAMP)
	$(BIN)/python docker/pins.py $(if $(UPGRADE),--upgrade)

# The newest releases within setup.py's ranges, unpinned, in a throw-away venv: runs the
# tests there and lists what differs from the pins. Nothing here changes the pins.
try-newest:
	rm -rf $(NEWEST)
	$(PYTHON) -m venv $(NEWEST)
	$(NEWEST)/bin/pip install -q --upgrade pip
	$(NEWEST)/bin/pip install -q torch==2.13.0
	$(NEWEST)/bin/pip install -q --upgrade --upgrade-strategy eager -e ".[all,test]"
	$(NEWEST)/bin/python docker/pins.py --compare
	$(NEWEST)/bin/ruff check .
	CALREC_UNPINNED=1 $(NEWEST)/bin/python -m pytest -n 2 --dist loadgroup tests

clean:
	rm -rf $(VENV) $(NEWEST) runs
