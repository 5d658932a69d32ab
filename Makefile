# streamrec: every target sets itself up on a fresh machine (Python 3.11 only needed).
#   make demo   - the main job on the embedded defaults
#   make test   - the default test suite (what CI runs)
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: help setup system-deps demo test test-e2e test-slow test-multinode test-all bench-ingest bench-bandit lock up down status clean

help:
	@echo "run:    make demo | up | down | status"
	@echo "test:   make test | test-e2e | test-slow | test-multinode | test-all"
	@echo "bench:  make bench-ingest | bench-bandit | bench-pipeline | bench-lake-bundles | bench-serving | bench-training | bench-quality | load-test"
	@echo "set-up: make setup | system-deps | lock | clean"

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and exactly 2.13.0: any other spec downloads GBs of CUDA wheels.
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test]"
	touch $(STAMP)

setup: $(STAMP) system-deps

# Debian packages: redis-server for the Feast online store on Redis (its tests start it
# themselves and are skipped, saying why, where it cannot be installed); chromium, whose headless
# mode renders the `streamrec report` HTML and shops at /shop/ in their tests (driven over the
# DevTools protocol, so no chromium-driver; skipped, saying why, without it); wrk, for
# bench-serving's closed-loop saturation runs (its latency runs use tests/benchmarks/loadgen.py).
system-deps:
	@command -v redis-server >/dev/null 2>&1 || { \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null) \
	  || echo "warning: could not install redis-server: the Redis tests will be skipped"; }
	@command -v chromium >/dev/null 2>&1 || { \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "warning: could not install chromium: the report rendering test will be skipped"; }
	@command -v wrk >/dev/null 2>&1 || { \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null) \
	  || echo "warning: could not install wrk: bench-serving will skip its saturation runs"; }

demo: $(STAMP)
	$(BIN)/streamrec demo

up: $(STAMP)
	$(BIN)/streamrec up
down: $(STAMP)
	$(BIN)/streamrec down
status: $(STAMP)
	$(BIN)/streamrec status

# Default suite: everything except slow, GPU and end-to-end tests. Exit code 5 (no tests ran) is a failure.
test: $(STAMP) system-deps
	$(BIN)/python -m pytest -m "not slow and not gpu and not e2e" $(PYTEST_ARGS)

# The whole loop: a shortened `streamrec demo` with faults injected (about 10 minutes on 2 cores).
test-e2e: $(STAMP) system-deps
	$(BIN)/python -m pytest -m e2e tests/e2e $(PYTEST_ARGS)

test-slow: $(STAMP) system-deps
	$(BIN)/python -m pytest -m "slow and not gpu and not e2e and not multinode" $(PYTEST_ARGS)

# Ray across two nodes on this machine (a head and a second `ray start`, own ports, loopback, token
# auth): Serve replicas on both, then a 2-worker TorchTrainer job (`ray job submit`) that loses the
# second node mid-training and finishes from its checkpoint on the head (about 4 minutes on 2 cores).
test-multinode: $(STAMP)
	$(BIN)/python -m pytest tests/cluster/test_multinode.py $(PYTEST_ARGS)

test-all: $(STAMP) system-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# bench-*: each prints met/MISSED per target and exits non-zero when one is missed; `--no-verdict` disables that (via BENCH_SERVING_ARGS / BENCH_TRAINING_ARGS / BENCH_QUALITY_ARGS; for the others run the script with it).
bench-ingest: $(STAMP)
	$(BIN)/python tests/benchmarks/bench_ingest.py

bench-bandit: $(STAMP)
	$(BIN)/python tests/benchmarks/bench_bandit_replay.py

bench-pipeline: $(STAMP)
	$(BIN)/python tests/benchmarks/bench_pipeline.py

# CrossCBR on bundles mined from the event lake vs popularity, time split, full ranking (about 70 s).
bench-lake-bundles: $(STAMP)
	$(BIN)/python tests/benchmarks/bench_lake_bundles.py

# Serving latency at 100 requests/s (open loop) next to a no-op Serve endpoint, and ExactTopK
# against the memory-bandwidth bound; results in reports/bench-serving/.
BENCH_SERVING_ARGS ?=
bench-serving: $(STAMP) system-deps
	$(BIN)/python tests/benchmarks/bench_serving.py $(BENCH_SERVING_ARGS)

# Collector + recommendations + bundles together for 5 minutes, then every accepted event checked in
# Kafka (not in CI); results in reports/load-test/.
LOAD_TEST_ARGS ?= --duration 300
load-test: $(STAMP)
	$(BIN)/python tests/benchmarks/load_test.py $(LOAD_TEST_ARGS)

lock: $(STAMP)
	( head -2 constraints.txt; $(BIN)/python -m pip freeze --exclude-editable | sed "s/^torch==2.13.0+cpu$$/torch==2.13.0/" ) > constraints.txt.new
	mv constraints.txt.new constraints.txt
	$(BIN)/python deploy/images/lock.py

clean:
	-$(BIN)/streamrec down
	rm -rf $(VENV) .streamrec .pytest_cache

.PHONY: bench-training bench-quality bench-serving bench-lake-bundles load-test

# Training throughput: Ray Train (1 and 2 workers) vs a plain PyTorch loop, same model and batch.
BENCH_TRAINING_ARGS ?= --model lightgcn --max-users 3000 --epochs 6 --workers 1,2 --repeats 3
bench-training: $(STAMP)
	$(BIN)/python tests/benchmarks/bench_training.py $(BENCH_TRAINING_ARGS)

# Model quality on the papers' protocols (CPU epoch budget; BENCH_QUALITY_ARGS="--full --use-gpu" on a GPU).
QUALITY_RESULTS ?= reports/quality
BENCH_QUALITY_ARGS ?= --epochs 2
bench-quality: $(STAMP)
	$(BIN)/python tests/benchmarks/bench_quality.py --results-dir $(QUALITY_RESULTS) $(BENCH_QUALITY_ARGS)
