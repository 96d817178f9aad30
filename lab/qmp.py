"""A small client of QEMU's machine protocol (QMP) over a unix socket.

QMP is one JSON object per line: QEMU greets, the client negotiates with
``qmp_capabilities``, then each command gets exactly one ``return`` or ``error`` answer,
while asynchronous events (``RESET``, ``SHUTDOWN``, ...) may arrive between them. The
client keeps the events it reads on the way to an answer, so none is lost.

One connection serves every thread of a VM: commands are serialised by a lock, as QEMU
answers them in order anyway.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class QmpError(RuntimeError):
    """QEMU refused a command; ``error_class`` is QMP's class (``GenericError``, ...)."""

    def __init__(self, command: str, error_class: str, description: str) -> None:
        super().__init__(f"{command}: {error_class}: {description}")
        self.error_class = error_class


class QmpClosed(ConnectionError):
    """The connection ended: QEMU exited or closed the monitor."""


@dataclass(frozen=True)
class Event:
    name: str
    data: dict[str, Any]
    timestamp: float  # seconds since the epoch, as QEMU stamped it


class Qmp:
    """A negotiated QMP connection. :meth:`connect` waits for QEMU to create the socket."""

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self._sock = sock
        self._timeout = timeout
        self._buffer = b""
        self._events: list[Event] = []
        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        sock.settimeout(timeout)
        greeting = self._read()
        if "QMP" not in greeting:
            raise QmpClosed(f"not a QMP greeting: {greeting!r}")
        self.greeting: dict[str, Any] = greeting["QMP"]
        self.execute("qmp_capabilities")

    @classmethod
    def connect(cls, path: Path, timeout: float = 30.0, wait: float | None = None) -> Qmp:
        """Connect once QEMU listens on ``path``, waiting up to ``wait`` seconds (default
        ``timeout``; QEMU creates the socket early in its start-up, before the guest
        runs). ``timeout`` bounds each answer afterwards."""
        deadline = time.monotonic() + (timeout if wait is None else wait)
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(path))
                return cls(sock, timeout)
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
            except BaseException:
                sock.close()
                raise

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()

    def __enter__(self) -> Qmp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """Run ``command`` and return its ``return`` value; :class:`QmpError` if QEMU
        refuses it, :class:`QmpClosed` if QEMU is gone (after ``quit``, say)."""
        with self._lock:
            request_id = next(self._ids)
            message: dict[str, Any] = {"execute": command, "id": request_id}
            if arguments:
                message["arguments"] = arguments
            try:
                self._sock.sendall(json.dumps(message).encode() + b"\n")
            except OSError as exc:
                raise QmpClosed(f"{command}: {exc}") from exc
            while True:
                answer = self._read()
                if answer.get("id") != request_id:
                    continue  # an event (kept by _read) or a stray answer
                if "error" in answer:
                    error = answer["error"]
                    raise QmpError(command, error.get("class", "?"), error.get("desc", ""))
                return answer.get("return")

    def events(self, wait: float = 0.0) -> list[Event]:
        """The events received so far, oldest first, each returned once: all QEMU has
        sent, waiting up to ``wait`` seconds for one when none is pending."""
        with self._lock:
            self._sock.settimeout(wait if wait > 0 and not self._events else 0.0)
            try:
                while True:
                    self._read()
                    self._sock.settimeout(0.0)  # then only what has arrived already
            except (TimeoutError, BlockingIOError):
                pass
            finally:
                self._sock.settimeout(self._timeout)
            found, self._events = self._events, []
            return found

    def wait_event(self, name: str, timeout: float) -> Event:
        """The first event called ``name`` (the others read meanwhile are kept)."""
        deadline = time.monotonic() + timeout
        kept: list[Event] = []
        try:
            while (left := deadline - time.monotonic()) > 0:
                batch = self.events(wait=left)
                for index, event in enumerate(batch):
                    if event.name == name:
                        kept += batch[:index] + batch[index + 1 :]
                        return event
                kept += batch
            raise TimeoutError(f"no {name} event from QEMU in {timeout:g} s")
        finally:
            with self._lock:
                self._events[:0] = kept

    def _read(self) -> dict[str, Any]:
        """The next message; an event is also kept for :meth:`events`."""
        while b"\n" not in self._buffer:
            try:
                chunk = self._sock.recv(65536)
            except (TimeoutError, BlockingIOError):
                raise  # not QmpClosed: nothing more yet, the message so far is kept
            except OSError as exc:
                raise QmpClosed(str(exc)) from exc
            if not chunk:
                raise QmpClosed("QEMU closed the QMP connection")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        message: dict[str, Any] = json.loads(line)
        if "event" in message:
            stamp = message.get("timestamp", {})
            self._events.append(
                Event(
                    message["event"],
                    message.get("data", {}),
                    stamp.get("seconds", 0) + stamp.get("microseconds", 0) / 1e6,
                )
            )
        return message
