#!/usr/bin/env bash
# The Debian package under a real systemd: boots a Debian bookworm guest (systemd as PID 1, Debian's
# kernel) in qemu-system-x86_64 with software emulation (no KVM needed), installs the amd64 package
# that systemd/build-deb.sh makes, and drives it as an operator would: the vivid module as the
# camera, the socket trigger as the button, the simulated display, a mosquitto in the guest for the
# uplink. Phases, each timed:
#   boot      install, configure (README's steps), `check` passing, the unit started and READY
#             (sd_notify), scans in the scan log and, through the uplink unit, on the broker
#   sandbox   the kiosk's seccomp filter, no new privileges, no capabilities and namespaces as
#             systemd applies them (/proc/PID/status, `systemd-analyze security` in the guest), a
#             probe refused by the unit's system-call filter, and a scan under all of it
#   watchdog  the main process stopped with SIGSTOP is killed by systemd and restarted
#   powercut  `system_reset` from the QEMU monitor, three times (mid-scan, right after a scan is
#             logged, in a burst of presses): table, config, calibration and model unchanged, the
#             uplink's checkpoint valid, no torn scan log line, and the broker gets every scan the
#             checkpoint had not covered (duplicates allowed, losses not)
#   upgrade   a newer build of the package installed while the kiosk scans: config (a local edit),
#             table and scan logs kept, both services back (running the new files) within the
#             unit's start timeout
#   purge     users, groups, state, logs, config and unit links gone, as systemd/debian/postrm says
# The binaries and paths come from the units' ExecStart= lines and from build-deb.sh. The guest
# image is built once and cached under target/systemd-vm/ (tests/systemd-vm/image.sh); the guest's
# side of each step is tests/systemd-vm/guest.sh, the host's checks of the logs and the broker
# tests/systemd-vm/scans.py. What the broker delivers is written by a subscriber in the guest to
# a virtio port backed by a file on the host, so that a power cut loses none of it.
#   tests/systemd-vm/run.sh [BIN_DIR]   (root; BIN_DIR: built binaries to package, default
#                                        target/debug; needs qemu-system-x86, mmdebstrap,
#                                        busybox-static, e2fsprogs, python3, openssh-client)
set -euo pipefail
cd "$(dirname "$0")/../.."
bin_dir=$(realpath "${1:-target/debug}")
work=$PWD/target/systemd-vm
run=$work/run
here=$PWD/tests/systemd-vm
started=$SECONDS
phase_name=setup phase_started=$SECONDS summary=""
phase() { phase_name=$1 phase_started=$SECONDS; echo "== phase $1: $2"; }
note() { echo "   [$((SECONDS - phase_started)) s] $*"; }
phase_done() {
    local took=$((SECONDS - phase_started))
    summary+="$(printf '  %-9s %4d s  %s' "$phase_name" "$took" "$1")"$'\n'
    echo "== phase $phase_name: OK in $took s"
}
fail() { echo "FAIL systemd-vm, phase $phase_name: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "needs root (mmdebstrap, the guest image)"

# What the units run.
kiosk_unit=systemd/fashion-kiosk.service uplink_unit=systemd/fashion-kiosk-uplink.service
unit_value() { sed -n "s/^$2=//p" "$1" | head -1; }
kiosk_exec=$(unit_value $kiosk_unit ExecStart)
kiosk_bin=${kiosk_exec%% *}
kiosk_config=$(echo "$kiosk_exec" | sed -n 's/.* --config \([^ ]*\).*/\1/p')
[ -n "$kiosk_config" ] || fail "no --config in $kiosk_unit's ExecStart=$kiosk_exec"
start_timeout=$(unit_value $kiosk_unit TimeoutStartSec)
watchdog=$(unit_value $kiosk_unit WatchdogSec)
restart_sec=$(unit_value $kiosk_unit RestartSec)

echo "== guest image"
"$here/image.sh"
rm -rf "$run"
mkdir -p "$run/payload"

echo "== packages ($bin_dir)"
deb1=$(FASHION_KIOSK_BIN_DIR=$bin_dir FASHION_KIOSK_DEB_COMPRESSION=none systemd/build-deb.sh x86_64-unknown-linux-gnu)
version1=$(dpkg-deb -f "$deb1" Version)
mv "$deb1" "$run/payload/"
deb1=$run/payload/$(basename "$deb1")
# The second package and the host's table are made from the first one's binaries (a build that
# finishes meanwhile in BIN_DIR changes nothing here).
dpkg-deb -x "$deb1" "$run/deb1"
host_bin=$run/deb1$kiosk_bin
deb2=$(FASHION_KIOSK_BIN_DIR=$run/deb1/usr/bin FASHION_KIOSK_DEB_COMPRESSION=none \
    FASHION_KIOSK_VERSION="$version1+upgrade1" systemd/build-deb.sh x86_64-unknown-linux-gnu)
version2=$(dpkg-deb -f "$deb2" Version)
dpkg --compare-versions "$version2" gt "$version1" || fail "$version2 is not newer than $version1"
mv "$deb2" "$run/payload/"
deb1=/mnt/payload/$(basename "$deb1") deb2=/mnt/payload/$(basename "$deb2")
echo "$deb1 ($version1), $deb2 ($version2)"
# The catalogue table, built on the host with the tiny test model (scans in milliseconds).
tiny=tests/fixtures/tiny-model/tiny.manifest.json
"$host_bin" index --catalogue demo/catalogue --labels demo/labels.csv --model "$tiny" \
    --out "$run/payload/catalogue.fkt" > "$run/index.log" 2>&1 || { cat "$run/index.log"; fail "index"; }
cp "$tiny" "$(dirname "$tiny")/tiny.onnx" "$here/guest.sh" "$run/payload/"
truncate -s $(( $(du -sm "$run/payload" | cut -f1) + 64 ))M "$run/payload.img"
mkfs.ext4 -q -F -d "$run/payload" "$run/payload.img"
rm -rf "$run/payload" "$run/deb1"

# The VM: one vCPU, software emulation; the QEMU monitor on a socket (power cuts); ssh through a
# forwarded port; the scan recorder's virtio port to a file here. The root disk is the cached
# image with a snapshot on top (this run's writes, kept across resets, dropped at the end).
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
qemu-system-x86_64 -name systemd-vm -m 1536 -smp 1 -accel tcg -display none -no-user-config -nodefaults \
    -serial "file:$run/console.log" -monitor "unix:$run/monitor.sock,server,nowait" \
    -kernel "$work/vmlinuz" -initrd "$work/initrd.img" -append "console=ttyS0 ro quiet mitigations=off net.ifnames=0" \
    -drive "file=$work/rootfs.img,if=virtio,format=raw,snapshot=on,cache=unsafe" \
    -drive "file=$run/payload.img,if=virtio,format=raw,readonly=on" \
    -nic "user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:$port-:22" \
    -device virtio-serial-pci -chardev "file,id=recorder,path=$run/recorder.log" \
    -device virtserialport,chardev=recorder,name=recorder &
qemu=$!
ssh_opts=(-F /dev/null -i "$work/id_ed25519" -p "$port" -o StrictHostKeyChecking=no
    -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o ConnectTimeout=10
    -o ControlMaster=auto -o "ControlPath=$run/ssh.sock" -o ControlPersist=yes
    -o ServerAliveInterval=5 -o ServerAliveCountMax=2)
g() { ssh "${ssh_opts[@]}" root@127.0.0.1 "$@"; }
gs() { g "KIOSK_BIN=$kiosk_bin KIOSK_CONFIG=$kiosk_config sh /mnt/payload/guest.sh $*"; }
finish() {
    local status=$?
    if [ "$status" != 0 ]; then
        echo "---- guest journal (kiosk, uplink), last lines"
        timeout 60 ssh "${ssh_opts[@]}" root@127.0.0.1 \
            'journalctl --no-pager -n 40 -u fashion-kiosk -u fashion-kiosk-uplink' 2>/dev/null || true
        echo "---- guest console, last lines"
        tail -n 20 "$run/console.log" 2>/dev/null || true
    fi
    ssh "${ssh_opts[@]}" -O exit root@127.0.0.1 >/dev/null 2>&1 || true
    kill "$qemu" 2>/dev/null || true
    wait "$qemu" 2>/dev/null || true
    rm -f "$run/payload.img"
    echo "== systemd-vm: $([ "$status" = 0 ] && echo OK || echo FAILED) in $((SECONDS - started)) s"
    [ -z "$summary" ] || printf '%s' "$summary"
}
trap finish EXIT
monitor() { # a QEMU monitor command
    python3 - "$run/monitor.sock" "$1" <<'MON'
import socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
time.sleep(0.2)
s.recv(65536)
s.sendall(sys.argv[2].encode() + b"\n")
time.sleep(0.3)
s.close()
MON
}
wait_ssh() { # until the guest answers (at most $1 s)
    local until=$((SECONDS + $1))
    until timeout 20 ssh "${ssh_opts[@]}" root@127.0.0.1 true 2>/dev/null; do
        [ $SECONDS -lt $until ] || fail "no ssh after $1 s"
        kill -0 "$qemu" 2>/dev/null || fail "qemu exited"
        sleep 2
    done
}
boot_up() { # after a (re)boot: ssh, the payload, both services active
    local from=$SECONDS
    wait_ssh 600
    local at_ssh=$((SECONDS - from))
    mount_payload
    gs wait-active fashion-kiosk.service $((start_timeout + restart_sec)) >/dev/null
    gs wait-active fashion-kiosk-uplink.service 120 >/dev/null
    echo "   up: ssh after ${at_ssh} s, both services active after $((SECONDS - from)) s"
}
check_scans() { # the scan logs, the checkpoint and the broker's deliveries, on the host
    gs files > "$run/files"
    python3 "$here/scans.py" "$run/files" "$run/recorder.log" kiosk-vm "$@" > "$run/scans.out" ||
        { cat "$run/scans.out"; fail "scans"; }
    cat "$run/scans.out"
}
mount_payload() { g 'mountpoint -q /mnt/payload || { mkdir -p /mnt/payload && mount -o ro,noload /dev/vdb /mnt/payload; }'; }
sums() { gs sums > "$run/sums.$1"; }
same_sums() { diff "$run/sums.$1" <(gs sums) || fail "$2 changed"; }

phase boot "boot, install the package, configure, check, start, scans, the uplink"
wait_ssh 600
booted=$((SECONDS - phase_started))
mount_payload
g 'systemd-analyze; systemd-analyze blame | head -15' > "$run/boot-blame" 2>&1 || true
note "ssh up; apt-get install $deb1"
g "DEBIAN_FRONTEND=noninteractive apt-get install -y -q $deb1 </dev/null" > "$run/install.log" 2>&1 ||
    { cat "$run/install.log"; fail "apt-get install"; }
grep -q "Copy a catalogue table" "$run/install.log" || fail "postinst did not say what to do next"
g 'systemctl is-enabled fashion-kiosk.service; systemctl is-enabled fashion-kiosk-uplink.service;
   systemctl is-active fashion-kiosk.service' > "$run/enabled" || true
[ "$(tr '\n' ' ' < "$run/enabled")" = "enabled disabled inactive " ] ||
    fail "after install, expected the kiosk enabled (not started: no table) and the uplink disabled: $(cat "$run/enabled")"
note "installed: the kiosk enabled, not started (no table yet), the uplink disabled; configuring"
gs configure
g "runuser -u fashion-kiosk -- $kiosk_bin check --config $kiosk_config" > "$run/check.log" 2>&1 ||
    { cat "$run/check.log"; fail "check"; }
! grep -q FAIL "$run/check.log" || { cat "$run/check.log"; fail "check reports a FAIL"; }
sed 's/^/     check: /' "$run/check.log" | head -12
note "check passed; systemctl start"
t=$SECONDS
g systemctl start fashion-kiosk.service
state=$(gs show fashion-kiosk.service)
note "started in $((SECONDS - t)) s (Type=notify: systemctl start waits for READY=1): $state"
for expected in ActiveState=active SubState=running "StatusText=ready: 300 items"; do
    [[ "$state" == *"$expected"* ]] || fail "not ready ($expected): $state"
done
g systemctl enable --now fashion-kiosk-uplink.service 2>&1 | sed 's/^/     /'
out=$(gs show fashion-kiosk-uplink.service)
note "uplink: $out"
out=$(gs scans 4 180)
note "$out"
[ "$(gs outcomes 4)" = "ok ok ok ok" ] || fail "scans were not ok: $(gs outcomes 4)"
out=$(gs wait-uplink 120)
note "$out"
screens=$(g "ls /var/lib/fashion-kiosk/screens | grep -c '\.png$'")
[ "$screens" -gt 0 ] || fail "no screens drawn"
out=$(check_scans)
note "$screens screens drawn (PNG); $out"
phase_done "ssh after $booted s; install, check, READY; 4 scans ok, in the log and on the broker"

phase sandbox "the unit's seccomp filter and namespaces, as systemd applies them"
g 'pid=$(systemctl show -p MainPID --value fashion-kiosk.service)
   grep -E "^(Uid|NoNewPrivs|Seccomp|Seccomp_filters|CapInh|CapPrm|CapEff|CapBnd|CapAmb):" /proc/$pid/status
   for ns in net mnt uts ipc pid; do
       [ "$(readlink /proc/$pid/ns/$ns)" = "$(readlink /proc/1/ns/$ns)" ] && echo "ns $ns: shared" || echo "ns $ns: own"
   done
   echo "links: $(nsenter -t $pid -n ip -o link | cut -d: -f2 | tr -d " \n")"
   grep -E " / | /var/lib/fashion-kiosk | /home | /tmp " /proc/$pid/mountinfo | awk "{print \"mount\", \$5, \$6}"' > "$run/sandbox"
sed 's/^/   /' "$run/sandbox"
for expected in "NoNewPrivs:	1" "Seccomp:	2" "CapEff:	0000000000000000" "CapBnd:	0000000000000000" \
    "ns net: own" "ns mnt: own" "ns uts: own"; do
    grep -qF "$expected" "$run/sandbox" || fail "expected \"$expected\" in the kiosk's /proc status"
done
grep -qx 'links: lo' "$run/sandbox" || fail "the kiosk sees a network link besides lo"
grep -q '^mount / ro' "$run/sandbox" || fail "/ is not read-only for the kiosk"
grep -q '^mount /var/lib/fashion-kiosk rw' "$run/sandbox" || fail "the state folder is not writable for the kiosk"
for unit_limit in fashion-kiosk.service:1.0 fashion-kiosk-uplink.service:2.0; do
    unit=${unit_limit%%:*} limit=${unit_limit##*:}
    exposure=$(g "systemd-analyze security $unit" | sed -n "s/.*Overall exposure level for $unit: \([0-9.]*\).*/\1/p")
    echo "   systemd-analyze security $unit (in the guest, running): $exposure"
    awk -v e="$exposure" -v l="$limit" 'BEGIN { exit !(e != "" && e <= l) }' || fail "$unit exposure $exposure > $limit"
done
gs seccomp-probe > "$run/probe"
sed 's/^/   /' "$run/probe"
grep -qx "with the unit's sandbox: setpriority refused" "$run/probe" &&
    grep -qx "without it: setpriority allowed" "$run/probe" || fail "the system-call filter probe"
gs scans 1 60 >/dev/null
[ "$(gs outcomes 1)" = ok ] || fail "the scan was not ok: $(gs outcomes 1)"
out=$(check_scans)
note "a scan under it: ok; $out"
phase_done "Seccomp 2, NoNewPrivs 1, no capabilities, own net/mnt/uts namespaces, filter probe refused, a scan ok"

phase watchdog "SIGSTOP the main process: systemd's watchdog (WatchdogSec=$watchdog) kills and restarts it"
before=$(gs show fashion-kiosk.service)
pid=$(g systemctl show -p MainPID --value fashion-kiosk.service)
restarts=$(g systemctl show -p NRestarts --value fashion-kiosk.service)
g "kill -STOP $pid"
stopped=$SECONDS
until [ "$(g "systemctl show -p MainPID --value fashion-kiosk.service")" != "$pid" ]; do
    [ $((SECONDS - stopped)) -lt $((watchdog * 3)) ] || fail "still $pid after $((watchdog * 3)) s"
    sleep 2
done
killed=$((SECONDS - stopped))
gs wait-active fashion-kiosk.service $((start_timeout + restart_sec)) >/dev/null
after=$(gs show fashion-kiosk.service)
echo "   before: $before"
echo "   after:  $after"
[ "$(g systemctl show -p NRestarts --value fashion-kiosk.service)" -gt "$restarts" ] || fail "NRestarts did not grow"
g "journalctl --no-pager -u fashion-kiosk.service -n 30" | grep -i "watchdog timeout" | tail -1 | sed 's/^/   journal: /'
g "journalctl --no-pager -u fashion-kiosk.service -n 30" | grep -qi "watchdog timeout" || fail "no watchdog timeout in the journal"
gs scans 1 60
phase_done "killed $killed s after SIGSTOP, active again after $((SECONDS - stopped)) s (RestartSec=$restart_sec)"

phase powercut "system_reset from the QEMU monitor, three times"
gs calibrate 120
sums before
: > "$run/cuts"
cut_number=0
for moment in mid-scan after-line burst; do
    cut_number=$((cut_number + 1))
    gs cut-moment "$moment"
    ssh "${ssh_opts[@]}" -O exit root@127.0.0.1 >/dev/null 2>&1 || true
    monitor system_reset
    cut_at=$SECONDS
    echo "   cut $cut_number ($moment): reset"
    boot_up
    gs files > "$run/files"
    python3 - "$run/files" >> "$run/cuts" <<'COUNT'
import sys
data = open(sys.argv[1], "rb").read()
# the live scan log's whole lines, with the rotated ones before it: the scans logged before the cut
lines, at = 0, 0
while at < len(data):
    end = data.index(b"\n", at)
    name, size = data[at + 3:end].decode().rsplit(" ", 1)
    if name != "checkpoint":
        lines += data[end + 1:end + 1 + int(size)].count(b"\n")
    at = end + 1 + int(size)
print(lines)
COUNT
    same_sums before "the table, config, model or calibration (cut $cut_number)"
    gs wait-uplink 180
    check_scans "$run/cuts"
    echo "   cut $cut_number: back and caught up in $((SECONDS - cut_at)) s"
    [ $cut_number = 3 ] || gs scans 1 60 >/dev/null
done
phase_done "3 cuts (mid-scan, after a line, burst): files intact, no torn line, nothing lost"

phase upgrade "install $version2 while the kiosk scans"
gs presser-stop
sums before-upgrade
old_log=$(g 'sha256sum < /var/log/fashion-kiosk/scans.jsonl')
old_size=$(g 'stat -c %s /var/log/fashion-kiosk/scans.jsonl')
pid=$(g systemctl show -p MainPID --value fashion-kiosk.service)
uplink_pid=$(g systemctl show -p MainPID --value fashion-kiosk-uplink.service)
gs presser-start 4
gs scans 1 60 >/dev/null
t=$SECONDS
g "DEBIAN_FRONTEND=noninteractive apt-get install -y -q $deb2 </dev/null" > "$run/upgrade.log" 2>&1 ||
    { cat "$run/upgrade.log"; fail "apt-get install (upgrade)"; }
installed=$((SECONDS - t))
gs wait-active fashion-kiosk.service "$start_timeout" >/dev/null
downtime=$(gs downtime fashion-kiosk.service)
note "installed in $installed s; the kiosk was out of service for $downtime s (stop to READY)"
awk -v d="$downtime" -v l="$start_timeout" 'BEGIN { exit !(d < l) }' || fail "out of service $downtime s, more than TimeoutStartSec=$start_timeout"
[ "$(g "dpkg-query -W -f '\${Version}' fashion-kiosk")" = "$version2" ] || fail "not $version2 after the upgrade"
new_pid=$(g systemctl show -p MainPID --value fashion-kiosk.service)
new_uplink_pid=$(g systemctl show -p MainPID --value fashion-kiosk-uplink.service)
[ "$new_pid" != "$pid" ] || fail "the kiosk was not restarted by the upgrade"
[ "$new_uplink_pid" != "$uplink_pid" ] || fail "the uplink was not restarted by the upgrade (it runs the old binary)"
g "ls -l /proc/$new_pid/exe /proc/$new_uplink_pid/exe" | grep deleted && fail "a service runs a deleted binary"
grep -qi "conffile\|configuration file" "$run/upgrade.log" && { cat "$run/upgrade.log"; fail "dpkg asked about the config"; }
same_sums before-upgrade "the config, table or calibration (upgrade)"
g 'ls /etc/fashion-kiosk/' | grep -q dpkg && fail "dpkg left a .dpkg-* file beside the config"
[ "$(g "head -c $old_size /var/log/fashion-kiosk/scans.jsonl | sha256sum")" = "$old_log" ] || fail "the scan log's old lines changed"
gs scans 2 120 >/dev/null
gs presser-stop
gs wait-uplink 120
check_scans
phase_done "installed in $installed s, out of service $downtime s (TimeoutStartSec=$start_timeout); config, table, logs kept"

phase purge "apt-get purge"
g "DEBIAN_FRONTEND=noninteractive apt-get purge -y -q fashion-kiosk </dev/null" > "$run/purge.log" 2>&1 ||
    { cat "$run/purge.log"; fail "apt-get purge"; }
g 'for u in fashion-kiosk fashion-kiosk-uplink; do getent passwd $u && echo "left: user $u"; getent group $u && echo "left: group $u"; done
   for p in /var/lib/fashion-kiosk /var/log/fashion-kiosk /var/lib/fashion-kiosk-uplink /etc/fashion-kiosk /usr/bin/fashion-kiosk \
       /lib/systemd/system/fashion-kiosk.service /lib/systemd/system/fashion-kiosk-uplink.service; do [ -e $p ] && echo "left: $p"; done
   ls /etc/systemd/system/*/ /var/lib/systemd/deb-systemd-helper-enabled/ /var/lib/systemd/deb-systemd-helper-masked/ 2>/dev/null | grep fashion-kiosk | sed "s/^/left: link /"
   pgrep -u fashion-kiosk,fashion-kiosk-uplink >/dev/null 2>&1 && echo "left: processes"
   dpkg -l fashion-kiosk 2>/dev/null | grep "^[a-z][a-z] " | grep -v "^un\|^pn" | sed "s/^/left: package /"
   true' > "$run/purge.left"
[ ! -s "$run/purge.left" ] || { cat "$run/purge.left"; fail "purge left things behind"; }
phase_done "users, groups, state, logs, config and unit links gone"
