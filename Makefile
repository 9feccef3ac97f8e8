# Two commands do all set-up on a fresh machine (only Python 3 and pip needed):
#   make demo   build the embedded preset, run it with XLA, print parity and latency
#   make test   run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
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

test: $(VENV)/.test-$(HASH)
	$(PY) -m pytest -q
	@if [ "$${FALCON_TF_SKIP_JVM:-0}" = 1 ]; then echo "JVM tests skipped (FALCON_TF_SKIP_JVM=1)"; \
	else bash android_demo/scripts/test_core.sh; fi

# The benchmarks' references (keras-hub, torch, transformers) are the tests' ones.
bench: $(VENV)/.test-$(HASH)
	$(PY) benchmarks/forward.py
	$(PY) benchmarks/serving.py
	$(PY) benchmarks/tflite.py
	$(PY) benchmarks/generate.py
	$(PY) benchmarks/convert.py

clean:
	rm -rf $(VENV) artifacts/*/ .pytest_cache
