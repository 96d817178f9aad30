#!/bin/sh
# The deploy agent: PID 1 of the agent ramdisk, run by busybox's sh.
#
# Kernel command line:
#   provisioner.url=http://HOST:PORT  the service as the node reaches it
#   provisioner.token=TOKEN           this node's token (node-scoped, expires)
#   BOOTIF=01-aa-bb-cc-dd-ee-ff       the NIC it booted from (iPXE and pxelinux add it)
#
# It brings the network up, posts the machine's in-band inventory as JSON to
# $url/agent/$token/inventory, then asks $url/agent/$token/heartbeat what to do, one
# command per answer line: "wait SECONDS", "reboot", "poweroff".
export PATH=/bin
# The archive holds busybox and /bin/sh only: busybox finds itself through /proc.
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s /bin
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /tmp /run
exec >/dev/console 2>&1

say() { echo "provisioner-agent: $*"; }

# A command-line value; the command line is set by our own boot script, so words are
# split on spaces and values hold none.
arg() {
    for word in $(cat /proc/cmdline); do
        case $word in "$1"=*) echo "${word#*=}" ;; esac
    done
}

# A JSON string: backslash and quote escaped, control characters dropped (FRU strings
# from a BMC or a disk's firmware can hold anything).
js() {
    printf '"%s"' "$(printf '%s' "$1" | tr -d '\000-\037' | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g')"
}

read_file() { [ -r "$1" ] && tr -d '\n' <"$1" | sed -e 's/ *$//'; }

for module in $(cat /etc/agent/modules); do
    insmod "/lib/modules/$module.ko" 2>/dev/null
done

url=$(arg provisioner.url)
token=$(arg provisioner.token)
bootif=$(arg BOOTIF | sed -e 's/^01-//' -e 's/-/:/g')
if [ -z "$url" ] || [ -z "$token" ]; then
    say "provisioner.url and provisioner.token are missing from the kernel command line"
    sleep 30
    poweroff -f
fi

# DHCP on the NIC it booted from, else on each NIC until one gets an address.
up() {
    ip link set "$1" up
    udhcpc -i "$1" -n -q -t 5 -T 2 -s /etc/agent/udhcpc
}
interfaces=""
for path in /sys/class/net/*; do
    name=${path##*/}
    [ "$name" = lo ] && continue
    interfaces="$interfaces $name"
    [ "$(read_file "$path/address")" = "$bootif" ] && booted=$name
done
if [ -n "$booted" ] && up "$booted"; then
    :
else
    booted=""
    for name in $interfaces; do
        if up "$name"; then booted=$name; break; fi
    done
fi
[ -n "$booted" ] || say "no NIC got an address"

nics() {
    sep=""
    for name in $interfaces; do
        path=/sys/class/net/$name
        driver=$(readlink "$path/device/driver" 2>/dev/null)
        printf '%s{"name":%s,"mac":%s,"driver":%s,"link":%s,"booted":%s}' "$sep" \
            "$(js "$name")" "$(js "$(read_file "$path/address")")" "$(js "${driver##*/}")" \
            "$([ "$(read_file "$path/carrier" 2>/dev/null)" = 1 ] && echo true || echo false)" \
            "$([ "$name" = "$booted" ] && echo true || echo false)"
        sep=","
    done
}

disks() {
    sep=""
    for path in /sys/block/*; do
        name=${path##*/}
        [ -e "$path" ] || continue # no disk at all: the glob stays as it is
        case $name in loop* | ram* | sr* | fd*) continue ;; esac
        sectors=$(read_file "$path/size")
        serial=$(read_file "$path/device/serial" || read_file "$path/serial")
        wwn=$(read_file "$path/device/wwid" || read_file "$path/wwid")
        printf '%s{"name":%s,"size_bytes":%s,"model":%s,"serial":%s,"rotational":%s,"wwn":%s}' \
            "$sep" "$(js "$name")" "$((sectors * 512))" "$(js "$(read_file "$path/device/model")")" \
            "$(js "$serial")" \
            "$([ "$(read_file "$path/queue/rotational")" = 1 ] && echo true || echo false)" \
            "$(js "$wwn")"
        sep=","
    done
}

dmi() { js "$(read_file "/sys/class/dmi/id/$1")"; }

inventory() {
    cpus=$(grep -c '^processor' /proc/cpuinfo)
    model=$(grep -m1 '^model name' /proc/cpuinfo | sed -e 's/^[^:]*: *//')
    memory_kib=$(sed -n 's/^MemTotal: *\([0-9]*\) kB/\1/p' /proc/meminfo)
    boot_mode=bios
    [ -d /sys/firmware/efi ] && boot_mode=uefi
    printf '{"system":{"vendor":%s,"product":%s,"serial":%s,"uuid":%s,' \
        "$(dmi sys_vendor)" "$(dmi product_name)" "$(dmi product_serial)" "$(dmi product_uuid)"
    printf '"bios_vendor":%s,"bios_version":%s,"bios_date":%s},' \
        "$(dmi bios_vendor)" "$(dmi bios_version)" "$(dmi bios_date)"
    printf '"cpu":{"count":%s,"model":%s},"memory_bytes":%s,"boot_mode":"%s",' \
        "$cpus" "$(js "$model")" "$((memory_kib * 1024))" "$boot_mode"
    printf '"disks":[%s],"nics":[%s]}' "$(disks)" "$(nics)"
}

# busybox 1.35's static wget crashes with -T under some kernels: bound it from outside.
post() {
    timeout 30 wget -q -O "$2" --header "Content-Type: application/json" --post-file "$1" \
        "$url/agent/$token/$3"
}

inventory >/tmp/inventory.json
until post /tmp/inventory.json /tmp/answer inventory; do
    say "could not post the inventory to $url; trying again in 5 s"
    sleep 5
done
say "inventory posted"

echo '{}' >/tmp/heartbeat.json
while :; do
    if ! post /tmp/heartbeat.json /tmp/command heartbeat; then
        say "heartbeat to $url failed; trying again in 5 s"
        sleep 5
        continue
    fi
    read -r command argument </tmp/command
    case $command in
        wait) sleep "${argument:-10}" ;;
        reboot) say "rebooting"; reboot -f ;;
        poweroff) say "powering off"; poweroff -f ;;
        *) say "unknown command '$command'"; sleep 10 ;;
    esac
done
