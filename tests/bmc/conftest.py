"""A small real IPMI BMC for the driver and pool tests (pyghmi's BMC server on UDP).

Enough of a BMC for power, boot options and Get Device ID, plus the server-side fix that
lets a pyghmi client log in (trap 1 in docs/pyghmi.md), a login counter and a "hang"
switch. It has no FRU and no SDR, like pyghmi's stock BMC. It serves from this process
with pyghmi's process-wide I/O fixed as in the service (provisioner.bmc.pyghmi_fixes).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pyghmi.ipmi.bmc as pyghmi_bmc
import pyghmi.ipmi.private.serversession as serversession
import pyghmi.ipmi.private.session as pyghmi_session
import pytest

from provisioner.bmc import BmcPool, Target, pyghmi_fixes

USER = "admin"
PASSWORD = "s3cret-pw"


class _ServerSession(serversession.ServerSession):  # type: ignore[misc]
    def create_open_session_response(self, request: bytearray) -> bytearray:
        # The stock server answers suite 3 to any proposal and the client, which proposed
        # suite 17, then fails in RAKP2. Status 0x11 ("no matching cipher suite") makes
        # the client propose suite 3 itself. Byte 12 is the authentication algorithm.
        if request[12] != 1:
            self.clientsessionid = request[4:8]
            return bytearray([request[0], 0x11, 0, 0]) + request[4:8]
        result: bytearray = super().create_open_session_response(request)
        return result

    def process_pktqueue(self) -> None:
        with self.bmc.lock:
            super().process_pktqueue()

    def sessionless_data(self, data: bytearray, sockaddr: Any) -> None:
        # pyghmi hands a session a packet from an address it no longer knows (a new
        # client on an old client port) through this method, which only the BMC has:
        # the stock server raises AttributeError (trap 5). Let the BMC handle it.
        self.bmc.sessionless_data(data, sockaddr)

    def _got_rakp1(self, data: list[int]) -> None:
        super()._got_rakp1(data)
        if getattr(self, "kuid", None) is not None:
            self.bmc.logins += 1


class FixtureBmc(pyghmi_bmc.Bmc):  # type: ignore[misc]
    def __init__(self, users: dict[str, str]) -> None:
        super().__init__(users, port=0, address="127.0.0.1")
        # Bound to port 0: pyghmi routes packets by the real port, so record it.
        self.port = self.serversocket.getsockname()[1]
        self.power = "off"
        self.boot_flags = 0
        self.boot_code = 0
        self.logins = 0
        self.hang = False
        # In this process the client's threads handle the BMC's packets too, several at
        # once; pyghmi's server sends RAKP4 before it switches the session to its keys,
        # so a client's next request, handled meanwhile, was dropped (a 1 s retry). One
        # packet at a time per BMC, as in a BMC process of its own.
        self.lock = threading.RLock()

    def process_pktqueue(self) -> None:
        with self.lock:
            super().process_pktqueue()

    def sessionless_data(self, data: bytes, sockaddr: Any) -> None:
        if self.hang:
            return  # nor does a stuck BMC answer new logins; clients retransmit
        packet = bytearray(data)
        if len(packet) >= 22 and packet[:4] == b"\x06\x00\xff\x07" and packet[4:6] == b"\x06\x10":
            _ServerSession(
                self.authdata,
                self.kg,
                sockaddr,
                self.serversocket,
                packet[16:],
                self.uuid,
                bmc=self,
            )
            return
        super().sessionless_data(packet, sockaddr)

    def handle_raw_request(self, request: dict[str, Any], session: Any) -> None:
        if self.hang:
            return  # logged in, then silence: a BMC whose firmware is stuck
        super().handle_raw_request(request, session)

    def get_power_state(self) -> str:
        return self.power

    def power_on(self) -> int:
        self.power = "on"
        return 0

    def power_off(self) -> int:
        self.power = "off"
        return 0

    power_shutdown = power_off

    def power_cycle(self) -> int:
        if self.power == "off":
            return 0xD5  # as real BMCs: not possible in the present state
        return 0

    power_reset = power_cycle

    def get_boot_device(self) -> str:
        return "default"

    # The stock class ignores the persistent and UEFI bits; keep what was set.
    def get_system_boot_options(self, request: dict[str, Any], session: Any) -> None:
        if request["data"][0] != 5:
            session.send_ipmi_response(code=0x80)
            return
        session.send_ipmi_response(data=[1, 5, self.boot_flags, self.boot_code, 0, 0, 0])

    def set_system_boot_options(self, request: dict[str, Any], session: Any) -> None:
        data = request["data"]
        if data[0] == 5:
            self.boot_flags, self.boot_code = data[1], data[2]
        session.send_ipmi_response()


def _serve() -> None:
    while True:
        with contextlib.suppress(Exception):
            pyghmi_session.Session.wait_for_rsp(timeout=1.0)


_server_thread: threading.Thread | None = None


def start_server() -> None:
    """One thread serves every fixture BMC in the process, like ``Bmc.listen()``; the
    I/O fixes come first, as in the lab, so no BMC socket meets pyghmi's stock send."""
    global _server_thread
    pyghmi_fixes.install()
    if _server_thread is None:
        _server_thread = threading.Thread(target=_serve, name="fixture-bmcs", daemon=True)
        _server_thread.start()


class StockBmc(pyghmi_bmc.Bmc):  # type: ignore[misc]
    """pyghmi's BMC as shipped: answers suite 3 whatever the client proposed (trap 1)."""

    def __init__(self) -> None:
        super().__init__({USER: PASSWORD}, port=0, address="127.0.0.1")
        self.port = self.serversocket.getsockname()[1]

    def get_power_state(self) -> str:
        return "on"


def _target_for(bmc: FixtureBmc | StockBmc, **overrides: Any) -> Target:
    settings: dict[str, Any] = {
        "address": "127.0.0.1",
        "port": bmc.port,
        "username": USER,
        "password": PASSWORD,
        "timeout": 2.0,
        "retries": 1,
    }
    settings.update(overrides)
    return Target(**settings)


def _new_bmc(users: dict[str, str] | None = None) -> FixtureBmc:
    start_server()
    return FixtureBmc(users or {USER: PASSWORD})


@pytest.fixture
def make_bmc() -> Iterator[Callable[..., FixtureBmc]]:
    """Makes fixture BMCs; any left hanging are released at the end of the test, so
    that threads waiting on them finish."""
    made: list[FixtureBmc] = []

    def make(users: dict[str, str] | None = None) -> FixtureBmc:
        made.append(_new_bmc(users))
        return made[-1]

    yield make
    for bmc in made:
        bmc.hang = False


@pytest.fixture
def bmc(make_bmc: Callable[..., FixtureBmc]) -> FixtureBmc:
    return make_bmc()


@pytest.fixture
def stock_bmc() -> StockBmc:
    start_server()
    return StockBmc()


@pytest.fixture
def pool() -> Iterator[BmcPool]:
    """A pool with the service's drivers (test_pool.py, test_driver_behaviour.py),
    closed after the test."""
    p = BmcPool(max_workers=32)
    yield p
    p.close()


@pytest.fixture
def target_for() -> Callable[..., Target]:
    """target_for(bmc, **overrides): a Target for a fixture BMC, with short timeouts."""
    return _target_for


@pytest.fixture
def free_port() -> int:
    """A UDP port with nothing listening on it (bound, read, released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port
