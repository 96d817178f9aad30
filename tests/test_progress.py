"""The live view behind --wait and the demo ends with an error naming the nodes that did
not make it and why."""

from __future__ import annotations

from typing import Any

import pytest

from provisioner.cli.client import CliError
from provisioner.cli.progress import watch

NODES: list[dict[str, Any]] = [
    {"name": "n1", "state": "active", "power_state": "on", "last_error": None},
    {"name": "n2", "state": "failed", "power_state": "on", "last_error": "install: no callback"},
    {"name": "n3", "state": "provisioning", "power_state": "on", "last_error": None},
]


def test_stuck_nodes_are_named_with_their_last_error_at_the_timeout() -> None:
    with pytest.raises(CliError) as failure:
        watch(lambda: NODES, "active", "rack r01", timeout=0.1, interval=0.05)
    assert "n3 (provisioning, last error: none)" in str(failure.value)


def test_failed_nodes_are_named_with_their_last_error() -> None:
    done = [n for n in NODES if n["name"] != "n3"]
    with pytest.raises(CliError) as failure:
        watch(lambda: done, "active", "rack r01", timeout=5, interval=0.05)
    assert str(failure.value) == "1 of 2 node(s) failed: n2: install: no callback"


def test_all_at_the_goal_ends_quietly() -> None:
    watch(lambda: NODES[:1], "active", "rack r01", timeout=5, interval=0.05)
