#!/usr/bin/env bash
# Trains the example project's three domain adapters with loradex's defaults (retrieval-aware: sources from the
# project's index in every prompt) and exports them to examples/insurance/adapters/<domain>/ (plain PEFT +
# manifest), where `make demo` imports them from. Ingest the project first. The shipped claims and billing
# adapters ran the same loop on a lent GPU (`loradex train --prepare`, then `python -m loradex.adapters.remote`),
# about 30 s each there, but with prompts cut to 1,024 tokens (loradex now refuses an over-long example instead);
# the shipped claims adapter was retrained on whole prompts (max_seq_len 2048) on 2 CPU cores, and the policy
# adapter with LoRA on every linear layer at rank 16 (batch 2, which fits 24 GB: batch 4 ran out of memory),
# 147 steps in 48 minutes there, the best held-out loss after epoch 2.
# Run from anywhere: bash examples/insurance/tools/train_adapters.sh
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
ldx="${LDX:-$here/../../.venv/bin/loradex}"
mkdir -p "$here/.loradex"
for domain in claims policy billing; do
  extra=()
  if [ "$domain" = policy ]; then
    extra=(--rank 16 --alpha 32 --batch-size 2 --target-modules q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj)
  fi
  "$ldx" train "$domain" --data "$here/train/$domain.jsonl" -p "$here" "${extra[@]}" --activate --json \
      > "$here/.loradex/train-$domain.json" \
    || { echo "training $domain failed" >&2; exit 1; }
  rm -rf "$here/adapters/$domain"
  "$ldx" adapters export "$domain" "$here/adapters/$domain" -p "$here"
done
