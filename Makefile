# The study's two commands: `make study` and `make test`. Each creates the environment it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= cpu,dev
DATA ?=
# Without DATA, the synthetic default: taleqani (4-class fields) or cnmc (C-NMC-like single cells, ALL vs normal).
DATASET ?= taleqani
# The embedded synthetic default runs the `demo` profile (a few minutes); real data the `cpu` one.
PROFILE ?= $(if $(DATA),cpu,demo)
OUT ?= outputs
# Notebooks executed at once, each in its own kernel: 2 keeps both cores of a 2-core machine busy.
JOBS ?= 2
# ImageNet weight files that load offline (see data/README.md); the team keeps them beside the project.
WEIGHTS_DIR ?= $(wildcard ../shared/weights)

.PHONY: venv browser study lint test test-fast clean

venv: $(VENV)/.installed ## the environment alone (EXTRAS=gpu,dev for the CUDA build)

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

study: venv browser ## the whole study; DATA=/path/to/images for real data (PROFILE=paper for a GPU), DATASET=cnmc
	$(PY) -m allstudy run $(if $(DATA),--data "$(DATA)",--dataset $(DATASET)) --profile $(PROFILE) --out "$(OUT)" --jobs $(JOBS) \
		$(if $(WEIGHTS_DIR),--weights-dir "$(WEIGHTS_DIR)")

# Debian's Chromium: it prints report.pdf, and Playwright drives it in the real-browser checks (Playwright's own
# download needs the internet). Best effort: without root or apt the study writes the HTML report alone and the
# browser tests are skipped, each saying why.
browser: ## the headless browser that prints report.pdf and runs the browser tests
	@test -x /usr/bin/chromium || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
		{ apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 || \
		  { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null; }; } && \
		echo "installed chromium"; } || \
		echo "no /usr/bin/chromium: no report.pdf, and the browser tests will be skipped (apt-get install chromium)"

lint: venv ## ruff (lint and format) and mypy, as configured in pyproject.toml
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: venv browser lint ## the whole test suite, after the lint (what CI runs)
	$(PY) -m pytest

# The unit tier for the inner loop: no model training tier, real images, notebooks or browser.
test-fast: venv ## the fast unit tier
	$(PY) -m pytest -m "not slow and not shared and not notebook and not browser"

clean: ## remove generated outputs (keeps the environment)
	find "$(OUT)" -mindepth 1 ! -name README.md -delete 2>/dev/null || true
