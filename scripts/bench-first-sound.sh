#!/usr/bin/env bash
# Measure, over N runs, the time from `orchestra run` to the first sound at the DAC and the
# frequency that arrives, for SCRIPT (examples/sine-lp.lua unless given) on a fresh dummy JACK
# server each time.
#   scripts/bench-first-sound.sh [N] [SCRIPT]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
script=${2:-examples/sine-lp.lua}
name=$(basename "$script")
cargo build --quiet
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$script" "$work/"
for i in $(seq 1 "$runs"); do
  export JACK_DEFAULT_SERVER="bench-$$-$i"
  start=$(date +%s%N)
  log=$(target/debug/orchestra run "$work/$name" --record "$work/out.wav" --seconds 2 2>&1)
  wall=$(( ($(date +%s%N) - start) / 1000000 ))
  first=$(grep -o 'first sound at the DAC [0-9]* ms' <<<"$log" | grep -o '[0-9]*' || echo "none")
  ready=$(grep -o 'ready after [0-9]* ms' <<<"$log" | grep -o '[0-9]*' || echo "none")
  freq=$(target/debug/orchestra analyze "$work/out.wav" | grep -o '"frequency_hz": [0-9.]*' | grep -o '[0-9.]*$')
  echo "run $i: wired after ${ready} ms, first sound after ${first} ms, ${freq} Hz, whole run ${wall} ms"
done
