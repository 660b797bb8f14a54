# storescpd developer commands. `make run` installs and starts the daemon; `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
PORT ?= 11112
OUT ?= ./incoming

.PHONY: setup run test test-fast screenshots deb clean

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

# Refresh docs/images/console*.png from the browser test (CI never writes into the tree).
screenshots: setup
	STORESCPD_SCREENSHOTS=docs/images $(VENV)/bin/python -m pytest -q -p no:cacheprovider \
		tests/integration/test_console.py -k slow_transfer

deb:
	packaging/build-deb

clean:
	rm -rf $(VENV) build *.egg-info
