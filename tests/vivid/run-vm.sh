#!/usr/bin/env bash
# Runs the kiosk's V4L2 camera code against a real V4L2 driver: boots Debian's kernel in qemu
# (software emulation, no KVM needed) with the `vivid` virtual camera module, and runs
# examples/v4l2_capture inside (YUYV 640×480: size, colour bars, a fresh frame after a request).
# Needs: qemu-system-x86, busybox-static, apt access to Debian's kernel package (cached in
# target/vivid). Prints the VM's console; exits 0 only on "VIVID-CHECK PASS".
set -euo pipefail
cd "$(dirname "$0")/../.."
root_dir=$PWD
work=$root_dir/target/vivid
mkdir -p "$work"

echo "== build the capture check"
cargo build --example v4l2_capture
binary=$root_dir/target/debug/examples/v4l2_capture

echo "== Debian kernel with vivid"
package=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
deb=$(ls "$work"/"$package"_*.deb 2>/dev/null | head -1 || true)
if [ -z "$deb" ]; then
    (cd "$work" && apt-get download "$package")
    deb=$(ls "$work"/"$package"_*.deb | head -1)
fi
rm -rf "$work/kernel" "$work/initramfs"
dpkg-deb -x "$deb" "$work/kernel"
kver=$(ls "$work/kernel/lib/modules")
moddir=$work/kernel/lib/modules/$kver
# Debian ships no modules.dep (depmod makes it on install): follow each module's `depends=`
# (its .modinfo) through modules.order, dependencies first.
module_path() { # module name (- or _) → path relative to $moddir
    grep -E "/$(echo "$1" | sed 's/[-_]/[-_]/g')\.ko(\.xz|\.zst)?$" "$moddir/modules.order" | head -1
}
order=""
add_module() {
    local path
    path=$(module_path "$1")
    [ -n "$path" ] || { echo "module $1 not found" >&2; exit 1; }
    case " $order " in *" $path "*) return ;; esac
    local file=$moddir/$path deps
    case "$file" in
        *.xz) deps=$(xz -dc "$file" | strings -a | sed -n 's/^depends=//p') ;;
        *.zst) deps=$(zstd -dqc "$file" | strings -a | sed -n 's/^depends=//p') ;;
        *) deps=$(strings -a "$file" | sed -n 's/^depends=//p') ;;
    esac
    for dep in $(echo "$deps" | tr ',' ' '); do add_module "$dep"; done
    order="$order $path"
}
add_module vivid
echo "modules:$order"

echo "== initramfs"
ir=$work/initramfs
mkdir -p "$ir"/{bin,dev,proc,sys,modules,lib64,lib/x86_64-linux-gnu}
cp /bin/busybox "$ir/bin/busybox"
: > "$ir/modules/order"
for m in $order; do
    name=$(basename "$m")
    case "$name" in
        *.xz) xz -dc "$moddir/$m" > "$ir/modules/${name%.xz}"; name=${name%.xz} ;;
        *.zst) zstd -dqc "$moddir/$m" > "$ir/modules/${name%.zst}"; name=${name%.zst} ;;
        *) cp "$moddir/$m" "$ir/modules/$name" ;;
    esac
    echo "$name" >> "$ir/modules/order"
done
cp "$binary" "$ir/v4l2_capture"
for lib in $(ldd "$binary" | grep -o '/[^ ]*'); do
    mkdir -p "$ir$(dirname "$lib")"
    cp -L "$lib" "$ir$lib"
done
cat > "$ir/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules/order); do insmod /modules/$m || echo "insmod $m failed"; done
ls /dev/video*
/v4l2_capture /dev/video0
echo "capture check exited $?"
poweroff -f
INIT
chmod +x "$ir/init"
(cd "$ir" && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1 > "$work/initramfs.cpio.gz")

echo "== boot (kernel $kver)"
start=$(date +%s)
timeout 600 qemu-system-x86_64 -m 1024 -smp 1 -accel tcg -nographic -no-reboot -nic none \
    -kernel "$work/kernel/boot/vmlinuz-$kver" -initrd "$work/initramfs.cpio.gz" \
    -append "console=ttyS0 quiet panic=-1" | tee "$work/console.log"
echo "== VM ran $(( $(date +%s) - start )) s"
grep -q "VIVID-CHECK PASS" "$work/console.log"
