"""Inside a network namespace of its own (see tests/api/test_schemathesis.py): a real
`provisioner serve` on SQLite, and schemathesis against it.

    python -m tests.api.fuzz.run OUT_DIR

Exits with schemathesis's status; its JUnit report and the service's log are left in
OUT_DIR."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.serving import BIN, Served

HERE = Path(__file__).parent
# Bounded so that the run takes about two minutes on a quiet 2-core machine, five on a
# loaded one; the seed keeps a failure reproducible.
EXAMPLES = os.environ.get("PROVISIONER_FUZZ_EXAMPLES", "15")
SEED = os.environ.get("PROVISIONER_FUZZ_SEED", "20261202")


def main(out: Path) -> int:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    # BMCs at the addresses the fuzzer makes up never answer: give up on them soon.
    served = Served(out, bmc_timeout="1", bmc_retries="0")
    try:
        token = served.env["PROVISIONER_TOKEN"]
        (mine,) = served.api.get("/api/v1/tokens").json()
        env = {
            **os.environ,
            "SCHEMATHESIS_HOOKS": str(HERE / "hooks.py"),
            "PROVISIONER_FUZZ_TOKEN_ID": mine["id"],
        }
        command = [
            str(BIN / "schemathesis"),
            "--config-file",
            str(HERE / "schemathesis.toml"),
            "run",
            f"{served.url}/openapi.json",
            "--header",
            f"Authorization: Bearer {token}",
            "--checks",
            "all",
            "--max-examples",
            EXAMPLES,
            "--seed",
            SEED,
            # One worker: hypothesis describes its strategies' lambdas by parsing source,
            # which is not safe from two threads at once (SystemError on Python 3.11).
            "--workers",
            "1",
            "--generation-database",
            "none",
            "--report",
            "junit",
            "--report-dir",
            str(out / "report"),
            "--no-color",
        ]
        status = subprocess.run(command, env=env, cwd=out, check=False).returncode
        # Every later answer would have been a documented 401, and the run green.
        kept = served.api.get("/api/v1/tokens").status_code
        if kept != 200:
            print(f"the fuzzer's admin token no longer works ({kept})", file=sys.stderr)
            return 1
        return status
    finally:
        served.stop()


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
