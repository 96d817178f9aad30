"""What an operator's log file gets from the CLI: `provisioner ... > log` holds the
command's whole report in order (the "accepted" line, then one plain line per change while
--wait watches), and only errors go to stderr."""

from __future__ import annotations

import os
import re
import subprocess

from fastapi.testclient import TestClient

from provisioner.bmc.fake import FakeFleet
from tests import flows
from tests.handoff.conftest import BIN, IMAGE, Live, install
from tests.serving import poll

RACK = "wait-r1"
ROLE = "wait-web"
NODES = ("wait-n1", "wait-n2")
# Variables that make rich draw as on a terminal although stdout is a pipe.
_TERMINAL = ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "NO_COLOR")


def _env(live: Live) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PROVISIONER_") and k not in _TERMINAL
    }
    return env | {"PROVISIONER_URL": live.url, "PROVISIONER_TOKEN": live.operator}


def _pxe(client: TestClient, headers: dict[str, str], name: str) -> str:
    node = client.get(f"/api/v1/nodes/{name}", headers=headers).json()
    mac: str = next(nic["mac"] for nic in node["nics"] if nic["pxe"])
    return mac


def _fail(client: TestClient, headers: dict[str, str], name: str) -> None:
    """Be the machine of ``name``, which the reconciler powered on while it worked on
    the other node: boot the installer, then report that it failed."""
    flows.tick_until(
        client, headers, name, lambda: flows.powered_on(client, headers, name) > 0, "powered on"
    )
    with flows.machine(client, "testclient") as own:
        script = own.get("/boot/ipxe", params={"mac": _pxe(client, headers, name)}).text
        found = re.search(r"/boot/answers/([A-Za-z0-9_-]+)", script)
        assert found, script
        assert own.post(f"/callback/{found.group(1)}/started").status_code == 200
        failed = own.post(f"/callback/{found.group(1)}/failed", content="disk error")
        assert failed.status_code == 200, failed.text
    flows.tick_until(client, headers, name, "failed")


def test_wait_into_a_file_prints_a_line_per_change_after_the_accepted_line(
    live: Live, client: TestClient, fleet: FakeFleet, operator: dict[str, str]
) -> None:
    for name in NODES:
        install(client, fleet, name, ROLE, rack=RACK, state="ready")
    waiting = subprocess.Popen(
        [
            str(BIN / "provisioner"), "rack", "provision", RACK, "--role", ROLE,
            "--image", IMAGE, "--wait", "--timeout", "120",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(live),
    )  # fmt: skip
    try:
        poll(
            lambda: {flows.state(client, operator, n) for n in NODES} == {"provisioning"},
            30,
            lambda: "both nodes provisioning",
        )
        flows.install(client, operator, "wait-n1", _pxe(client, operator, "wait-n1"))
        flows.tick_until(client, operator, "wait-n1", "active")
        _fail(client, operator, "wait-n2")
        stdout, stderr = waiting.communicate(timeout=60)
    finally:
        waiting.kill()
    assert waiting.returncode == 1, (stdout, stderr)
    lines = stdout.splitlines()
    assert lines[0] == "provision accepted for 2 node(s)", stdout
    assert lines[1].endswith(f"rack {RACK}: 2 node(s), 2 provisioning"), stdout
    changes = [line.split(None, 2)[2] for line in lines[2:]]
    failure = "install: the installer reported failure: disk error"
    assert changes[-1] == f"wait-n2: provisioning -> failed ({failure})", stdout
    assert any(c.startswith("wait-n1: ") and c.endswith(" -> active") for c in changes), stdout
    # One line per change, nothing redrawn: no line repeats and none has a control character.
    assert len(set(changes)) == len(changes), stdout
    assert not [c for c in stdout if ord(c) < 0x20 and c != "\n"], repr(stdout)
    assert stderr == f"error: 1 of 2 node(s) failed: wait-n2: {failure}\n"
