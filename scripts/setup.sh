#!/usr/bin/env bash
# Install upzir and make sure Redis answers. Idempotent. UPZIR_EXTRAS=test (what .ci/run sets) adds the
# tests' packages and tools (promtool, Chromium); ./run.sh installs only what serving needs. Versions come
# from constraints.txt (scripts/lock.sh). Needs root (or sudo-less apt) only when a system tool is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
PY=${PYTHON:-python3}
EXTRAS=${UPZIR_EXTRAS:-}

echo "== python packages"
# torch/torchvision first, pinned: on the CI machine pip takes them from local disk.
$PY -m pip install -q -c constraints.txt torch==2.14.1 torchvision==0.29.1
$PY -m pip install -q -c constraints.txt -e ".${EXTRAS:+[$EXTRAS]}"

echo "== system tools"
apt_pkgs=()
{ command -v redis-server && command -v redis-cli; } >/dev/null || apt_pkgs+=(redis-server)
if [ "$EXTRAS" = test ]; then
  command -v promtool >/dev/null || apt_pkgs+=(prometheus)   # validates the Prometheus config and rules
  [ -x /usr/bin/chromium ] || apt_pkgs+=(chromium)          # the web page is tested in a real browser
fi
if [ ${#apt_pkgs[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${apt_pkgs[@]}" >/dev/null
  # Debian's prometheus package may start a server; only promtool is wanted
  (command -v systemctl >/dev/null && systemctl stop prometheus 2>/dev/null) || true
fi

echo "== redis"
REDIS_PORT=${UPZIR_REDIS_PORT:-6379}
if ! redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then
  redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no
  for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
fi
redis-cli -p "$REDIS_PORT" ping
