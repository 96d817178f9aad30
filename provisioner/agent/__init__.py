"""The deploy agent: a small Linux ramdisk a node boots to report its hardware from the
inside and to carry out the service's commands (see ``init.sh``), built from Debian
packages by :mod:`provisioner.agent.build`."""
