"""Driving a node through its flows the way an operator and the machine would: the
reconciler one tick at a time, the machine network-booting from its own address, its
installer reading the answer file and calling back. Shared by every test that takes a
node through an installation (tests/handoff)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from fastapi.testclient import TestClient

from provisioner.services import Services
from tests.test_reconciler import node, tick

TICKS = 30


def services(app: Any) -> Services:
    """The app's long-lived parts (engine, vault, settings, reconciler, boot, webhooks)."""
    found: Services = app.state.services
    return found


def state(client: TestClient, headers: dict[str, str], name: str) -> str:
    found: str = node(client, headers, name)["state"]
    return found


def tick_until(
    client: TestClient,
    headers: dict[str, str],
    name: str,
    done: str | Callable[[], bool],
    what: str | None = None,
) -> None:
    """Run the reconciler one tick at a time until ``done`` (a state of node ``name``,
    or a condition) holds; checked before every tick, so a state that lasts one tick
    (``provisioned`` of an ``immediate`` role) is not ticked past."""
    wanted = done if callable(done) else lambda: state(client, headers, name) == done
    for _ in range(TICKS):
        if wanted():
            return
        tick(client)
    if wanted():
        return
    raise AssertionError(
        f"{name} never got {what or done}; it is {state(client, headers, name)} after {TICKS} ticks"
    )


@contextmanager
def machine(client: TestClient, address: str) -> Iterator[TestClient]:
    """The machine's own HTTP client: requests from its boot address, served on the
    test client's event loop (no second lifespan)."""
    own = TestClient(client.app, client=(address, 68))
    own.portal = client.portal
    try:
        yield own
    finally:
        own.close()


def powered_on(client: TestClient, headers: dict[str, str], name: str) -> int:
    """How often the reconciler has powered node ``name`` on to boot a deployment."""
    events = client.get(f"/api/v1/nodes/{name}/events", headers=headers).json()
    return sum(e["message"].startswith("powered on to boot") for e in events)


def boot(
    client: TestClient,
    headers: dict[str, str],
    name: str,
    mac: str,
    pattern: str,
    address: str = "testclient",
) -> re.Match[str]:
    """Wait for the reconciler to power the machine on for its new deployment, then
    network-boot it from ``address``; returns where ``pattern`` matched in its iPXE
    script."""
    before = powered_on(client, headers, name)
    tick_until(
        client,
        headers,
        name,
        lambda: powered_on(client, headers, name) > before,
        "powered on to boot",
    )
    with machine(client, address) as own:
        script = own.get("/boot/ipxe", params={"mac": mac}).text
    # The boot trace (and the address the NIC booted from) is written in batches.
    client.portal.call(services(client.app).boot.hops.flush)  # type: ignore[union-attr]
    found = re.search(pattern, script)
    assert found, script
    return found


@dataclass(frozen=True)
class Installation:
    token: str
    """The deployment's one-time token, from the answer-file URL of the boot script."""
    challenge: str
    """The Puppet challenge the answer file's csr_attributes.yaml carries."""


def install(
    client: TestClient,
    headers: dict[str, str],
    name: str,
    mac: str,
    address: str = "testclient",
) -> Installation:
    """Be the machine of a node that is provisioning: boot the installer the service
    serves, read its answer file, call back started and done; the reconciler takes the
    node to ``provisioned`` (and no further)."""
    token = boot(client, headers, name, mac, r"/boot/answers/([A-Za-z0-9_-]+)", address).group(1)
    with machine(client, address) as own:
        answers = own.get(f"/boot/answers/{token}")
        assert answers.status_code == 200, answers.text
        challenge = re.search(r"challengePassword: ['\"]?([A-Za-z0-9_-]+)", answers.text)
        assert challenge, answers.text
        assert own.post(f"/callback/{token}/started").status_code == 200
        assert own.post(f"/callback/{token}/done").status_code == 200
    tick_until(client, headers, name, "provisioned")
    return Installation(token, challenge.group(1))
