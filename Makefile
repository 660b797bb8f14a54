# storescpd developer commands. `make run` installs and starts the daemon; `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
PORT ?= 11112
OUT ?= ./incoming
SOAK_SECONDS ?= 1800
SOAK_ARGS ?=

.PHONY: setup run test test-fast soak screenshots fuzz deb clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

setup: $(VENV)/.installed

run: setup
	mkdir -p $(OUT)
	$(VENV)/bin/storescpd $(PORT) -od $(OUT) -v

test: setup
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider --timeout=600 tests

test-fast: setup
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider -m "not packaging" tests

# The documented soak under faults (docs/reliability.md): 30 minutes, as root (it mounts a tmpfs),
# niced so that it yields to other work on the machine. Results in bench/out/soak-<time>/.
soak: setup
	nice -n 10 $(VENV)/bin/python bench/soak.py --duration $(SOAK_SECONDS) $(SOAK_ARGS)

# Refresh docs/images/console*.png from the browser test (CI never writes into the tree).
screenshots: setup
	STORESCPD_SCREENSHOTS=docs/images $(VENV)/bin/python -m pytest -q -p no:cacheprovider \
		tests/integration/test_console.py -k slow_transfer

# The fuzz tests with the long Hypothesis profile (50 times the examples `make test` runs, random,
# failures kept in .hypothesis/ and tried first next time): about an hour on two cores.
fuzz: setup
	STORESCPD_FUZZ_PROFILE=long $(VENV)/bin/python -m pytest -q -p no:cacheprovider --timeout=0 tests/fuzz

deb:
	packaging/build-deb

clean:
	rm -rf $(VENV) build *.egg-info
