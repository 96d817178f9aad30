"""`provisioner node release` (and `node action NODE release`) on a service with no wipe
image: refused with the settings to fill in, or back to ready at once with --skip-wipe."""

from __future__ import annotations

import os
import subprocess

import pytest
from fastapi.testclient import TestClient

from provisioner.bmc.fake import FakeFleet
from provisioner.settings import Settings
from tests import flows
from tests.handoff.conftest import BIN, Live, install


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"wipe_kernel_url": None, "wipe_initrd_url": None})


def _provisioner(live: Live, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONER_")}
    env |= {"PROVISIONER_URL": live.url, "PROVISIONER_TOKEN": live.operator}
    return subprocess.run(
        [str(BIN / "provisioner"), *args], capture_output=True, text=True, env=env, timeout=60
    )


def test_release_skip_wipe_is_ready_at_once_by_either_command(
    live: Live, client: TestClient, fleet: FakeFleet, operator: dict[str, str]
) -> None:
    for name in ("rel-n1", "rel-n2"):
        install(client, fleet, name, None, rack="rel-r1", state="ready")
    released = _provisioner(live, "node", "release", "rel-n1", "--skip-wipe", "--reason", "lent")
    assert released.returncode == 0, released.stderr
    assert released.stdout.splitlines()[0] == "release accepted for rel-n1: now ready"
    assert released.stderr == ""
    events = client.get("/api/v1/nodes/rel-n1/events", headers=operator).json()
    assert events[-1]["to_state"] == "ready"
    assert "skip_wipe" in events[-1]["message"]

    # The same through `node action`, where the API takes --skip-wipe for a release only.
    acted = _provisioner(live, "node", "action", "rel-n2", "release", "--skip-wipe")
    assert acted.returncode == 0, acted.stderr
    assert acted.stdout.splitlines()[0] == "release accepted for rel-n2: now ready"
    wrong = _provisioner(live, "node", "action", "rel-n2", "inspect", "--skip-wipe")
    assert wrong.returncode == 1
    assert wrong.stderr == "error: invalid request: skip_wipe: applies to release only\n"
    assert flows.state(client, operator, "rel-n2") == "ready"


def test_release_without_a_wipe_image_is_refused_naming_what_to_do(
    live: Live, client: TestClient, fleet: FakeFleet, operator: dict[str, str]
) -> None:
    install(client, fleet, "rel-n3", None, rack="rel-r1", state="ready")
    refused = _provisioner(live, "node", "release", "rel-n3")
    assert refused.returncode == 1
    assert refused.stdout == ""
    (line,) = refused.stderr.splitlines()
    assert line.startswith("error: conflict: ")
    for what in ("PROVISIONER_WIPE_KERNEL_URL", "PROVISIONER_WIPE_INITRD_URL", "--skip-wipe"):
        assert what in line
    assert flows.state(client, operator, "rel-n3") == "ready"
