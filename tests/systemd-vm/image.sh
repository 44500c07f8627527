#!/usr/bin/env bash
# Builds (or reuses) the Debian guest of tests/systemd-vm/run.sh: bookworm with systemd as PID 1,
# Debian's kernel (its vivid module is the camera), ssh for the host (root, key auth), mosquitto
# and its clients, and a scan recorder (below). In target/systemd-vm/:
#   base-HASH.tar   mmdebstrap's tree of the packages (minutes): rebuilt when the list changes
#   rootfs.img      the raw ext4 root disk made from it with this script's settings (a minute)
#   vmlinuz, initrd.img   the guest's kernel and a busybox initramfs that mounts the virtio disk
#   id_ed25519      the key the host logs in with
# Each is rebuilt only when what it is made of changes (hashes kept beside them).
#   tests/systemd-vm/image.sh        (root: mmdebstrap, tar, mkfs.ext4; busybox-static)
set -euo pipefail
cd "$(dirname "$0")/../.."
work=$PWD/target/systemd-vm
mkdir -p "$work"

# What the guest has.
# dbus: systemd-run --wait needs the bus, as on any Debian system (systemd recommends it).
packages="systemd systemd-sysv udev dbus kmod linux-image-amd64 openssh-server
    mosquitto mosquitto-clients adduser socat procps iproute2 e2fsprogs"

# The guest's settings, applied to the unpacked tree ($1).
customize() {
    local root=$1
    echo kiosk-vm > "$root/etc/hostname"
    printf '127.0.0.1 localhost\n127.0.1.1 kiosk-vm\n' > "$root/etc/hosts"
    echo '/dev/vda / ext4 defaults,errors=remount-ro 0 1' > "$root/etc/fstab"
    # A machine id of its own: each fresh copy of the image boots as an installed system, not as a
    # first boot (which would run `systemctl preset-all`).
    echo 5d2c8f0e7a3b4c1d9e6f2a8b7c4d1e09 > "$root/etc/machine-id"
    # The network (QEMU's user mode: the host reaches ssh through a forwarded port) is set up by
    # the initramfs, statically: no network manager to start.
    install -d -m 700 "$root/root/.ssh"
    install -m 600 "$work/id_ed25519.pub" "$root/root/.ssh/authorized_keys"
    # Boot time under software emulation: nothing the test does not use. No timers, no console
    # on a screen there is not, no hardware of a PC it does not drive, fewer generators.
    systemctl --root="$root" mask apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer \
        e2scrub_reap.service fstrim.timer dpkg-db-backup.timer logrotate.timer man-db.timer \
        getty@tty1.service getty-static.service systemd-logind.service modprobe@drm.service \
        modprobe@efi_pstore.service modprobe@fuse.service modprobe@loop.service modprobe@dm_mod.service \
        sys-kernel-debug.mount sys-kernel-tracing.mount sys-fs-fuse-connections.mount \
        sys-kernel-config.mount dev-hugepages.mount \
        systemd-update-utmp.service systemd-update-utmp-runlevel.service >/dev/null 2>&1
    install -d "$root/etc/systemd/system-generators"
    for generator in systemd-gpt-auto-generator systemd-cryptsetup-generator \
        systemd-veritysetup-generator systemd-integritysetup-generator \
        systemd-hibernate-resume-generator systemd-bless-boot-generator systemd-sysv-generator; do
        ln -sf /dev/null "$root/etc/systemd/system-generators/$generator"
    done
    printf 'blacklist %s\n' floppy pcspkr kvm kvm_intel kvm_amd ata_piix ata_generic i2c_piix4 \
        serio_raw joydev evdev button psmouse cfg80211 > "$root/etc/modprobe.d/vm-blacklist.conf"
    # The scan recorder: subscribes to every kiosk topic on the guest's broker and writes each
    # message ("TOPIC PAYLOAD") to a virtio port whose other end is a file on the host, so that a
    # power cut of the guest loses nothing the broker delivered. At start it first writes the
    # uplink's checkpoint as the boot found it ("#BOOT ..."): it runs before the uplink (Before=),
    # and counts as started (ExecStartPost) only once its subscription is live.
    cat > "$root/usr/local/sbin/scan-recorder" <<'REC'
#!/bin/sh
port=/dev/virtio-ports/recorder
ready=/run/scan-recorder.ready
exec 3>"$port"
echo "#BOOT $(cat /proc/sys/kernel/random/boot_id) checkpoint $(cat /var/lib/fashion-kiosk-uplink/checkpoint.json 2>/dev/null || echo none)" >&3
rm -f "$ready"
mosquitto_sub -q 1 -v -t 'fashion-kiosk/#' -t scan-recorder/probe | while IFS= read -r line; do
    case "$line" in
        "scan-recorder/probe "*) touch "$ready" ;;
        *) printf '%s\n' "$line" >&3 ;;
    esac
done
REC
    chmod 755 "$root/usr/local/sbin/scan-recorder"
    cat > "$root/etc/systemd/system/scan-recorder.service" <<'UNIT'
[Unit]
Description=test: record every kiosk message the broker delivers, on the host
Requires=mosquitto.service
After=mosquitto.service dev-virtio\x2dports-recorder.device
Wants=dev-virtio\x2dports-recorder.device
Before=fashion-kiosk-uplink.service
[Service]
ExecStart=/usr/local/sbin/scan-recorder
ExecStartPost=/bin/sh -c 'until [ -e /run/scan-recorder.ready ]; do mosquitto_pub -q 1 -t scan-recorder/probe -m x; sleep 0.2; done'
Restart=always
RestartSec=1
[Install]
WantedBy=multi-user.target
UNIT
    systemctl --root="$root" enable scan-recorder.service >/dev/null 2>&1
}

# A busybox initramfs ($2) that loads the virtio disk's and network's modules from the tree ($1),
# configures the network and mounts the root disk.
make_initramfs() {
    local root=$1 out=$2 kver moddir ir order="" m
    kver=$(ls "$root/lib/modules" | sort -V | tail -1)
    moddir=$root/lib/modules/$kver
    add() { # a module path from modules.dep, its dependencies first
        local dep
        case " $order " in *" $1 "*) return ;; esac
        for dep in $(sed -n "s|^$1: *||p" "$moddir/modules.dep"); do add "$dep"; done
        order="$order $1"
    }
    for m in virtio_pci virtio_blk ext4 crc32c_generic virtio_net; do
        m=$(grep -E "/$m\.ko[.a-z]*:" "$moddir/modules.dep" | cut -d: -f1 | head -1)
        [ -z "$m" ] || add "$m"
    done
    ir=$(mktemp -d)
    mkdir -p "$ir"/{bin,dev,proc,sys,root,modules}
    cp /bin/busybox "$ir/bin/busybox"
    for m in $order; do
        cp "$moddir/$m" "$ir/modules/"
        basename "$m" >> "$ir/modules/order"
    done
    cat > "$ir/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules/order); do insmod "/modules/$m" 2>/dev/null; done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
mount -t ext4 -o ro /dev/vda /root || { echo "initramfs: cannot mount /dev/vda"; sleep 5; poweroff -f; }
ip link set lo up
ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2
umount /proc /sys
mount --move /dev /root/dev
exec switch_root /root /sbin/init
INIT
    chmod 755 "$ir/init"
    (cd "$ir" && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1) > "$out"
    rm -rf "$ir"
}

[ -s "$work/id_ed25519" ] || ssh-keygen -q -t ed25519 -N "" -C systemd-vm -f "$work/id_ed25519"
base_hash=$(echo $packages | sha256sum | cut -c1-16)
base=$work/base-$base_hash.tar
image_hash=$( (echo "$base_hash"; cat "$work/id_ed25519.pub"; declare -f customize make_initramfs) |
    sha256sum | cut -c1-16)
if [ -s "$work/rootfs.img" ] && [ "$(cat "$work/rootfs.hash" 2>/dev/null)" = "$image_hash" ]; then
    echo "guest image: cached ($work/rootfs.img)"
    exit 0
fi
rm -f "$work/rootfs.hash"
if [ ! -s "$base" ]; then
    echo "guest packages: mmdebstrap bookworm ($base)"
    rm -f "$work"/base-*.tar
    # bookworm from the host's sources (the versions the host has), else deb.debian.org.
    sources=/etc/apt/sources.list.d/debian.sources
    [ -s "$sources" ] || sources=http://deb.debian.org/debian
    mmdebstrap --quiet --variant=minbase --include="$(echo $packages | tr ' ' ,)" \
        bookworm "$work/base.part.tar" "$sources"
    mv "$work/base.part.tar" "$base"
fi
echo "guest image: $work/rootfs.img"
tree=$work/rootfs
rm -rf "$tree" && mkdir "$tree"
tar -C "$tree" --numeric-owner -xpf "$base"
customize "$tree"
kver=$(ls "$tree/lib/modules" | sort -V | tail -1)
cp "$tree/boot/vmlinuz-$kver" "$work/vmlinuz"
make_initramfs "$tree" "$work/initrd.img"
# A raw ext4 disk of the tree (sparse), with room for two packages and their files.
rm -f "$work/rootfs.img"
truncate -s 3G "$work/rootfs.img.tmp"
mkfs.ext4 -q -F -L kiosk-root -d "$tree" "$work/rootfs.img.tmp"
mv "$work/rootfs.img.tmp" "$work/rootfs.img"
rm -rf "$tree"
echo "$image_hash" > "$work/rootfs.hash"
