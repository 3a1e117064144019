#!/usr/bin/env bash
# One command for a plain GPU machine (NVIDIA, CUDA driver for torch 2.13): vLLM with the same
# flags as the Modal deployment, bound to 127.0.0.1, and the gateway in front of it.
#
#   deploy/selfhost.sh --keys-file keys.json [--host 0.0.0.0] [--port 8080]
#
# First run: creates the gateway venv (.venv, scripts/setup-venv.sh) and a GPU vLLM venv
# (.venv-vllm-gpu, pinned vllm + flashinfer and FlashInfer's precompiled kernels), then starts
# both. Later runs start at once. Options are deploy/selfhost.py's (--help).
#
# Env: IRGW_SELFHOST_VLLM_PYTHON  use an existing GPU vLLM environment instead of .venv-vllm-gpu
#      VLLM_API_KEY      key between gateway and vLLM (default: a fresh random one per start)
#      IRGW_*            gateway settings (IRGW_KEYS_FILE, IRGW_REDIS_URL, ...)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"

"$REPO/scripts/setup-venv.sh" >&2  # the default extras: `make` then reuses this .venv

if [[ -z "${IRGW_SELFHOST_VLLM_PYTHON:-}" ]]; then
  VENV="$REPO/.venv-vllm-gpu"
  mapfile -t requirements < <("$REPO/.venv/bin/python" "$REPO/deploy/selfhost.py" --print-requirements)
  marker="$VENV/.ir-gateway-selfhost"
  want="${requirements[*]}"
  if [[ ! -x "$VENV/bin/python" || ! -f "$marker" || "$(cat "$marker")" != "$want" ]]; then
    echo "selfhost: installing ${want} into $VENV (several GB, once)" >&2
    [[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q -U pip
    "$VENV/bin/python" -m pip install -q "${requirements[@]}"
    # FlashInfer's precompiled kernels matching the installed flashinfer-python; without them
    # it compiles at start-up (needs nvcc) or FlashInfer stays off.
    "$VENV/bin/vllm" download-kernels
    echo "$want" > "$marker"
  fi
  export IRGW_SELFHOST_VLLM_PYTHON="$VENV/bin/python"
fi

exec "$REPO/.venv/bin/python" "$REPO/deploy/selfhost.py" "$@"
