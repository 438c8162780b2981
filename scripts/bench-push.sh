#!/usr/bin/env bash
# The push benchmark: 10,000 streams, one connection each, need more file descriptors than the
# usual default of 1,024 (the server and this client each hold one per stream).
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 10500 ]; then
  echo "ulimit -n is $(ulimit -n) (hard limit): 10,000 streams need about 10,500" >&2
  exit 1
fi
exec cargo bench --bench push "$@"
