"""Redfish BMCs for the lab: a Redfish service in front of the same emulated machines
(`lab.machine`) the IPMI BMCs drive, many per process, over HTTPS with a certificate
made per lab run. See docs/lab.md, "Redfish BMCs".

- `lab.redfish.server`: one event loop serving every BMC of a process, a port each;
- `lab.redfish.http`: HTTP/1.1 on a connection (h11), and how a faulty BMC stays silent;
- `lab.redfish.service`: one BMC: authentication, routing, ETags, power and boot;
- `lab.redfish.system`, `lab.redfish.resources`: the payloads, from the machine;
- `lab.redfish.hardware`: what Redfish tells beyond the FRU (CPUs, memory, drives);
- `lab.redfish.sensors`: the machine's sensors, in legacy Thermal/Power or Sensors;
- `lab.redfish.sessions`, `lab.redfish.tasks`: SessionService and TaskService;
- `lab.redfish.race`: the other client of the ``etag-race`` fault;
- `lab.redfish.dialects`: generic, Dell-, HPE- and Supermicro-like behaviour;
- `lab.redfish.odata`: schema versions, OData annotations, ``$metadata``;
- `lab.redfish.errors`: Redfish error bodies; `lab.redfish.tls`: certificates.
"""
