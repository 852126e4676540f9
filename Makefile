# Everything a fresh machine needs: `make test` and `make bench` create .venv, install the pinned dependencies,
# build flowkern with `pip install --no-build-isolation .` (it then sees torch and builds flowkern._C_eager against
# it; FLOWKERN_EAGER=1 fails the build otherwise), then run. TORCH can be overridden (e.g. a CUDA build on a GPU
# machine).
PYTHON ?= python3
TORCH  ?= torch==2.13.0
VENV   := .venv
BIN    := $(VENV)/bin
# setuptools, wheel, pybind11: the build's own requirements (it runs without isolation); FrEIA and normflows: the
# packages flowkern.compat's adapters are tested and benchmarked against
DEPS   := "setuptools>=77" wheel "pybind11>=2.11" \
          "triton>=3.0" numpy tqdm pytest pytest-benchmark matplotlib "imageio>=2.31" "av>=11" pillow \
          "scikit-image>=0.20" \
          FrEIA==0.2 normflows==1.7.3

.PHONY: test bench install clean

$(VENV)/.deps: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)" $(DEPS)
	touch $@

install: $(VENV)/.deps
	FLOWKERN_EAGER=1 $(BIN)/python -m pip install -q --no-build-isolation .

test: install
	$(BIN)/pytest

bench: install
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info flowkern/_C*.so
