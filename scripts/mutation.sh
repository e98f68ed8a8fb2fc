#!/usr/bin/env bash
# Mutation testing of the modules whose bugs the tests must catch (docs/testing.md has the scores).
#
#   scripts/mutation.sh [TARGET ...]      TARGET: metrics fold plan report params corruptions (default: all),
#                                         metrics/NAME for one file of prunecal/metrics/, report/NAME
#                                         for one of prunecal/eval/{view,tables,verdict,report,render}.py,
#                                         corruptions/NAME for one of prunecal/corruptions/{noise,blur,weather,digital}.py
#
# Uses mutmut 3 (PyPI; installed here if missing, NOT part of the test extra). Each target runs
# in its own copy of the checkout (built native core included) under $MUTATION_DIR
# (default /tmp/prunecal-mutation/TARGET): mutmut rewrites the sources it mutates, so the
# checkout itself is never touched. Only the target's own test files run against each mutant.
#
# Environment: MUTATION_DIR (work folders), MUTATION_JOBS (parallel mutants, default 1),
# MUTATION_NICE (nice level, default 19: a shared machine stays usable).
# Output: the per-target summary (killed / survived / ... and the score) and the list of
# surviving mutants; `cd $MUTATION_DIR/TARGET && mutmut show NAME` prints a mutant's diff.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BASE="${MUTATION_DIR:-/tmp/prunecal-mutation}"
JOBS="${MUTATION_JOBS:-1}"
NICE="${MUTATION_NICE:-19}"
PY="${PYTHON:-python3}"

if ! "$PY" -c "import mutmut, sys; sys.exit(int(mutmut.__version__.split('.')[0]) < 3)" 2>/dev/null; then
    "$PY" -m pip install --quiet "mutmut>=3.8,<4"
fi

# target -> files mutmut mutates (only_mutate globs), mutant-name globs ("" = all of them), tests
target() {
    case "$1" in
        metrics|metrics/*)  # metrics/NAME: only prunecal/metrics/NAME.py (a whole-package run is long)
            if [ "$1" = metrics ]; then ONLY="prunecal/metrics/*.py"; else ONLY="prunecal/$1.py"; fi; NAMES=""
            TESTS="$(cd "$ROOT" && ls tests/test_metrics_*.py | tr '\n' ' ')" ;;
        fold)
            ONLY="prunecal/sparse/fold.py"; NAMES=""
            TESTS="tests/test_fold.py tests/test_plan_fusion.py tests/test_sparsify.py" ;;
        plan)  # the matcher: the graph passes that fold BN, fuse ReLU / shortcuts / residual adds
            ONLY="prunecal/sparse/plan.py"
            NAMES="prunecal.sparse.plan.x__check_inplace__mutmut_* prunecal.sparse.plan.x__fold_bn__mutmut_*
                   prunecal.sparse.plan.x__fuse__mutmut_* prunecal.sparse.plan.x__fuse_residual__mutmut_*"
            TESTS="tests/test_plan_fusion.py" ;;  # (test_plan.py: 70 s a survivor on the loaded machine)
        report|report/*)  # the modules that compute the report's table content (report/NAME: one of them)
            if [ "$1" = report ]; then ONLY="prunecal/eval/view.py prunecal/eval/tables.py prunecal/eval/verdict.py"
            else ONLY="prunecal/eval/${1#report/}.py"; fi; NAMES=""
            # view.py: the functions the tables read, not the one-shot lookups kept for figures / old callers
            # (method_of, net, unit, clean_unit, clean_series, corruption_units, corruption_summary,
            # delta_vs_base, robustness, delta_by_corruption, Net.label)
            if [ "$1" = report/view ]; then
                NAMES="prunecal.eval.view.x_regime_label__mutmut_* prunecal.eval.view.x_net_of__mutmut_*
                       prunecal.eval.view.x_stat__mutmut_* prunecal.eval.view.x__getter__mutmut_*
                       prunecal.eval.view.x_load_view__mutmut_* prunecal.eval.view.x_fmt_stat__mutmut_*
                       prunecal.eval.view.xǁNetǁ[ir]* prunecal.eval.view.xǁStatǁ*"
                for m in __post_init__ nets pruned_nets has_base finetuned seeds_of clean_units clean_stat \
                         corruption_units_of corruption_stat n_corruption_units _seed_mean_by_condition \
                         condition_changes robustness_net _robustness reference_speed fastest stored_bytes \
                         reference_bytes finetune_info; do
                    NAMES="$NAMES prunecal.eval.view.xǁStudyViewǁ${m}__mutmut_*"
                done
            fi
            # the table-level checks (test_report_tables.py reruns test_report_content's column checks on
            # the Table objects: 1 s instead of a full report build with figures, 45 s a survivor); the
            # one rendering test of test_report_verdict.py has its Table-level twin in test_report_tables.py
            TESTS="tests/test_report_tables.py tests/test_report_verdict.py
                   --deselect=tests/test_report_verdict.py::test_verdict_table_marks_safe_and_fast" ;;
        params)  # mutmut sees only param(); the PARAMS table: scripts/mutation_params_table.py (run below)
            ONLY="prunecal/corruptions/params.py"; NAMES=""
            TESTS="$(cd "$ROOT" && ls tests/test_corruption*.py 2>/dev/null | tr '\n' ' ')" ;;
        corruptions|corruptions/noise|corruptions/blur|corruptions/weather|corruptions/digital)
            # the corruption functions (corruptions/NAME: one family's module; `corruptions`: all four)
            if [ "$1" = corruptions ]; then
                ONLY="prunecal/corruptions/noise.py prunecal/corruptions/blur.py prunecal/corruptions/weather.py prunecal/corruptions/digital.py"
            else ONLY="prunecal/$1.py"; fi; NAMES=""
            # the pixel-level tests (the whole of test_corruptions.py: 3 s), motion blur against
            # ImageMagick itself (test_corruption_magick.py, 3 s; skips without Wand) and the
            # noise-model check of test_corruption_fidelity.py; deselected: its network-accuracy run
            # (ResNet-20 on 300 images x 95 cells, about 115 s a survivor: it only re-checks at
            # accuracy level what the pixel tests pin exactly) and the parallel iter_suite test
            # (spawned workers cannot import mutmut's trampolined package; its serial half repeats
            # corrupt() itself)
            TESTS="tests/test_corruptions.py tests/test_corruption_magick.py tests/test_corruption_fidelity.py
                   --deselect=tests/test_corruption_fidelity.py::test_accuracy_matches_published_generator
                   --deselect=tests/test_corruptions.py::test_iter_suite_serial_and_parallel" ;;
        *) echo "unknown target $1 (metrics metrics/NAME fold plan report report/NAME params corruptions corruptions/NAME)" >&2; exit 2 ;;
    esac
}

run_target() {
    local t="$1" work="$BASE/${1//\//-}"
    target "$t"
    rm -rf "$work" && mkdir -p "$work"
    # the checkout as it is (uncommitted edits and the built prunecal/_C*.so included), without VCS/run data
    tar -C "$ROOT" --exclude=./.git --exclude=./runs --exclude=./build --exclude=./mutants \
        --exclude='*.egg-info' --exclude=__pycache__ -cf - . | tar -C "$work" -xf -
    ls "$work"/prunecal/_C*.so >/dev/null 2>&1 || { echo "no built prunecal/_C*.so in $ROOT (scripts/dev_build.sh)" >&2; exit 1; }
    {
        echo "[mutmut]"
        echo "source_paths = prunecal"
        echo "only_mutate ="
        (set -f; for f in $ONLY; do echo "    $f"; done)
        echo "pytest_add_cli_args = -p no:cacheprovider -q"
        echo "pytest_add_cli_args_test_selection ="
        for f in $TESTS; do echo "    $f"; done
    } > "$work/setup.cfg"
    # mutmut reads [tool.mutmut] of pyproject.toml before setup.cfg: keep pyproject's out of the way
    if grep -q '^\[tool.mutmut\]' "$work/pyproject.toml" 2>/dev/null; then rm "$work/pyproject.toml"; fi
    echo "== $t: mutating $ONLY${NAMES:+ (functions: $NAMES)}; tests: $(echo $TESTS)"
    local start=$SECONDS
    # shellcheck disable=SC2086  # NAMES: globs for mutmut, not for the shell
    # OMP_NUM_THREADS=1: mutmut forks each mutant's run from the process that ran the tests, and a
    # fork of a process whose OpenMP (torch intra-op) team was started hangs at 0 % CPU in the
    # child (seen here); the native core's own pool is fork-safe (csrc/thread_pool.cpp)
    (cd "$work" && set -f && OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 HYPOTHESIS_PROFILE=mutation PRUNECAL_MUTATION_RUN=1 nice -n "$NICE" "$PY" -m mutmut run --max-children "$JOBS" $NAMES \
        > "$work/run.log" 2>&1) || { tail -30 "$work/run.log"; echo "mutmut run failed for $t" >&2; return 1; }
    local secs=$((SECONDS - start))
    (cd "$work" && set -f && "$PY" -m mutmut results --all true > "$work/results.txt" 2>&1 || true)
    "$PY" - "$work/results.txt" "$t" "$secs" "$NAMES" <<'EOF'
import collections, fnmatch, sys
path, target, secs, names = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4].split()
status = {}
for line in open(path):
    if ":" in line and "__mutmut_" in line:
        name, _, st = line.strip().rpartition(":")
        if not names or any(fnmatch.fnmatch(name.strip(), g) for g in names):
            status[name.strip()] = st.strip()
count = collections.Counter(status.values())
tried = sum(v for k, v in count.items() if k not in ("not checked", "skipped"))
killed = count.get("killed", 0) + count.get("timeout", 0) + count.get("segfault", 0)
score = 100.0 * killed / tried if tried else float("nan")
print(f"{target}: {len(status)} mutants, {dict(count)}; killed {killed}/{tried} = {score:.1f} % in {secs} s")
for name, st in sorted(status.items()):
    if st in ("survived", "no tests", "suspicious"):
        print(f"  {st}: {name}")
EOF
}

targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(metrics fold plan report params corruptions)
for t in "${targets[@]}"; do
    run_target "$t"
    # mutmut mutates code in functions only: params.py's table (module-level data) gets its own run
    if [ "$t" = params ]; then (cd "$ROOT" && PYTHONPATH="$ROOT" nice -n "$NICE" "$PY" scripts/mutation_params_table.py); fi
done
