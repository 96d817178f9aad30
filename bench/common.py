"""What the benchmarks share: CPU accounting from /proc, git state of the checkout, the
raw figures of a run, and rewriting one bench's block in bench/RESULTS.md while keeping
everything around it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def machine_busy_seconds() -> float:
    """CPU seconds all processes have used since boot (steal excluded), from /proc/stat."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq = map(int, f.readline().split()[1:8])
    return (user + nice + system + irq + softirq) / TICKS


def stat_fields(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name."""
    with open(f"/proc/{pid}/stat") as f:
        # The command name may hold spaces or parentheses: split after the last ')'.
        return f.read().rsplit(")", 1)[1].split()


def git(*args: str) -> str:
    run = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
    # Not strip(): `status --porcelain` lines begin with a meaningful space.
    return run.stdout.rstrip() if run.returncode == 0 else ""


def save_raw(results: dict[str, Any], out: Path, bench: str) -> Path:
    """Write a run's raw figures as JSON under ``out``, naming the file in ``results``
    (relative to the checkout when inside it) so that the RESULTS.md block can cite it."""
    out.mkdir(parents=True, exist_ok=True)
    raw = (out / f"{bench}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json").resolve()
    results["raw"] = os.path.relpath(raw, REPO) if raw.is_relative_to(REPO) else str(raw)
    raw.write_text(json.dumps(results, indent=2) + "\n")
    return raw


def write_results(path: Path, generated: str, begin: str, end: str) -> None:
    """Replace the block between ``begin`` and ``end`` (or append it) and keep the rest:
    the other benches' blocks and the analysis written by hand."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    if begin in text and end in text:
        before, rest = text.split(begin, 1)
        text = before + generated + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + generated + "\n"
    path.write_text(text)
