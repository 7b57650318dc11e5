# Two commands on a fresh machine: `make demo` and `make test`. Both bootstrap .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: bootstrap data browser test demo bench readme clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]' -c constraints.txt
	touch $(STAMP)

data:
	@if [ -f "$(FMNIST)" ] || [ -n "$$PRUNEKIT_DATA" ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get install -y -q dataset-fashion-mnist || (apt-get update -q && apt-get install -y -q dataset-fashion-mnist)); \
	else \
		echo "Fashion-MNIST is missing: install the Debian package dataset-fashion-mnist" \
		     "(sudo apt-get install dataset-fashion-mnist), or set PRUNEKIT_DATA=DIR holding the four IDX files."; \
	fi

# headless Chromium renders report.html in a test (tests/test_report.py); only `make test` needs it
browser:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium)); \
	else \
		echo "chromium is missing (sudo apt-get install chromium): the report.html render test will be skipped"; \
	fi

bootstrap: $(STAMP) data

test: bootstrap browser
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/python -m pytest

demo: bootstrap
	$(BIN)/prunekit demo

bench: bootstrap  # every recorded result, re-measured with its recorded command (hours), then the README table
	$(BIN)/python benchmarks/rerun.py

readme: bootstrap
	$(BIN)/python benchmarks/make_readme_table.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
