"""Schemathesis, driven by /openapi.json, against a real `provisioner serve` (uvicorn, SQLite)
with every check on: no server error, no answer the schema does not describe, no request
valid by the schema refused for its form, none invalid by it accepted.

The run happens in a network namespace of its own with only loopback up (tests/api/fuzz/
run.py): the fuzzer enrolls nodes with BMC addresses it makes up, gives roles webhook URLs
it makes up, then asks for power actions and inspections, and the service carries them
out. In the namespace none of that can leave this machine.

Required in CI (PROVISIONER_REQUIRE_TOOLS=1), which runs as root; skipped elsewhere when
a namespace cannot be made or schemathesis is not installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from importlib.util import find_spec
from pathlib import Path

import pytest

REQUIRE_TOOLS = os.environ.get("PROVISIONER_REQUIRE_TOOLS") == "1"
ROOT = Path(__file__).resolve().parents[2]


def _missing() -> str | None:
    if find_spec("schemathesis") is None:
        return "schemathesis is not installed (pip install -e '.[test]')"
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "unshare and ip (util-linux, iproute2) are needed for a network namespace"
    if os.geteuid() != 0:
        return "a network namespace (unshare --net) needs root"
    return None


def test_the_service_answers_as_its_schema_says(tmp_path: Path) -> None:
    missing = _missing()
    if missing:
        if REQUIRE_TOOLS:
            pytest.fail(f"PROVISIONER_REQUIRE_TOOLS=1 but {missing}")
        pytest.skip(missing)
    run = subprocess.run(
        ["unshare", "--net", sys.executable, "-m", "tests.api.fuzz.run", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = run.stdout[-20_000:] + run.stderr[-5_000:]
    assert run.returncode == 0, output
    (report,) = (tmp_path / "report").glob("junit*.xml")
    suites = ET.parse(report).getroot()  # noqa: S314 (written by the run above)
    tested = sum(int(s.get("tests", "0")) for s in suites.iter("testsuite"))
    bad = sum(int(s.get(k, "0")) for s in suites.iter("testsuite") for k in ("failures", "errors"))
    assert tested >= 40, f"only {tested} operations were tested:\n{output}"
    assert bad == 0, output
    # What the fuzz set off in the background (the reconciler, webhooks) is not in any
    # answer: the service's log shows it.
    log = (tmp_path / "service.log").read_text(errors="replace")
    trouble = [line for line in log.splitlines() if "Traceback" in line or " ERROR " in line]
    assert not trouble, "\n".join(trouble[:20])
