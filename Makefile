# Two commands for a new user: `make demo` (the whole pipeline offline on CPU) and `make test`.
# Each creates or updates the virtual environment in .venv on its own.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# what ruff lints and formats (the configuration: [tool.ruff] in pyproject.toml)
LINTED := src tests benchmarks scripts

.PHONY: demo test install browser

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch 2.14.1 / torchvision 0.29.1 install from local wheels on the project's machines; elsewhere from PyPI
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/latteclip demo

# The report test renders HTML in headless Chromium; it is installed here when missing (needs root + apt).
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    (apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) ; } || \
	  echo "chromium not installed: the browser test will be skipped"

# Lint and formatting first: a seconds-long check that fails before minutes of tests. Then the tests on two workers,
# each test file on one (its module fixtures built once); the two Slurm tests take turns through a lock file.
test: $(STAMP) browser
	$(PY) -m ruff check $(LINTED)
	$(PY) -m ruff format --check $(LINTED)
	$(PY) -m pytest -q -n 2 --dist loadfile
