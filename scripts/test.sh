#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs what is missing, then every test.
# Usage: scripts/test.sh   (extra arguments go to `cargo test`)
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
# The pure-Rust build needs only a C compiler for a few -sys build scripts.
command -v cc >/dev/null 2>&1 || need_apt+=(build-essential)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
# The Redis Cache backend is tested on a real server (each test spawns its own).
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v redis-benchmark >/dev/null 2>&1 || need_apt+=(redis-tools)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is missing: install the stable Rust toolchain (https://rustup.rs)" >&2
  exit 1
fi

# Benchmarks in smoke mode first (short, keeps them compiling and working), then every test.
cargo test --locked --bench '*'
cargo test --locked --lib --bins --tests "$@"
# The end-to-end API suites once more with the Cache on Redis (the README tour, hot mode).
TIMELINE_TEST_CACHE=redis cargo test --locked --test api --test hot "$@"
