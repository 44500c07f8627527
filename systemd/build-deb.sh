#!/usr/bin/env bash
# Builds the Debian package from a release build:
#   systemd/build-deb.sh aarch64-unknown-linux-gnu       → target/debian/fashion-kiosk_VERSION_arm64.deb
#   systemd/build-deb.sh armv7-unknown-linux-gnueabihf   → target/debian/fashion-kiosk_VERSION_armhf.deb
#   systemd/build-deb.sh x86_64-unknown-linux-gnu        → target/debian/fashion-kiosk_VERSION_amd64.deb (x86 mini-PCs)
# Contents: the workspace's binaries in /usr/bin (the units run some; `fashion-kiosk` forwards
# commands to the others, found beside it), the systemd units, the default config in
# /etc/fashion-kiosk/ (a conffile: kept on upgrade), the int8 model, its twin that computes it in
# fp32 (which `model.manifest = "auto"` runs on a Pi 4) and the demo catalogue in
# /usr/share/fashion-kiosk/, and the maintainer scripts in systemd/debian/ (service user, groups,
# folders, enable; clean removal). The binaries come from target/TARGET/release (built with
# `cargo build --release --target TARGET --workspace --bins` when one is missing); every program
# a unit's ExecStart= names must be one of them.
# Environment (for tests; the defaults make the release package):
#   FASHION_KIOSK_BIN_DIR=DIR     take the binaries from DIR instead (e.g. target/debug; stripped
#                                 of debug information in the package); nothing is built
#   FASHION_KIOSK_VERSION=V       the package's version instead of Cargo.toml's (an upgrade test)
#   FASHION_KIOSK_DEB_COMPRESSION=xz|gzip|zstd|none   dpkg-deb's compression (default xz)
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:?usage: systemd/build-deb.sh TARGET}
case "$target" in
    aarch64-unknown-linux-gnu) arch=arm64 strip=aarch64-linux-gnu-strip ;;
    armv7-unknown-linux-gnueabihf) arch=armhf strip=arm-linux-gnueabihf-strip ;;
    x86_64-unknown-linux-gnu) arch=amd64 strip=x86_64-linux-gnu-strip ;;
    *) echo "no Debian architecture known for $target" >&2; exit 2 ;;
esac
# The workspace's binaries and the package's version (fashion-kiosk's), from cargo.
read -r cargo_version binaries < <(cargo metadata --no-deps --format-version 1 --offline | python3 -c '
import json, sys
meta = json.load(sys.stdin)
version = next(p["version"] for p in meta["packages"] if p["name"] == "fashion-kiosk")
bins = sorted({t["name"] for p in meta["packages"] for t in p["targets"] if "bin" in t["kind"]})
print(version, " ".join(bins))')
version=${FASHION_KIOSK_VERSION:-$cargo_version}
units=(systemd/fashion-kiosk.service systemd/fashion-kiosk-uplink.service)
for program in $(sed -n 's/^ExecStart=-\{0,1\}\([^ ]*\).*/\1/p' "${units[@]}" | sort -u); do
    case " $binaries " in
        *" ${program#/usr/bin/} "*) ;;
        *) echo "$program (ExecStart=) is not one of the workspace's binaries: $binaries" >&2; exit 2 ;;
    esac
done
bin_dir=${FASHION_KIOSK_BIN_DIR:-target/$target/release}
for binary in $binaries; do
    if [ ! -x "$bin_dir/$binary" ]; then
        [ -z "${FASHION_KIOSK_BIN_DIR:-}" ] || { echo "no $bin_dir/$binary" >&2; exit 2; }
        cargo build --release --target "$target" --workspace --bins
        break
    fi
done

root=target/debian/root-$arch
rm -rf "$root"
for binary in $binaries; do
    program=/usr/bin/$binary
    install -Dm755 "$bin_dir/$binary" "$root$program"
    # A release build is stripped by its profile; another build (FASHION_KIOSK_BIN_DIR) is
    # stripped here, with the target's strip (or, for this machine's own target, plain strip).
    if [ -n "${FASHION_KIOSK_BIN_DIR:-}" ]; then
        if command -v "$strip" >/dev/null; then "$strip" "$root$program"
        elif [ "$target" = "$(rustc -vV 2>/dev/null | sed -n 's/^host: //p')" ]; then strip "$root$program"
        else echo "warning: no $strip: $program is not stripped" >&2
        fi
    fi
done
for unit in "${units[@]}"; do
    install -Dm644 "$unit" "$root/lib/systemd/system/$(basename "$unit")"
done
install -Dm644 systemd/kiosk.toml "$root/etc/fashion-kiosk/kiosk.toml"
share=$root/usr/share/fashion-kiosk
for file in fashion-resnet50-int8.onnx fashion-resnet50-int8.manifest.json \
    fashion-resnet50-int8-emulated.onnx fashion-resnet50-int8-emulated.manifest.json \
    garment-parser.onnx garment-parser.manifest.json; do
    install -Dm644 "models/$file" "$share/models/$file"
done
install -d "$share/demo"
cp -r demo/catalogue demo/photos "$share/demo/"
install -m644 demo/labels.csv demo/kiosk.toml demo/README.md "$share/demo/"
find "$share/demo" -type d -exec chmod 755 {} + && find "$share/demo" -type f -exec chmod 644 {} +
doc=$root/usr/share/doc/fashion-kiosk
install -Dm644 README.md "$doc/README.md"
# The README links to docs/: they travel with it.
install -Dm644 -t "$doc/docs" docs/*.md
cat > "$doc/copyright" <<COPYRIGHT
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: fashion-kiosk

Files: *
Copyright: 2026 the fashion-kiosk developers
License: MIT or Apache-2.0
 On Debian systems the Apache License 2.0 is in /usr/share/common-licenses/Apache-2.0.

Files: usr/share/fashion-kiosk/demo/*
Copyright: 2019 the contributors of the Kaggle "Fashion Product Images" data set
License: sample-data
 Sample catalogue images for demonstration only; see demo/README.md.
COPYRIGHT
printf 'fashion-kiosk (%s) unstable; urgency=medium\n\n  * Release %s.\n\n -- fashion-kiosk developers <kiosk@example.org>  %s\n' \
    "$version" "$version" "$(date -R -d @"${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}")" \
    | gzip -9n > "$doc/changelog.gz"
chmod 644 "$doc/changelog.gz"
install -Dm644 /dev/stdin "$root/usr/share/lintian/overrides/fashion-kiosk" <<'OVERRIDES'
# The model and demo catalogue are data the binary reads; they are architecture-independent but
# ship with the binary so that one package installs a working kiosk.
fashion-kiosk: package-contains-documentation-outside-usr-share-doc [usr/share/fashion-kiosk/demo/README.md]
# The service's own manual is its README (installed in /usr/share/doc/fashion-kiosk) and --help.
OVERRIDES
for binary in $binaries; do
    echo "fashion-kiosk: no-manual-page [usr/bin/$binary]" >> "$root/usr/share/lintian/overrides/fashion-kiosk"
done

# The newest glibc symbol version the binaries use is the libc6 they need.
glibc=$(for binary in $binaries; do readelf --dyn-syms -W "$root/usr/bin/$binary"; done |
    grep -o "GLIBC_[0-9.]*" | sed "s/GLIBC_//" | sort -V | tail -1)
size_kib=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
install -d "$root/DEBIAN"
cat > "$root/DEBIAN/control" <<CONTROL
Package: fashion-kiosk
Version: $version
Architecture: $arch
Maintainer: fashion-kiosk developers <kiosk@example.org>
Installed-Size: $size_kib
Depends: libc6 (>= $glibc), libgcc-s1, adduser
Section: misc
Priority: optional
Homepage: https://example.org/fashion-kiosk
Description: button-to-recommendation fashion kiosk for the Raspberry Pi
 A shopper presses a button; the kiosk grabs a camera frame (V4L2), embeds it
 with an int8 ResNet50 (tract), looks it up in an on-device embedding table of
 the store's catalogue and shows the matching item ids on an SSD1306 OLED.
 Runs offline under systemd. Includes the model and a demo catalogue.
CONTROL
echo /etc/fashion-kiosk/kiosk.toml > "$root/DEBIAN/conffiles"
install -m755 systemd/debian/postinst systemd/debian/prerm systemd/debian/postrm "$root/DEBIAN/"

out=target/debian/fashion-kiosk_${version}_${arch}.deb
dpkg-deb --root-owner-group -Z"${FASHION_KIOSK_DEB_COMPRESSION:-xz}" --build "$root" "$out" >/dev/null
echo "$out"
