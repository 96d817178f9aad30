"""Text a booting machine or a BMC supplied (installer callbacks, FRU strings, BMC error
messages) is stored as given, and the CLI shows any control character in it as a visible
escape: nothing a machine sends can clear an operator's screen, set the window title or
type into the shell."""

from __future__ import annotations

import json
import os
import subprocess

from fastapi.testclient import TestClient

from provisioner.bmc.base import BmcError, ErrorKind
from provisioner.bmc.fake import FakeFleet
from tests import flows
from tests.handoff.conftest import BIN, IMAGE, Live
from tests.serving import poll
from tests.test_reconciler import PASSWORD

PAYLOAD = "\x1b[2J\x1b]0;pwned\x07"
# How the CLI shows it: the same characters, each control one as an escape.
SHOWN = r"\x1b[2J\x1b]0;pwned\x07"
NAME = "esc-n1"
MAC = "52:54:00:00:97:01"
RACK = "esc-r1"
# Variables that make rich colour output that is not a terminal.
_COLOUR = ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "NO_COLOR")


def _env(live: Live, **extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("PROVISIONER_") and k not in _COLOUR
    }
    return env | {"PROVISIONER_URL": live.url, "PROVISIONER_TOKEN": live.operator} | extra


def _controls(text: str) -> list[str]:
    """The control characters in ``text`` but the newlines that end the CLI's lines."""
    return [c for c in text if (ord(c) < 0x20 and c != "\n") or 0x7F <= ord(c) < 0xA0]


def _run(live: Live, *args: str) -> subprocess.CompletedProcess[str]:
    """The installed ``provisioner`` command, its output a pipe: rich adds no escapes of
    its own, so any control character in the output came from the data."""
    result = subprocess.run(
        [str(BIN / "provisioner"), *args],
        capture_output=True,
        text=True,
        env=_env(live),
        timeout=60,
    )
    assert _controls(result.stdout + result.stderr) == [], (result.stdout, result.stderr)
    return result


def _shown(output: str) -> bool:
    # Rich wraps long cells: compare without the line breaks it chose.
    return SHOWN in "".join(output.split())


def _ready_node_with_fru_text(client: TestClient, fleet: FakeFleet, admin: dict[str, str]) -> None:
    bmc = fleet.add("192.0.2.71", users={"admin": PASSWORD})
    bmc.facts["product"] = f"FS-1000{PAYLOAD}"
    bmc.facts["serial"] = f"FS{PAYLOAD}42"
    body = {
        "name": NAME,
        "rack": RACK,
        "bmc": {"address": bmc.address, "username": "admin", "password": PASSWORD},
        "nics": [{"mac": MAC, "pxe": True}],
    }
    enrolled = client.post("/api/v1/nodes", json=body, headers=admin)
    assert enrolled.status_code == 201, enrolled.text
    flows.tick_until(client, admin, NAME, "ready")
    role = client.post("/api/v1/roles", json={"name": "esc", "handoff": "immediate"}, headers=admin)
    assert role.status_code == 201, role.text


def _fail_the_installation(client: TestClient, operator: dict[str, str]) -> None:
    """Be the machine: boot the installer, report progress and failure, both carrying
    terminal control sequences."""
    found = flows.boot(client, operator, NAME, MAC, r"/boot/answers/([A-Za-z0-9_-]+)")
    token = found.group(1)
    with flows.machine(client, "testclient") as own:
        assert own.post(f"/callback/{token}/started").status_code == 200
        progress = own.post(f"/callback/{token}/progress", json={"message": f"50% {PAYLOAD}"})
        assert progress.status_code == 200, progress.text
        failed = own.post(f"/callback/{token}/failed", content=f"disk error {PAYLOAD}")
        assert failed.status_code == 200, failed.text
    flows.tick_until(client, operator, NAME, "failed")


def test_machine_supplied_text_reaches_the_terminal_only_as_escapes(
    live: Live,
    client: TestClient,
    fleet: FakeFleet,
    admin: dict[str, str],
    operator: dict[str, str],
) -> None:
    _ready_node_with_fru_text(client, fleet, admin)
    # --wait watches the rack while the machine fails, on a terminal (as rich sees it):
    # the live view shows the node's last error, then the command names it.
    waiting = subprocess.Popen(
        [
            str(BIN / "provisioner"), "rack", "provision", RACK, "--role", "esc",
            "--image", IMAGE, "--wait", "--timeout", "120",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(live, FORCE_COLOR="1", COLUMNS="200"),
    )  # fmt: skip
    try:
        poll(lambda: flows.state(client, operator, NAME) == "provisioning", 30, lambda: NAME)
        _fail_the_installation(client, operator)
        stdout, stderr = waiting.communicate(timeout=60)
    finally:
        waiting.kill()
    assert waiting.returncode == 1, (stdout, stderr)
    for sequence in ("\x1b[2J", "\x1b]", "\x07"):
        assert sequence not in stdout + stderr, (stdout, stderr)
    assert _shown(stderr.splitlines()[-1]), stderr

    events = _run(live, "node", "events", NAME)
    assert events.returncode == 0, events.stderr
    assert _shown(events.stdout)
    assert "installer progress" in events.stdout
    shown = _run(live, "node", "show", NAME)
    assert "Last error" in shown.stdout
    assert _shown(shown.stdout)
    listed = _run(live, "node", "list", "--rack", RACK)
    assert NAME in listed.stdout
    inventory = _run(live, "node", "inventory", NAME)
    assert _shown(inventory.stdout)
    assert "FS-1000" in inventory.stdout

    # The JSON for scripts carries the text exactly, escaped by JSON itself.
    as_json = _run(live, "node", "events", NAME, "--json")
    messages = [e["message"] for e in json.loads(as_json.stdout)]
    assert any(m.endswith(f"50% {PAYLOAD}") for m in messages), messages
    assert json.loads(_run(live, "node", "show", NAME, "--json").stdout)["last_error"].endswith(
        f"disk error {PAYLOAD}"
    )

    # A BMC's own error message, passed on by the API, is one line on stderr.
    fleet.bmcs[("192.0.2.71", 623)].fail(
        "power_state", BmcError(ErrorKind.UNREACHABLE, f"no answer {PAYLOAD}"), times=10
    )
    power = _run(live, "node", "power", NAME, "status")
    assert power.returncode == 1
    assert _shown(power.stderr), power.stderr
