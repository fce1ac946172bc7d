# iris: `make demo` runs the whole pipeline locally; `make test` runs the test suite.
# Each target sets itself up: a .venv with the project, and the Debian packages it runs.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-compiled compiled c-compiler lint bench redis-server promtool kubectl clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip 'setuptools>=77' wheel
	$(BIN)/pip install --quiet -e '.[dev,fast]'
	touch $(STAMP)

# Debian packages the tests run for real: redis-server, prometheus (promtool + server), and
# kubectl (`kubectl kustomize` renders deploy/kubernetes offline; no cluster is needed).
define apt_install
	@command -v $(1) >/dev/null 2>&1 || { \
	  echo "$(1) is missing: installing the Debian package $(2)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $(2); \
	}
endef

redis-server:
	$(call apt_install,redis-server,redis-server)

promtool:
	$(call apt_install,promtool,prometheus)

kubectl:
	$(call apt_install,kubectl,kubectl)

demo: $(STAMP) redis-server
	$(BIN)/iris demo --write-config demo-config

test: $(STAMP) redis-server promtool kubectl lint
	$(BIN)/pytest

# iris's hot path compiled with mypyc (IRIS_MYPYC=1, setup.py), as the container image ships it:
# built once per source version into .build/ (a minute or two), and laid out beside a copy of
# this checkout, where the whole test suite runs on it
# (PYTHONPATH: every process the suite starts, `.venv/bin/iris` too, imports the tree's iris)
COMPILED_TREE := .build/compiled-tree
compiled: $(STAMP) c-compiler
	$(BIN)/python -m benchmarks.compiled --tree $(COMPILED_TREE)

test-compiled: compiled redis-server promtool kubectl
	cd $(COMPILED_TREE) && PYTHONPATH=$$PWD .venv/bin/python -m iris --version | grep 'mypyc: ' \
	  || { echo "error: $(COMPILED_TREE) does not import its compiled modules"; exit 1; }
	cd $(COMPILED_TREE) && PYTHONPATH=$$PWD .venv/bin/pytest

# mypyc's C compiler and Python's headers (Debian's python3-dev, for a Python without them)
c-compiler:
	$(call apt_install,gcc,gcc)
	@$(BIN)/python -c "import sysconfig, os, sys; \
	  sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h')))" \
	  || { if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	       $$SUDO apt-get update -qq && \
	       DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends python3-dev; }

bench: $(STAMP) redis-server c-compiler
	$(BIN)/python benchmarks/run.py

# ruff (with complexity at most 12), mypy --strict, and the layering contracts (pyproject.toml)
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info .build build
