# Two commands matter:  make demo   and   make test
# Everything else is set-up they do for themselves.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# WEIGHTS=real: the registry packages' models (the demo's); WEIGHTS=random: seeded random weights of PRESET
WEIGHTS ?= real
PRESET ?= tiny

.PHONY: demo test test-fast bench export serve gateway configs system-deps validators clean

TOOLS    := build/tools
PROMTOOL := $(TOOLS)/promtool
CHECKOV  := $(TOOLS)/checkov/bin/checkov

$(VENV)/.installed: requirements.txt requirements-nodeps.txt requirements-dev.txt requirements-trt.txt requirements-load.txt requirements-gateway.txt deploy/requirements-validate.txt pyproject.toml
	@echo "== creating $(VENV) and installing requirements (first run: about a minute)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -r requirements-nodeps.txt
	$(PY) -m pip install -q --no-deps -e . --config-settings editable_mode=compat
	@touch $@

system-deps:  ## espeak-ng speaks the demo question; chromium + chromedriver run the gateway's browser test; cc builds deploy/secret_argv.c; coturn tests the TURN relay's config (Debian)
	@command -v espeak-ng >/dev/null || { echo "== installing espeak-ng"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng >/dev/null; }
	@{ command -v chromium && command -v chromedriver; } >/dev/null || { echo "== installing chromium, chromium-driver"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }
	@command -v cc >/dev/null || { echo "== installing gcc (the admin key's argv library, deploy/secret_argv.c)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc libc6-dev >/dev/null; }
	@command -v turnserver >/dev/null || { echo "== installing coturn (the TURN relay's peer policy, tests/test_turn_relay.py)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq coturn >/dev/null; }

# Validators of the deployment files that do not live in the project venv (tests/test_deploy_*.py run them):
# promtool from Debian's prometheus package (only the binary is extracted: no Prometheus service is installed),
# checkov in a venv of its own (its ~90 dependencies stay out of .venv).
validators: $(PROMTOOL) $(CHECKOV)

$(PROMTOOL):
	@echo "== promtool (Debian package prometheus, extracted into $(TOOLS))"
	@rm -rf $(TOOLS)/deb && mkdir -p $(TOOLS)/deb
	cd $(TOOLS)/deb && { apt-get download prometheus >/dev/null 2>&1 || { apt-get update -qq && apt-get download prometheus; }; } \
	  && dpkg-deb -x prometheus_*.deb root && cp root/usr/bin/promtool ../promtool
	@rm -rf $(TOOLS)/deb
	@$(PROMTOOL) --version | head -1

$(CHECKOV): deploy/requirements-checkov.txt
	@echo "== checkov (its own venv in $(TOOLS)/checkov)"
	$(PYTHON) -m venv $(TOOLS)/checkov
	$(TOOLS)/checkov/bin/pip install -q -r deploy/requirements-checkov.txt
	@touch $@

demo: $(VENV)/.installed system-deps  ## export the real models, serve, ask one spoken question, write out/answer.{wav,mp4}
	$(PY) -m deploy.demo --weight-set $(WEIGHTS) --preset $(PRESET)

test: $(VENV)/.installed system-deps validators  ## the whole test suite (starts real tritonserver instances)
	$(PY) -m pytest -q -ra

test-fast: $(VENV)/.installed validators  ## unit tests only (no server)
	$(PY) -m pytest -q -m "not server"

bench: $(VENV)/.installed system-deps  ## CPU demo benchmark: export, start-up, TTFA, TTFF, total, RTF
	$(PY) -m loadtests.bench_cpu --weight-set $(WEIGHTS) --preset $(PRESET)

export: $(VENV)/.installed
	$(PY) -m export --weight-set $(WEIGHTS) --preset $(PRESET)

serve: export  ## the embedded server until Ctrl-C
	$(PY) -m deploy.server

gateway: export  ## the WebRTC gateway and its page (and the embedded server) until Ctrl-C: open the URL it prints
	$(PY) -m deploy.gateway --start-server

configs: $(VENV)/.installed  ## re-render every config.pbtxt from export/contract/spec.py
	$(PY) -m export.render_configs

clean:
	rm -rf build out model_repository/*/1/*.onnx* model_repository/*/1/*.json
