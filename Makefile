# Every target builds its own virtual environment; nothing relies on what is installed by hand.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: run demo demo-tokens test lint typecheck pytest wheel-check bench proto clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned to the CPU build on this disk: otherwise a dependency would pull the
	# latest (multi-GB CUDA) build. GPU users install their own torch before tallystick[coin].
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev,daemon,sdk,coin]'
	# The reference implementations, as test-only oracles. hdp-autogen's signing and
	# verification modules need only cryptography and jcs, not AutoGen.
	$(PY) -m pip install --quiet --no-deps hdp-autogen==0.2.0
	$(PY) -m pip install --quiet agent-identity-protocol==0.6.0
	touch $(STAMP)

## run: the main job: start tallystickd (SQLite log in ./var) and print how to record a first call
run: $(STAMP)
	bash scripts/run.sh $(VENV)/bin

## demo: agents record LLM calls through the SDK; the bill and provenance are checked offline
demo: $(STAMP)
	$(PY) -m demo.workflow var/demo

## demo-tokens: the offline token demo: keys and tokens under var/demo-tokens, verified offline
demo-tokens: $(STAMP)
	bash scripts/demo.sh $(VENV)/bin

## test: lint, type-check, the test suite, and an install of the built wheel into a clean venv
test: lint typecheck pytest wheel-check

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	bash scripts/check_proto.sh $(PY)

## proto: regenerate proto/gen from proto/ (CI fails if the committed code is stale)
proto: $(STAMP)
	bash scripts/gen_proto.sh $(PY)

typecheck: $(STAMP)
	$(VENV)/bin/mypy verifier

pytest: $(STAMP)
	$(VENV)/bin/pytest -q

wheel-check: $(STAMP)
	bash scripts/wheel_check.sh $(PY)

## bench: verification speed against the reference packages
bench: $(STAMP)
	$(PY) bench/verify.py

clean:
	rm -rf $(VENV) .venv-wheel build dist *.egg-info var/demo
