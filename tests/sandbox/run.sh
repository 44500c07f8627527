#!/usr/bin/env bash
# Runs the kiosk inside the sandbox its unit asks systemd for, built here with namespaces (CI has
# no systemd as PID 1), and shows that scans work inside it and that writes outside its allowed
# paths fail:
#   ProtectSystem=strict     every mount read-only, but StateDirectory= and LogsDirectory=
#   ProtectHome=yes          /root and /home empty
#   PrivateTmp=yes           /tmp and /var/tmp its own, empty
#   PrivateNetwork=yes       a network namespace with only a loopback, down
#   User=, NoNewPrivileges=yes, CapabilityBoundingSet=   an unprivileged user, no capabilities
# (SystemCallFilter= and RestrictAddressFamilies= are not reproduced: they need seccomp.) Each
# setting is read from systemd/fashion-kiosk.service first, so the test follows the unit.
# Then the uplink starts under its unit's ProcSubset=pid (no /proc/sys) in a host named here,
# and must take that name for its kiosk id (the unit's broker is not reachable in here).
#   tests/sandbox/run.sh [BINARY]      (root; default target/debug/fashion-kiosk)
set -euo pipefail
cd "$(dirname "$0")/../.."
binary=$(realpath "${1:-target/debug/fashion-kiosk}")
unit=systemd/fashion-kiosk.service
fail() { echo "FAIL sandbox: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "needs root (namespaces, mounts)"
for setting in ProtectSystem=strict ProtectHome=yes PrivateTmp=yes PrivateNetwork=yes \
    NoNewPrivileges=yes CapabilityBoundingSet= StateDirectory=fashion-kiosk LogsDirectory=fashion-kiosk; do
    grep -qx "$setting" "$unit" || fail "the unit no longer says $setting: update this test"
done

mkdir -p target
work=$(mktemp -d -p "$PWD/target" sandbox.XXXXXX)
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"
state=$work/var/lib/fashion-kiosk
logs=$work/var/log/fashion-kiosk
mkdir -p "$state" "$logs" "$work/etc" "$work/camera"
tiny=$PWD/tests/fixtures/tiny-model/tiny.manifest.json
"$binary" index --catalogue demo/catalogue --labels demo/labels.csv --out "$state/catalogue.fkt" \
    --model "$tiny" >/dev/null 2>&1 || fail "index"
cp demo/photos/* "$work/camera/"
cat > "$work/etc/kiosk.toml" <<EOF
[model]
manifest = "$tiny"
threads = 1
[catalogue]
table = "$state/catalogue.fkt"
[camera]
kind = "folder"
path = "$work/camera"
[trigger]
kind = "stdin"
[display]
kind = "simulated"
screens = "$state/screens"
[scan_log]
path = "$logs/scans.jsonl"
[metrics]
folder = "$state/metrics"
[uplink]
broker = "127.0.0.1"
port = 9
checkpoint = "$state/uplink/checkpoint.json"
EOF
grep -qx ProcSubset=pid systemd/fashion-kiosk-uplink.service ||
    fail "the uplink unit no longer says ProcSubset=pid: update this test"
# The service user owns its two folders, as systemd makes them. The config and camera folders
# are left writable by anyone, so that only the sandbox stands in the way of writing them.
chown -R nobody "$state" "$logs"
chmod 777 "$work/etc" "$work/camera"

# The sandbox: a private mount namespace whose tree is the host's, read-only, with the unit's
# writable folders and private /tmp, /var/tmp, /root and /home mounted over it; a private network;
# then an unprivileged user without capabilities runs in it.
presses=5
unshare --mount --net --pid --uts --fork bash -s "$work" "$binary" "$presses" <<'SANDBOX' > "$work/sandbox.out" 2>&1 || { cat "$work/sandbox.out"; fail "sandbox run"; }
set -euo pipefail
work=$1 binary=$2 presses=$3
root=$work/root
mkdir "$root"
mount --make-rprivate /
mount --rbind / "$root"
# ProtectSystem=strict: every mount read-only (deepest last is fine: each is its own mount).
awk -v r="$root" '$5 == r || index($5, r "/") == 1 { print $5 }' /proc/self/mountinfo |
    while read -r point; do mount -o remount,bind,ro "$point" 2>/dev/null || true; done
# StateDirectory= and LogsDirectory=: writable again.
for dir in "$work/var/lib/fashion-kiosk" "$work/var/log/fashion-kiosk"; do
    mount --bind "$dir" "$root$dir"
done
# PrivateTmp= and ProtectHome=.
for dir in /tmp /var/tmp /root /home; do
    [ -d "$root$dir" ] && mount -t tmpfs -o mode=1777 tmpfs "$root$dir"
done
mount -t proc proc "$root/proc"
run() { chroot "$root" setpriv --reuid=nobody --regid=nogroup --clear-groups --no-new-privs \
    --bounding-set=-all --inh-caps=-all "$@"; }
# A scan per press, inside.
for _ in $(seq "$presses"); do sleep 0.3; echo; done |
    run env FASHION_KIOSK_LOG=info "$binary" run --config "$work/etc/kiosk.toml" 2> "$work/var/log/fashion-kiosk/kiosk.stderr"
echo "kiosk exit 0"
# What the sandbox allows and refuses.
try() { if run sh -c "$1" 2>/dev/null; then echo "allowed: $2"; else echo "refused: $2"; fi; }
try "echo x > $work/var/lib/fashion-kiosk/probe" "write the state folder"
try "echo x > $work/var/log/fashion-kiosk/probe" "write the log folder"
try "echo x > $work/etc/probe" "write the config folder"
try "echo x > $work/camera/probe" "write outside its folders"
try "echo x > /usr/local/probe" "write /usr"
try "echo x > /etc/probe" "write /etc"
try "ls /root/* /home/* 2>/dev/null | grep -q ." "see home folders"
try "echo x > /tmp/probe && [ -z \"\$(ls /tmp | grep -v probe)\" ]" "write its own empty /tmp"
try "[ \$(grep -c : /proc/net/dev) -gt 1 ]" "see a network interface besides lo"
try "cat /etc/shadow >/dev/null" "read /etc/shadow"
# The uplink's default kiosk id under ProcSubset=pid: the host's name, not a fallback.
hostname kiosk-sandbox-7
umount "$root/proc"
mount -t proc -o subset=pid proc "$root/proc"
[ ! -e "$root/proc/sys/kernel/hostname" ] && echo "no /proc/sys"
run env FASHION_KIOSK_LOG=info timeout -s INT 3 "$binary" uplink --config "$work/etc/kiosk.toml" \
    > "$work/var/log/fashion-kiosk/uplink.out" 2>&1 || true
grep -o "as fashion-kiosk-[A-Za-z0-9_-]*" "$work/var/log/fashion-kiosk/uplink.out" | head -1
SANDBOX
cat "$work/sandbox.out"
lines=$(wc -l < "$logs/scans.jsonl")
[ "$lines" = "$presses" ] || { cat "$logs/kiosk.stderr"; fail "$lines scan log lines for $presses presses"; }
grep -q '"outcome":"ok"' "$logs/scans.jsonl" || fail "no scan found an item"
ls "$state"/screens/*.png >/dev/null || fail "no screens drawn"
[ -s "$state/metrics/fashion-kiosk.prom" ] || fail "no metrics written"
for expected in "allowed: write the state folder" "allowed: write the log folder" \
    "refused: write the config folder" "refused: write outside its folders" "refused: write /usr" \
    "refused: write /etc" "refused: see home folders" "allowed: write its own empty /tmp" \
    "refused: see a network interface besides lo" "refused: read /etc/shadow" "no /proc/sys" \
    "as fashion-kiosk-kiosk-sandbox-7"; do
    grep -qx "$expected" "$work/sandbox.out" || fail "expected \"$expected\""
done
echo "OK sandbox: $presses scans inside ProtectSystem=strict, ProtectHome, PrivateTmp, PrivateNetwork, no privileges; writes outside the state and log folders refused; the uplink named by gethostname under ProcSubset=pid"
