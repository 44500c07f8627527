#!/usr/bin/env bash
# The fleet's alert rules and dashboard (deploy/prometheus, deploy/grafana) against the real thing:
#  1. promtool: the rules check, and their unit tests on synthetic series pass;
#  2. a simulated kiosk writes its metrics file, Debian's prometheus-node-exporter serves it through
#     its textfile collector, and every metric name (and label matcher) the rules and every
#     dashboard query use is one the kiosk or node exporter really exports;
#  3. Debian's prometheus scrapes it every second and evaluates the rules (their `for:` cut to
#     seconds): all load healthy, none fires on the healthy kiosk, its camera unplugged →
#     FashionKioskCameraDown fires (and nothing else), plugged back → it resolves; every dashboard
#     query runs on that Prometheus and returns the kiosk's series; node exporter stopped →
#     FashionKioskDown fires (and nothing else).
#   tests/monitoring/run.sh [BINARY]      (default target/debug/fashion-kiosk; root not needed)
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
binary=$(realpath "${1:-target/debug/fashion-kiosk}")
rules=$repo/deploy/prometheus/fashion-kiosk.rules.yml
rule_tests=$repo/deploy/prometheus/fashion-kiosk.rules.test.yml
dashboard=$repo/deploy/grafana/fashion-kiosk-fleet.json
started=$SECONDS
fail() { echo "FAIL monitoring: $*" >&2; exit 1; }
for program in promtool prometheus prometheus-node-exporter python3; do
    command -v "$program" >/dev/null ||
        fail "$program is missing: apt-get install prometheus prometheus-node-exporter python3"
done
[ -x "$binary" ] || fail "no kiosk binary at $binary"

mkdir -p target
work=$(mktemp -d -p "$PWD/target" monitoring.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
show_logs() {
    for log in "$work"/*.log; do
        [ -f "$log" ] && { echo "== $log"; tail -n 20 "$log"; }
    done
}
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

echo "== 1. promtool ($(promtool --version 2>&1 | head -1))"
promtool check rules "$rules"
(cd "$(dirname "$rule_tests")" && promtool test rules "$(basename "$rule_tests")")

echo "== 2. a simulated kiosk's metrics through node exporter ($(prometheus-node-exporter --version 2>&1 | head -1))"
# The kiosk: the tiny stand-in embedder, a folder camera of the demo's 224×224 photos, presses on
# a socket, PNG screens, a scan log and the metrics folder; its scene calibrated on a grey frame.
# WATCHDOG_USEC makes it tick (and rewrite its metrics) as under its unit, every 0.5 s here.
mkdir -p "$work/camera" "$work/state"
cp demo/photos/{casual-shoes-14560,handbags-17141,tshirts-15157,watches-11651}.jpg "$work/camera/"
"$binary" index --catalogue demo/catalogue --labels demo/labels.csv --out "$work/catalogue.fkt" \
    --model "$repo/tests/fixtures/tiny-model/tiny.manifest.json" > "$work/index.log" 2>&1 ||
    { show_logs; fail "index"; }
python3 - "$work/grey.png" <<'PNG'
import struct, sys, zlib
def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
rows = b"".join(b"\0" + b"\x80" * 224 * 3 for _ in range(224))
header = struct.pack(">IIBBBBB", 224, 224, 8, 2, 0, 0, 0)  # 8-bit RGB
open(sys.argv[1], "wb").write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                              + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
PNG
cat > "$work/kiosk.toml" <<EOF
[model]
manifest = "$repo/tests/fixtures/tiny-model/tiny.manifest.json"
threads = 1
[catalogue]
table = "$work/catalogue.fkt"
[camera]
kind = "folder"
path = "$work/camera"
[scene]
reference = "$work/state/empty-scene.png"
[trigger]
kind = "socket"
path = "$work/trigger.sock"
[display]
kind = "simulated"
screens = "$work/screens"
[kiosk]
results_secs = 0.5
camera_retry_max_secs = 1
[scan_log]
path = "$work/scans.jsonl"
[metrics]
folder = "$work/metrics"
EOF
"$binary" calibrate --config "$work/kiosk.toml" --frames 1 --no-card --empty "$work/grey.png" \
    > "$work/calibrate.log" 2>&1 || { show_logs; fail "calibrate"; }
WATCHDOG_USEC=1000000 FASHION_KIOSK_LOG=info "$binary" run --config "$work/kiosk.toml" \
    > "$work/kiosk.log" 2>&1 &
pids+=($!)
kiosk_pid=$!
for _ in $(seq 200); do
    grep -q "ready: press to scan" "$work/kiosk.log" && break
    kill -0 "$kiosk_pid" 2>/dev/null || { show_logs; fail "the kiosk exited"; }
    sleep 0.1
done
grep -q "ready: press to scan" "$work/kiosk.log" || { show_logs; fail "the kiosk did not start"; }
press() {
    python3 -c 'import socket, sys
socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"press", sys.argv[1])' "$work/trigger.sock"
}
scans_logged() { [ -f "$work/scans.jsonl" ] && wc -l < "$work/scans.jsonl" || echo 0; }
for n in 1 2 3; do
    press
    for _ in $(seq 100); do [ "$(scans_logged)" -ge "$n" ] && break; sleep 0.1; done
    [ "$(scans_logged)" -ge "$n" ] || { show_logs; fail "scan $n was not logged"; }
    sleep 0.6  # the results screen (results_secs) before the next press
done
grep -q '"outcome":"ok"' "$work/scans.jsonl" || { show_logs; fail "no scan found an item"; }
echo "kiosk: pid $kiosk_pid, 3 scans logged, metrics in $work/metrics"
promtool check metrics < "$work/metrics/fashion-kiosk.prom" || fail "promtool check metrics: the kiosk's file"
echo "promtool check metrics: the kiosk's fashion-kiosk.prom is clean"

node_port=$(free_port)
prometheus-node-exporter --collector.textfile.directory="$work/metrics" \
    --web.listen-address="127.0.0.1:$node_port" --no-collector.systemd > "$work/node-exporter.log" 2>&1 &
pids+=($!)
node_pid=$!
for _ in $(seq 100); do
    python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' \
        "http://127.0.0.1:$node_port/metrics" 2>/dev/null && break
    sleep 0.1
done
kill -0 "$node_pid" 2>/dev/null || { show_logs; fail "node exporter exited"; }
echo "node exporter: 127.0.0.1:$node_port (textfile collector on $work/metrics; systemd collector off: no D-Bus here)"

# Every metric name and label matcher the rules and the dashboard use, against what the kiosk
# wrote and what node exporter serves (its own metrics and the kiosk's file). job and instance
# are Prometheus' target labels; variables ($job, $instance) and negative matchers are skipped.
python3 - "$rules" "$dashboard" "$work/metrics/fashion-kiosk.prom" \
    "http://127.0.0.1:$node_port/metrics" <<'NAMES' ||
import json, re, sys, urllib.request

sys.path.insert(0, "tests/monitoring")
from dashboard import panels  # noqa: E402

rules_path, dashboard_path, kiosk_file, node_url = sys.argv[1:]
SERIES = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? \S+$')
LABEL = re.compile(r'([a-zA-Z_]\w*)\s*(=~|!=|!~|=)\s*"((?:[^"\\]|\\.)*)"')


def exported(text):
    series = {}
    for line in text.splitlines():
        found = SERIES.match(line)
        if found and not line.startswith("#"):
            labels = dict((k, v) for k, _, v in LABEL.findall(found.group(2) or ""))
            series.setdefault(found.group(1), []).append(labels)
    return series


kiosk = exported(open(kiosk_file).read())
node = exported(urllib.request.urlopen(node_url, timeout=10).read().decode())
# Where each name is used: the rules file without its comments, and every dashboard query.
uses = [("rules", "\n".join(l for l in open(rules_path).read().splitlines()
                            if not l.lstrip().startswith("#")))]
dashboard = json.load(open(dashboard_path))


for panel in panels(dashboard["panels"]):
    for target in panel.get("targets", []):
        uses.append((f"dashboard: {panel['title']} ({target['refId']})", target["expr"]))
for variable in dashboard["templating"]["list"]:
    uses.append((f"dashboard: variable {variable['name']}", variable["definition"]))

NAME = re.compile(r'(?<![\w:])((?:fashion_kiosk|node)_\w+)(\{[^}]*\})?')
problems, names = [], set()
for where, text in uses:
    for name, selector in NAME.findall(text):
        names.add(name)
        source, what = (kiosk, "the kiosk's metrics") if name.startswith("fashion_kiosk_") \
            else (node, "node exporter")
        if name not in source:
            problems.append(f"{where}: {name} is not exported by {what}")
            continue
        for label, op, value in LABEL.findall(selector):
            if label in ("job", "instance") or op in ("!=", "!~") or "$" in value:
                continue
            match = (lambda v: v == value) if op == "=" else \
                (lambda v: re.fullmatch(value.replace("\\\\", "\\"), v) is not None)
            if name.startswith("node_filesystem_"):
                continue  # which mounts exist depends on the machine; the name is checked
            if not any(match(s.get(label, "")) for s in source[name]):
                problems.append(f"{where}: no {name} series has {label}{op}\"{value}\"")
for problem in problems:
    print(problem)
kiosk_names = sorted(n for n in names if n.startswith("fashion_kiosk_"))
node_names = sorted(n for n in names if n.startswith("node_"))
queries = sum(w.startswith("dashboard: ") and "variable" not in w for w, _ in uses)
variables = len(dashboard["templating"]["list"])
print(f"the rules and the dashboard's {queries} queries and {variables} variables use "
      f"{len(kiosk_names)} kiosk metrics ({', '.join(kiosk_names)}) and {len(node_names)} "
      f"node exporter metrics ({', '.join(node_names)}): all exported")
mounts = sorted({s.get("mountpoint") for s in node.get("node_filesystem_avail_bytes", [])})
print(f"node exporter's mounts here: {', '.join(mounts)}")
sys.exit(1 if problems else 0)
NAMES
    fail "a metric the rules or the dashboard use is not exported"

echo "== 3. Prometheus scraping every second, the rules' for: cut to 2 s ($(prometheus --version 2>&1 | head -1))"
# The shipped rules with every `for:` at 2 s, so that an alert fires within seconds.
sed -E 's/^( *for: ).*/\12s/' "$rules" > "$work/fast.rules.yml"
grep -q 'for: 2s' "$work/fast.rules.yml" || fail "no for: durations found to shorten"
prom_port=$(free_port)
cat > "$work/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - $work/fast.rules.yml
scrape_configs:
  - job_name: fashion-kiosk
    static_configs:
      - targets: ["127.0.0.1:$node_port"]
EOF
promtool check config "$work/prometheus.yml" > /dev/null || fail "the Prometheus config"
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
    --web.listen-address="127.0.0.1:$prom_port" > "$work/prometheus.log" 2>&1 &
pids+=($!)

# The checks against Prometheus' HTTP API, in one Python: each phase prints what it saw.
rule_count=$(grep -cE '^ *- (alert|record):' "$rules")
python3 - "http://127.0.0.1:$prom_port" "$dashboard" "$work/camera" "$work/trigger.sock" \
    "$rule_count" "$node_pid" <<'E2E' ||
import json, os, socket, sys, time, urllib.parse, urllib.request

sys.path.insert(0, "tests/monitoring")
from dashboard import panels  # noqa: E402

api, dashboard_path, camera, trigger, rule_count, node_pid = sys.argv[1:]


def get(path, **params):
    url = f"{api}{path}" + ("?" + urllib.parse.urlencode(params, doseq=True) if params else "")
    with urllib.request.urlopen(url, timeout=10) as response:
        body = json.load(response)
    if body.get("status") != "success":
        raise SystemExit(f"{path} {params}: {body}")
    return body["data"]


def wait(what, check, timeout):
    deadline = time.time() + timeout
    while True:
        try:
            result = check()
        except (OSError, ValueError):
            result = None
        if result:
            return result
        if time.time() > deadline:
            raise SystemExit(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.5)


def alerts(state=None):
    return [a for a in get("/api/v1/alerts")["alerts"]
            if (state is None or a["state"] == state)
            and not a["labels"]["alertname"].startswith("FashionKioskDisk")]


def press():
    socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"press", trigger)


wait("Prometheus ready", lambda: urllib.request.urlopen(f"{api}/-/ready", timeout=2).status == 200, 30)
# The kiosk's counters, scraped from node exporter.
scans = wait("fashion_kiosk_scans_total through node exporter",
             lambda: len(get("/api/v1/query", query="fashion_kiosk_scans_total")["result"]) == 3
             and get("/api/v1/query", query="fashion_kiosk_scans_total")["result"], 30)
for series in scans:
    print(f"fashion_kiosk_scans_total{{outcome=\"{series['metric']['outcome']}\", "
          f"job=\"{series['metric']['job']}\", instance=\"{series['metric']['instance']}\"}} "
          f"= {series['value'][1]}")
    assert series["metric"]["job"] == "fashion-kiosk", series
ok = [s for s in scans if s["metric"]["outcome"] == "ok"]
assert ok and ok[0]["value"][1] == "3", f"expected 3 ok scans: {scans}"
instance = ok[0]["metric"]["instance"]



# Every rule loaded and evaluated without error; on a healthy kiosk none is pending or firing.
def rules_evaluated():
    rules = [r for g in get("/api/v1/rules")["groups"] for r in g["rules"]]
    healthy = all(r["health"] == "ok" and not r.get("lastEvaluation", "0001").startswith("0001")
                  for r in rules)
    return rules if healthy and len(rules) == int(rule_count) else None


rules = wait("every rule evaluated healthy", rules_evaluated, 30)
alerting = sum(r["type"] == "alerting" for r in rules)
print(f"rules: {len(rules)} loaded, all evaluated healthy ({alerting} alerts, "
      f"{len(rules) - alerting} recorded series)")
time.sleep(4)  # twice the shortened for:
quiet = alerts()
assert not quiet, f"alerts on a healthy kiosk: {[a['labels']['alertname'] for a in quiet]}"
print("healthy kiosk: no alert pending or firing (disk alerts aside: they depend on this machine)")

# The camera unplugged: the next scan loses it, the kiosk says camera_up 0 and keeps retrying.
os.rename(camera, camera + ".unplugged")
unplugged = time.time()
press()
def firing(name):
    return [a for a in alerts("firing") if a["labels"]["alertname"] == name]


camera_down = wait("FashionKioskCameraDown firing", lambda: firing("FashionKioskCameraDown"), 60)
alert = camera_down[0]
assert alert["labels"]["instance"] == instance and alert["labels"]["severity"] == "critical", alert
assert instance in alert["annotations"]["summary"], alert
print(f"camera unplugged → FashionKioskCameraDown firing after {time.time() - unplugged:.1f} s: "
      f"\"{alert['annotations']['summary']}\"")
others = sorted({a["labels"]["alertname"] for a in alerts()} - {"FashionKioskCameraDown"})
assert not others, f"other alerts besides the camera's: {others}"

# Plugged back: the kiosk's retry finds it, and the alert resolves.
os.rename(camera + ".unplugged", camera)
back = time.time()
wait("FashionKioskCameraDown resolved",
     lambda: not [a for a in alerts() if a["labels"]["alertname"] == "FashionKioskCameraDown"], 30)
print(f"camera back → resolved after {time.time() - back:.1f} s")

# Every dashboard query, with Grafana's variables filled in, on this Prometheus: it must run and
# return the kiosk's series (the disk's only if this machine's mounts include the kiosk's).
dashboard = json.load(open(dashboard_path))
variables = {"$__rate_interval": "1m", "$instance": ".*", "$job": ".*"}
for variable in dashboard["templating"]["list"]:
    query = variable["definition"]
    metric, label = query[len("label_values("):-1].rsplit(", ", 1)
    for name, value in variables.items():
        metric = metric.replace(name, value)
    values = get(f"/api/v1/label/{label}/values", **{"match[]": metric})
    want = "fashion-kiosk" if label == "job" else instance
    assert want in values, f"variable {variable['name']}: {values}"
empty, total = [], 0


for panel in panels(dashboard["panels"]):
    for target in panel.get("targets", []):
        expr = target["expr"]
        for name, value in variables.items():
            expr = expr.replace(name, value)
        result = get("/api/v1/query", query=expr)["result"]
        total += 1
        if not result:
            empty.append(f"{panel['title']} ({target['refId']})")
            if "node_filesystem" not in expr:
                raise SystemExit(f"dashboard query returned nothing: {panel['title']} "
                                 f"({target['refId']}): {expr}")
print(f"dashboard: {total} queries ran on Prometheus, {total - len(empty)} returned the kiosk's "
      "series" + (f"; empty here (no kiosk mount on this machine): {', '.join(empty)}" if empty else ""))

# Node exporter stopped (the Pi gone): FashionKioskDown, and nothing else (the kiosk's own
# series go stale with the failed scrape).
os.kill(int(node_pid), 15)
stopped = time.time()
down = wait("FashionKioskDown firing", lambda: firing("FashionKioskDown"), 60)
assert down[0]["labels"]["instance"] == instance, down
others = sorted({a["labels"]["alertname"] for a in alerts()} - {"FashionKioskDown"})
assert not others, f"other alerts besides FashionKioskDown: {others}"
print(f"node exporter stopped → FashionKioskDown firing after {time.time() - stopped:.1f} s, "
      f"and no other alert")
E2E
    { show_logs; fail "Prometheus end to end"; }
echo "OK monitoring: promtool tests pass; every metric the rules and the dashboard use is exported;" \
    "the camera-down alert fired and resolved, and the kiosk-down one fired, through a real node" \
    "exporter and Prometheus ($(( SECONDS - started )) s)"
