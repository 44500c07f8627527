#!/usr/bin/env bash
# Builds the Debian package for a Raspberry Pi target from its release build:
#   systemd/build-deb.sh aarch64-unknown-linux-gnu       → target/debian/fashion-kiosk_VERSION_arm64.deb
#   systemd/build-deb.sh armv7-unknown-linux-gnueabihf   → target/debian/fashion-kiosk_VERSION_armhf.deb
# Contents: the binary, the systemd unit, the default config in /etc/fashion-kiosk/ (a conffile:
# kept on upgrade), the int8 model, its twin that computes it in fp32 (which `model.manifest =
# "auto"` runs on a Pi 4) and the demo catalogue in /usr/share/fashion-kiosk/, and the maintainer
# scripts in systemd/debian/ (service user, groups, folders, enable; clean removal).
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:?usage: systemd/build-deb.sh TARGET}
case "$target" in
    aarch64-unknown-linux-gnu) arch=arm64 ;;
    armv7-unknown-linux-gnueabihf) arch=armhf ;;
    *) echo "no Debian architecture known for $target" >&2; exit 2 ;;
esac
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
binary=target/$target/release/fashion-kiosk
[ -x "$binary" ] || cargo build --release --target "$target"

root=target/debian/root-$arch
rm -rf "$root"
install -Dm755 "$binary" "$root/usr/bin/fashion-kiosk"
install -Dm644 systemd/fashion-kiosk.service "$root/lib/systemd/system/fashion-kiosk.service"
install -Dm644 systemd/fashion-kiosk-uplink.service "$root/lib/systemd/system/fashion-kiosk-uplink.service"
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
fashion-kiosk: no-manual-page [usr/bin/fashion-kiosk]
OVERRIDES

# The newest glibc symbol version the binary uses is the libc6 it needs.
glibc=$(readelf --dyn-syms -W "$binary" | grep -o "GLIBC_[0-9.]*" | sed "s/GLIBC_//" | sort -V | tail -1)
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
dpkg-deb --root-owner-group -Zxz --build "$root" "$out" >/dev/null
echo "$out"
