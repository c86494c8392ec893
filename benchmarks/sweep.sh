#!/usr/bin/env bash
# One device call: decode the carried archive once, then run every entry of SPEC (a JSON list, see
# sweep.py) as its own process (the GPU is launch-bound at this size, so a dozen runs share it well);
# curves and run folders (no weights) come back in $OUT/sweep.tar.gz.
#   run(command="SWEEP_SECONDS=300 bash benchmarks/sweep.sh benchmarks/sweep5.json", carry=[".carry"])
# Specs pin every setting (model or arch, optimizer, lr ...), so a rerun repeats the same runs even after
# the named recipes move on.
set -u
SPEC=${1:?usage: bash benchmarks/sweep.sh SPEC.json}
export PYTHONPATH=src PYTHONUNBUFFERED=1 ALEXNET_CIFAR10_CACHE=${ALEXNET_CIFAR10_CACHE:-/tmp/cache}
DATA=${DATA:-.carry/cifar10-train-jpeg.tar.gz}
PY=${PYTHON:-python3}
N=$($PY -c "import json,sys;print(len(json.load(open(sys.argv[1]))))" "$SPEC")
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name --format=csv,noheader
$PY -m alexnet_cifar10 data info --data "$DATA" --val-size 0 | tail -3  # decode once into the cache
rm -rf /tmp/sw && mkdir -p /tmp/sw/runs "$OUT"
for i in $(seq 0 $((N - 1))); do
  timeout "${SWEEP_SECONDS:-300}" $PY benchmarks/sweep.py "$SPEC" --shard $i/$N --data "$DATA" \
    --out /tmp/sw/$i.json --keep /tmp/sw/runs ${SWEEP_ARGS:-} > /tmp/sw/$i.log 2>&1 &
done
wait
grep -h -E 'val@|Error' /tmp/sw/*.log
for d in /tmp/sw/runs/*/; do [ -d "$d" ] || continue; echo "$(basename "$d"): $(cat "$d/metrics.jsonl" 2>/dev/null | wc -l) epochs"; done
tar czf "$OUT/sweep.tar.gz" -C /tmp/sw --exclude="*.pt" --exclude="*.png" --exclude="*.html" --exclude="*.safetensors" .
