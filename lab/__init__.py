"""Emulated hardware for tests, demos and benchmarks: virtual BMCs that speak real IPMI
and Redfish, and the machines behind them. The product never imports this package.

- `lab.machine`: an emulated machine (power, boot flags, FRU inventory, MACs, sensors);
- `lab.bmc`: the virtual BMC in front of it, on pyghmi's IPMI server, and the packet
  loop that serves many BMCs in one process;
- `lab.redfish`: Redfish BMCs in front of the same machines (HTTPS, sessions, ETags,
  task monitors; generic, Dell-, HPE- and Supermicro-like dialects), many per process;
- `lab.faults`: the faults a node can show (BMC: no answer, wrong password, slow, lossy,
  busy, a task that never ends, a new certificate, an ETag race; machine: boot hangs,
  installer silent, installer fails);
- `lab.netboot`: machines that boot from the network like real ones, with `lab.ipxe`
  (enough of iPXE's script language), `lab.installer` (answer files and their
  callbacks) and `lab.tftp_client`;
- `lab.rack`: a rack of nodes, its manifest, and the processes that serve it;
- `lab.control`: the run-time control channel; `lab.cli`: ``provisioner-lab``.

See docs/lab.md.
"""
