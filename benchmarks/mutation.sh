#!/usr/bin/env bash
# Mutation testing (issue 28) with mutmut 3 over the modules where a bug costs most.
#
#   benchmarks/mutation.sh [MODULE ...]      # default: delta; e.g. delta baseinit routing
#   MUTATION_REPORT_ONLY=1 benchmarks/mutation.sh delta   # the report of a partial run
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
        routing)  echo "tests/test_routing.py tests/test_reference_delta.py tests/test_fanout.py" ;;
        model)    echo "tests/test_model.py tests/test_reference_delta.py tests/test_routing.py" ;;
        patch)    echo "tests/test_patch.py tests/test_patch_integrity.py tests/test_init.py" ;;
        tensorfile|store) echo "tests/test_store.py tests/test_patch.py tests/test_patch_integrity.py" ;;
        train)    echo "tests/test_train.py tests/test_epoch_draws.py" ;;
        cache)    echo "tests/test_perf.py" ;;
        *) echo "no test selection for module '$1'; add it to tests_for in $0" >&2; exit 2 ;;
    esac
}

for mod in "${@:-delta}"; do
    src=src/deltapatch/$mod.py
    [ -f "$ROOT/$src" ] || { echo "no $src" >&2; exit 2; }
    dir=$WORK/$mod
    mkdir -p "$dir"
    # refresh the copy (sources and tests), keeping mutants/ and its results
    rm -rf "$dir/src" "$dir/tests"
    cp -r "$ROOT/src" "$ROOT/tests" "$dir/"
    grep -v '^\[tool.mutmut\]' "$ROOT/pyproject.toml" > "$dir/pyproject.toml"
    sel=$(tests_for "$mod")
    {
        echo "[mutmut]"
        echo "source_paths = src/"
        echo "only_mutate = $src"
        echo "process_isolation = forkserver"  # torch's thread pools do not survive a plain fork
        echo "pytest_add_cli_args ="  # setup.cfg lists: one item per indented line
        printf '    %s\n' -x -q -p no:cacheprovider
        echo "pytest_add_cli_args_test_selection ="
        printf '    %s\n' $sel
    } > "$dir/setup.cfg"
    if [ -z "${MUTATION_REPORT_ONLY:-}" ]; then  # =1: only (re)write the report of what ran
        ( cd "$dir" && OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 \
              nice -n 19 mutmut run --max-children "$CHILDREN" ) || true
    fi
    {
        echo "# Mutation testing: $src"
        echo
        echo "mutmut $(python -c 'import importlib.metadata as m; print(m.version("mutmut"))'),"\
             "$(date -u +%Y-%m-%d), commit $(git -C "$ROOT" rev-parse --short HEAD)."
        echo "Command: \`benchmarks/mutation.sh $mod\`; runner: \`pytest -x $sel\`."
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
    } > "$OUT/$mod.md"
    echo "report: $OUT/$mod.md"
done
