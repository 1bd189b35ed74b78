#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time, on the stable toolchain (cargo fuzz needs
# nightly flags: RUSTC_BOOTSTRAP=1 lets stable accept them). Usage:
#   fuzz/run.sh                      # every target, 20 s each (CI runs this)
#   FUZZ_SECONDS=600 fuzz/run.sh     # the longer run: 10 minutes each
#   fuzz/run.sh frames               # one target
# The corpus grows in fuzz/corpus/<target> (not committed), seeded from fuzz/seeds/<target>
# (committed: encodings of every message type, frames, tickets). A crash stops the run with a
# non-zero status and leaves its input in fuzz/artifacts/<target>/: fix it, and add the input
# as a regression test next to the code it broke.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${FUZZ_SECONDS:-20}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list)
fi
for target in "${targets[@]}"; do
  mkdir -p "corpus/$target"
  echo "fuzzing $target for ${seconds}s"
  cargo fuzz run -O "$target" "corpus/$target" "seeds/$target" -- \
    -max_total_time="$seconds" -max_len=8192 -print_final_stats=1 2>&1 \
    | grep -E '^(Done|stat::number_of_executed_units|SUMMARY|==[0-9]+==ERROR)|panicked|crash-' || true
  if [ -n "$(ls -A "artifacts/$target" 2>/dev/null)" ]; then
    echo "fuzz/run.sh: $target crashed; inputs in fuzz/artifacts/$target" >&2
    exit 1
  fi
done
