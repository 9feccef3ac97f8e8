# Two commands do all set-up on a fresh machine (only Python 3 and pip needed):
#   make demo   build the embedded preset, run it with XLA, print parity and latency
#   make test   run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# pytest workers; each takes whole test files, so a file's shared export is made once.
TEST_WORKERS ?= 2
# Re-install whenever pyproject.toml changes.
HASH   := $(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: demo test bench clean

$(VENV)/bin/activate:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.base-$(HASH): $(VENV)/bin/activate
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.test-$(HASH): $(VENV)/bin/activate
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

demo: $(VENV)/.base-$(HASH)
	$(VENV)/bin/falcon-tf demo

# As root with apt, the GPU-delegate and JVM tests' system packages are installed
# first (idempotent, quick once done); otherwise those tests skip and say how to
# enable them.
test: $(VENV)/.test-$(HASH)
	@bash scripts/setup_test_system.sh
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15
	@bash android_demo/scripts/test_core.sh

# The benchmarks' references (keras-hub, torch, transformers) are the tests' ones.
bench: $(VENV)/.test-$(HASH)
	$(PY) benchmarks/forward.py
	$(PY) benchmarks/serving.py
	$(PY) benchmarks/tflite.py
	$(PY) benchmarks/generate.py
	$(PY) benchmarks/convert.py
	$(PY) benchmarks/perplexity.py

clean:
	rm -rf $(VENV) artifacts/*/ .pytest_cache
