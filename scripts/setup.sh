#!/usr/bin/env bash
# Install what a fresh Debian machine lacks to run cloud-orchestra, then build it.
# Idempotent: installs only missing packages, and cargo builds incrementally.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=$(grep -v '^#' scripts/packages.txt | xargs)
missing=()
for p in $packages; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing: ${missing[*]}"
  # jackd2 asks about realtime priority; the default answer is fine for a dummy server.
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
  echo "cargo is missing: install Rust (https://rustup.rs), then run this again" >&2
  exit 1
fi
cargo build --quiet
echo "built target/debug/orchestra"
