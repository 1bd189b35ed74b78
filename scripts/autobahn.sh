#!/usr/bin/env bash
# WebSocket conformance: the Autobahn|Testsuite fuzzing-client cases 1-10 (12 and 13 are
# compression, which tickrelay does not offer) against the server's /echo endpoint, run by
# kosoku (PyPI: Autobahn's own case files under Python 3, Autobahn-format reports).
#
#   scripts/autobahn.sh                 # builds the server (debug), installs kosoku if missing
#   TICKRELAY_SERVER_BIN=target/release/tickrelay-server scripts/autobahn.sh
#
# Reports: target/autobahn/index.html (and index.json). Fails when any case fails, or when a
# case is NON-STRICT or INFORMATIONAL without being one of those README.md explains
# (scripts/autobahn-summary.py holds that list).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${AUTOBAHN_OUT:-target/autobahn}"
KOSOKU_VERSION=0.1.0

server="${TICKRELAY_SERVER_BIN:-}"
if [ -z "$server" ]; then
  cargo build --quiet --locked -p tickrelay-server
  server=target/debug/tickrelay-server
fi

if ! python3 -c "import importlib.metadata as m, sys; sys.exit(m.version('kosoku') != '$KOSOKU_VERSION')" 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check "kosoku==$KOSOKU_VERSION" \
    || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "kosoku==$KOSOKU_VERSION"
fi

# The suite's limits: messages up to 16 MiB (9.1.6, 9.2.6), 65,536 frames in one message
# (9.3.1, 9.4.1), a thousand messages as fast as they go (9.7, 9.8). Everything else is the
# server's default.
log="$(mktemp)"
"$server" --listen 127.0.0.1:0 --log-format json --echo-endpoint \
  --max-message-size $((16 * 1024 * 1024)) --max-queued-bytes $((64 * 1024 * 1024)) \
  --max-event-rate 1000000 2> "$log" &
pid=$!
trap 'kill "$pid" 2>/dev/null; rm -f "$log"' EXIT

addr=""
for _ in $(seq 100); do
  addr="$(grep -o '"addr":"[^"]*"' "$log" | head -n1 | cut -d'"' -f4 || true)"
  [ -n "$addr" ] && break
  kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; echo "the server did not start" >&2; exit 1; }
  sleep 0.1
done
[ -n "$addr" ] || { cat "$log" >&2; echo "the server never said where it listens" >&2; exit 1; }

rm -rf "$OUT"   # kosoku never clears its output directory
# kosoku has no timeout of its own: a case that hangs would hang CI.
status=0
timeout 600 python3 -c 'import sys; from kosoku._cli import main; sys.argv[0] = "kosoku"; main()' \
  -x '12.*' -x '13.*' -o "$OUT" "ws://$addr/echo" > "$OUT.log" 2>&1 || status=$?
if [ ! -f "$OUT/index.json" ]; then
  cat "$OUT.log" >&2
  echo "kosoku wrote no report (exit $status)" >&2
  exit 1
fi
if grep -q '"level":"ERROR"\|panicked' "$log"; then
  cat "$log" >&2
  echo "the server logged an error or a panic during the suite" >&2
  exit 1
fi
python3 scripts/autobahn-summary.py "$OUT"
