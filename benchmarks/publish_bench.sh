#!/usr/bin/env bash
# Copy the finished-run records of a bench output folder (not the patch files) into the repo
# and rebuild its report there, e.g.
#   NOTE='how the runs were made' PREFACE=docs/results/preface-cpu.md \
#     benchmarks/publish_bench.sh /work/bench-out/cpu docs/results/cpu cpu docs/RESULTS.md
# The numbers come only from the copied run records; the tables cite the bench command.
set -euo pipefail
src=$1 dst=$2 suite=$3 md=${4:-}
mkdir -p "$dst/runs"
PYTHONPATH="$(dirname "$0")" python -c 'import sys; from _common import copy_records
copy_records(sys.argv[1], sys.argv[2])' "$src" "$dst"
args=(bench --suite "$suite" --out "$dst" --report-only --no-progress)
if [ -n "$md" ]; then args+=(--results-md "$md"); fi
if [ -n "${NOTE:-}" ]; then args+=(--note "$NOTE"); fi
if [ -n "${PREFACE:-}" ]; then args+=(--preface "$PREFACE"); fi
python -m deltapatch "${args[@]}"
