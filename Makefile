# The two commands a user needs: `make demo` and `make test`. Both set everything up first.
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_SECONDS ?= 0

.PHONY: setup demo test lint bench soak eval clean

setup:
	@bash scripts/bootstrap.sh

demo: setup
	@DEMO_SECONDS=$(DEMO_SECONDS) exec bash scripts/demo.sh

test: setup lint
	$(VENV)/bin/pytest -q

# Style, types and the layer contract (docs/architecture.md); each fails the build on its own.
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

bench: setup
	$(PY) -m bench.run

# Model evaluation on held-out simulated data and the real recordings and features; rewrites docs/img,
# metrics and the docs/*-eval*.json figures.
eval: setup
	$(PY) -m water_edge.models.train.leak_eval --update-manifest
	$(PY) -m water_edge.models.train.leak_calibration
	$(PY) -m water_edge.models.train.leak_field_eval --update-manifest
	$(PY) -m water_edge.models.train.flow_leak_eval
	$(PY) -m water_edge.models.train.pump_eval --write
	$(PY) -m water_edge.models.train.pump_eval_rig --set evaluation --json docs/pump-eval-rig.json --plot docs/img/pump_rig_scores.png
	$(PY) -m water_edge.models.train.pump_eval_short --set evaluation --json docs/pump-eval-short.json
	$(PY) -m water_edge.models.train.machine_sound_eval --write

soak: setup
	$(VENV)/bin/pytest -q -m soak -p no:cacheprovider --timeout 7200 tests

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build *.egg-info
