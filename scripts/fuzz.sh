#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for SECONDS each (default 60), one after another,
# and prints the executions per target. Not part of CI (it needs a nightly toolchain).
# A crash leaves its input in fuzz/artifacts/TARGET/; turn it into a regression test.
#
#   scripts/fuzz.sh 60
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${1:-60}
targets=(${FUZZ_TARGETS:-config cookie control router jwt})
mkdir -p corpus artifacts

if cargo fuzz --version >/dev/null 2>&1; then
  build() { cargo +nightly fuzz build -O "$1"; }
  bin() { echo "target/x86_64-unknown-linux-gnu/release/$1"; }
else
  # What cargo-fuzz does, without it: sanitizer coverage for libFuzzer, and ASan.
  export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Zsanitizer=address \
-Cdebug-assertions -Coverflow-checks"
  build() { cargo +nightly build --release --target x86_64-unknown-linux-gnu --bin "$1"; }
  bin() { echo "target/x86_64-unknown-linux-gnu/release/$1"; }
fi

for target in "${targets[@]}"; do build "$target"; done
printf '%-8s %10s %12s %s\n' target seconds executions result
for target in "${targets[@]}"; do
  mkdir -p "corpus/$target" "artifacts/$target"
  log=$(mktemp)
  if "$(bin "$target")" "corpus/$target" -max_total_time="$seconds" \
       -artifact_prefix="artifacts/$target/" -print_final_stats=1 >"$log" 2>&1; then
    result=ok
  else
    result="CRASH (see artifacts/$target/)"
  fi
  runs=$(awk '/stat::number_of_executed_units/{print $2}' "$log")
  printf '%-8s %10s %12s %s\n' "$target" "$seconds" "${runs:-?}" "$result"
  [ "$result" = ok ] || { tail -40 "$log"; rm -f "$log"; exit 1; }
  rm -f "$log"
done
