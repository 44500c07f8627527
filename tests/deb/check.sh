#!/usr/bin/env bash
# Checks a built fashion-kiosk .deb: control fields, contents, conffiles, the binary's
# architecture, the model's checksum, the unit (systemd-analyze verify against the package's
# files), what the maintainer scripts do (run with recording stubs), and lintian.
#   tests/deb/check.sh target/debian/fashion-kiosk_0.1.0_arm64.deb    (also armhf, amd64)
set -euo pipefail
deb=$(realpath "$1")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL $deb: $*" >&2; exit 1; }

arch=$(dpkg-deb -f "$deb" Architecture)
case "$arch" in
    arm64) machine=AArch64 ;;
    armhf) machine=ARM ;;
    amd64) machine=X86-64 ;;
    *) fail "unexpected architecture $arch" ;;
esac
[ "$(dpkg-deb -f "$deb" Package)" = fashion-kiosk ] || fail "package name"
dpkg-deb -f "$deb" Depends | grep -q 'libc6 (>= 2\.[0-9]*)' || fail "no libc6 version in Depends"
echo "control: $(dpkg-deb -f "$deb" Package Version Architecture Depends | tr '\n' ' ')"

dpkg-deb --contents "$deb" > "$work/contents"
for path in ./usr/bin/fashion-kiosk ./lib/systemd/system/fashion-kiosk.service \
    ./lib/systemd/system/fashion-kiosk-uplink.service \
    ./etc/fashion-kiosk/kiosk.toml \
    ./usr/share/fashion-kiosk/models/fashion-resnet50-int8.onnx \
    ./usr/share/fashion-kiosk/models/fashion-resnet50-int8.manifest.json \
    ./usr/share/fashion-kiosk/models/fashion-resnet50-int8-emulated.onnx \
    ./usr/share/fashion-kiosk/models/fashion-resnet50-int8-emulated.manifest.json \
    ./usr/share/fashion-kiosk/models/garment-parser.onnx \
    ./usr/share/fashion-kiosk/models/garment-parser.manifest.json \
    ./usr/share/fashion-kiosk/demo/labels.csv ./usr/share/fashion-kiosk/demo/kiosk.toml \
    ./usr/share/doc/fashion-kiosk/copyright ./usr/share/doc/fashion-kiosk/README.md; do
    grep -q " $path\$" "$work/contents" || fail "missing $path"
done
# Every program a unit runs (and the ones `fashion-kiosk` forwards to) is in the package.
programs="fashion-kiosk fashion-kiosk-build fashion-kiosk-uplink"
for program in $programs; do
    grep -q "^-rwxr-xr-x root/root .* ./usr/bin/$program\$" "$work/contents" || fail "/usr/bin/$program missing, or not 0755 root"
done
images=$(grep -c ' ./usr/share/fashion-kiosk/demo/catalogue/.*\.jpg$' "$work/contents")
[ "$images" = 300 ] || fail "$images demo catalogue images, expected 300"
echo "contents: $(wc -l < "$work/contents") entries, $images demo images"

dpkg-deb --ctrl-tarfile "$deb" | tar -x -C "$work" ./conffiles ./postinst ./prerm ./postrm
[ "$(cat "$work/conffiles")" = /etc/fashion-kiosk/kiosk.toml ] || fail "conffiles"
for script in postinst prerm postrm; do sh -n "$work/$script" || fail "$script syntax"; done

root=$work/root
dpkg-deb -x "$deb" "$root"
for program in $programs; do
    readelf -h "$root/usr/bin/$program" | grep -q "Machine:.*$machine" || fail "$program is not $machine"
done
for unit in fashion-kiosk fashion-kiosk-uplink; do
    exec_start=$(sed -n 's/^ExecStart=-\{0,1\}\([^ ]*\).*/\1/p' "$root/lib/systemd/system/$unit.service")
    [ -x "$root$exec_start" ] || fail "$unit.service runs $exec_start, which the package does not hold"
done
for model in fashion-resnet50-int8 fashion-resnet50-int8-emulated garment-parser; do
    # The model's own sha256 is the manifest's first (a twin's comes later).
    manifest_sha=$(sed -n 's/.*"sha256": *"\([0-9a-f]*\)".*/\1/p' "$root/usr/share/fashion-kiosk/models/$model.manifest.json" | head -1)
    [ "$(sha256sum < "$root/usr/share/fashion-kiosk/models/$model.onnx" | cut -d' ' -f1)" = "$manifest_sha" ] \
        || fail "$model does not match its manifest's sha256"
done
echo "binaries: $machine, $(for p in $programs; do printf '%s %s bytes; ' "$p" "$(stat -c %s "$root/usr/bin/$p")"; done)the models match their manifests"

# The unit against the package's own files (and the host's systemd units for the targets).
mkdir -p "$root/bin" "$root/etc/systemd/system"
cp /bin/kill "$root/bin/kill"
cp -an /lib/systemd/system/. "$root/lib/systemd/system/"
for unit in fashion-kiosk.service fashion-kiosk-uplink.service; do
    verify=$(systemd-analyze verify --root="$root" "$unit" 2>&1) || fail "systemd-analyze verify $unit: $verify"
    [ -z "$verify" ] || fail "systemd-analyze verify $unit warned: $verify"
done
echo "units: systemd-analyze verify clean"

# Maintainer scripts, run with stubs that record each command instead of changing the system.
stubs=$work/stubs
mkdir -p "$stubs"
for cmd in getent addgroup adduser deluser install deb-systemd-helper deb-systemd-invoke systemctl rm; do
    printf '#!/bin/sh\necho "%s $*" >> "%s/calls"\n[ "%s" != getent ]\n' "$cmd" "$work" "$cmd" > "$stubs/$cmd"
    chmod +x "$stubs/$cmd"
done
PATH="$stubs:$PATH" sh "$work/postinst" configure > "$work/postinst.out"
grep -qx 'adduser --quiet --system --group --no-create-home --home /var/lib/fashion-kiosk --gecos fashion-kiosk service fashion-kiosk' "$work/calls" \
    || fail "postinst does not create the system user: $(cat "$work/calls")"
for group in video i2c gpio; do
    grep -qx "adduser --quiet fashion-kiosk $group" "$work/calls" || fail "postinst does not add the user to $group"
done
grep -qx 'deb-systemd-helper enable fashion-kiosk.service' "$work/calls" || fail "postinst does not enable the unit"
grep -qx 'adduser --quiet --system --group --no-create-home --home /var/lib/fashion-kiosk-uplink --gecos fashion-kiosk uplink fashion-kiosk-uplink' "$work/calls" \
    || fail "postinst does not create the uplink's user"
grep -qx 'adduser --quiet fashion-kiosk-uplink fashion-kiosk' "$work/calls" || fail "the uplink's user cannot read the scan log"
! grep -q 'enable fashion-kiosk-uplink' "$work/calls" || fail "postinst enables the uplink, which needs a broker first"
grep -q '^install -d -o fashion-kiosk -g fashion-kiosk -m 0750 /var/lib/fashion-kiosk /var/log/fashion-kiosk$' "$work/calls" \
    || fail "postinst does not make the state and log folders"
: > "$work/calls"
PATH="$stubs:$PATH" sh "$work/prerm" remove
PATH="$stubs:$PATH" sh "$work/postrm" remove
grep -qx 'deb-systemd-helper mask fashion-kiosk.service' "$work/calls" || fail "postrm remove does not mask the unit"
! grep -q '^rm \|^deluser' "$work/calls" || fail "postrm remove deletes data"
: > "$work/calls"
PATH="$stubs:$PATH" sh "$work/postrm" purge
grep -qx 'rm -rf /var/lib/fashion-kiosk /var/log/fashion-kiosk /var/lib/fashion-kiosk-uplink' "$work/calls" || fail "postrm purge keeps the data"
grep -qx 'deb-systemd-helper purge fashion-kiosk-uplink.service' "$work/calls" || fail "postrm purge keeps the uplink unit's state"
grep -qx 'deb-systemd-helper purge fashion-kiosk.service' "$work/calls" || fail "postrm purge keeps the unit state"
echo "maintainer scripts: user, groups, folders and unit on configure; data kept on remove, gone on purge"

if command -v lintian >/dev/null; then
    lintian --fail-on error,warning "$deb" || fail "lintian"
    echo "lintian: no errors or warnings"
fi
echo "OK $deb"
