# The two commands a user needs: `make demo` and `make test`. Both set everything up first.
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_SECONDS ?= 0

.PHONY: setup demo test lint bench soak eval clean

setup:
	@bash scripts/bootstrap.sh

demo: setup
	@DEMO_SECONDS=$(DEMO_SECONDS) exec bash scripts/demo.sh

# Bytecode is cached for the run (under __pycache__/, ignored by git) even where the environment
# says PYTHONDONTWRITEBYTECODE: every agent, simulator and CLI the tests start, and each worker's
# assertion rewriting, would otherwise compile the same sources again.
# One worker more than CPUs, four at most: a worker per CPU leaves the CPUs idle about a third of
# the time (tests wait on agents, brokers, real-time audio); on two CPUs three workers took 685-734 s
# against 948-964 s with two, and 573-578 s once the suite ran numpy on one BLAS thread
# (tests/README.md). `make test TEST_WORKERS=2` runs a worker per CPU.
TEST_WORKERS ?= $(shell echo $$(( $$(nproc) + 1 )))
test: setup lint
	env -u PYTHONDONTWRITEBYTECODE $(VENV)/bin/pytest -q --numprocesses=$(TEST_WORKERS) --maxprocesses=4 --dist=loadfile --no-loadscope-reorder

# Style, types and the layer contract (docs/architecture.md); each fails the build on its own.
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy tests bench scripts
	$(VENV)/bin/lint-imports

bench: setup
	$(PY) -m bench.run

# Model evaluation on held-out simulated data and the real recordings and features; rewrites docs/img,
# metrics and the docs/*-eval*.json figures.
# One BLAS thread: the evaluations render thousands of small arrays, where a threaded BLAS spends
# about ten times the CPU on handing work between threads.
eval: export OPENBLAS_NUM_THREADS := 1
eval: setup
	@echo 'eval: 1/9 leak classifier (held-out clips, real recordings) ...'
	$(PY) -m water_edge.models.train.leak_eval --update-manifest
	@echo 'eval: 2/9 leak baseline calibration ...'
	$(PY) -m water_edge.models.train.leak_calibration
	@echo 'eval: 3/9 field leak detector (simulated nights) ...'
	$(PY) -m water_edge.models.train.leak_field_eval --update-manifest
	@echo 'eval: 4/9 night flow ...'
	$(PY) -m water_edge.models.train.flow_leak_eval
	@echo 'eval: 5/9 pump detector (held-out faults) ...'
	$(PY) -m water_edge.models.train.pump_eval --write
	@echo 'eval: 6/9 pump detector on the test rig ...'
	$(PY) -m water_edge.models.train.pump_eval_rig --set evaluation --json docs/pump-eval-rig.json --plot docs/img/pump_rig_scores.png
	@echo 'eval: 7/9 pump detector, short calibrations ...'
	$(PY) -m water_edge.models.train.pump_eval_short --set evaluation --json docs/pump-eval-short.json
	@echo 'eval: 8/9 machine sound (MIMII features) ...'
	$(PY) -m water_edge.models.train.machine_sound_eval --write
	@echo 'eval: 9/9 bursts (simulated districts, real BWDF inflows) ...'
	$(PY) -m water_edge.models.train.burst_eval --set evaluation --json docs/burst-eval.json

soak: setup
	$(VENV)/bin/pytest -q -m soak -p no:cacheprovider --timeout 7200 tests

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build *.egg-info
