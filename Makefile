# Set-up and everyday commands. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel on this kind of machine; users with CUDA: make install TORCH_SPEC="torch>=2.3"
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=
# two pytest-xdist workers: the search tests in order on one, the rest beside them
# (tests/conftest.py); PARALLEL= runs everything in one process
PARALLEL ?= -n 2 --dist loadgroup
# Idle OpenMP threads sleep instead of spinning: torch's spinning threads in one worker took
# the cores from the other worker's searches (a one-trial search beside a 2-thread torch loop:
# 95 s spinning, 30 s passive, 24 s alone; the loop alone 4% slower passive; 2026-12-06)
TEST_ENV := OMP_WAIT_POLICY=PASSIVE
# every other package at a known version, so two fresh machines compute the same numbers
CONSTRAINTS := -c constraints.txt

.PHONY: install install-test system-deps demo test test-fast lint clean
# Root runs apt-get directly; anyone else through sudo.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# What running needs (`make demo`, every node of a cluster); install-test adds what testing
# and linting need (`make test`, `make lint`).
install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q $(CONSTRAINTS) -e .
	# torchattacks pins requests~=2.25.1 and requires torchvision, neither used at run time.
	$(BIN)/pip install -q --no-deps torchattacks==3.5.1
	# The official AutoAttack (Croce & Hein's code) for the sealed evaluation; no deps declared.
	$(BIN)/pip install -q --no-deps pyautoattack==0.2.0
	# The adversarial-robustness-toolbox's query attacks (SimBA); its other deps are ours.
	$(BIN)/pip install -q --no-deps adversarial-robustness-toolbox==1.20.1
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install -q $(CONSTRAINTS) -e ".[test]"
	touch $@

demo: install
	$(BIN)/python -m search.run --space mid

# What the tests need from the system: headless Chromium + its driver (MLflow UI test), and
# iproute2 / util-linux for the two-node Ray cluster test's network namespace.
system-deps:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null \
		&& command -v ip >/dev/null && command -v unshare >/dev/null \
		|| ($(SUDO) apt-get update -qq \
		    && $(SUDO) apt-get install -y -qq chromium chromium-driver iproute2 util-linux)

test: install-test system-deps
	$(TEST_ENV) $(BIN)/python -m pytest -q $(PARALLEL) $(PYTEST_ARGS)

test-fast: install-test
	$(TEST_ENV) $(BIN)/python -m pytest -q -m "not slow" $(PARALLEL) $(PYTEST_ARGS)

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
