#!/usr/bin/env bash
# The GPU check (issue 13): a bit-exactness subset and the benchmarks, in under 8 minutes.
#
#   bash scripts/gpu_check.sh            # on the device machine, or here (then qjax runs on the CPU)
#
# qjax runs on JAX's default device (the GPU when the installed jaxlib has one); torch, the oracle,
# always runs on the CPU.  Steps, each capped in time so the whole stays under 8 minutes:
#   1. which device JAX sees (the numbers below are labelled with it);
#   2. scripts/fuzz.py, >= 10^6 random conv/linear outputs per engine (fbgemm, qnnpack, onednn, x86),
#      0 mismatches required;
#   3. torchvision resnet18 and mobilenet_v2 (random weights, calibrated, converted on fbgemm and x86):
#      0 mismatches required first, then torch (CPU) vs qjax (default device) timings at batch 1 and 16;
#   4. scripts/bench_conv.py's layers.
# Logs go to $OUT (the device tool's output folder) or /tmp/gpu_check.  Exit status 1 on any mismatch.
# PYTHON picks the interpreter (default: .venv/bin/python, else python3); a wheel folder unpacked into
# /tmp/site (see the device tool's notes) is put on PYTHONPATH.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if [ -d /tmp/site ]; then export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}; fi
export PYTHONUNBUFFERED=1
LOG=${OUT:-/tmp/gpu_check}
mkdir -p "$LOG"
FUZZ_OUTPUTS=${FUZZ_OUTPUTS:-1000000}
status=0
start=$(date +%s)

"$PY" - <<'EOF' 2>&1 | tee "$LOG/device.txt"
import os, platform, jax, torch
print(f"jax {jax.__version__} devices {jax.devices()} | torch {torch.__version__} threads {torch.get_num_threads()} "
      f"| {platform.processor() or platform.machine()} cpus {os.cpu_count()}")
EOF

for engine in fbgemm qnnpack onednn x86; do
  # 75 s per engine at most; a run that stops early still reports what it compared
  timeout 90 "$PY" scripts/fuzz.py --engine "$engine" --outputs "$FUZZ_OUTPUTS" --seed 13 --max-minutes 1.25 \
    > "$LOG/fuzz_$engine.txt" 2>&1
  rc=$?
  tail -n 1 "$LOG/fuzz_$engine.txt"
  if [ "$rc" -ne 0 ]; then echo "fuzz $engine: exit $rc"; status=1; fi
done

timeout 240 "$PY" scripts/bench_torchvision.py --models resnet18,mobilenet_v2 --engines fbgemm,x86 --batches 16,1 \
  --repeat 5 --markdown "$LOG/bench_torchvision.md" 2>&1 | tee "$LOG/bench_torchvision.txt"
rc=${PIPESTATUS[0]}
if [ "$rc" -ne 0 ]; then echo "bench_torchvision: exit $rc"; status=1; fi

left=$(( 470 - ($(date +%s) - start) ))
if [ "$left" -gt 30 ]; then
  timeout "$left" "$PY" scripts/bench_conv.py --repeat 7 --markdown 2>&1 | tee "$LOG/bench_conv.md"
else
  echo "bench_conv skipped: ${left}s left of the 8-minute budget"
fi
echo "gpu_check: $(( $(date +%s) - start )) s, status $status"
exit $status
