#!/bin/sh
# The deploy agent: PID 1 of the agent ramdisk, run by busybox's sh.
#
# Kernel command line:
#   provisioner.url=http://HOST:PORT  the service as the node reaches it
#   provisioner.token=TOKEN           this node's token (node-scoped, expires)
#   BOOTIF=01-aa-bb-cc-dd-ee-ff       the NIC it booted from (iPXE and pxelinux add it)
#   provisioner.heartbeat=SECONDS     optional: the pause between heartbeats until the
#                                     service's first "wait" sets it (default 10)
#
# It brings the network up, posts the machine's in-band inventory as JSON to
# $url/agent/$token/inventory, then asks $url/agent/$token/heartbeat what to do, one
# command per answer: "wait SECONDS", "deploy DISK FORMAT BYTES SHA256",
# "wipe metadata|full DISK...", "reboot", "poweroff". Deploy and wipe run in the
# background while the heartbeat goes on and reports them busy; each posts its outcome
# to $url/agent/$token/result (docs/agent.md has the protocol).
export PATH=/bin
# The archive holds busybox and /bin/sh only: busybox finds itself through /proc.
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s /bin
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /tmp /run
exec >/dev/console 2>&1

# To the console even from inside $(...), where a job builds its JSON.
say() { echo "provisioner-agent: $*" >/dev/console; }

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

# ---- jobs: deploy and wipe, in the background -----------------------------------------
#
# One job at a time (they write the same disks). $state holds: busy (the running job's
# kind, removed by the job as its last act), pid, result.KIND.json (its last outcome) and
# done.KIND (the command line of the last one that succeeded, so a command the service
# re-sends after losing the result is answered with the result, not done twice).
state=/tmp/agent
MiB=1048576

# The running job's kind, or nothing. A job killed before it cleaned up is not running.
running() {
    [ -f "$state/busy" ] || return 0
    if kill -0 "$(cat "$state/pid" 2>/dev/null)" 2>/dev/null; then
        cat "$state/busy"
    else
        rm -f "$state/busy"
    fi
}

# start KIND "ARGUMENTS": runs KIND_job ARGUMENTS in the background, then posts its result.
start() {
    busy=$(running)
    if [ -n "$busy" ]; then
        say "the $busy job is still running; '$1 $2' is not started"
        return 1
    fi
    echo "$1" >"$state/busy"
    if [ "$(cat "$state/done.$1" 2>/dev/null)" = "$2" ]; then
        say "'$1 $2' has already succeeded; posting its result again"
        (post_result "$1"; rm -f "$state/busy") &
    else
        say "starting '$1 $2'"
        # A new job of a kind makes the disk no longer what the last success left.
        rm -f "$state/done.$1"
        (
            kind=$1 words=$2
            set -f -o pipefail # the service's words are not patterns; a pipe fails if a stage does
            # shellcheck disable=SC2086 # split into the command's words on purpose
            set -- $words
            if "${kind}_job" "$@"; then echo "$words" >"$state/done.$kind"; fi
            post_result "$kind"
            rm -f "$state/busy"
        ) &
    fi
    echo $! >"$state/pid"
}

# The service may be restarting: the result is worth waiting for.
post_result() {
    until post "$state/result.$1.json" "$state/result.answer" result; do
        say "could not post the $1 result to $url; trying again in 5 s"
        sleep 5
    done
    say "$1 result posted: $(cat "$state/result.$1.json")"
}

# The last line a failed program wrote to the file its errors went to, for a message.
why() { tail -n 1 "$1" 2>/dev/null | tr -d '\r'; }

# Block-device reads come from the page cache; a check must see what the disk holds.
drop_cache() { sync; blockdev --flushbufs "$1"; }

size_of() { blockdev --getsize64 "$1"; }

# ---- deploy ----

# deploy_job DISK FORMAT BYTES SHA256: the image on DISK, checked, plus a config drive.
deploy_job() {
    started=$(date +%s)
    readback=""
    failure=""
    deploy "$@"
    ok=$([ -z "$failure" ] && echo true || echo false)
    bytes=$3
    case $bytes in '' | *[!0-9]*) bytes=0 ;; esac
    printf '{"command":"deploy","ok":%s,"disk":%s,"bytes":%s,"sha256":%s,"seconds":%s,"message":%s}' \
        "$ok" "$(js "$1")" "$bytes" "$(js "$readback")" "$(($(date +%s) - started))" \
        "$(js "$(short "$failure")")" >"$state/result.deploy.json"
    [ "$ok" = true ]
}

# A message the service takes (at most 500 characters, valid UTF-8): a result it refuses
# would be posted again for ever. Printable ASCII, so a cut cannot split a character.
short() { printf '%s' "$1" | tr -cd '\040-\176' | head -c 400; }

fail() {
    failure=$*
    say "$*"
    return 1
}

deploy() {
    disk=$1 format=$2 bytes=$3 expected=$(echo "$4" | tr A-F a-f)
    case $bytes in '' | *[!0-9]*) fail "the image size '$bytes' is not a number"; return ;; esac
    case $format in
        raw) unpack=cat ;;
        raw.gz) unpack="gunzip -c" ;;
        *) fail "unknown image format '$format' (raw or raw.gz)"; return ;;
    esac
    [ -b "$disk" ] || { fail "$disk is not a block device"; return; }
    size=$(size_of "$disk")
    if [ $((bytes + 64 * MiB)) -gt "$size" ]; then
        fail "the image ($bytes bytes) and the 64 MiB config drive do not fit on $disk ($size bytes)"
        return
    fi
    write_image "$disk" "$unpack" "$bytes" || return
    say "reading $bytes bytes back from $disk"
    drop_cache "$disk"
    blocks=$(((bytes + MiB - 1) / MiB))
    readback=$(dd if="$disk" bs=1M count="$blocks" 2>/dev/null | head -c "$bytes" | sha256sum)
    readback=${readback%% *}
    if [ "$readback" != "$expected" ]; then
        fail "checksum mismatch: read back $readback, expected $expected"
        return
    fi
    config_drive "$disk"
}

# Streams the image from the service to the disk; a failing stage says so in the message.
write_image() {
    say "writing the image to $1"
    stage_errors="$state/image.failed.1 $state/image.failed.2 $state/image.failed.3"
    # shellcheck disable=SC2086 # a list of paths without spaces
    rm -f $stage_errors
    # Bounded, as a stalled download would keep the job busy forever: 10 min plus 1 s a MiB.
    limit=$((600 + $3 / MiB))
    # shellcheck disable=SC2086 # $2 is a program and its options
    { timeout "$limit" wget -q -O - "$url/agent/$token/image" 2>"$state/image.wget" ||
        echo "wget of the image failed: $(why "$state/image.wget")" >"$state/image.failed.1"; } |
        { $2 2>"$state/image.unpack" ||
            echo "unpacking the image failed: $(why "$state/image.unpack")" >"$state/image.failed.2"; } |
        { dd of="$1" bs=1M conv=notrunc,fsync 2>"$state/image.dd" ||
            echo "writing to $1 failed: $(why "$state/image.dd")" >"$state/image.failed.3"; }
    # After a stage fails the ones before it fail too (broken pipe): all are named.
    # shellcheck disable=SC2086
    failed=$(cat $stage_errors 2>/dev/null | tr '\n' ';' | sed -e 's/;$//' -e 's/;/; /g')
    [ -z "$failed" ] || fail "$failed"
}

# The hex of a little-endian 32-bit field as a number.
le32() { echo $((0x$(echo "$1" | sed 's/\(..\)\(..\)\(..\)\(..\)/\4\3\2\1/'))); }

# A number as the printf escapes of its 4 little-endian bytes.
le32_escaped() {
    for shift in 0 8 16 24; do printf '\\%03o' $((($1 >> shift) & 255)); done
}

# Ironic's config drive: a 64 MiB FAT partition labelled config-2 at the end of the disk,
# holding the files the service serves as a tar. busybox has no sfdisk, so the MBR entry
# is written byte by byte; GPT disks are refused rather than half handled.
config_drive() {
    disk=$1
    sector=$(blockdev --getss "$disk")
    total=$(($(size_of "$disk") / sector))
    length=$((64 * MiB / sector))
    # Aligned to 1 MiB like every partitioning tool does now.
    first=$(((total - length) / (MiB / sector) * (MiB / sector)))
    if [ "$(xxd -p -s 510 -l 2 "$disk")" != 55aa ]; then
        fail "$disk has no MBR partition table (no 0x55AA signature); the agent writes config drives on MBR disks only"
        return
    fi
    if [ $((first + length)) -gt 4294967295 ]; then
        fail "$disk is too large for an MBR partition at its end"
        return
    fi
    slot=""
    number=0
    for entry in $(xxd -p -s 446 -l 64 -c 16 "$disk"); do
        number=$((number + 1))
        type=$(echo "$entry" | cut -c 9-10)
        start=$(le32 "$(echo "$entry" | cut -c 17-24)")
        count=$(le32 "$(echo "$entry" | cut -c 25-32)")
        if [ "$type" = ee ]; then
            fail "$disk has a GPT partition table; the agent writes config drives on MBR disks only"
            return
        fi
        if [ "$type" = 00 ] && [ "$count" = 0 ]; then
            [ -n "$slot" ] || slot=$number
        elif [ $((start + count)) -gt "$first" ]; then
            fail "partition $number of the image reaches into the last 64 MiB of $disk, where the config drive goes"
            return
        fi
    done
    [ -n "$slot" ] || { fail "the image uses all four MBR partition slots; none is left for the config drive"; return; }
    tarball=$state/config-drive.tar
    if ! timeout 60 wget -q -O "$tarball" "$url/agent/$token/config-drive" 2>"$state/config.wget"; then
        fail "wget of the config drive failed: $(why "$state/config.wget")"
        return
    fi
    say "adding the config drive as partition $slot of $disk (sectors $first-$((first + length - 1)))"
    # Active flag 0, CHS fields "beyond CHS" (fe ff ff), type 0x0c FAT32 LBA, LBA start, length.
    # shellcheck disable=SC2059 # the format is the entry's bytes
    printf "\\000\\376\\377\\377\\014\\376\\377\\377$(le32_escaped "$first")$(le32_escaped "$length")" |
        dd of="$disk" bs=1 seek=$((446 + 16 * (slot - 1))) count=16 conv=notrunc,fsync 2>/dev/null ||
        { fail "writing the partition entry to $disk failed"; return; }
    blockdev --rereadpt "$disk" || { fail "the kernel did not re-read the partition table of $disk"; return; }
    case $disk in *[0-9]) partition=${disk}p$slot ;; *) partition=$disk$slot ;; esac
    # devtmpfs makes the node when the kernel adds the partition; mdev -s if it does not.
    tries=0
    until [ -b "$partition" ]; do
        tries=$((tries + 1))
        [ $tries -le 10 ] || { fail "$partition did not appear"; return; }
        mdev -s
        sleep 1
    done
    mkdosfs -n config-2 "$partition" >"$state/config.mkdosfs" 2>&1 ||
        { fail "mkdosfs on $partition failed: $(why "$state/config.mkdosfs")"; return; }
    mkdir -p /mnt/config-drive
    mount -t vfat "$partition" /mnt/config-drive 2>"$state/config.mount" ||
        { fail "mounting $partition failed: $(why "$state/config.mount")"; return; }
    # FAT has no owners: -o keeps tar from trying to set them.
    tar -x -o -f "$tarball" -C /mnt/config-drive 2>"$state/config.tar"
    extracted=$?
    umount /mnt/config-drive
    sync
    [ $extracted = 0 ] || fail "unpacking the config drive onto $partition failed: $(why "$state/config.tar")"
}

# ---- wipe ----

# wipe_job POLICY DISK...: each disk wiped and checked in turn; the result lists them all.
wipe_job() {
    policy=$1
    shift
    all=true
    entries=""
    for disk in "$@"; do
        entry=$(wipe_disk "$policy" "$disk") || all=false
        entries="$entries${entries:+,}$entry"
    done
    printf '{"command":"wipe","ok":%s,"disks":[%s]}' "$all" "$entries" >"$state/result.wipe.json"
    [ "$all" = true ]
}

# Prints the disk's JSON entry; fails when the disk does.
wipe_disk() {
    started=$(date +%s)
    written=0
    verified=""
    failure=""
    case $1 in
        metadata | full)
            if [ -b "$2" ]; then "wipe_$1" "$2"; else failure="$2 is not a block device"; fi
            ;;
        *) failure="unknown wipe policy '$1' (metadata or full)" ;;
    esac
    [ -z "$failure" ] && ok=true || ok=false
    say "wipe $1 of $2: ${failure:-$verified}"
    printf '{"disk":%s,"method":%s,"bytes":%s,"seconds":%s,"ok":%s,"verified":%s,"message":%s}' \
        "$(js "$2")" "$(js "$1")" "$written" "$(($(date +%s) - started))" "$ok" \
        "$(js "$verified")" "$(js "$(short "$failure")")"
    [ "$ok" = true ]
}

# zero DISK OFFSET LENGTH (bytes): adds to $written; sets $failure on a write error.
zero() {
    if dd if=/dev/zero of="$1" bs=1M seek="$2" count="$3" oflag=seek_bytes iflag=count_bytes \
        conv=notrunc,fsync 2>"$state/wipe.dd"; then
        written=$((written + $3))
    else
        failure="writing zeros to $1 at byte $2 failed: $(why "$state/wipe.dd")"
        return 1
    fi
}

# zeroed DISK OFFSET LENGTH: the range reads back as zeros; sets $failure if not.
zeroed() {
    nonzero=$(dd if="$1" bs=1M skip="$2" count="$3" iflag=skip_bytes,count_bytes 2>"$state/wipe.dd" |
        tr -d '\000' | wc -c) || {
        failure="reading $1 back at byte $2 failed: $(why "$state/wipe.dd")"
        return 1
    }
    [ "$nonzero" -eq 0 ] || {
        failure="read back $3 bytes at byte $2 of $1: $((nonzero)) are not zero"
        return 1
    }
}

# In words: 128 MiB, or bytes when not whole MiB.
amount() { [ $(($1 % MiB)) = 0 ] && echo "$(($1 / MiB)) MiB" || echo "$1 bytes"; }

# Partition tables (MBR, GPT and its backup), filesystem, RAID and LVM signatures live in
# the first and last MiBs of a disk: 64 MiB at each end, the whole of a smaller disk.
wipe_metadata() {
    size=$(size_of "$1")
    if [ "$size" -lt $((128 * MiB)) ]; then
        ranges="0:$size"
    else
        ranges="0:$((64 * MiB)) $((size - 64 * MiB)):$((64 * MiB))"
    fi
    for range in $ranges; do zero "$1" "${range%:*}" "${range#*:}" || return; done
    drop_cache "$1"
    for range in $ranges; do zeroed "$1" "${range%:*}" "${range#*:}" || return; done
    verified="read back $(amount "$written"): all zero"
}

# Every byte; checked by 16 samples of 1 MiB spread from the first MiB to the last, as
# reading a whole disk back would double the time for little more certainty.
wipe_full() {
    size=$(size_of "$1")
    zero "$1" 0 "$size" || return
    drop_cache "$1"
    sample=$MiB
    [ "$size" -ge $sample ] || sample=$size
    for index in 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15; do
        zeroed "$1" $(((size - sample) * index / 15 / 512 * 512)) "$sample" || return
    done
    verified="read back 16 samples of $(amount "$sample") spread over the disk: all zero"
}

# The pause after an answer that gives none: a refused job, an unknown command, a bare
# "wait". Without one a service answering the same thing would be asked again at once.
interval=$(arg provisioner.heartbeat)
case $interval in '' | *[!0-9]*) interval=10 ;; esac
mkdir -p "$state"
while :; do
    printf '{"busy":%s}' "$(js "$(running)")" >/tmp/heartbeat.json
    if ! post /tmp/heartbeat.json /tmp/command heartbeat; then
        say "heartbeat to $url failed; trying again in 5 s"
        sleep 5
        continue
    fi
    read -r command argument </tmp/command
    case $command in
        wait)
            case $argument in '' | *[!0-9]*) ;; *) interval=$argument ;; esac
            sleep "$interval"
            ;;
        # Started, the job is reported busy by the next heartbeat, straight away.
        deploy | wipe) start "$command" "$argument" || sleep "$interval" ;;
        reboot) say "rebooting"; reboot -f ;;
        poweroff) say "powering off"; poweroff -f ;;
        *) say "unknown command '$command'"; sleep "$interval" ;;
    esac
done
