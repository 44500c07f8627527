#!/usr/bin/env bash
# Press-to-screen latency of the kiosk in simulation, per stage, from its scan log.
#
#   benches/kiosk_latency.sh [TABLE] [PRESSES]
#
# Runs `fashion-kiosk run` with a folder camera (the demo photos), a Unix-socket trigger and the
# PNG display; sends PRESSES (default 20) presses, each after the previous scan is logged; prints
# the median and range of every stage of the scan log's latency_ms. TABLE defaults to a table of
# the demo catalogue (built on first use); pass a full-catalogue table for realistic search times.
set -euo pipefail
cd "$(dirname "$0")/.."
presses=${2:-20}
cargo build --quiet
bin=$PWD/target/debug/fashion-kiosk
work=$(mktemp -d)
pid=""
trap 'kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; rm -rf "$work"' EXIT
table=${1:-}
if [ -z "$table" ]; then
    table=$work/demo.fkt
    "$bin" index --catalogue demo/catalogue --labels demo/labels.csv --out "$table"
fi
cat > "$work/kiosk.toml" <<TOML
[catalogue]
table = "$(realpath "$table")"
[camera]
kind = "folder"
path = "$PWD/demo/photos"
[trigger]
kind = "socket"
path = "trigger.sock"
[display]
kind = "simulated"
screens = "screens"
[kiosk]
results_secs = 1
[scan_log]
path = "scans.jsonl"
TOML
"$bin" run --config "$work/kiosk.toml" 2> "$work/stderr.log" &
pid=$!
until grep -q "ready: press to scan" "$work/stderr.log"; do
    kill -0 "$pid" || { cat "$work/stderr.log"; exit 1; }
    sleep 0.2
done
python3 - "$work" "$presses" <<'PY'
import json, os, socket, statistics, sys, time
work, presses = sys.argv[1], int(sys.argv[2])
log = os.path.join(work, "scans.jsonl")
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
def lines():
    return open(log).read().splitlines() if os.path.exists(log) else []
for n in range(1, presses + 1):
    s.sendto(b"press", os.path.join(work, "trigger.sock"))
    while len(lines()) < n:
        time.sleep(0.02)
    time.sleep(0.3)
records = [json.loads(l) for l in lines()]
assert all(r["outcome"] == "ok" for r in records), records
print(f"{len(records)} presses, {len(records[0]['results'])} results each")
print(f"{'stage':<11}{'median ms':>10}{'min':>9}{'max':>9}")
for stage in records[0]["latency_ms"]:
    v = [r["latency_ms"][stage] for r in records]
    print(f"{stage:<11}{statistics.median(v):>10.1f}{min(v):>9.1f}{max(v):>9.1f}")
PY
