#!/usr/bin/env bash
# `make test`: set up what the tests need, then run them all, printing each phase's time.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
total_started=$(date +%s)

phase() {
  local name=$1; shift
  local started=$(date +%s)
  echo "=== $name"
  "$@"
  echo "=== $name: $(( $(date +%s) - started ))s"
}

phase "setup: gateway venv" scripts/setup-venv.sh
phase "setup: redis-server" scripts/setup-redis.sh
phase "setup: prometheus" scripts/setup-prometheus.sh
phase "setup: vLLM (CPU) venv" scripts/setup-vllm-env.sh
phase "setup: LlamaIndex venv (openai<3)" scripts/setup-client-env.sh llamaindex
phase "setup: schemathesis venv" scripts/setup-client-env.sh schemathesis
phase "build: tiny test models" .venv/bin/python -c "
from gateway.dev.vllm_process import build_dev_model
print(build_dev_model(trained=True)); print(build_dev_model(trained=False))"
phase "lint: ruff" .venv/bin/ruff check gateway tests bench deploy
# A whole-run bound far above the ~7 min the tests take: a hang pytest-timeout cannot
# interrupt still ends with pytest's summary (SIGINT), well inside CI's own limit.
phase "tests" timeout --signal=INT --kill-after=60 2700 .venv/bin/python -m pytest -q -rs --durations=15 "$@"
echo "=== all phases: $(( $(date +%s) - total_started ))s"
