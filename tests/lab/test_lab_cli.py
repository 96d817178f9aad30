"""What ``provisioner-lab`` tells an operator who asks for help or whose ports are taken."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def test_help_says_what_the_lab_is_in_a_whole_sentence() -> None:
    result = subprocess.run(
        [str(BIN / "provisioner-lab"), "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    description = result.stdout.split("\n\n")[1]
    assert description.endswith("change their faults while it runs."), description
    assert "``" not in description


def test_a_busy_port_names_the_option_that_moves_the_lab(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                str(BIN / "provisioner-lab"), "up", "--nodes", "2",
                "--base-port", str(port),
                "--manifest", str(tmp_path / "rack.csv"),
                "--control-dir", str(tmp_path / "control"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )  # fmt: skip
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert f"cannot listen on 127.0.0.1:{port}: " in result.stderr
    assert "choose other ports with --base-port" in result.stderr
