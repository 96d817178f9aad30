"""What the server reports of each request it answered: one ``Transfer`` when it ends,
however it ends, to the metrics, the log and the optional observer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

# Results: short, and a fixed set, since they label the metrics.
OK = "ok"
NOT_FOUND = "file not found"
ACCESS_VIOLATION = "access violation"
ILLEGAL = "illegal request"
TIMEOUT = "timeout"
ABORTED = "aborted by client"
DYNAMIC_FAILED = "dynamic file failed"
UNAVAILABLE = "server unavailable"
STOPPED = "server stopped"


@dataclass(frozen=True)
class Transfer:
    client: str  # client IP
    port: int  # client port
    server: str  # local address the request arrived on
    filename: str
    bytes: int  # payload bytes the client acknowledged
    duration: float  # seconds
    result: str  # "ok" or a short error description
    options: dict[str, int] = field(default_factory=dict)  # as acknowledged (OACK)

    def report(self) -> dict[str, str | int | float]:
        """The transfer as the service's ``POST /boot/trace/tftp`` takes it (one of its
        ``transfers``), whichever process the server runs in."""
        return {
            "client": self.client,
            "server": self.server,
            "file": self.filename,
            "bytes": self.bytes,
            "duration": round(self.duration, 6),
            "result": self.result,
        }


Observer = Callable[[Transfer], None]
