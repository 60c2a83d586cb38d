#!/usr/bin/env bash
# Builds the instrumented build (clang, libFuzzer coverage, ASan+UBSan,
# assertions on) in its own build directory, runs the unit tests there,
# then runs each fuzz target: first over its seed corpus and the saved
# reproducers of fixed bugs (a regression test: every input must pass),
# then a short fuzzing run from there.  New inputs found go to a scratch
# directory, never into the committed corpus.  Any crash, hang (-timeout)
# or sanitizer report fails the script and names the input that caused it.
#
#   tests/fuzz/run.sh [SECONDS]   fuzzing time per target (default 15;
#                                 0: only the regression run)
# Environment: KVMCDP_FUZZ_BUILD_DIR (default build-fuzz/), KVMCDP_FUZZ_TARGETS
# (names to run, e.g. "manifest tree"; default all).
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
secs=${1:-15}
build=${KVMCDP_FUZZ_BUILD_DIR:-$here/build-fuzz}
fuzz_dir=$here/tests/fuzz

CXX=${KVMCDP_FUZZ_CXX:-clang++} cmake -S "$here" -B "$build" -G Ninja -DKVMCDP_FUZZ=ON \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
ninja -C "$build" kvmcdp_fuzz kvmcdp_unit_tests
echo "instrumented: unit tests under ASan+UBSan with assertions"
(cd "$build" && ./kvmcdp_unit_tests) || { echo "instrumented: unit tests FAILED" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$build/fuzz-artifacts"
targets=${KVMCDP_FUZZ_TARGETS:-$(cd "$fuzz_dir" && ls ./*_fuzz.cc | sed 's|^\./||; s|_fuzz\.cc$||')}
for name in $targets; do
  bin=$build/${name}_fuzz
  inputs=("$fuzz_dir/corpus/$name")
  [ -d "$fuzz_dir/regressions/$name" ] && inputs+=("$fuzz_dir/regressions/$name")
  opts=(-timeout=5 -rss_limit_mb=2048 -print_final_stats=1
        "-artifact_prefix=$build/fuzz-artifacts/${name}-")
  [ -f "$fuzz_dir/$name.dict" ] && opts+=("-dict=$fuzz_dir/$name.dict")
  echo "fuzz: $name: regression run over ${inputs[*]#"$here/"}"
  "$bin" "${opts[@]}" -runs=0 "${inputs[@]}" >"$work/$name.log" 2>&1 ||
    { tail -50 "$work/$name.log"; echo "fuzz: $name: FAILED (log above)" >&2; exit 1; }
  [ "$secs" -gt 0 ] || continue
  echo "fuzz: $name: fuzzing for ${secs}s"
  mkdir -p "$work/new-$name"
  "$bin" "${opts[@]}" -max_total_time="$secs" "$work/new-$name" "${inputs[@]}" \
      >"$work/$name.log" 2>&1 ||
    { tail -60 "$work/$name.log"; echo "fuzz: $name: FAILED (log above)" >&2; exit 1; }
  grep -E '^stat::number_of_executed_units|^#[0-9]+ *DONE' "$work/$name.log" | tail -2 |
    sed "s/^/fuzz: $name: /"
done
echo "fuzz: all targets passed"
