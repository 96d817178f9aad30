"""Faults a node can be told to show, so the service's error paths can be tested
against misbehaving hardware. Its BMC:

- ``no-answer``: silently drop every packet (a dead or unplugged BMC);
- ``wrong-password``: the BMC's password differs from the manifest's;
- ``slow:MS``: answer every packet MS milliseconds late;
- ``drop:P``: drop each packet with probability P (0 < P < 1);

its Redfish service only (`lab.redfish`; an IPMI BMC behaves under these):

- ``busy``: answer every request 503 with ``Retry-After``;
- ``task-hang``: answer power actions 202 with a task that never completes;
- ``new-certificate``: serve a new self-signed certificate instead of the lab's;
- ``etag-race[:N]``: another client changes the System just before each of the first N
  (or every) ``If-Match`` PATCH of it, so the client's ETag is stale: 412;

the machine behind it (see `lab.netboot`):

- ``boot-hang``: a network boot hangs before DHCP, nothing reaches the network;
- ``installer-silent``: the installer fetches its answer file and never calls back;
- ``installer-fails``: the installer calls back ``started``, then ``failed``;

and ``none``: behave. A node has one fault at a time.

Written ``KIND`` or ``KIND:VALUE`` on the command line, in a faults file and on the
control channel. Packet drops draw from a generator seeded by the rack seed and the
node, so a run with the same seed and the same traffic drops the same packets.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from enum import StrEnum


class Kind(StrEnum):
    NONE = "none"
    NO_ANSWER = "no-answer"
    WRONG_PASSWORD = "wrong-password"  # noqa: S105 - a fault's name
    SLOW = "slow"
    DROP = "drop"
    BOOT_HANG = "boot-hang"
    INSTALLER_SILENT = "installer-silent"
    INSTALLER_FAILS = "installer-fails"
    BUSY = "busy"
    TASK_HANG = "task-hang"
    NEW_CERTIFICATE = "new-certificate"
    ETAG_RACE = "etag-race"


@dataclass(frozen=True)
class Fault:
    kind: Kind = Kind.NONE
    # Milliseconds for SLOW, a probability for DROP, how many PATCHes ETAG_RACE races
    # (infinity: every one), unused otherwise.
    value: float = 0.0

    def __str__(self) -> str:
        if self.kind is Kind.SLOW:
            return f"slow:{self.value:g}"
        if self.kind is Kind.DROP:
            return f"drop:{self.value:g}"
        if self.kind is Kind.ETAG_RACE and math.isfinite(self.value):
            return f"etag-race:{self.value:g}"
        return self.kind.value


NO_FAULT = Fault()


def parse_fault(text: str) -> Fault:
    """``no-answer``, ``wrong-password``, ``slow:250``, ``drop:0.3``, ``busy``, ... or
    ``none``: a `Kind`, with a value for ``slow`` and ``drop``, one optional for
    ``etag-race``."""
    name, _, raw = text.strip().lower().partition(":")
    try:
        kind = Kind(name)
    except ValueError:
        known = ", ".join(k.value for k in Kind)
        raise ValueError(f"unknown fault {name!r}; known faults: {known}") from None
    if kind in (Kind.SLOW, Kind.DROP):
        if not raw:
            example = "slow:250" if kind is Kind.SLOW else "drop:0.3"
            raise ValueError(f"fault {kind.value!r} needs a value, e.g. {example}")
        try:
            value = float(raw.removesuffix("ms"))
        except ValueError:
            raise ValueError(f"{raw!r} is not a number in fault {text!r}") from None
        if kind is Kind.SLOW and not 0 <= value <= 60_000:
            raise ValueError(f"slow takes 0 to 60000 milliseconds, not {raw}")
        if kind is Kind.DROP and not 0 < value < 1:
            raise ValueError(f"drop takes a probability between 0 and 1, not {raw}")
        return Fault(kind, value)
    if kind is Kind.ETAG_RACE:
        return Fault(kind, _race_count(raw, text) if raw else math.inf)
    if raw:
        raise ValueError(f"fault {kind.value!r} takes no value")
    return Fault(kind)


def _race_count(raw: str, text: str) -> float:
    try:
        count = float(raw)
    except ValueError:
        raise ValueError(f"{raw!r} is not a number in fault {text!r}") from None
    if not count.is_integer() or not 1 <= count <= 1_000_000:
        raise ValueError(f"etag-race takes a count of PATCHes from 1 to 1000000, not {raw}")
    return count


def parse_assignment(text: str) -> tuple[str, Fault]:
    """``NODE=FAULT``, as given to ``--fault``."""
    node, sep, fault = text.partition("=")
    if not sep or not node.strip():
        raise ValueError(f"expected NODE=FAULT (e.g. lab-r01-u03=no-answer), not {text!r}")
    return node.strip().lower(), parse_fault(fault)


DROP = -1.0  # verdict: discard the packet
PASS = 0.0  # verdict: handle it now


class FaultGate:
    """One node's current fault, consulted for every packet its BMC receives and at each
    step of its machine's boot. The control channel replaces `fault` from another
    thread; a single attribute store is atomic, so readers see the old fault or the new
    one."""

    def __init__(self, seed: int, node: str, fault: Fault = NO_FAULT) -> None:
        self.fault = fault
        self._rng = random.Random(f"{seed}/faults/{node}")  # noqa: S311 - reproducible

    def verdict(self) -> float:
        """DROP, PASS, or the delay in seconds before the packet is handled."""
        fault = self.fault
        if fault.kind is Kind.NO_ANSWER:
            return DROP
        if fault.kind is Kind.DROP:
            return DROP if self._rng.random() < fault.value else PASS
        if fault.kind is Kind.SLOW:
            return fault.value / 1000.0
        return PASS

    def password(self, real: str) -> str:
        """The password the BMC accepts: not the manifest's under ``wrong-password``."""
        if self.fault.kind is Kind.WRONG_PASSWORD:
            return real + "-not"
        return real
