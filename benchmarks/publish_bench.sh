#!/usr/bin/env bash
# Copy the finished-run records of a bench output folder (not the patch files) into the repo
# and rebuild its report there, e.g.
#   NOTE='how the runs were made' PREFACE=docs/results/preface-cpu.md \
#     benchmarks/publish_bench.sh /work/bench-out/cpu docs/results/cpu cpu docs/RESULTS.md
# The numbers come only from the copied run records; the tables cite the bench command.
set -euo pipefail
src=$1 dst=$2 suite=$3 md=${4:-}
mkdir -p "$dst/runs"
python - "$src/runs" "$dst/runs" <<'PY'
import shutil, sys
from pathlib import Path
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
for f in src.rglob("seed*.json"):
    (dst / f.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(f, dst / f.relative_to(src))
PY
args=(bench --suite "$suite" --out "$dst" --report-only --no-progress)
if [ -n "$md" ]; then args+=(--results-md "$md"); fi
if [ -n "${NOTE:-}" ]; then args+=(--note "$NOTE"); fi
if [ -n "${PREFACE:-}" ]; then args+=(--preface "$PREFACE"); fi
python -m deltapatch "${args[@]}"
