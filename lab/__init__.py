"""Emulated hardware for tests, demos and benchmarks: virtual BMCs that speak real IPMI and
the machines behind them. The product never imports this package.

- `lab.machine`: an emulated machine (power, boot flags, FRU inventory, MACs, sensors);
- `lab.bmc`: the virtual BMC in front of it, on pyghmi's IPMI server, and the packet
  loop that serves many BMCs in one process;
- `lab.faults`: the faults a BMC can show (no answer, wrong password, slow, lossy);
- `lab.rack`: a rack of nodes, its manifest, and the processes that serve it;
- `lab.control`: the run-time control channel; `lab.cli`: ``provisioner-lab``.

See docs/lab.md.
"""
