#!/bin/sh
# PID 1 of the lab's deployable test image (lab/image.py), run by busybox's sh: what a
# deployed operating system does at first boot, and no more.
#
# It finds the config drive (a filesystem labelled config-2, OpenStack's convention),
# reads openstack/latest/meta_data.json, brings the network up by DHCP, sets the hostname,
# installs the public keys, POSTs {"event":"first-boot",...} to meta.provisioner_callback
# and says "lab image booted HOSTNAME" on the console. Then it stays up.
export PATH=/bin
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s /bin
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /tmp /run /etc /root/.ssh /mnt/config
exec >/dev/console 2>&1

say() { echo "lab image: $*"; }

stay_up() {
    while :; do sleep 3600; done
}

for module in $(cat /etc/lab/modules); do
    insmod "/lib/modules/$module.ko" 2>/dev/null
done

boot_mode=bios
[ -d /sys/firmware/efi ] && boot_mode=uefi
say "up in $boot_mode mode"

# Disks appear as their drivers probe them: look again for a few seconds. The label is
# written by whoever made the drive; FAT tools may upper-case it.
drive=""
for _ in 1 2 3 4 5 6 7 8 9 10; do
    drive=$(findfs LABEL=config-2 2>/dev/null || findfs LABEL=CONFIG-2 2>/dev/null)
    [ -n "$drive" ] && break
    sleep 1
done
if [ -z "$drive" ] || ! mount -t vfat -o ro "$drive" /mnt/config; then
    say "found no config drive (a filesystem labelled config-2); staying up"
    stay_up
fi
meta=/mnt/config/openstack/latest/meta_data.json
if [ ! -r "$meta" ]; then
    say "the config drive $drive has no openstack/latest/meta_data.json; staying up"
    stay_up
fi
say "config drive $drive"

# The JSON on one line; values are read with sed. Enough for what a provisioner writes
# (string values with no escaped quotes; "\/" is undone).
json=$(tr -d '\n\r' <"$meta")
value() {
    printf '%s' "$json" | sed -n "s/.*\"$1\"[[:space:]]*:[[:space:]]*\"\([^\"]*\)\".*/\1/p" |
        sed -e 's,\\/,/,g'
}
hostname=$(value hostname)
callback=$(value provisioner_callback)
[ -n "$hostname" ] || hostname=lab-image
hostname "$hostname"
echo "$hostname" >/etc/hostname

# Every string value inside "public_keys": {...}, one key a line.
printf '%s' "$json" | sed -n 's/.*"public_keys"[[:space:]]*:[[:space:]]*{\([^}]*\)}.*/\1/p' |
    tr ',' '\n' | sed -n 's/^[^:]*:[[:space:]]*"\([^"]*\)".*/\1/p' >/root/.ssh/authorized_keys
chmod 600 /root/.ssh/authorized_keys
say "$(grep -c . /root/.ssh/authorized_keys) public key(s) installed"

# DHCP on each NIC until one gets an address.
address=""
for path in /sys/class/net/*; do
    name=${path##*/}
    [ "$name" = lo ] && continue
    ip link set "$name" up
    if udhcpc -i "$name" -n -q -t 5 -T 2 -s /etc/lab/udhcpc; then
        address=$(ip -4 -o addr show dev "$name" | sed -n 's/.* inet \([0-9.]*\).*/\1/p')
        break
    fi
done
[ -n "$address" ] || say "no NIC got an address"

if [ -n "$callback" ]; then
    printf '{"event":"first-boot","hostname":"%s","address":"%s","boot_mode":"%s","message":"%s"}' \
        "$hostname" "$address" "$boot_mode" "lab image booted $hostname" >/tmp/first-boot.json
    # busybox's static wget can hang with -T: bound it from outside.
    tries=0
    until timeout 30 wget -q -O /tmp/callback-answer \
        --header "Content-Type: application/json" --post-file /tmp/first-boot.json "$callback"; do
        tries=$((tries + 1))
        if [ "$tries" -ge 12 ]; then
            say "the first-boot callback failed $tries times; giving up"
            break
        fi
        say "the first-boot callback failed; trying again in 5 s"
        sleep 5
    done
else
    say "meta_data.json names no meta.provisioner_callback"
fi
echo "lab image booted $hostname"
stay_up
