#!/usr/bin/env bash
# The shared-limiter tests start a real redis-server; install Debian's if it is missing.
set -euo pipefail
if command -v redis-server >/dev/null 2>&1; then
  echo "setup-redis: $(redis-server --version | cut -d' ' -f1-3)"
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; else SUDO=; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq redis-server >/dev/null
# The package starts a system instance on 6379; the tests start their own on free ports.
($SUDO systemctl disable --now redis-server 2>/dev/null || $SUDO service redis-server stop 2>/dev/null) || true
echo "setup-redis: installed $(redis-server --version | cut -d' ' -f1-3)"
