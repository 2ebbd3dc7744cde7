#!/usr/bin/env bash
# One-shot GPU measurement for a session lent an H100/H200 (issue #6): where a step's time goes, then speed
# per preset at batch 1 and 4, SD 2.1-base architecture with random weights, 512², bf16. Results land in
# $OUT (the device tool brings them back) as the harnesses' JSON + Markdown. About 6-8 min on an H100.
#
# Prepare here (once; the wheels are ignored by git and carried): see benchmarks/README.md › GPU session.
# Run:  device run --carry .whl  'bash benchmarks/gpu/session.sh'
set -uo pipefail
OUT=${OUT:-/tmp/upzir-gpu}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:${PYTHONPATH:-} || exit 1
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -m benchmarks.profile_step --arch sd21 --size 512 --device cuda --dtype bf16 --batch 1,4 \
  --steps 4 --warmup 2 --out "$OUT/profile-sd21-512-gpu" 2>&1 | tee "$OUT/profile.log"
python3 -m benchmarks.speed --arch sd21 --size 512 --presets fast,balanced --device cuda --dtype bf16 \
  --concurrent 1 --batch 4 --out "$OUT/speed-sd21-512-gpu" 2>&1 | tee "$OUT/speed.log"
python3 -m benchmarks.speed --arch sd21 --size 512 --presets balanced --set pcdm_fused=true --device cuda \
  --dtype bf16 --concurrent 1 --batch 4 --out "$OUT/speed-sd21-512-gpu-fused" 2>&1 | tee "$OUT/speed-fused.log"
