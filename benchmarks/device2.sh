#!/usr/bin/env bash
# The third device call of 2026-11-27: the seed and best recipes of that moment through the CLI, beside
# the best recipe's ablation sweep (benchmarks/sweep6.json), all at once on one GPU. Only a few files per
# call come back: the best run's are results/sweeps/sweep6-best-cli-h100/, the seed run's log line is
# results/sweeps/sweep6-seed-cli-h100.log.
#   run(command="bash benchmarks/device2.sh", carry=[".carry"], timeout_s=200)
set -u
export PYTHONPATH=src PYTHONUNBUFFERED=1 ALEXNET_CIFAR10_CACHE=/tmp/alexnet-cache
export OUT=${OUT:-/tmp/device-out} DATA=${DATA:-.carry/cifar10-train-jpeg.tar.gz}
PY=${PYTHON:-python3}
LIMIT=${LIMIT:-150}
mkdir -p "$OUT/runs"
$PY -m alexnet_cifar10 data info --data "$DATA" | tail -4
for recipe in seed best; do
  (timeout "$LIMIT" $PY -m alexnet_cifar10 train --recipe $recipe --data "$DATA" --out "$OUT/runs/$recipe" \
     --no-progress ${TRAIN_ARGS:-} > "$OUT/runs/$recipe.log" 2>&1
   echo "$recipe: exit $?"; tail -2 "$OUT/runs/$recipe.log") &
done
SWEEP_SECONDS=$LIMIT bash benchmarks/sweep.sh "${SPEC:-benchmarks/sweep6.json}" 2>&1 | grep -E 'val@|Error'
wait
rm -f "$OUT"/runs/*/*.pt "$OUT"/runs/*/*.safetensors
