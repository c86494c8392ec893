#!/usr/bin/env bash
# Every GPU check of a session in one call of the device tool, each stage under its own time limit
# so that a slow stage cannot cost the others their results:
#   run(command="SPEC=benchmarks/sweep5.json bash benchmarks/device.sh", carry=[".carry"], timeout_s=570)
# 1. benchmarks/gpu.sh: the benchmark table and the timed 20-epoch seed run, alone on the GPU;
# 2. benchmarks/sweep.sh SPEC: every sweep entry at once;
# 3. torchrun with one process per GPU for one epoch (the DDP path on NCCL).
# Logs and results land in $OUT.
set -u
export PYTHONPATH=src PYTHONUNBUFFERED=1 ALEXNET_CIFAR10_CACHE=${ALEXNET_CIFAR10_CACHE:-/tmp/alexnet-cache}
export OUT=${OUT:-/tmp/device-out} DATA=${DATA:-.carry/cifar10-train-jpeg.tar.gz}
SPEC=${SPEC:?set SPEC to a sweep spec, e.g. SPEC=benchmarks/sweep5.json}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
stage() {  # stage NAME SECONDS COMMAND...: run it with a time limit, keep its log, show its tail
  local name=$1 seconds=$2 t0=$SECONDS
  shift 2
  echo "== $name (limit ${seconds}s)"
  timeout "$seconds" "$@" > "$OUT/$name.log" 2>&1
  echo "   exit $?, $((SECONDS - t0)) s"
  grep -v -E '^\s*$' "$OUT/$name.log" | tail -"${TAIL:-30}"
}
$PY -c "import torch; print(torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no cuda')"
stage gpu "${GPU_SECONDS:-300}" bash benchmarks/gpu.sh
# the runs stop 30 s before the stage does, which leaves time to pack sweep.tar.gz
TAIL=40 stage sweep "${SWEEP_SECONDS:-260}" env SWEEP_SECONDS="$((${SWEEP_SECONDS:-260} - 30))" \
  bash benchmarks/sweep.sh "$SPEC"
rm -rf /tmp/ddp-run
NPROC=$($PY -c "import torch; print(max(1, torch.cuda.device_count()))")
stage torchrun "${TORCHRUN_SECONDS:-90}" $PY -m torch.distributed.run --standalone --nproc-per-node "$NPROC" \
  -m alexnet_cifar10 train --data "$DATA" --out /tmp/ddp-run --epochs 1 --no-progress ${TORCHRUN_ARGS:-}
ls /tmp/ddp-run 2>/dev/null | tr '\n' ' '; echo
