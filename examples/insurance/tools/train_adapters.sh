#!/usr/bin/env bash
# Trains the example project's three domain adapters with loradex's defaults and exports them to
# examples/insurance/adapters/<domain>/ (plain PEFT + manifest), where `make demo` imports them from.
# About 5 minutes per adapter on 2 CPU cores. Run from anywhere: bash examples/insurance/tools/train_adapters.sh
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
ldx="${LDX:-$here/../../.venv/bin/loradex}"
mkdir -p "$here/.loradex"
for domain in claims policy billing; do
  "$ldx" train "$domain" --data "$here/train/$domain.jsonl" -p "$here" --activate --json > "$here/.loradex/train-$domain.json" \
    || { echo "training $domain failed" >&2; exit 1; }
  rm -rf "$here/adapters/$domain"
  "$ldx" adapters export "$domain" "$here/adapters/$domain" -p "$here"
done
