"""Server-side sessions stay bounded under thousands of logins, and malformed packets
never take a BMC, or its neighbours in the same process, down."""

from __future__ import annotations

import hashlib
import hmac
import os
import random
import socket
import struct
import time
from pathlib import Path

from lab.bmc import MAX_SESSIONS
from lab.rack import probe, process_rss_kib
from tests.lab.conftest import Lab, Node, ipmitool
from tests.lab.test_pyghmi import connect

_SUITE_3 = bytes([0, 0, 0, 8, 1, 0, 0, 0, 1, 0, 0, 8, 1, 0, 0, 0, 2, 0, 0, 8, 1, 0, 0, 0])
_ADMIN_BY_NAME = 0x14


def _exchange(sock: socket.socket, port: int, payload_type: int, payload: bytes) -> bytes:
    header = bytes([0x06, 0x00, 0xFF, 0x07, 0x06, payload_type, *bytes(8)])
    sock.sendto(header + struct.pack("<H", len(payload)) + payload, ("127.0.0.1", port))
    return sock.recvfrom(1024)[0][16:]


def login_and_walk_away(node: Node) -> None:
    """An RMCP+ login (open session, RAKP 1-4) from a fresh source port, never closed:
    the worst a client can do to a BMC's session table."""
    user, password = node.username.encode(), node.password.encode()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2)
        console_id = os.urandom(4)
        opened = _exchange(sock, node.port, 0x10, bytes([1, 0, 0, 0]) + console_id + _SUITE_3)
        assert opened[1] == 0
        bmc_id = opened[8:12]
        rakp1 = bytes([2, 0, 0, 0]) + bmc_id + os.urandom(16)
        rakp2 = _exchange(
            sock, node.port, 0x12, rakp1 + bytes([_ADMIN_BY_NAME, 0, 0, len(user)]) + user
        )
        assert rakp2[1] == 0
        proof = rakp2[8:24] + console_id + bytes([_ADMIN_BY_NAME, len(user)]) + user
        rakp3 = bytes([3, 0, 0, 0]) + bmc_id + hmac.new(password, proof, hashlib.sha1).digest()
        assert _exchange(sock, node.port, 0x14, rakp3)[1] == 0


def test_thousands_of_logins_keep_memory_and_answers_bounded(lab: Lab) -> None:
    nodes = [lab.take() for _ in range(4)]
    for index in range(1000):  # warm-up: fill the session tables and allocator pools
        login_and_walk_away(nodes[index % 4])
    before = process_rss_kib(lab.process.pid)
    for index in range(3000):
        login_and_walk_away(nodes[index % 4])
    grown = process_rss_kib(lab.process.pid) - before
    assert grown < 4096, f"RSS grew {grown} KiB over 3,000 logins"
    for node in nodes:
        sessions = lab.status(node)["sessions"]
        assert isinstance(sessions, int)
        assert sessions <= MAX_SESSIONS
        assert ipmitool(node, "power", "status").stdout.strip() == "Chassis Power is off"
        assert connect(node).get_power() == {"powerstate": "off"}


def test_malformed_packets_are_contained(lab: Lab) -> None:
    target, neighbour = lab.take(), lab.take()
    rng = random.Random(5)
    rmcp = bytes([0x06, 0x00, 0xFF, 0x07])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _ in range(500):
            body = rng.randbytes(rng.randrange(0, 80))
            auth_type = rng.choice([0x00, 0x02, 0x06])
            payload_type = rng.choice([0x00, 0x10, 0x12, 0x14, 0x40, 0xC0])
            sock.sendto(rmcp + bytes([auth_type, payload_type]) + body, ("127.0.0.1", target.port))
        # An open-session request cut short, and a RAKP1 for a session never opened.
        address = ("127.0.0.1", target.port)
        sock.sendto(rmcp + bytes([6, 0x10]) + bytes(8) + b"\x01\x00\x01", address)
        sock.sendto(rmcp + bytes([6, 0x12]) + bytes(10) + bytes(40), address)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        # A RAKP3 before any RAKP1 makes pyghmi's session code raise.
        sock.settimeout(2)
        opened = _exchange(sock, target.port, 0x10, bytes([1, 0, 0, 0, 9, 9, 9, 9]) + _SUITE_3)
        sock.sendto(rmcp + bytes([6, 0x14]) + bytes(8) + b"\x24\x00" + bytes(36), address)
    lab.wait_for("provisioner-lab[", timeout=5)  # the error, logged and contained
    assert opened[1] == 0
    assert probe("127.0.0.1", [target.port, neighbour.port], timeout=2) == {
        target.port,
        neighbour.port,
    }
    assert connect(target).get_power() == {"powerstate": "off"}
    assert ipmitool(neighbour, "mc", "info").returncode == 0


def test_idle_sessions_expire(tmp_path: Path) -> None:
    lab = Lab(tmp_path, 2, "--password", "pw", "--session-timeout", "1")
    try:
        for _ in range(5):
            login_and_walk_away(lab.nodes[0])
        assert lab.status(lab.nodes[0])["sessions"] == 5
        time.sleep(2.5)  # the timeout, plus the loop's once-a-second sweep
        assert lab.status(lab.nodes[0])["sessions"] == 0
    finally:
        assert lab.stop() == 0
