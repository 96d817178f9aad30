#!/bin/sh
# busybox udhcpc calls this with the lease in its environment.
case $1 in
    deconfig) ip addr flush dev "$interface"; ip link set "$interface" up ;;
    bound | renew)
        ifconfig "$interface" "$ip" netmask "${subnet:-255.255.255.0}" up
        for gateway in $router; do route add default gw "$gateway" dev "$interface"; break; done
        ;;
esac
exit 0
