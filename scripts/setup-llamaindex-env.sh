#!/usr/bin/env bash
# Create/refresh the LlamaIndex client's own virtual environment (.venv-llamaindex).
#
# Why a separate venv: LlamaIndex's OpenAI packages pin `openai<3`, while the gateway's
# .venv tests openai 3.x. tests/integration/test_llamaindex.py runs tests/llamaindex_checks.py
# with this venv's python against the live gateway. Idempotent: skipped when the requirement
# set below (and this script's python) has not changed.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LLAMAINDEX_VENV:-$REPO/.venv-llamaindex}"
PYTHON="${PYTHON:-python3}"
export PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1

# Pinned: the checks script relies on OpenAILike's knobs (is_function_calling_model,
# should_use_structured_outputs) as they are in this release.
REQUIREMENTS=(
  "llama-index-llms-openai-like==0.8.1"
  "pydantic>=2.7,<3"
)

started=$(date +%s)
want="$(printf '%s\n' "${REQUIREMENTS[@]}" "python=$("$PYTHON" -c 'import sys; print(sys.version_info[:2])')" \
  | sha256sum | cut -d' ' -f1)"
marker="$VENV/.ir-gateway-setup"
if [[ -x "$VENV/bin/python" && -f "$marker" && "$(cat "$marker")" == "$want" ]]; then
  echo "setup-llamaindex-env: $VENV is up to date"
  exit 0
fi
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q -U pip 2>&1 | { grep -v 'is ignored: it is neither' || true; }
"$VENV/bin/python" -m pip install -q "${REQUIREMENTS[@]}" 2>&1 \
  | { grep -v 'is ignored: it is neither' || true; }
# Fail here, not in the middle of a test run, if the install is unusable.
"$VENV/bin/python" -c 'import llama_index.llms.openai_like, openai; print("setup-llamaindex-env: openai", openai.__version__)'
echo "$want" > "$marker"
echo "setup-llamaindex-env: $VENV ready in $(( $(date +%s) - started ))s"
