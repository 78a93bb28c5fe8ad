# deepscope: `make demo` runs the main job, `make test` runs the whole test suite.
# Both create .venv on first use (Python 3.11) and install everything with torch pinned.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PIP := $(BIN)/pip install -q -c constraints.txt
SETUP_FILES := constraints.txt requirements-dev.txt client/pyproject.toml server/pyproject.toml \
               plugins/pyproject.toml examples/deepscope-example-plugin/pyproject.toml

.PHONY: venv browser test demo docs proto bench bench-smoke fuzz clean reproduce

$(STAMP): $(SETUP_FILES)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) -e client[plots,graphs] -e server -e plugins -e examples/deepscope-example-plugin -r requirements-dev.txt
	touch $(STAMP)

venv: $(STAMP)

# The report test opens the HTML report in Debian's headless Chromium; install it where we can.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "note: chromium could not be installed; the report browser test will be skipped"

test: venv browser
	$(BIN)/python -m pytest

demo: venv
	$(BIN)/python examples/demo.py

docs: venv
	$(BIN)/python docs/generate_metrics_doc.py
	$(BIN)/python docs/generate_models_doc.py

proto: venv
	$(BIN)/python proto/generate.py

bench: venv
	$(BIN)/python bench/run_all.py

bench-smoke: venv
	$(BIN)/python bench/run_all.py --smoke

# Property-based fuzzing of a running server with thousands of examples per test (the normal
# test run uses a few hundred): DEEPSCOPE_FUZZ_EXAMPLES=N overrides.
fuzz: venv
	DEEPSCOPE_FUZZ_EXAMPLES=$${DEEPSCOPE_FUZZ_EXAMPLES:-2000} $(BIN)/python -m pytest -q tests/fuzz \
	    --timeout=7200 --hypothesis-show-statistics

# The four paper reproductions (examples/reproduce/): a few minutes each on 2 cores; they rewrite
# docs/reproductions.md and the figures in docs/reproductions/.
REPRODUCTIONS := la_malfa ding lin janik
reproduce: venv
	@for script in $(REPRODUCTIONS); do \
	  echo "== examples/reproduce/$$script.py"; \
	  nice -n 10 $(BIN)/python examples/reproduce/$$script.py || exit 1; \
	done
	$(BIN)/python examples/reproduce/build_doc.py

clean:
	rm -rf $(VENV) demo-out
