"""pyghmi's process-wide I/O as fixed by provisioner.bmc.pyghmi_fixes: the same in every
process, whoever installs it first, and never dependent on a socket's blocking mode."""

from __future__ import annotations

import collections
import contextlib
import socket
import time
from collections.abc import Iterator
from typing import Any

import pyghmi.ipmi.private.session as pyghmi_session
import pytest

from provisioner.bmc import pyghmi_fixes


@pytest.fixture
def receiver() -> Iterator[socket.socket]:
    """A socket left in blocking mode, as pyghmi creates its own."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock


def test_install_is_idempotent_and_replaces_what_pyghmi_looks_up() -> None:
    pyghmi_fixes.install()
    pyghmi_fixes.install()
    assert pyghmi_session._io_sendto is pyghmi_fixes.send_keeping_mode
    assert pyghmi_session._io_graball is pyghmi_fixes.route_incoming
    assert pyghmi_session.WAITING_SESSIONS is pyghmi_session.KEEPALIVE_SESSIONS


@pytest.mark.parametrize("blocking", [True, False])
def test_send_never_changes_the_blocking_mode(blocking: bool, receiver: socket.socket) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(blocking)
        pyghmi_fixes.send_keeping_mode(sock, b"ping", receiver.getsockname())
        assert sock.getblocking() is blocking
    assert receiver.recv(16) == b"ping"


def test_routing_never_waits_on_a_blocking_socket(receiver: socket.socket) -> None:
    started = time.monotonic()
    assert pyghmi_fixes.route_incoming([receiver], {}) == []
    assert time.monotonic() - started < 0.5
    assert receiver.getblocking() is True


class _Listener:
    def __init__(self) -> None:
        self.pktqueue: collections.deque[tuple[Any, ...]] = collections.deque()

    def process_pktqueue(self) -> None:
        """Whichever thread pumps pyghmi's event loop may call this."""


class _Broken(dict[int, Any]):
    def get(self, key: int, default: Any = None) -> Any:
        raise KeyError(key)


def test_routing_delivers_and_contains_a_failing_lookup(receiver: socket.socket) -> None:
    handlers = pyghmi_session.Session.bmc_handlers
    port = receiver.getsockname()[1]
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as good,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as bad,
    ):
        good.bind(("127.0.0.1", 0))
        bad.bind(("127.0.0.1", 0))
        listener = _Listener()
        handlers[good.getsockname()] = {port: listener}
        handlers[bad.getsockname()] = _Broken({port: _Listener()})
        try:
            bad.sendto(b"from a session being dropped", receiver.getsockname())
            good.sendto(b"an answer", receiver.getsockname())
            time.sleep(0.05)
            senders = pyghmi_fixes.route_incoming([receiver], {})
        finally:
            del handlers[good.getsockname()], handlers[bad.getsockname()]
            with contextlib.suppress(ValueError):
                pyghmi_session.sessionqueue.remove(listener)
        assert senders == [good.getsockname()]
        assert [entry[0] for entry in listener.pktqueue] == [b"an answer"]
