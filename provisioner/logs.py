"""The log of `provisioner serve` and `provisioner pxe serve`: the service's own lines
on stderr, one per event, whatever text they quote."""

from __future__ import annotations

import logging
import sys

from provisioner.text import printable

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class OneLine(logging.Formatter):
    """Shows control characters in a message as escapes: messages quote what machines,
    BMCs and requests send, which must neither forge a second log line nor drive the
    terminal of whoever reads the log. Tracebacks keep their lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = printable(record.message)
        return super().formatMessage(record)


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to the ``sys.stderr`` of the moment, which a test runner may swap."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def configure(level: str) -> None:
    """The service's loggers at ``level``, written to stderr through :class:`OneLine`.

    The handler sits on the root logger, whose level stays as it is, so a library logs
    only its warnings; configuring again replaces it rather than doubling every line."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _Stderr)]:
        root.removeHandler(handler)
    handler = _Stderr()
    handler.setFormatter(OneLine(_FORMAT))
    root.addHandler(handler)
    for name in ("provisioner", "pxe"):
        logging.getLogger(name).setLevel(level.upper())
