#!/usr/bin/env bash
# Create/refresh the gateway's own virtual environment (.venv): the gateway plus what its
# tests and benchmarks need. Idempotent: skipped when pyproject.toml has not changed.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${GATEWAY_VENV:-$REPO/.venv}"
PYTHON="${PYTHON:-python3}"
EXTRAS="${GATEWAY_EXTRAS:-test,bench}"
export PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1

started=$(date +%s)
want="$( (cat "$REPO/pyproject.toml"; echo "extras=$EXTRAS") | sha256sum | cut -d' ' -f1)"
marker="$VENV/.ir-gateway-setup"
if [[ -x "$VENV/bin/python" && -f "$marker" && "$(cat "$marker")" == "$want" ]]; then
  echo "setup-venv: $VENV is up to date"
  exit 0
fi
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q -U pip 2>&1 | { grep -v 'is ignored: it is neither' || true; }
"$VENV/bin/python" -m pip install -q -e "$REPO[$EXTRAS]" 2>&1 \
  | { grep -v 'is ignored: it is neither' || true; }
echo "$want" > "$marker"
echo "setup-venv: $VENV ready in $(( $(date +%s) - started ))s"
