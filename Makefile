# The two entry points of the README: `make run` and `make test`.
VENV   ?= .venv
PYTHON ?= python3
DIR    ?= instance
HOST   ?= 127.0.0.1
PORT   ?= 8080
SCEPD  := $(VENV)/bin/scepd

.PHONY: bootstrap run test test-clients bench bench-report clean

bootstrap: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/bootstrap.sh
	PYTHON=$(PYTHON) VENV=$(VENV) scripts/bootstrap.sh
	touch $@

# Create an instance if there is none, then serve it.
run: bootstrap
	@[ -f $(DIR)/scepd.toml ] || $(SCEPD) init --dir $(DIR)
	$(SCEPD) serve --dir $(DIR) --host $(HOST) --port $(PORT)

test-clients:
	scripts/install-test-clients.sh

test: bootstrap test-clients
	$(VENV)/bin/python -m pytest

# Throughput against the crypto bound (see bench/scepbench.py --help for options).
bench: bootstrap
	$(VENV)/bin/python bench/scepbench.py --workers 1 --concurrency 8 --duration 10

# The workers x concurrency sweep, written to docs/performance.md with a plot.
bench-report: bootstrap
	$(VENV)/bin/python -m pip install -q --disable-pip-version-check -e '.[bench]'
	$(VENV)/bin/python bench/report.py $(ARGS)

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
