# Set-up is part of every target: a fresh machine needs only python3 (>= 3.11) and make.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup simulate run test test-fast lint bench bench-threads bench-relay bench-throughput bench-scale bench-run bench-memory clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch and torchvision first, pinned, so pip never reaches for a newer CUDA build.
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	# setuptools warns that an editable install of a package mapped onto ./dkt may import
	# from ./dkt: that folder is the package itself, so the warning is noise here.
	PYTHONWARNINGS=ignore $(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

## The main job on the embedded default (digits, 3 agents): relay, SuperLink and
## 3 SuperNodes as local processes; results in runs/run-DATE-TIME.
run: $(STAMP)
	$(VENV)/bin/dkt run

## All agents in one process: the fast research loop.
simulate: $(STAMP)
	$(VENV)/bin/dkt simulate

## Everything, including the tests that start real Flower processes (about 16 minutes on 2 cores).
test: $(STAMP)
	$(PY) -m pytest -q

## The everyday loop: every test not marked `slow` (about 2 minutes on 2 cores).
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	# mypy ([tool.mypy] in pyproject.toml): strict for dkt.common and dkt.proto, mypy's
	# default (non-strict) for the rest (dkt.server, dkt.client, dkt.cli, dkt.flower).
	# mypy cannot follow the editable install's package-dir mapping (dkt.common -> common/
	# ...), so it reads the packages by module name through a tree of links to the folders
	# in $(VENV)/mypy-path; its messages name the files by their paths in this repository.
	rm -rf $(VENV)/mypy-path && mkdir -p $(VENV)/mypy-path/dkt
	for entry in dkt/*; do ln -s "$(CURDIR)/$$entry" $(VENV)/mypy-path/dkt/; done
	for pkg in common proto server client; do ln -s "$(CURDIR)/$$pkg" $(VENV)/mypy-path/dkt/; done
	MYPYPATH=$(VENV)/mypy-path $(VENV)/bin/mypy -p dkt \
		> $(VENV)/mypy.out; status=$$?; \
		sed -E 's#^$(VENV)/mypy-path/dkt/(common|proto|server|client)/#\1/#; s#^$(VENV)/mypy-path/##' \
		$(VENV)/mypy.out; exit $$status

bench: $(STAMP)
	$(PY) benchmarks/step_time.py

## Default `dkt simulate` with torch's default threads vs DKT's share, idle and loaded.
bench-threads: $(STAMP)
	$(PY) benchmarks/threads.py

## The relay: publish/fetch of 2 MB sets against their floors (gRPC echo; echo + fsync;
## the same with SHA-256; on grpc.aio), the store's commits with 1 and 32 writers, then
## 32 simulated agents publishing and fetching for 15 s (p50/p95/p99, errors).
bench-relay: $(STAMP)
	$(PY) benchmarks/relay_throughput.py
	$(PY) benchmarks/store_commits.py
	$(PY) benchmarks/relay_scale.py

## Images/s of one agent's training against a plain PyTorch loop (CPU; --device cuda).
bench-throughput: $(STAMP)
	$(PY) benchmarks/throughput.py

## dkt simulate with 2..32 agents: time per agent must stay flat.
bench-scale: $(STAMP)
	$(PY) benchmarks/scale.py

## dkt run (the worker; and --fresh-process) against dkt simulate, with where the time goes.
bench-run: $(STAMP)
	$(PY) benchmarks/run_overhead.py --also-fresh

## Peak memory per agent: dkt run's agent workers, dkt simulate, and its Flower engine
## where installed (4 and 8 agents); how many agents fit in 24 GB and 128 GB.
bench-memory: $(STAMP)
	$(PY) benchmarks/memory.py

clean:
	rm -rf $(VENV) runs .pytest_cache
