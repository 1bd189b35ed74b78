#!/usr/bin/env bash
# Join cost with and without tickets, and resume time in a storm of 1,000 clients
# (benches/RESULTS.md, issue 10). Build first: cargo build --release -p tickrelay-server -p tickrelay-loadgen
# Server pinned to core 0, load generator to core 1; 3 runs each; prints JSON figures per run.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}
KEYS=protocol/tests/keys
SECRET=bench-secret-0123456789abcdef0123456789
OUT=$(mktemp -d)
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
run_server() { # args...
  local p=$(port)
  taskset -c 0 $BIN/tickrelay-server --listen 127.0.0.1:$p --max-handshakes-per-second 0 "$@" >/dev/null 2>&1 &
  SERVER_PID=$!
  for i in $(seq 100); do curl -sf http://127.0.0.1:$p/healthz >/dev/null && break; sleep 0.05; done
  URL=ws://127.0.0.1:$p/ws
}
stop_server() { kill $SERVER_PID; wait $SERVER_PID 2>/dev/null || true; }
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
joins() { # mode name, server args..., -- loadgen args...
  local name=$1; shift
  local sargs=() largs=()
  while [ "$1" != "--" ]; do sargs+=("$1"); shift; done; shift
  largs=("$@")
  for r in 1 2 3; do
    run_server --tick-hz 1 "${sargs[@]}"
    local before=$(cpu $SERVER_PID) t0=$(date +%s.%N)
    taskset -c 1 $BIN/tickrelay-loadgen --url $URL --clients 5000 --connect-rate 1000000 --duration 1s --warmup 0s --state-rate 0 --ping-interval 60s --quiet --json $OUT/join-$name-$r.json "${largs[@]}" >/dev/null 2>&1 || true
    local after=$(cpu $SERVER_PID) t1=$(date +%s.%N)
    stop_server
    python3 - "$OUT/join-$name-$r.json" "$name" "$before" "$after" "$(getconf CLK_TCK)" <<'PY'
import json,sys
r=json.load(open(sys.argv[1]))
cpu=(int(sys.argv[4])-int(sys.argv[3]))/int(sys.argv[5])
n=r["clients_joined_at_end"]
print(f'{sys.argv[2]}: {n} joined, errors {r["errors_whole_run"]}; server CPU {cpu:.2f} s for connect+join+leave = {n/cpu:.0f} per core-second ({cpu/n*1e6:.0f} us each)')
PY
  done
}
joins none -- 
joins hs256 --ticket-secret $SECRET -- --ticket-secret $SECRET
joins eddsa --ticket-public-key $KEYS/ed25519-test.pub.pem -- --ticket-private-key $KEYS/ed25519-test.pem
storm() { # name, loadgen args
  local name=$1; shift
  for r in 1 2 3; do
    run_server
    taskset -c 1 $BIN/tickrelay-loadgen --url $URL --scenario storm --clients 1000 --storm-after 3s --duration 10s --warmup 0s --backoff-base 50ms --backoff-max 1s --quiet --json $OUT/storm-$name-$r.json "$@" >/dev/null 2>&1 || true
    stop_server
    python3 - "$OUT/storm-$name-$r.json" "$name" <<'PY'
import json,sys
r=json.load(open(sys.argv[1]))
s=r["storm"]; c=r["latency"]["reconnect"]
print(f'{sys.argv[2]}: back {s["clients_back"]}/{s["clients"]} in {s["recovery_ms"]} ms; resumed {s["resumed"]} refused {s["resumes_refused"]} lost {s["lost"]}; reconnect p50 {c["p50"]/1000:.1f} ms p99 {c["p99"]/1000:.1f} ms max {c["max"]/1000:.1f} ms')
PY
  done
}
storm resume
storm no-resume --no-resume
