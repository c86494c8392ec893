#!/usr/bin/env bash
# One call of the device tool does every GPU check:
#   cp ../shared/datasets/cifar10-train-jpeg.tar.gz .carry/    (git-ignored; name .carry in `carry`)
#   run(command="bash benchmarks/gpu.sh", carry=[".carry"])
# It decodes the archive once into the cache, prints the benchmark table (eager, then torch.compile), trains the 20-epoch seed
# recipe from cached data and prints wall time, time to 82.55 % validation, images/s and MFU.
# On a CPU it runs too (DATA=... TRAIN_ARGS="--epochs 1" BENCH_ARGS="--steps 2 --repeats 1").
set -euo pipefail
export PYTHONPATH=src PYTHONUNBUFFERED=1 ALEXNET_CIFAR10_CACHE=${ALEXNET_CIFAR10_CACHE:-/tmp/alexnet-cache}
DATA=${DATA:-.carry/cifar10-train-jpeg.tar.gz}
OUT=${OUT:-/tmp/gpu-out}
PRECISION=${PRECISION:-bf16}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
$PY -m alexnet_cifar10 data info --data "$DATA" ${DATA_ARGS:-}
$PY -m alexnet_cifar10 benchmark --data "$DATA" --precision "$PRECISION" --json "$OUT/benchmark.json" --steps 200 \
  ${DATA_ARGS:-} ${BENCH_ARGS:-}
# the same step under torch.compile (the baseline is the same as above, so it is skipped here)
$PY -m alexnet_cifar10 benchmark --data "$DATA" --precision "$PRECISION" --json "$OUT/benchmark-compiled.json" \
  --steps 200 --compile --no-seed-style ${DATA_ARGS:-} ${BENCH_ARGS:-}
rm -rf /tmp/gpu-seed-run
start=$(date +%s.%N)
$PY -m alexnet_cifar10 train --data "$DATA" --precision "$PRECISION" --out /tmp/gpu-seed-run --no-progress \
  ${DATA_ARGS:-} ${TRAIN_ARGS:-}
end=$(date +%s.%N)
$PY - "$start" "$end" "$OUT/benchmark.json" <<'PY'
import json, sys
start, end, bench = float(sys.argv[1]), float(sys.argv[2]), json.load(open(sys.argv[3]))
rows = [json.loads(line) for line in open("/tmp/gpu-seed-run/metrics.jsonl")]
elapsed, reached = 0.0, None
for r in rows:
    elapsed += r["seconds"]
    if reached is None and r["val_acc"] is not None and r["val_acc"] >= 0.8255:
        reached = elapsed
train_s = sum(r["seconds"] for r in rows)
ips = sum(r["images_per_s"] * r["seconds"] for r in rows) / train_s
mfu = ips * bench["train_flops_per_image"] / bench["matmul_flops_per_s"]
print(f"seed recipe: {len(rows)} epochs, wall {end - start:.1f} s (process), training {train_s:.1f} s, "
      f"val acc {100 * rows[-1]['val_acc']:.2f}% at the last epoch, "
      f"time to 82.55% val: {'not reached' if reached is None else f'{reached:.1f} s'}, "
      f"{ips:.0f} images/s, MFU {100 * mfu:.1f}%")
PY
tar czf "$OUT/seed-run.tar.gz" --exclude='*.pt' -C /tmp gpu-seed-run
