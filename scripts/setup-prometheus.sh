#!/usr/bin/env bash
# The dashboard test (tests/test_dashboard_prometheus.py) starts a real Prometheus server that
# scrapes a gateway; install Debian's if it is missing.
set -euo pipefail
if command -v prometheus >/dev/null 2>&1; then
  echo "setup-prometheus: $(prometheus --version 2>&1 | head -1)"
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; else SUDO=; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# No recommends: the package recommends node exporters the test does not need.
$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
# The package starts a system instance on 9090; the test starts its own on a free port.
($SUDO systemctl disable --now prometheus 2>/dev/null || $SUDO service prometheus stop 2>/dev/null) || true
echo "setup-prometheus: installed $(prometheus --version 2>&1 | head -1)"
