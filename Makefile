# The two front doors, `make test` and `make reproduce`, need only python3 on the PATH:
# the first call creates .venv and installs favorkit into it with the extras it needs.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test reproduce bench docs lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,experiments,dask]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest favorkit tests -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

reproduce: $(STAMP)
	$(PY) experiments/run_all.py --quick

# Benchmarks against peers. torch 2.13.0 is the CPU build on this machine's disk;
# performer-pytorch goes in with --no-deps (its own pins would pull a CUDA torch).
$(VENV)/.bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) -m pip install --quiet --no-deps performer-pytorch axial-positional-embedding local-attention hyper-connections
	touch $@

# OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE may be set on this machine to work around old
# OpenBLAS bugs; they slow a current numpy, so the benchmarks unset them (and only them).
bench: $(VENV)/.bench
	env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(PY) benchmarks/bench_features.py
	env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(PY) benchmarks/bench_attention.py
	env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(PY) benchmarks/bench_accuracy.py
	env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(PY) benchmarks/bench_kernels.py
	env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(PY) benchmarks/bench_dask.py

# The documentation site, offline, warnings as errors (nitpicky cross-references); it runs
# the gallery and, unless docs/_generated/results is there, the experiments in quick mode.
$(VENV)/.docs: $(STAMP)
	$(PY) -m pip install --quiet -e '.[docs]'
	touch $@

docs: $(VENV)/.docs
	$(VENV)/bin/sphinx-build -W --keep-going -n -b html docs docs/_build/html

clean:
	rm -rf $(VENV) results .pytest_cache docs/_build docs/_generated docs/generated docs/auto_examples
