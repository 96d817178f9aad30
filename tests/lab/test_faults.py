"""Each fault, set at run time over the control channel, shows within a bounded time
while a neighbour BMC served by the same process keeps answering."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from pyghmi.exceptions import IpmiException
from pyghmi.ipmi.command import Command

from lab import faults
from lab.rack import AUTH_CAPABILITIES_REQUEST, probe
from tests.lab.conftest import Lab, Node
from tests.lab.test_pyghmi import connect


def timed(action: Callable[[], Any]) -> tuple[float, Any]:
    started = time.monotonic()
    try:
        result = action()
    except IpmiException as exc:
        result = exc
    return time.monotonic() - started, result


@dataclass
class Neighbour:
    """The node next to the broken one, served by the same process."""

    node: Node
    client: Command

    def assert_answers(self) -> None:
        # The BMC itself answers at once...
        elapsed, answered = timed(lambda: probe("127.0.0.1", [self.node.port], timeout=1.0))
        assert answered == {self.node.port}
        assert elapsed < 0.2
        # ...and pyghmi works with it, within pyghmi's own occasional stalls of ~1 s.
        elapsed, power = timed(self.client.get_power)
        assert power in ({"powerstate": "on"}, {"powerstate": "off"})
        assert elapsed < 2.5


@pytest.fixture
def pair(lab: Lab) -> tuple[Node, Neighbour]:
    """A node to break, and a logged-in client of the node next to it."""
    node, neighbour = lab.take(), lab.take()
    return node, Neighbour(neighbour, connect(neighbour))


def test_no_answer(lab: Lab, pair: tuple[Node, Neighbour]) -> None:
    node, neighbour = pair
    lab.fault(node, "no-answer")
    outcome: list[tuple[float, Any]] = []
    login = threading.Thread(target=lambda: outcome.append(timed(lambda: connect(node))))
    login.start()
    while login.is_alive():
        neighbour.assert_answers()
        time.sleep(0.2)
    elapsed, result = outcome[0]
    assert isinstance(result, IpmiException)
    assert elapsed < 8.0  # pyghmi gives up on a silent BMC after ~5 s
    assert probe("127.0.0.1", [node.port], timeout=0.5) == set()
    lab.fault(node, "none")
    assert connect(node).get_power()["powerstate"] == "off"


def test_wrong_password(lab: Lab, pair: tuple[Node, Neighbour]) -> None:
    node, neighbour = pair
    lab.fault(node, "wrong-password")
    elapsed, result = timed(lambda: connect(node))
    assert isinstance(result, IpmiException)
    assert "Incorrect password" in str(result)
    assert elapsed < 1.0
    neighbour.assert_answers()
    lab.fault(node, "none")
    connect(node)


def test_slow(lab: Lab, pair: tuple[Node, Neighbour]) -> None:
    node, neighbour = pair
    command = connect(node)
    lab.fault(node, "slow:300")
    slow: list[tuple[float, Any]] = []
    call = threading.Thread(target=lambda: slow.append(timed(command.get_power)))
    call.start()
    time.sleep(0.05)
    neighbour.assert_answers()  # not held up behind the slow one
    call.join()
    elapsed, power = slow[0]
    assert power == {"powerstate": "off"}
    assert 0.3 <= elapsed < 2.5
    assert timed(lambda: probe("127.0.0.1", [node.port]))[0] >= 0.3
    lab.fault(node, "none")
    assert timed(lambda: probe("127.0.0.1", [node.port]))[0] < 0.2


def test_drop(lab: Lab, pair: tuple[Node, Neighbour]) -> None:
    node, neighbour = pair
    lab.fault(node, "drop:0.5")
    answered = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _ in range(100):
            sock.sendto(AUTH_CAPABILITIES_REQUEST, ("127.0.0.1", node.port))
        sock.settimeout(0.3)
        with contextlib.suppress(TimeoutError):
            while True:
                sock.recvfrom(512)
                answered += 1
    assert 25 <= answered <= 75
    neighbour.assert_answers()
    lab.fault(node, "none")
    assert connect(node).get_power()["powerstate"] == "off"


def test_fault_given_at_start(tmp_path: Any) -> None:
    started = Lab(tmp_path, 3, "--fault", "lab-r01-u02=no-answer", "--password", "pw")
    try:
        assert started.summary.startswith("lab up: 2/3 BMCs answering")
        assert "silent: lab-r01-u02" in started.summary
        ports = [node.port for node in started.nodes]
        assert probe("127.0.0.1", ports, timeout=0.5) == {ports[0], ports[2]}
    finally:
        assert started.stop() == 0


def test_drops_are_deterministic_with_the_seed() -> None:
    def verdicts(seed: int) -> list[float]:
        gate = faults.FaultGate(seed, "lab-r01-u01", faults.parse_fault("drop:0.3"))
        return [gate.verdict() for _ in range(200)]

    assert verdicts(7) == verdicts(7)
    assert verdicts(7) != verdicts(8)
    assert 30 <= verdicts(7).count(faults.DROP) <= 90


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("explode", "unknown fault 'explode'"),
        ("slow", "needs a value"),
        ("drop:1.5", "between 0 and 1"),
        ("no-answer:3", "takes no value"),
    ],
)
def test_bad_fault_is_explained(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        faults.parse_fault(text)
