"""The boot-network edge: TFTP server for the iPXE binaries, dnsmasq configuration and
boot asset handling. One process per L2 boot segment, stateless, talking to the API over
HTTP (see DESIGN.md, "Processes" and "Boot chain")."""
