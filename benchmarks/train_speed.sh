#!/usr/bin/env bash
# Training time per 1k iterations on this machine: joint training of all 28k parameters on the shared FiveK pairs
# (512 px long side, batch 1, augmentation as the paper), 200 iterations, no validation in between.
# Usage: bash benchmarks/train_speed.sh [iterations]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
iters=${1:-200}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
t0=$(date +%s.%N)
retouch-batch train --pairs "$root/../shared/data/fivek-pairs" --init "$root/pipeline/weights/neurop-default.pt" \
  --iters "$iters" --eval-every "$iters" --trainable all --device cpu --out "$out" >/dev/null
t1=$(date +%s.%N)
python3 -c "import sys; t=float(sys.argv[1]); n=int(sys.argv[2]); print(f'{n} iterations in {t:.1f} s (incl. start-up): {1000*t/n:.0f} s per 1k iterations on CPU')" "$(echo "$t1 - $t0" | bc)" "$iters"
