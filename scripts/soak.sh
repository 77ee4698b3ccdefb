#!/usr/bin/env bash
# The clean-sound soak benchmark (issue 18): the lab's 3-host chain (sine on h1 → lowpass on
# h2 → DAC on h3) for 60 s, idle and with two CPU-bound processes, reporting gaps > 5 ms and
# clicks in the DAC recording and xruns per host (tests/soak.rs). Needs root (the lab).
#   scripts/soak.sh                 # this checkout's orchestra
#   scripts/soak.sh --before REV    # REV's orchestra first (built in target/soak-before), then this one
# SOAK_SECONDS (60), SOAK_LOADS (0,2: CPU-bound processes per run), SOAK_AWAKE=1 (idle CPUs
# kept polling during the runs) and SOAK_VERBOSE=1 (each run's output) change the runs.
set -euo pipefail
cd "$(dirname "$0")/.."
soak() { cargo test --quiet --test soak -- --ignored --nocapture soak 2>&1 | grep -E '^(soak|load) '; }
if [[ "${1:-}" == "--before" ]]; then
  rev=${2:?--before needs a revision}
  src=$(mktemp -d)
  trap 'rm -rf "$src"' EXIT
  # A copy of REV's files, not a worktree: the repository is left as it is.
  git archive "$rev" | tar -x -C "$src"
  CARGO_TARGET_DIR="$PWD/target/soak-before" cargo build --quiet --manifest-path "$src/Cargo.toml" --bin orchestra
  echo "before ($rev):"
  SOAK_ORCHESTRA="$PWD/target/soak-before/debug/orchestra" soak
  echo "after ($(git rev-parse --short HEAD)$(git diff --quiet || echo ', with changes')):"
fi
soak
