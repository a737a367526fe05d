#!/usr/bin/env bash
# The one GPU check: build the extension for the GPU present, run the GPU tests, the optimizer
# trajectories on CUDA tensors, the >2^31-element case and the benchmark, all logs and results
# under OUT_DIR. Needs no package registry (the GPU image has torch, triton, nvcc); finishes
# within 10 minutes on an H100 (a deadline caps every phase; the benchmark gets what is left).
#
#   bash bench/gpu_check.sh OUT_DIR [--dry-run]
#
# --dry-run checks the arguments and prints every phase's command without running anything.
set -uo pipefail

usage() { echo "usage: bash bench/gpu_check.sh OUT_DIR [--dry-run]" >&2; }

OUT="" DRY=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "error: unknown option $arg" >&2; usage; exit 2 ;;
    *)
      if [ -n "$OUT" ]; then echo "error: more than one OUT_DIR ($OUT, $arg)" >&2; usage; exit 2; fi
      OUT="$arg" ;;
  esac
done
if [ -z "$OUT" ]; then
  echo "error: OUT_DIR is missing: give the folder for the logs and results" >&2; usage; exit 2
fi
if [ -e "$OUT" ] && [ ! -d "$OUT" ]; then echo "error: OUT_DIR $OUT exists and is not a folder" >&2; exit 2; fi
parent="$OUT"; while [ ! -e "$parent" ]; do parent=$(dirname "$parent"); done
if [ ! -w "$parent" ]; then echo "error: OUT_DIR $OUT is not writable ($parent is not)" >&2; exit 2; fi

case "$OUT" in /*) ;; *) OUT="$PWD/$OUT" ;; esac
cd "$(dirname "$0")/.." || exit 2
BUDGET=570  # seconds for everything; the phases below get at most their own limit of what is left
START=$SECONDS

# name | limit (s) | command (run with bash -c in the repository root)
PHASES=(
  "info|60|nvidia-smi; python -m flatmin_kernels info"
  "build|300|TORCH_CUDA_ARCH_LIST=\$(python -c 'import torch; print(\"%d.%d\" % torch.cuda.get_device_capability())') MAX_JOBS=\$(nproc) python -m pip install --no-deps --no-build-isolation -e . && python -m flatmin_kernels info"
  "gpu-tests|150|python -m pytest -m gpu -q --ignore=tests/bench/test_large_tensor.py"
  "trajectories-cuda|150|FLATMIN_TEST_DEVICE=cuda python -m pytest tests/optim -q"
  "large-tensor|90|python -m pytest -m gpu -q tests/bench/test_large_tensor.py"
  "bench|600|python -m flatmin_kernels bench --device cuda --suite all --params gpt2-small gpt2-medium --out $OUT/bench"
)

if [ "$DRY" = 1 ]; then
  echo "dry run: OUT_DIR $OUT; budget ${BUDGET} s; phases:"
  n=0
  for phase in "${PHASES[@]}"; do
    IFS='|' read -r name limit cmd <<< "$phase"
    n=$((n + 1))
    printf '%02d %-18s limit %3s s  log %s/%02d-%s.log\n    %s\n' "$n" "$name" "$limit" "$OUT" "$n" "$name" "$cmd"
  done
  exit 0
fi

mkdir -p "$OUT" || exit 2
: > "$OUT/summary.txt"
n=0
for phase in "${PHASES[@]}"; do
  IFS='|' read -r name limit cmd <<< "$phase"
  n=$((n + 1))
  log=$(printf '%s/%02d-%s.log' "$OUT" "$n" "$name")
  left=$((BUDGET - (SECONDS - START)))
  [ "$limit" -gt "$left" ] && limit=$left
  if [ "$limit" -lt 10 ]; then
    echo "$name: not run, the ${BUDGET} s budget is spent" | tee -a "$OUT/summary.txt"
    continue
  fi
  echo "== $name (at most ${limit} s): $cmd"
  t0=$SECONDS
  timeout --signal=INT --kill-after=15 "$limit" bash -c "$cmd" > "$log" 2>&1
  rc=$?
  status="ok"
  [ $rc -ne 0 ] && status="FAILED (exit $rc)"
  [ $rc -eq 124 ] && status="TIMED OUT after ${limit} s"
  echo "$name: $status in $((SECONDS - t0)) s, log $log" | tee -a "$OUT/summary.txt"
  tail -n 3 "$log"
done

gpu=$(python -c "import torch, re; print(re.sub(r'[^A-Za-z0-9]+', '-', torch.cuda.get_device_name()).strip('-').lower())" 2>/dev/null || echo gpu)
echo
echo "results are in $OUT (summary.txt, one log per phase, bench/bench.json and the PNGs)."
echo "copy them into the repository and commit them:  mkdir -p bench/results/$gpu && cp -r $OUT/* bench/results/$gpu/"
