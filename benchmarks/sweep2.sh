#!/usr/bin/env bash
# One device call: decode the carried archive once, then run every entry of sweep2.json as its
# own process (the GPU is launch-bound at this size, so 12 runs share it well); results in $OUT.
set -u
export PYTHONPATH=src PYTHONUNBUFFERED=1 ALEXNET_CIFAR10_CACHE=/tmp/cache
DATA=.carry/cifar10-train-jpeg.tar.gz
N=$(python3 -c "import json;print(len(json.load(open('benchmarks/sweep2.json'))))")
nvidia-smi --query-gpu=name --format=csv,noheader
python3 -m alexnet_cifar10 data info --data $DATA | tail -3
mkdir -p /tmp/sw/runs
for i in $(seq 0 $((N - 1))); do
  timeout "${SWEEP_SECONDS:-300}" python3 benchmarks/sweep.py benchmarks/sweep2.json --shard $i/$N --data $DATA \
    --out /tmp/sw/$i.json --keep /tmp/sw/runs > /tmp/sw/$i.log 2>&1 &
done
wait
grep -h -E 'val@|Error' /tmp/sw/*.log
for d in /tmp/sw/runs/*/; do echo "$(basename $d): $(wc -l < $d/metrics.jsonl) epochs"; done
tar czf "$OUT/sweep2.tar.gz" -C /tmp/sw .
