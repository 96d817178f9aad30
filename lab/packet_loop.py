"""The thread that serves every lab BMC of a process.

pyghmi's ``Bmc.listen()`` serves BMCs from its event loop but stops at the first
exception a packet raises, and never expires a session (trap 5 in docs/pyghmi.md).
:class:`PacketLoop` pumps the same event loop with every packet contained, runs the
timers of delayed packets and sweeps idle sessions. Creating one installs the fixes to
pyghmi's process-wide I/O (:mod:`provisioner.bmc.pyghmi_fixes`), the same ones the
service's IPMI driver installs, so lab BMCs and IPMI clients share a process safely.
"""

from __future__ import annotations

import heapq
import itertools
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pyghmi.ipmi.private.session as pyghmi_session

from provisioner.bmc import pyghmi_fixes

if TYPE_CHECKING:
    from lab.bmc import LabBmc


def _log(message: str) -> None:
    print(f"provisioner-lab[{os.getpid()}]: {message}", file=sys.stderr, flush=True)


class PacketLoop:
    """Runs every BMC of the process in one thread: pyghmi's wait loop delivers the
    packets, timers deliver delayed ones (the ``slow`` fault), and idle sessions
    expire. A failure in one packet is logged and the loop goes on."""

    SWEEP_SECONDS = 1.0

    def __init__(self) -> None:
        # Before any BMC exists: its socket is then never touched by pyghmi's stock I/O.
        pyghmi_fixes.install()
        self.bmcs: list[LabBmc] = []
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._stop = threading.Event()
        self.errors = 0

    def call_later(self, delay: float, action: Callable[[], None]) -> None:
        # Only the loop thread schedules, so the heap needs no lock.
        heapq.heappush(self._timers, (time.monotonic() + delay, next(self._order), action))

    def contain(self, handle: Callable[[tuple[Any, ...]], None], packet: tuple[Any, ...]) -> None:
        try:
            handle(packet)
        except Exception:  # one bad packet must not stop the others
            self.errors += 1
            if self.errors <= 20 or self.errors % 1000 == 0:
                _log(f"error #{self.errors} handling a packet:\n" + traceback.format_exc())

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        next_sweep = time.monotonic() + self.SWEEP_SECONDS
        while not self._stop.is_set():
            now = time.monotonic()
            timeout = next_sweep - now
            if self._timers:
                timeout = min(timeout, self._timers[0][0] - now)
            try:
                pyghmi_session.Session.wait_for_rsp(timeout=max(timeout, 0.001))
            except Exception:  # the loop is the last line of defence
                self.errors += 1
                _log("error in the packet loop:\n" + traceback.format_exc())
            now = time.monotonic()
            while self._timers and self._timers[0][0] <= now:
                heapq.heappop(self._timers)[2]()
            if now >= next_sweep:
                next_sweep = now + self.SWEEP_SECONDS
                for bmc in self.bmcs:
                    if bmc.sessions:
                        bmc.expire_sessions(now)
