"""The service's BMC drivers, IPMI and Redfish, pass the same behaviour tests against the
lab's BMCs over real sockets: power, boot device, inventory, health, and every fault
ending in its error kind within a bound while the other BMCs of the same pool answer.

One ``provisioner-lab up --protocol both`` serves every node with an IPMI BMC on UDP
port P and a Redfish BMC (HTTPS) on TCP port P in front of the same emulated machine,
whose state the tests read from the lab's control channel. Its Redfish BMCs speak the
four dialects in turn; a test parametrised by ``Bmc`` takes a node no other test has
touched, of the dialect it needs. Drivers come from ``service_drivers()`` and every call
goes through a ``BmcPool``, as in the service. Behaviour that one protocol has and the
other lacks (busy answers, tasks, certificates) is parametrised over that one only.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from lab import control, rack
from lab.redfish.dialects import Dialect
from lab.redfish.serving import CERTIFICATE_FILE
from provisioner.bmc import (
    BmcError,
    BmcPool,
    BootDevice,
    BootSetting,
    Driver,
    ErrorKind,
    Health,
    PowerAction,
    Target,
)
from provisioner.bmc.registry import service_drivers
from provisioner.profiles import load_profiles, shipped_profiles_dir
from tests.lab.conftest import Lab, Node

T = TypeVar("T")

PASSWORD = "behaviour-pw"
DIALECTS = tuple(Dialect)
NODES = 160  # 40 of each dialect: every test takes nodes of its own
# The lab machine's IPMI boot device selectors (lab.machine.BootDevice).
_SELECTOR = {BootDevice.NETWORK: 1, BootDevice.DISK: 2}


@dataclass(frozen=True)
class Bmc:
    """A protocol, and for Redfish the dialect of the BMC it speaks to."""

    protocol: str
    dialect: Dialect = Dialect.GENERIC

    @property
    def id(self) -> str:
        return self.protocol if self.protocol == "ipmi" else f"redfish-{self.dialect}"


IPMI = Bmc("ipmi")
REDFISH = Bmc("redfish")
# Where the dialects differ: power through a task (HPE), a boot override that needs
# If-Match (Dell), sessions only (Supermicro).
EVERY_DIALECT = [pytest.param(b, id=b.id) for b in (IPMI, *(Bmc("redfish", d) for d in DIALECTS))]
# Where they do not.
BOTH = [pytest.param(b, id=b.id) for b in (IPMI, REDFISH)]


def redfish_only(*dialects: Dialect) -> list[Any]:
    return [pytest.param(Bmc("redfish", d), id=f"redfish-{d}") for d in dialects]


@dataclass
class Rack:
    lab: Lab
    dialects: dict[str, Dialect]
    unused: list[Node] = field(default_factory=list)

    @property
    def certificate(self) -> Path:
        return self.lab.control_dir / CERTIFICATE_FILE

    def take(self, bmc: Bmc | None = None) -> Node:
        """A node no test has used (tests change power, boot flags and faults), whose
        Redfish BMC speaks ``bmc.dialect``; any node for IPMI or without ``bmc``."""
        if bmc is None or bmc.protocol == "ipmi":
            left = Counter(self.dialects[n.name] for n in self.unused)
            dialect = left.most_common(1)[0][0]
        else:
            dialect = bmc.dialect
        node = next(n for n in self.unused if self.dialects[n.name] is dialect)
        self.unused.remove(node)
        return node

    def target(self, node: Node, bmc: Bmc, **overrides: Any) -> Target:
        settings: dict[str, Any] = {
            "address": "127.0.0.1",
            "port": node.port,
            "username": node.username,
            "password": node.password,
            "driver": bmc.protocol,
            "timeout": 5.0,
            "retries": 1,
        }
        if bmc.protocol == "redfish":
            settings["ca_bundle"] = str(self.certificate)
        return Target(**(settings | overrides))

    def machine(self, node: Node) -> dict[str, Any]:
        """The emulated machine behind both of the node's BMCs, as the lab sees it."""
        status: dict[str, Any] = control.status(self.lab.control_dir)[node.name]
        return status

    def fault(self, node: Node, fault: str) -> None:
        self.lab.fault(node, fault)


@pytest.fixture(scope="module")
def lab_rack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rack]:
    # The lab names its nodes as plan_rack does; ask it for the names only.
    names = [p.name for p in rack.plan_rack(NODES, seed=7, base_port=20000)]
    dialects = {name: DIALECTS[i % len(DIALECTS)] for i, name in enumerate(names)}
    chosen = [f"--redfish-dialect={n}={d}" for n, d in dialects.items() if d is not Dialect.GENERIC]
    lab = Lab(
        tmp_path_factory.mktemp("behaviour"),
        NODES,
        "--password",
        PASSWORD,
        "--protocol",
        "both",
        *chosen,
    )
    assert f"lab up: {NODES}/{NODES} BMCs answering" in lab.summary, lab.summary
    yield Rack(lab, dialects, list(lab.nodes))
    code = lab.stop()
    assert code == 0, f"the lab exited with {code}:\n" + "\n".join(lab.output)


def run(pool: BmcPool, target: Target, fn: Callable[[Driver], T], **kw: Any) -> T:
    """One call through the pool, from a test's synchronous body."""
    return asyncio.run(pool.call(target, fn, **kw))


def power_state(driver: Driver) -> str:
    return driver.power_state()


def press(action: PowerAction) -> Callable[[Driver], None]:
    return lambda driver: driver.set_power(action)


def boot_to(setting: BootSetting) -> Callable[[Driver], None]:
    return lambda driver: driver.set_boot_device(setting)


def boot_device(driver: Driver) -> BootSetting:
    return driver.boot_device()


# --- power --------------------------------------------------------------------------


@pytest.mark.parametrize("bmc", EVERY_DIALECT)
def test_power_round_trip(lab_rack: Rack, pool: BmcPool, bmc: Bmc) -> None:
    node = lab_rack.take(bmc)
    target = lab_rack.target(node, bmc)

    def step(action: PowerAction, expected: str) -> None:
        run(pool, target, press(action))
        # Carried out, not merely accepted: the machine and the BMC say so at once.
        assert lab_rack.machine(node)["power"] == expected, action
        assert run(pool, target, power_state, idempotent=True) == expected, action

    assert run(pool, target, power_state, idempotent=True) == "off"
    step(PowerAction.ON, "on")
    step(PowerAction.ON, "on")  # already on: still fine
    boots = len(lab_rack.machine(node)["boots"])
    step(PowerAction.CYCLE, "on")
    step(PowerAction.RESET, "on")
    assert len(lab_rack.machine(node)["boots"]) == boots + 2  # each one a boot
    step(PowerAction.SOFT_OFF, "off")
    step(PowerAction.ON, "on")
    step(PowerAction.OFF, "off")
    step(PowerAction.OFF, "off")  # already off: still fine


@pytest.mark.parametrize("bmc", EVERY_DIALECT)
def test_cycle_of_a_machine_that_is_off_powers_it_on(
    lab_rack: Rack, pool: BmcPool, bmc: Bmc
) -> None:
    # Both lab BMCs refuse a cycle while off, as real ones do (IPMI 0xD5, Redfish 409).
    node = lab_rack.take(bmc)
    target = lab_rack.target(node, bmc)
    run(pool, target, press(PowerAction.CYCLE))
    machine = lab_rack.machine(node)
    assert machine["power"] == "on"
    assert machine["boots"] == ["disk"]
    assert run(pool, target, power_state, idempotent=True) == "on"


# --- boot device --------------------------------------------------------------------


@pytest.mark.parametrize("bmc", EVERY_DIALECT)
@pytest.mark.parametrize(
    "setting",
    [
        BootSetting(BootDevice.NETWORK),
        BootSetting(BootDevice.DISK),
        BootSetting(BootDevice.NETWORK, persistent=True),
        BootSetting(BootDevice.DISK, persistent=True, uefi=True),
        BootSetting(BootDevice.NETWORK, uefi=True),
    ],
    ids=["network-once", "disk-once", "network-persistent", "disk-persistent-uefi", "network-uefi"],
)
def test_boot_device_round_trip(
    lab_rack: Rack, pool: BmcPool, bmc: Bmc, setting: BootSetting
) -> None:
    node = lab_rack.take(bmc)
    target = lab_rack.target(node, bmc)
    run(pool, target, boot_to(setting))
    assert run(pool, target, boot_device, idempotent=True) == setting
    assert lab_rack.machine(node)["boot"] == {
        "valid": True,
        "persistent": setting.persistent,
        "uefi": setting.uefi,
        "device": _SELECTOR[setting.device],
    }


@pytest.mark.parametrize("bmc", EVERY_DIALECT)
def test_boot_device_default_clears_the_override(lab_rack: Rack, pool: BmcPool, bmc: Bmc) -> None:
    node = lab_rack.take(bmc)
    target = lab_rack.target(node, bmc)
    run(pool, target, boot_to(BootSetting(BootDevice.NETWORK, persistent=True)))
    run(pool, target, boot_to(BootSetting(BootDevice.DEFAULT)))
    assert run(pool, target, boot_device, idempotent=True).device is BootDevice.DEFAULT
    assert not lab_rack.machine(node)["boot"]["valid"]
    run(pool, target, press(PowerAction.ON))
    assert lab_rack.machine(node)["boots"] == ["disk"]  # the firmware's own order


@pytest.mark.parametrize("bmc", EVERY_DIALECT)
def test_the_machine_consumes_a_once_only_override_at_power_on(
    lab_rack: Rack, pool: BmcPool, bmc: Bmc
) -> None:
    node = lab_rack.take(bmc)
    target = lab_rack.target(node, bmc)
    run(pool, target, boot_to(BootSetting(BootDevice.NETWORK, uefi=True)))
    run(pool, target, press(PowerAction.ON))
    assert lab_rack.machine(node)["boots"] == ["pxe-uefi"]
    assert not lab_rack.machine(node)["boot"]["valid"]
    assert run(pool, target, boot_device, idempotent=True).device is BootDevice.DEFAULT
    run(pool, target, press(PowerAction.CYCLE))
    assert lab_rack.machine(node)["boots"] == ["pxe-uefi", "disk-uefi"]
    # A persistent one is not consumed.
    run(pool, target, boot_to(BootSetting(BootDevice.NETWORK, persistent=True)))
    run(pool, target, press(PowerAction.RESET))
    run(pool, target, press(PowerAction.RESET))
    assert lab_rack.machine(node)["boots"][-2:] == ["pxe", "pxe"]
    assert run(pool, target, boot_device, idempotent=True) == BootSetting(
        BootDevice.NETWORK, persistent=True
    )


# --- inventory and health -----------------------------------------------------------

SHARED_FACTS = ("manufacturer", "product", "serial", "guid", "macs")


@pytest.mark.parametrize("dialect", list(DIALECTS), ids=[f"redfish-{d}" for d in DIALECTS])
def test_inventory_is_the_same_machine_through_both_protocols(
    lab_rack: Rack, pool: BmcPool, dialect: Dialect
) -> None:
    node = lab_rack.take(Bmc("redfish", dialect))
    facts = {
        bmc.protocol: run(
            pool, lab_rack.target(node, bmc), lambda d: d.inventory().facts, idempotent=True
        )
        for bmc in (IPMI, Bmc("redfish", dialect))
    }
    ipmi, redfish = facts["ipmi"], facts["redfish"]
    for key in SHARED_FACTS:
        assert key in ipmi, (key, facts)
        assert key in redfish, (key, facts)
    for key in ("manufacturer", "product", "serial", "guid"):
        assert ipmi[key] == redfish[key], (key, facts)
    assert redfish["manufacturer"] == "Provisioner Lab"
    assert redfish["product"] == "Virtual Server VS-1"
    assert redfish["serial"].startswith("VS1")
    # Redfish lists the machine's NICs (EthernetInterfaces); the lab's IPMI FRU lists
    # none, as on most real boards, so IPMI reports no MAC that Redfish does not.
    manifest_macs = _manifest_macs(lab_rack, node)
    assert sorted(redfish["macs"]) == sorted(manifest_macs), facts
    assert set(ipmi["macs"]) <= set(redfish["macs"]), facts
    profiles = load_profiles(shipped_profiles_dir())
    for protocol, found in facts.items():
        profile = profiles.match(found)
        assert profile is not None, (protocol, found)
        assert profile.name == "lab-virtual-server", (protocol, profile.name)


def _manifest_macs(lab_rack: Rack, node: Node) -> list[str]:
    with lab_rack.lab.manifest.open() as rows:
        row = next(r for r in csv.DictReader(rows) if r["name"] == node.name)
    return row["macs"].split()


@pytest.mark.parametrize("dialect", list(DIALECTS), ids=[f"redfish-{d}" for d in DIALECTS])
def test_health_is_the_same_sensors_through_both_protocols(
    lab_rack: Rack, pool: BmcPool, dialect: Dialect
) -> None:
    """The IPMI SDR and the Redfish sensors (legacy Thermal/Power, or the HPE-like
    dialect's Sensors collection) of one machine: the same names, units, health and
    values within the SDR's resolution, off (no standby power to most) and on."""
    node = lab_rack.take(Bmc("redfish", dialect))
    both = (IPMI, Bmc("redfish", dialect))
    unavailable: dict[str, set[str]] = {}
    for action in (PowerAction.OFF, PowerAction.ON):
        run(pool, lab_rack.target(node, IPMI), press(action))
        health = {
            bmc.protocol: run(pool, lab_rack.target(node, bmc), _health, idempotent=True)
            for bmc in both
        }
        ipmi, redfish = health["ipmi"], health["redfish"]
        assert ipmi.health == redfish.health == "ok", health
        assert [s.name for s in ipmi.sensors] == [s.name for s in redfish.sensors], health
        for mine, theirs in zip(ipmi.sensors, redfish.sensors, strict=True):
            assert (mine.units, mine.health) == (theirs.units, theirs.health), (mine, theirs)
            if mine.value is None or theirs.value is None:
                assert mine.value is theirs.value is None, (mine, theirs)
            else:
                assert theirs.value == pytest.approx(mine.value, abs=0.01), (mine, theirs)
        unavailable[action] = {s.name for s in redfish.sensors if s.value is None}
    assert {s.units for s in redfish.sensors} == {"°C", "RPM", "V"}, redfish
    assert unavailable == {PowerAction.OFF: {"CPU Temp", "Fan1", "PSU1 12V"}, PowerAction.ON: set()}


def _health(driver: Driver) -> Health:
    return driver.health()


# --- faults: each ends in its error within a bound, the neighbours answering ----------


@dataclass
class Outcome:
    error: BmcError
    elapsed: float
    # When each of the healthy neighbours' calls returned, and when the faulty call ended,
    # on the event loop's clock.
    answered: list[float]
    ended: float

    def neighbours_answered_meanwhile(self) -> bool:
        return bool(self.answered) and min(self.answered) < self.ended


async def _during_fault(
    pool: BmcPool,
    faulty: Target,
    fn: Callable[[Driver], Any],
    neighbours: list[Target],
    *,
    deadline: float | None = None,
    idempotent: bool = True,
) -> Outcome:
    """Call ``fn`` on the faulty BMC while the neighbours' power state is read again
    and again on the same pool, until the faulty call has ended and once after."""
    loop = asyncio.get_running_loop()
    # Logged in before the fault is tried: what is measured is whether the faulty BMC
    # holds the others up, not how fast a loaded machine logs in.
    for neighbour in neighbours:
        await pool.call(neighbour, power_state, idempotent=True)
    began = loop.time()
    call = asyncio.create_task(pool.call(faulty, fn, deadline=deadline, idempotent=idempotent))
    answered: list[float] = []

    async def read_neighbours() -> None:
        while True:
            finished = call.done()
            for neighbour in neighbours:
                state = await pool.call(neighbour, power_state, deadline=30, idempotent=True)
                assert state in ("on", "off")
                answered.append(loop.time())
            if finished:
                return
            await asyncio.sleep(0.05)

    reading = asyncio.create_task(read_neighbours())
    with pytest.raises(BmcError) as info:
        await call
    ended = loop.time()
    await reading
    password = faulty.password
    assert password not in str(info.value), "the error names the password"
    return Outcome(info.value, ended - began, answered, ended)


def _neighbours(lab_rack: Rack) -> list[Target]:
    """A healthy node's two BMCs, one of each protocol."""
    neighbour = lab_rack.take()
    return [lab_rack.target(neighbour, IPMI), lab_rack.target(neighbour, REDFISH)]


def _fault_case(lab_rack: Rack, bmc: Bmc, fault: str) -> tuple[Node, list[Target]]:
    """A node with ``fault``, and healthy neighbours."""
    node = lab_rack.take(bmc)
    lab_rack.fault(node, fault)
    return node, _neighbours(lab_rack)


# A BMC that takes a connection (Redfish: TCP) but never answers runs into the
# call's timeout; one that never answers a datagram (IPMI) is "no answer".
NO_ANSWER_KIND = {"ipmi": ErrorKind.UNREACHABLE, "redfish": ErrorKind.TIMEOUT}


def _fault_ends_in(
    lab_rack: Rack, pool: BmcPool, bmc: Bmc, fault: str, kind: ErrorKind, timeout: float
) -> tuple[Node, Outcome]:
    """A power-state read of a node with ``fault``, given ``timeout`` and one retry,
    while its neighbours are read: it ends in ``kind`` within the bound of both tries."""
    node, neighbours = _fault_case(lab_rack, bmc, fault)
    target = lab_rack.target(node, bmc, timeout=timeout, retries=1)
    outcome = asyncio.run(_during_fault(pool, target, power_state, neighbours))
    assert outcome.error.kind is kind, str(outcome.error)
    assert outcome.elapsed < 2 * (target.timeout + 0.5) + 5
    return node, outcome


@pytest.mark.parametrize("bmc", BOTH)
def test_no_answer(lab_rack: Rack, pool: BmcPool, bmc: Bmc) -> None:
    kind = NO_ANSWER_KIND[bmc.protocol]
    _, outcome = _fault_ends_in(lab_rack, pool, bmc, "no-answer", kind, timeout=2.0)
    assert outcome.neighbours_answered_meanwhile(), outcome


@pytest.mark.parametrize("bmc", BOTH)
def test_nothing_listening_is_unreachable(lab_rack: Rack, pool: BmcPool, bmc: Bmc) -> None:
    neighbours = _neighbours(lab_rack)
    node = Node("nowhere", _closed_port(), "admin", PASSWORD)
    target = lab_rack.target(node, bmc, timeout=2.0, retries=1)
    outcome = asyncio.run(_during_fault(pool, target, power_state, neighbours))
    assert outcome.error.kind is ErrorKind.UNREACHABLE, str(outcome.error)
    assert str(target.port) in str(outcome.error)
    assert outcome.elapsed < 2 * (target.timeout + 0.5) + 5


def _closed_port() -> int:
    """A port with nothing listening on it, UDP or TCP (bound, read, released)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port: int = tcp.getsockname()[1]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no port free for both UDP and TCP")


@pytest.mark.parametrize(
    "bmc", [*BOTH, *redfish_only(Dialect.SUPERMICRO)]
)  # Supermicro: a session login, not basic authentication
def test_wrong_password_is_authentication_failed(lab_rack: Rack, pool: BmcPool, bmc: Bmc) -> None:
    node, neighbours = _fault_case(lab_rack, bmc, "wrong-password")
    target = lab_rack.target(node, bmc, retries=3)
    outcome = asyncio.run(_during_fault(pool, target, power_state, neighbours))
    assert outcome.error.kind is ErrorKind.AUTH, str(outcome.error)
    assert outcome.elapsed < 5  # not retried: a password does not get better
    assert node.username in str(outcome.error)


@pytest.mark.parametrize("bmc", BOTH)
def test_slow_answers_succeed_within_a_longer_timeout(
    lab_rack: Rack, pool: BmcPool, bmc: Bmc
) -> None:
    node = lab_rack.take(bmc)
    lab_rack.fault(node, "slow:400")
    target = lab_rack.target(node, bmc, timeout=15.0)
    run(pool, target, press(PowerAction.ON))
    assert run(pool, target, power_state, idempotent=True) == "on"
    assert lab_rack.machine(node)["power"] == "on"


SLOW_KIND = {"ipmi": ErrorKind.UNREACHABLE, "redfish": ErrorKind.TIMEOUT}


@pytest.mark.parametrize("bmc", BOTH)
def test_slow_answers_time_out_with_a_short_timeout(
    lab_rack: Rack, pool: BmcPool, bmc: Bmc
) -> None:
    kind = SLOW_KIND[bmc.protocol]
    _, outcome = _fault_ends_in(lab_rack, pool, bmc, "slow:3000", kind, timeout=1.0)
    assert outcome.neighbours_answered_meanwhile(), outcome


# --- Redfish only: busy, tasks, certificates ---------------------------------------


@pytest.mark.parametrize("bmc", redfish_only(Dialect.GENERIC, Dialect.SUPERMICRO))
def test_busy_for_less_than_the_call_allows_waits_then_succeeds(
    lab_rack: Rack, pool: BmcPool, bmc: Bmc
) -> None:
    node = lab_rack.take(bmc)
    target = lab_rack.target(node, bmc, timeout=15.0)
    assert run(pool, target, power_state) == "off"  # logged in: the next call starts at once
    lab_rack.fault(node, "busy")
    started = threading.Event()

    def power_on(driver: Driver) -> None:
        started.set()
        driver.set_power(PowerAction.ON)

    def end_busy() -> None:
        # Well before the lab's Retry-After (2 s) is over.
        started.wait(30)
        time.sleep(0.5)
        lab_rack.fault(node, "none")

    ender = threading.Thread(target=end_busy)
    ender.start()
    began = time.monotonic()
    run(pool, target, power_on)
    took = time.monotonic() - began
    ender.join()
    assert lab_rack.machine(node)["power"] == "on"
    assert took >= 1.5, "it did not wait as Retry-After asked"


@pytest.mark.parametrize("bmc", redfish_only(Dialect.GENERIC))
def test_busy_for_longer_than_the_call_allows_is_busy(
    lab_rack: Rack, pool: BmcPool, bmc: Bmc
) -> None:
    # The lab asks for 2 s; a call given 1 s cannot wait that long.
    node, outcome = _fault_ends_in(lab_rack, pool, bmc, "busy", ErrorKind.BUSY, timeout=1.0)
    assert "Retry-After" in str(outcome.error) or "busy" in str(outcome.error).lower()
    assert lab_rack.machine(node)["power"] == "off"


@pytest.mark.parametrize("bmc", redfish_only(Dialect.GENERIC, Dialect.HPE))
def test_a_task_that_never_completes_times_out(lab_rack: Rack, pool: BmcPool, bmc: Bmc) -> None:
    node, neighbours = _fault_case(lab_rack, bmc, "task-hang")
    target = lab_rack.target(node, bmc, timeout=5.0, power_deadline=3.0)
    outcome = asyncio.run(
        _during_fault(
            pool, target, press(PowerAction.ON), neighbours, deadline=30.0, idempotent=False
        )
    )
    assert outcome.error.kind is ErrorKind.TIMEOUT, str(outcome.error)
    assert "task" in str(outcome.error), str(outcome.error)
    assert target.power_deadline <= outcome.elapsed < target.power_deadline + 10
    assert outcome.neighbours_answered_meanwhile(), outcome
    assert lab_rack.machine(node)["power"] == "off"


@pytest.mark.parametrize("bmc", redfish_only(Dialect.GENERIC, Dialect.SUPERMICRO))
def test_a_certificate_is_pinned_on_first_contact(lab_rack: Rack, bmc: Bmc) -> None:
    pinned: list[tuple[Target, str]] = []
    pool = BmcPool(driver_factory=service_drivers(on_pin=lambda t, f: pinned.append((t, f))))
    node = lab_rack.take(bmc)
    # Neither a CA bundle nor a pin: trust on first use.
    target = lab_rack.target(node, bmc, ca_bundle=None)
    try:
        assert run(pool, target, power_state) == "off"
    finally:
        pool.close()
    assert pinned == [(target, f"sha256:{_lab_fingerprint(lab_rack)}")]


@pytest.mark.parametrize("bmc", redfish_only(Dialect.GENERIC))
def test_a_changed_certificate_is_refused_naming_both_fingerprints(
    lab_rack: Rack, pool: BmcPool, bmc: Bmc
) -> None:
    pinned = _lab_fingerprint(lab_rack)
    node = lab_rack.take(bmc)
    target = lab_rack.target(node, bmc, ca_bundle=None, tls_fingerprint=f"sha256:{pinned}")
    assert run(pool, target, power_state) == "off"  # the pinned certificate is the lab's
    neighbours = _neighbours(lab_rack)
    lab_rack.fault(node, "new-certificate")
    shown = ssl.get_server_certificate(("127.0.0.1", node.port))
    changed = _fingerprint(x509.load_pem_x509_certificate(shown.encode()))
    assert changed != pinned
    outcome = asyncio.run(_during_fault(pool, target, power_state, neighbours))
    assert outcome.error.kind is ErrorKind.CERTIFICATE, str(outcome.error)
    message = str(outcome.error).lower().replace(":", "")
    assert pinned in message, str(outcome.error)
    assert changed in message, str(outcome.error)
    assert outcome.elapsed < 10
    lab_rack.fault(node, "none")  # the lab's certificate again: the pin holds
    assert run(pool, target, power_state) == "off"


def _lab_fingerprint(lab_rack: Rack) -> str:
    return _fingerprint(x509.load_pem_x509_certificate(lab_rack.certificate.read_bytes()))


def _fingerprint(cert: x509.Certificate) -> str:
    """Hex SHA-256 of the DER certificate, as a pin records it."""
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()
