#!/usr/bin/env bash
# Create/refresh a client tool's own virtual environment (.venv-<tool>), for tools whose
# pins clash with the gateway's .venv:
#   llamaindex    LlamaIndex's OpenAI packages pin `openai<3`, while the gateway's .venv
#                 tests openai 3.x. tests/integration/test_llamaindex.py runs
#                 tests/llamaindex_checks.py with this venv's python against the live gateway.
#   schemathesis  schemathesis pins jsonschema-rs below the release the gateway validates
#                 with. tests/test_api_fuzz.py runs its CLI against a gateway.
# Idempotent: skipped when the tool's requirement set (and the python) has not changed.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOL="${1:?usage: scripts/setup-client-env.sh llamaindex|schemathesis}"
PYTHON="${PYTHON:-python3}"
export PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1

case "$TOOL" in
  llamaindex)
    # Pinned: the checks script relies on OpenAILike's knobs (is_function_calling_model,
    # should_use_structured_outputs) as they are in this release.
    REQUIREMENTS=("llama-index-llms-openai-like==0.8.1" "pydantic>=2.7,<3")
    CHECK='import llama_index.llms.openai_like, openai; print("openai", openai.__version__)' ;;
  schemathesis)
    # Pinned with what generates the requests: the fuzz test's seed only reproduces the
    # same requests with the same releases.
    REQUIREMENTS=("schemathesis==4.32.5" "hypothesis==6.170.17" "hypothesis-graphql==0.13.5"
                  "jsonschema_rs==0.60.3")
    CHECK='import schemathesis; print("schemathesis", schemathesis.__version__)' ;;
  *)
    echo "setup-client-env: no such tool: $TOOL (llamaindex, schemathesis)" >&2
    exit 2 ;;
esac
VENV="$REPO/.venv-$TOOL"

started=$(date +%s)
want="$(printf '%s\n' "${REQUIREMENTS[@]}" "python=$("$PYTHON" -c 'import sys; print(sys.version_info[:2])')" \
  | sha256sum | cut -d' ' -f1)"
marker="$VENV/.ir-gateway-setup"
if [[ -x "$VENV/bin/python" && -f "$marker" && "$(cat "$marker")" == "$want" ]]; then
  echo "setup-client-env: $VENV is up to date"
  exit 0
fi
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q -U pip 2>&1 | { grep -v 'is ignored: it is neither' || true; }
"$VENV/bin/python" -m pip install -q "${REQUIREMENTS[@]}" 2>&1 \
  | { grep -v 'is ignored: it is neither' || true; }
# Fail here, not in the middle of a test run, if the install is unusable.
"$VENV/bin/python" -c "$CHECK"
echo "$want" > "$marker"
echo "setup-client-env: $VENV ready in $(( $(date +%s) - started ))s"
