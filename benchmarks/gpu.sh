#!/usr/bin/env bash
# Measure this machine's GPU: the benchmark table (eager, then torch.compile) and a 20-epoch training run of a
# recipe, with its wall time, time to 82.55 % validation, images/s and MFU.
#
#   bash benchmarks/gpu.sh                              # data in ./data (downloaded when absent), recipe seed
#   DATA=path/to/cifar10 RECIPE=best OUT=runs/gpu bash benchmarks/gpu.sh
#
# It runs on a CPU too, e.g. as a quick check: TRAIN_ARGS="--epochs 1" BENCH_ARGS="--steps 2 --repeats 1".
set -euo pipefail
DATA=${DATA:-data}
RECIPE=${RECIPE:-seed}
OUT=${OUT:-runs/gpu}
PRECISION=${PRECISION:-auto}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
$PY -m alexnet_cifar10 data info --data "$DATA"  # decodes once into the cache that the runs below read
$PY -m alexnet_cifar10 benchmark --data "$DATA" --precision "$PRECISION" --json "$OUT/benchmark.json" --steps 200 \
  ${BENCH_ARGS:-}
# the same step under torch.compile (the seed-style baseline is the same as above, so it is skipped here)
$PY -m alexnet_cifar10 benchmark --data "$DATA" --precision "$PRECISION" --json "$OUT/benchmark-compiled.json" \
  --steps 200 --compile --no-seed-style ${BENCH_ARGS:-}
run="$OUT/$RECIPE"
rm -rf "$run"
start=$(date +%s.%N)
$PY -m alexnet_cifar10 train --recipe "$RECIPE" --data "$DATA" --precision "$PRECISION" --out "$run" --no-progress \
  ${TRAIN_ARGS:-}
end=$(date +%s.%N)
$PY - "$start" "$end" "$OUT/benchmark.json" "$run/metrics.jsonl" "$RECIPE" <<'PY'
import json, sys
start, end, bench = float(sys.argv[1]), float(sys.argv[2]), json.load(open(sys.argv[3]))
rows = [json.loads(line) for line in open(sys.argv[4])]
elapsed, reached = 0.0, None
for r in rows:
    elapsed += r["seconds"]
    if reached is None and r["val_acc"] is not None and r["val_acc"] >= 0.8255:
        reached = elapsed
train_s = sum(r["seconds"] for r in rows)
ips = sum(r["images_per_s"] * r["seconds"] for r in rows) / train_s
mfu = ips * bench["train_flops_per_image"] / bench["matmul_flops_per_s"]
print(f"{sys.argv[5]} recipe: {len(rows)} epochs, wall {end - start:.1f} s (process), training {train_s:.1f} s, "
      f"val acc {100 * rows[-1]['val_acc']:.2f}% at the last epoch, "
      f"time to 82.55% val: {'not reached' if reached is None else f'{reached:.1f} s'}, "
      f"{ips:.0f} images/s, MFU {100 * mfu:.1f}%")
PY
