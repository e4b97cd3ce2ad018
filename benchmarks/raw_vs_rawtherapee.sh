#!/usr/bin/env bash
# End to end on RAW: 8 DNGs (4 x Blackmagic 9 MP, 4 x tinydng 2 MP from ../shared/data/raw/good) to 16-bit TIFF,
# rawtherapee-cli (Debian package rawtherapee; neutral profile) against `retouch-batch run`, in one run.
# Usage: bash benchmarks/raw_vs_rawtherapee.sh [N]   (needs rawtherapee-cli on PATH and retouch-batch installed)
# With N: N 24 MP lossless-JPEG DNGs from benchmarks/large_dng.py (built from the Blackmagic DNG's mosaic) instead.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
shared="$here/../../shared/data/raw/good"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/in"
if [ $# -ge 1 ]; then
  python "$here/large_dng.py" "$work/in" --count "$1" >/dev/null
  rm "$work/in/manifest.csv"
else
  for i in 1 2 3 4; do
    cp "$shared/imageio_Blackmagic.dng" "$work/in/bm$i.dng"
    cp "$shared/tinydng_colorchart.dng" "$work/in/cc$i.dng"
  done
fi
sync
retouch-batch manifest "$work/in" -o "$work/m.csv" >/dev/null
t0=$(date +%s.%N)
mkdir -p "$work/rt"
rawtherapee-cli -q -t -b16 -Y -o "$work/rt" -c "$work/in" >/dev/null
t1=$(date +%s.%N)
echo "rawtherapee-cli -t -b16: $(echo "$t1 - $t0" | bc) s for $(ls "$work/in" | wc -l) DNGs ($(ls "$work/rt" | wc -l) TIFFs)"
for codec in none zstd; do
  summary=$(retouch-batch run "$work/m.csv" --out "$work/rb-$codec" --tiff-compression $codec --no-progress 2>/dev/null | tail -1)
  echo "retouch-batch run (--tiff-compression $codec): $summary"
done
# share of worker time per stage over the 8 images (the model = predict + bake + apply)
python - "$work/rb-none/ledger" <<'PY'
import json, sys
from jobs.ledger import read_ledger
stages = {}
for row in read_ledger(sys.argv[1]):
    for k, v in json.loads(row.timings).items():
        stages[k] = stages.get(k, 0.0) + v
total = sum(stages.values())
model = sum(stages.get(k, 0.0) for k in ("predict", "bake", "apply"))
print("worker time (uncompressed run): " + ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in stages.items())
      + f"; model {100 * model / total:.1f}% of {total:.2f} worker-seconds")
PY
