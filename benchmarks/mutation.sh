#!/usr/bin/env bash
# Mutation testing (issue 28) with mutmut 3 over the modules where a bug costs most.
#
#   benchmarks/mutation.sh [MODULE ...]      # default: delta; e.g. delta baseinit routing
#   MUTATION_REPORT_ONLY=1 benchmarks/mutation.sh delta   # the report of a partial run
#   MUTATION_SAMPLE=20 MUTATION_SEED=1 benchmarks/mutation.sh baseinit
#       # 20 mutants drawn by the seed (not those listed in equivalent.txt); prints each one's
#       # status and exits 1 if any survived: a quick check, no report written
#   MUTATION_RETEST=1 benchmarks/mutation.sh tensorfile   # survivors again, with today's tests
#   MUTATION_PLANT=1 benchmarks/mutation.sh patch   # each survivor planted, today's tests run
#   benchmarks/mutation.sh serve/batcher      # a module in a subpackage: its path under deltapatch/
#
# Each module runs in its own scratch copy of the checkout ($MUTATION_DIR/<module>, default
# /tmp/deltapatch-mutation), so the checkout's pyproject.toml is never edited and mutmut's
# mutants/ folder survives between calls: run the same command again and mutmut resumes where it
# stopped (finished mutants are not rerun unless their function changed). The runner is the fast
# tests that exercise the module (TESTS below), stopped at their first failure (-x), at the
# lowest CPU priority on one core. A report per module is written to
# docs/results/mutation/<module>.md (mutmut's summary and every surviving mutant's diff).
# Needs: pip install mutmut  (3.x; the report states the version used).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${MUTATION_DIR:-/tmp/deltapatch-mutation}
OUT=$ROOT/docs/results/mutation
CHILDREN=${MUTATION_CHILDREN:-1}
mkdir -p "$OUT"

tests_for() {
    case "$1" in
        delta)    echo "tests/test_delta.py tests/test_reference_delta.py tests/test_init.py tests/backbones/test_registries.py" ;;
        baseinit) echo "tests/test_init.py tests/test_reference_delta.py" ;;
        routing)  echo "tests/test_routing.py tests/test_reference_delta.py tests/test_fanout.py tests/test_devices.py tests/test_model.py" ;;
        model)    echo "tests/test_model.py tests/test_reference_delta.py tests/test_routing.py tests/test_devices.py tests/test_fanout.py tests/test_pyramid.py tests/test_patch.py" ;;
        patch)    echo "tests/test_patch.py tests/test_patch_config.py tests/test_patch_integrity.py tests/test_init.py tests/test_store.py tests/data/test_hostile_files.py tests/test_bad_input.py" ;;
        tensorfile) echo "tests/test_store.py tests/test_patch.py tests/test_patch_integrity.py" ;;
        store)    echo "tests/test_store.py tests/test_store_survivors.py tests/test_patch.py tests/test_patch_integrity.py" ;;
        train)    echo "tests/test_train.py tests/test_train_resume.py tests/test_train_loop.py tests/test_epoch_draws.py tests/test_train_device.py tests/test_perf.py tests/test_distributed.py" ;;
        cache)    echo "tests/test_cache.py tests/test_perf.py tests/test_train_device.py tests/test_train.py" ;;
        serve/batcher) echo "tests/serve/test_batcher.py tests/serve/test_serve_concurrency.py tests/serve/test_serve_api.py tests/serve/test_serve_device.py tests/serve/test_serve_lambdas.py tests/serve/test_serve_oip.py" ;;
        serve/readout|serve/staging) echo "tests/serve/test_staging.py tests/serve/test_readout.py tests/serve/test_serve_device.py tests/serve/test_batcher.py tests/serve/test_serve_oip.py tests/serve/test_serve_api.py tests/serve/test_serve_lambdas.py" ;;
        *) echo "no test selection for module '$1'; add it to tests_for in $0" >&2; exit 2 ;;
    esac
}

# Extra pytest arguments of a module's runner, one a line. model.py's code is the same for every
# family, so its runner skips the reference test's float64 ConvNeXt-T, ResNet-50 and
# EfficientNet-Lite0 cases (minutes per survivor here); test_delta.py's run keeps them.
args_for() {
    case "$1" in
        model) printf '%s\n' -k "not (reference_delta and (convnext or resnet50 or lite0))" ;;
    esac
}

# MUTATION_SAMPLE: generate the module's mutants (no test run), draw N names by the seed from
# those not listed as equivalent, run just those; mutmut still collects its test map once.
sample() {
    local dir=$1 src=$2 mod=$3
    ( cd "$dir" && [ -f "mutants/$src.meta" ] || python - <<'PY'
import os
from mutmut import __main__ as m  # generation only: what `mutmut run` does before any test
m.set_mutant_under_test("mutant_generation")
os.makedirs("mutants", exist_ok=True)
m.copy_src_dir(); m.copy_also_copy_files(); m.setup_source_paths()
m.store_lines_covered_by_tests(); m.create_mutants(1)
PY
    )
    local names
    names=$(python - "$dir/mutants/$src.meta" "$MUTATION_SAMPLE" "${MUTATION_SEED:-0}" \
                "$OUT/equivalent.txt" <<'PY'
import json, os, random, sys
meta, n, seed, equivalent = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
skip = set()
if os.path.exists(equivalent):  # one mutant name a line, then why
    skip = {line.split()[0] for line in open(equivalent) if line.strip() and line[0] != "#"}
keys = sorted(k for k in json.load(open(meta))["exit_code_by_key"] if k not in skip)
print(" ".join(random.Random(seed).sample(keys, min(n, len(keys)))))
PY
    )
    ( cd "$dir" && OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 \
          nice -n 19 mutmut run --max-children "$CHILDREN" $names >/dev/null 2>&1 ) || true
    local results left
    results=$(cd "$dir" && mutmut results --all true 2>/dev/null | sed 's/^ *//' \
              | grep -F -f <(tr ' ' '\n' <<<"$names" | sed 's/$/:/') || true)
    echo "$results"
    left=$(grep -vc ': killed$' <<<"$results" || true)
    echo "$mod: $MUTATION_SAMPLE sampled (seed ${MUTATION_SEED:-0}), $left not killed"
    [ "$left" = 0 ] || exit 1
}

# MUTATION_PLANT: each survivor of the last run that is not listed as equivalent is written
# into the scratch copy's source with `mutmut apply`, and the module's runner (today's tests,
# copied above) runs on it; "killed" means a test failed. Unlike MUTATION_RETEST this leaves
# mutmut's results as they are (a retest marks the module's other mutants "not checked").
plant() {
    local dir=$1 src=$2 mod=$3 sel=$4 n left=0
    local skip=$OUT/equivalent.txt extra
    mapfile -t extra < <(args_for "$mod")
    for n in $(cd "$dir" && mutmut results 2>/dev/null \
               | awk -F': ' '$2 == "survived" {gsub(/ /, "", $1); print $1}'); do
        grep -q "^$n " "$skip" 2>/dev/null && continue
        cp "$ROOT/$src" "$dir/$src"
        ( cd "$dir" && mutmut apply "$n" >/dev/null 2>&1 ) || true
        if cmp -s "$ROOT/$src" "$dir/$src"; then echo "$n: not applied"; left=$((left + 1)); continue; fi
        if ( cd "$dir" && PYTHONPATH=src OMP_NUM_THREADS=1 nice -n 19 python -m pytest \
                 -o addopts="" -x -q -p no:cacheprovider "${extra[@]}" $sel >/dev/null 2>&1 ); then
            echo "$n: survived"; left=$((left + 1))
        else
            echo "$n: killed"
        fi
    done
    cp "$ROOT/$src" "$dir/$src"
    echo "$mod: survivors planted under the tests of $(git -C "$ROOT" rev-parse --short HEAD)," \
         "$left not killed"
}

for mod in "${@:-delta}"; do
    src=src/deltapatch/$mod.py
    [ -f "$ROOT/$src" ] || { echo "no $src" >&2; exit 2; }
    dir=$WORK/$mod
    mkdir -p "$dir"
    # refresh the copy (sources and tests), keeping mutants/ and its results
    rm -rf "$dir/src" "$dir/tests"
    cp -r "$ROOT/src" "$ROOT/tests" "$dir/"
    [ -n "${MUTATION_REPORT_ONLY:-}" ] || {   # what this run's mutants and tests come from
        git -C "$ROOT" rev-parse --short HEAD | tr -d '\n'
        [ -z "$(git -C "$ROOT" status --porcelain -- src tests)" ] || printf ' (plus uncommitted changes)'
    } > "$dir/COMMIT"
    grep -v '^\[tool.mutmut\]' "$ROOT/pyproject.toml" > "$dir/pyproject.toml"
    sel=$(tests_for "$mod")
    {
        echo "[mutmut]"
        echo "source_paths = src/"
        echo "only_mutate = $src"
        echo "process_isolation = forkserver"  # torch's thread pools do not survive a plain fork
        echo "pytest_add_cli_args ="  # setup.cfg lists: one item per indented line
        printf '    %s\n' -x -q -p no:cacheprovider
        args_for "$mod" | sed 's/^/    /'
        echo "pytest_add_cli_args_test_selection ="
        printf '    %s\n' $sel
    } > "$dir/setup.cfg"
    if [ -n "${MUTATION_PLANT:-}" ]; then  # survivors planted one by one under today's tests
        # MUTATION_PLANT_TESTS: only these test files (a survivor of the whole runner that they
        # kill is killed; one they do not kill stays a survivor either way)
        plant "$dir" "$src" "$mod" "${MUTATION_PLANT_TESTS:-$sel}" \
            | tee "${MUTATION_PLANT_OUT:-$OUT/${mod//\//.}.planted.txt}"  # a file of its own for a second pass
        continue
    fi
    if [ -n "${MUTATION_SAMPLE:-}" ]; then
        sample "$dir" "$src" "$mod"
        continue
    fi
    if [ -z "${MUTATION_REPORT_ONLY:-}" ]; then  # =1: only (re)write the report of what ran
        retest=()  # mutmut reruns a finished mutant only if its function changed, not its tests
        if [ -n "${MUTATION_RETEST:-}" ]; then
            mapfile -t retest < <(cd "$dir" && mutmut results 2>/dev/null \
                                  | awk -F': ' '$2 == "survived" {gsub(/ /, "", $1); print $1}')
            [ "${#retest[@]}" -gt 0 ] || { echo "$mod: no survivors to retest"; continue; }
        fi
        ( cd "$dir" && OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 \
              nice -n 19 mutmut run --max-children "$CHILDREN" "${retest[@]}" ) || true
    fi
    {
        echo "# Mutation testing: $src"
        echo
        echo "mutmut $(python -c 'import importlib.metadata as m; print(m.version("mutmut"))'),"\
             "$(date -u +%Y-%m-%d), sources and tests of commit $(cat "$dir/COMMIT" 2>/dev/null || echo unknown)."
        echo "Command: \`benchmarks/mutation.sh $mod\`; runner:" \
             "\`pytest -x$(args_for "$mod" | sed 's/.* .*/"&"/' | tr '\n' ' ' | sed 's/ $//; s/^./ &/') $sel\`."
        echo
        echo '```'
        ( cd "$dir" && mutmut results --all true 2>/dev/null | awk -F': ' 'NF > 1 {print $2}' \
              | sort | uniq -c ) || true
        echo '```'
        echo
        echo "## Mutants that were not killed"
        echo
        ( cd "$dir" && mutmut results 2>/dev/null | sed 's/^ *//' ) | while read -r line; do
            name=${line%%:*}
            [ -n "$name" ] || continue
            echo "### $line"
            echo '```diff'
            ( cd "$dir" && mutmut show "$name" 2>/dev/null ) || true
            echo '```'
        done
    } > "$OUT/${mod//\//.}.md"
    echo "report: $OUT/${mod//\//.}.md"
done
