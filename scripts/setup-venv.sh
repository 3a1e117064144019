#!/usr/bin/env bash
# Create/refresh the gateway's own virtual environment (.venv): the gateway plus what its
# tests and benchmarks need, at the versions in constraints.txt (what CI was green with).
# Idempotent: skipped when neither pyproject.toml nor constraints.txt has changed.
#   --refresh-constraints  install the newest versions pyproject.toml allows, then
#                          rewrite constraints.txt from what got installed
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${GATEWAY_VENV:-$REPO/.venv}"
PYTHON="${PYTHON:-python3}"
EXTRAS="${GATEWAY_EXTRAS:-test,bench}"
export PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1

CONSTRAINTS="$REPO/constraints.txt"
refresh=0
[[ "${1:-}" == "--refresh-constraints" ]] && refresh=1

started=$(date +%s)
want="$( (cat "$REPO/pyproject.toml" "$CONSTRAINTS"; echo "extras=$EXTRAS") | sha256sum | cut -d' ' -f1)"
marker="$VENV/.ir-gateway-setup"
if [[ $refresh == 0 && -x "$VENV/bin/python" && -f "$marker" && "$(cat "$marker")" == "$want" ]]; then
  echo "setup-venv: $VENV is up to date"
  exit 0
fi
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q -U pip 2>&1 | { grep -v 'is ignored: it is neither' || true; }
constrain=(-c "$CONSTRAINTS")
[[ $refresh == 1 ]] && constrain=(-U)
"$VENV/bin/python" -m pip install -q "${constrain[@]}" -e "$REPO[$EXTRAS]" 2>&1 \
  | { grep -v 'is ignored: it is neither' || true; }
if [[ $refresh == 1 ]]; then
  head -2 "$CONSTRAINTS" > "$CONSTRAINTS.new"
  "$VENV/bin/python" -m pip freeze --exclude-editable 2>/dev/null >> "$CONSTRAINTS.new"
  mv "$CONSTRAINTS.new" "$CONSTRAINTS"
  echo "setup-venv: constraints.txt rewritten; run make test before committing it"
  want="$( (cat "$REPO/pyproject.toml" "$CONSTRAINTS"; echo "extras=$EXTRAS") | sha256sum | cut -d' ' -f1)"
fi
echo "$want" > "$marker"
echo "setup-venv: $VENV ready in $(( $(date +%s) - started ))s"
