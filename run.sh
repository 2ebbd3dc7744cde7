#!/usr/bin/env bash
# The main job: set up, then run the restoration service locally (Redis + one worker + the API).
#
#   ./run.sh                                   # production prior (SD 2.1-base from the HF cache/hub), serve
#   ./run.sh --model ../shared/weights/mini-ldm  # any local diffusers LDM folder instead
#   ./run.sh --model DIR --demo photo.png        # degrade a crop of a clean photo, restore it through the API,
#                                                # write out/<name>-before-after.png, print PSNR/SSIM, exit
#
# Options: --model ID_OR_PATH (UPZIR_MODEL) · --device cuda|cpu|auto (UPZIR_DEVICE) · --preset NAME
# (UPZIR_PRESET) · --port N (UPZIR_PORT) · --demo IMAGE · --degrade KIND (default lowlight+noise; none: send
# the photo as it is) · --crop N (default 128; 0: whole photo) · --set FIELD=VALUE (a POST /restore form
# field for the demo job, e.g. --set seed=1) · --no-setup (skip installs)
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
demo="" setup=1 demo_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --model) export UPZIR_MODEL="$2"; shift 2 ;;
    --device) export UPZIR_DEVICE="$2"; shift 2 ;;
    --preset) export UPZIR_PRESET="$2"; shift 2 ;;
    --port) export UPZIR_PORT="$2"; shift 2 ;;
    --demo) demo="$2"; shift 2 ;;
    --set) demo_args+=(--set "$2"); shift 2 ;;
    --degrade) demo_args+=(--degrade "$2"); shift 2 ;;
    --crop) demo_args+=(--crop "$2"); shift 2 ;;
    --no-setup) setup=0; shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ -n "$demo" ] && [ ! -f "$demo" ]; then echo "run.sh: --demo $demo: no such file" >&2; exit 2; fi
# serving needs only the runtime packages and Redis; the tests' extras are .ci/run's business
[ "$setup" = 1 ] && UPZIR_EXTRAS=${UPZIR_EXTRAS:-} bash scripts/setup.sh

port=${UPZIR_PORT:-8000}
mkdir -p out
pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM
# /readyz is the API pod's readiness (Redis answers); whether a worker has its model loaded is its
# `accepting_work` field
worker_ready() { curl -fsS "http://127.0.0.1:${port}/readyz" 2>/dev/null | grep -q '"accepting_work":true'; }

echo "== worker (model ${UPZIR_MODEL:-default}) → out/worker.log"
$PY -m restorer.cli worker >out/worker.log 2>&1 & pids+=($!)
echo "== api on http://127.0.0.1:${port}/ → out/api.log"
UPZIR_PORT=$port $PY -m restorer.cli serve >out/api.log 2>&1 & pids+=($!)

echo "== waiting for a worker with its model loaded (/readyz: accepting_work)"
for _ in $(seq 600); do
  for p in "${pids[@]}"; do
    if ! kill -0 "$p" 2>/dev/null; then echo "run.sh: a process exited; last log lines:" >&2; tail -n 5 out/worker.log out/api.log >&2; exit 1; fi
  done
  worker_ready && break
  sleep 1
done
worker_ready || { echo "run.sh: no worker ready after 10 min" >&2; exit 1; }
echo "ready: web page http://127.0.0.1:${port}/ · API docs http://127.0.0.1:${port}/docs · metrics /metrics"

if [ -n "$demo" ]; then
  $PY -m service.demo "$demo" --url "http://127.0.0.1:${port}" "${demo_args[@]}"
  exit 0
fi
wait -n "${pids[@]}"
