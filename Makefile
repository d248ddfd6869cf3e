# Two commands matter:  make demo   and   make test
# Everything else is set-up they do for themselves.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PRESET ?= tiny

.PHONY: demo test test-fast bench export serve configs system-deps clean

$(VENV)/.installed: requirements.txt requirements-nodeps.txt requirements-dev.txt requirements-trt.txt requirements-load.txt deploy/requirements-validate.txt pyproject.toml
	@echo "== creating $(VENV) and installing requirements (first run: about a minute)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -r requirements-nodeps.txt
	$(PY) -m pip install -q --no-deps -e . --config-settings editable_mode=compat
	@touch $@

system-deps:  ## espeak-ng speaks the demo question (Debian package)
	@command -v espeak-ng >/dev/null || { echo "== installing espeak-ng"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng >/dev/null; }

demo: $(VENV)/.installed system-deps  ## export tiny models, serve, ask one spoken question, write out/answer.{wav,mp4}
	$(PY) -m deploy.demo --preset $(PRESET)

test: $(VENV)/.installed system-deps  ## the whole test suite (starts real tritonserver instances)
	$(PY) -m pytest -q -ra

test-fast: $(VENV)/.installed  ## unit tests only (no server)
	$(PY) -m pytest -q -m "not server"

bench: $(VENV)/.installed system-deps  ## CPU demo benchmark: export, start-up, TTFA, TTFF, total, RTF
	$(PY) -m loadtests.bench_cpu --preset $(PRESET)

export: $(VENV)/.installed
	$(PY) -m export --preset $(PRESET)

serve: export  ## the embedded server until Ctrl-C
	$(PY) -m deploy.server

configs: $(VENV)/.installed  ## re-render every config.pbtxt from export/contract/spec.py
	$(PY) -m export.render_configs

clean:
	rm -rf build out model_repository/*/1/*.onnx* model_repository/*/1/*.json
