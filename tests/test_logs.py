"""The service's log lines: what they quote cannot forge lines or drive a terminal, and
`provisioner serve` says where it listens."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from provisioner.logs import OneLine
from tests.serving import Served


def test_a_message_stays_one_line_and_shows_its_escapes() -> None:
    record = logging.LogRecord(
        "provisioner.step_runner", logging.WARNING, __file__, 1,
        "node %s: %s", ("r01-u01", "disk full\x1b[2J\nFAKE ERROR forged\x07"), None,
    )  # fmt: skip
    line = OneLine("%(levelname)s %(message)s").format(record)
    assert line == "WARNING node r01-u01: disk full\\x1b[2J\\nFAKE ERROR forged\\x07"


def test_a_traceback_keeps_its_lines() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord(
            "provisioner", logging.ERROR, __file__, 1, "failed\x1b]0;t\x07", (), sys.exc_info()
        )
    text = OneLine("%(message)s").format(record)
    first, *rest = text.splitlines()
    assert first == "failed\\x1b]0;t\\x07"
    assert rest[0] == "Traceback (most recent call last):"


def test_serve_logs_where_it_listens(tmp_path: Path) -> None:
    served = Served(tmp_path)
    served.stop()
    output = served.log.read_text()
    assert "INFO provisioner.app: database ready at sqlite:///" in output
    where = f"{served.tftp_root} on 127.0.0.1 port {served.tftp_port} (UDP)"
    assert f"INFO provisioner.app: TFTP serving {where}" in output
    assert f"Uvicorn running on {served.url}" in output
