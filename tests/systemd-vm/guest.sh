#!/bin/sh
# The guest's half of tests/systemd-vm/run.sh: what an operator does on the kiosk, and waits.
# Runs as root inside the VM, from the payload disk (/mnt/payload, which run.sh mounts), one
# subcommand per call:
#   guest.sh SUBCOMMAND [ARGS]
# KIOSK_BIN and KIOSK_CONFIG (the kiosk unit's program and config, read by run.sh from its
# ExecStart= line) come in the environment.
set -eu
payload=/mnt/payload
config=${KIOSK_CONFIG:?}
bin=${KIOSK_BIN:?}
# The paths the operator's config names (set by `configure`, read back from the config).
setting() { # SECTION KEY: a string value of the config
    sed -n "/^\[$1\]/,/^\[/s/^$2 = \"\(.*\)\"/\1/p" "$config" | head -1
}
state=/var/lib/fashion-kiosk
sock=$state/trigger.sock
log() { setting scan_log path; }
lines() { cat "$(log)" 2>/dev/null | wc -l; }
key_of() { # a scan log line → its uplink key, KIOSK_ID/BOOT/SCAN (the id is the host name)
    boot=$(printf '%s' "$1" | sed -n 's/.*"boot":"\([^"]*\)".*/\1/p')
    scan=$(printf '%s' "$1" | sed -n 's/.*"scan":\([0-9]*\).*/\1/p')
    echo "$(hostname)/$boot/$scan"
}
checkpoint_key() {
    sed -n 's/.*"last_key":"\([^"]*\)".*/\1/p' /var/lib/fashion-kiosk-uplink/checkpoint.json 2>/dev/null
}
press() { echo press | socat -u - "UNIX-SENDTO:$sock"; }
now() { date +%s.%N; }
elapsed() { awk -v s="$1" -v n="$(now)" 'BEGIN { printf "%.1f", n - s }'; }
within() { awk -v s="$1" -v n="$(now)" -v l="$2" 'BEGIN { exit !(n - s < l) }'; } # START SECS

cmd=$1
shift
case "$cmd" in
configure)
    # As README's "Install" says, with this VM's parts: the vivid module is the camera (loaded at
    # every boot, as a USB camera would be there), a socket is the button, PNGs are the screen,
    # the broker is this machine's; the tiny test model (for speed under emulation) and a table
    # built with it on the host. The white card step is off: vivid shows no card.
    modprobe vivid
    echo vivid > /etc/modules-load.d/vivid.conf
    udevadm settle
    ls -l /dev/video0
    install -d -o fashion-kiosk -g fashion-kiosk -m 750 $state/models
    install -o fashion-kiosk -g fashion-kiosk -m 640 $payload/tiny.manifest.json $payload/tiny.onnx $state/models/
    sed -i \
        -e "s|^manifest = \"auto\"|manifest = \"$state/models/tiny.manifest.json\"|" \
        -e 's|^threads = 0|threads = 1|' \
        -e '/^\[trigger\]/,/^\[/{s|^kind = "gpio"|kind = "socket"\npath = "'$sock'"|;/^pin = /d;/^backend = /d;/^chip = /d}' \
        -e '/^\[display\]/,/^\[/{s|^kind = "ssd1306"|kind = "simulated"\nscreens = "'$state'/screens"|;/^bus = /d;/^address = /d}' \
        -e '/^\[scene\]/,/^\[/s|^card = true|card = false|' \
        -e '/^\[kiosk\]/,/^\[/s|^results_secs = 8|results_secs = 2|' \
        "$config"
    printf '\n[uplink]\nbroker = "127.0.0.1"\nport = 1883\ntls = false\n' >> "$config"
    table=$(setting catalogue table)
    install -o fashion-kiosk -g fashion-kiosk -m 640 $payload/catalogue.fkt "$table.new"
    mv "$table.new" "$table"
    ;;
check)
    runuser -u fashion-kiosk -- "$bin" check --config "$config"
    ;;
downtime) # UNIT: seconds from its last stop to its last READY (a restart's time out of service)
    systemctl show -p ActiveExitTimestampMonotonic -p ActiveEnterTimestampMonotonic "$1" |
        awk -F= '{ t[$1] = $2 } END { printf "%.1f\n", (t["ActiveEnterTimestampMonotonic"] - t["ActiveExitTimestampMonotonic"]) / 1e6 }'
    ;;
show) # UNIT: its state as systemd has it
    systemctl show -p ActiveState -p SubState -p StatusText -p NRestarts -p MainPID -p Result "$1" | tr '\n' ' '
    echo
    ;;
wait-active) # UNIT SECS: until systemd has it active (for Type=notify: READY=1 was received)
    start=$(now)
    until [ "$(systemctl show -p ActiveState --value "$1")" = active ]; do
        within "$start" "$2" || { systemctl status --no-pager "$1" | tail -20; exit 1; }
        sleep 0.5
    done
    echo "$1 active after $(elapsed "$start") s"
    ;;
press)
    press
    ;;
cut-moment) # MOMENT: returns when the host is to cut the power
    case "$1" in
    mid-scan) # a press: the scan is capturing or embedding when the power goes
        press ;;
    after-line) # presses until a scan's line is written: the uplink is publishing it
        n=$(lines)
        until [ "$(lines)" -gt "$n" ]; do press; sleep 0.3; done ;;
    burst) # presses every 0.3 s for a while: scans, log writes and publishing overlap
        systemd-run --quiet --unit=test-burst /bin/sh -c \
            "while :; do echo press | socat -u - UNIX-SENDTO:$sock; sleep 0.3; done"
        sleep "$(awk 'BEGIN { srand(); printf "%.1f", 3 + 3 * rand() }')" ;;
    esac
    ;;
scans) # N SECS: press until N more scans are logged
    target=$(( $(lines) + $1 ))
    start=$(now)
    while [ "$(lines)" -lt $target ]; do
        within "$start" "$2" || { echo "$(lines) of $target lines after $2 s"; exit 1; }
        press
        sleep 1
    done
    echo "$1 scans logged in $(elapsed "$start") s"
    ;;
outcomes) # N: the outcomes of the last N scans
    tail -n "$1" "$(log)" | sed 's/.*"outcome":"\([a-z]*\)".*/\1/' | tr '\n' ' ' | sed 's/ $//'
    echo
    ;;
presser-start) # presses every SECS in the background, as a transient unit (survives ssh)
    systemd-run --quiet --unit=test-presser --property=Type=simple /bin/sh -c \
        "while :; do echo press | socat -u - UNIX-SENDTO:$sock; sleep $1; done"
    ;;
presser-stop)
    systemctl stop test-presser.service 2>/dev/null || true
    ;;
wait-uplink) # SECS: until the broker has acknowledged the last logged scan
    start=$(now)
    while :; do
        want=$(key_of "$(tail -n 1 "$(log)")")
        [ "$(checkpoint_key)" = "$want" ] && break
        within "$start" "$1" || {
            echo "uplink: checkpoint at $(checkpoint_key), log at $want after $1 s"
            journalctl -u fashion-kiosk-uplink --no-pager | tail -20
            exit 1
        }
        sleep 0.5
    done
    echo "uplink: the broker acknowledged up to $want after $(elapsed "$start") s"
    ;;
calibrate) # SECS: the operator's SIGUSR2 calibration, until its files are written
    ref=$(setting scene reference)
    rm -f "$ref"
    systemctl kill -s USR2 fashion-kiosk
    start=$(now)
    until [ -s "$ref" ] && [ -s "${ref%.png}.toml" ]; do
        within "$start" "$1" || { echo "no calibration after $1 s"; exit 1; }
        sleep 0.5
    done
    echo "calibrated in $(elapsed "$start") s: $(ls "${ref%.png}"*)"
    ;;
seccomp-probe) # the installed unit's sandbox lines on a transient unit: setpriority (@resources) refused
    unit=/lib/systemd/system/fashion-kiosk.service
    set --
    while IFS= read -r line; do
        set -- "$@" -p "$line"
    done <<LINES
$(sed -n '/^NoNewPrivileges=/,/^SystemCallErrorNumber=/p' $unit | grep -v '^#' | grep -v '^IPAddressDeny=')
LINES
    probe='nice -n 5 true 2>&1 | grep -q "cannot set niceness" && echo refused || echo allowed'
    echo "with the unit's sandbox: setpriority $(systemd-run --quiet --wait --pipe -p User=fashion-kiosk "$@" sh -c "$probe")"
    echo "without it: setpriority $(systemd-run --quiet --wait --pipe -p User=fashion-kiosk sh -c "$probe")"
    ;;
sums) # what a power cut or an upgrade must leave as it was
    ref=$(setting scene reference)
    sha256sum "$config" "$(setting catalogue table)" $state/models/* "${ref%.png}"* | sort -k2
    ;;
files) # the scan logs and the uplink's checkpoint, for the host to check
    for f in "$(log)"* /var/lib/fashion-kiosk-uplink/checkpoint.json; do
        [ -f "$f" ] || continue
        name=$f
        [ "$f" != /var/lib/fashion-kiosk-uplink/checkpoint.json ] || name=checkpoint
        size=$(stat -c %s "$f")
        echo "== $name $size"
        head -c "$size" "$f"
    done
    ;;
*)
    echo "guest.sh: unknown subcommand $cmd" >&2
    exit 2
    ;;
esac
