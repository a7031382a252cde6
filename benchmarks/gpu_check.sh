#!/usr/bin/env bash
# The one prepared GPU measurement (issue 23): fits 8 minutes on one H200 with 16 CPU cores, on a
# bare machine with this repository copied and torch (CUDA) preinstalled; needs no network.
#
#   bash benchmarks/gpu_check.sh                                  # on the GPU machine
#   GPU_CHECK_DEVICE=cpu GPU_CHECK_TINY=1 OUT=/tmp/gpu-dry bash benchmarks/gpu_check.sh  # dry run
#
# Steps, each under its own time limit, each allowed to fail without stopping the rest:
# install the package from the working tree (no deps, no network), `pytest -m cuda`, then
# benchmarks/gpu_bench.py's sections side by side on the same device: training images/s (Δ(1)
# ± cache, rank-matched PEFT LoRA, full fine-tuning; fp32, bf16, bf16 + channels_last), mixed
# batches of 8 / 64 patches and fan-out vs base forwards, the server (base answers vs
# backbone(x); 1 vs 128 patches), one cell of the paper suite; then a summary of every ratio
# next to its goal. Raw output goes to $OUT if set, else docs/results/gpu/<UTC date>/.
# A dry run (GPU_CHECK_TINY=1) writes numbers that are no GPU results: keep them out of docs/.
set -u
cd "$(dirname "$0")/.."
DEVICE=${GPU_CHECK_DEVICE:-cuda}
TINY=${GPU_CHECK_TINY:-0}
DEST=${OUT:-docs/results/gpu/$(date -u +%Y-%m-%d)}
mkdir -p "$DEST"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
BENCH=(python benchmarks/gpu_bench.py --device "$DEVICE" --out "$DEST")
if [ "$TINY" = 1 ]; then BENCH+=(--tiny); fi

# step NAME SECONDS COMMAND...: run it with its output in $DEST/NAME.log; say how it ended
step() {
  local name=$1 limit=$2 start=$SECONDS rc
  shift 2
  echo "== $name (limit ${limit} s): $*"
  timeout --kill-after=10 "$limit" "$@" >"$DEST/$name.log" 2>&1
  rc=$?
  tail -n 15 "$DEST/$name.log"
  echo "$name: exit $rc after $((SECONDS - start)) s" | tee -a "$DEST/steps.txt"
}

: >"$DEST/steps.txt"
if [ "$DEVICE" != cpu ]; then  # a dry run here keeps the environment as it is
  step install 60 python -m pip install --no-deps --no-build-isolation --no-index -e .
fi
step pytest_cuda 100 python -m pytest -m cuda -q -rs -p no:cacheprovider tests
step machine 30 "${BENCH[@]}" machine
step train 110 "${BENCH[@]}" train
step mixed 60 "${BENCH[@]}" mixed
step serve 100 "${BENCH[@]}" serve
# 64 base requests at once: each served answer vs backbone(x) of its image alone, torch.equal,
# served per image (the default) and with --batch-base (allowed on this GPU only at 64/64)
step served_base 40 python benchmarks/serve_load.py --device "$DEVICE" --mixes --check-base 64
step paper 70 "${BENCH[@]}" paper
step summary 20 "${BENCH[@]}" summary
cat "$DEST/summary.txt" 2>/dev/null
echo "raw output: $DEST"
