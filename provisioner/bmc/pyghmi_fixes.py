"""Fixes to pyghmi 1.6.19's process-wide I/O layer, installed by :func:`install`.

pyghmi keeps one I/O layer per process, shared by its client sessions and its BMC
server: one thread waits on every socket, module functions send and route packets, two
module locks guard the session tables. Its traps there (docs/pyghmi.md) freeze or stall
every session of a process, client and server alike, so the service's IPMI driver and
the lab's BMC server install this same set; in a process that runs both (the tests), it
does not matter who comes first. pyghmi looks each replaced name up in its module at
every use, so swapping the module attributes reaches every caller.

- The send and the receive never switch a socket's blocking mode, nor depend on it
  (trap 2): each call asks the kernel for a non-blocking operation itself.
- The receive-and-route step of the I/O thread looks sessions up with ``dict.get`` and
  contains a failure per packet: a session dropped by another thread between pyghmi's
  check and its lookup raised there, which ended the I/O thread and silenced every
  session of the process.
- A wait for an answer that came in just before the wait was registered returns at
  once instead of at pyghmi's retry timer (a lost wake-up).
- The two session-table locks are one re-entrant lock: pyghmi takes them in opposite
  orders in two places, which deadlocked every session of the process for good.
- A session that fails has its error message before it is marked broken: a synchronous
  login (stock ``Command``) whose answer another thread handled read a broken session
  with no message and raised ``AttributeError`` instead of the login's error.
- A logout removes only its own entry from the session table: pyghmi drops a stale
  session from the table without marking it broken and may give the next session to
  that BMC the same socket; the stale session's late logout then removed the next
  session's entry, and that session heard no answers.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Callable
from typing import Any

import pyghmi.ipmi.private.session as pyghmi_session

log = logging.getLogger(__name__)

# Big enough for any IPMI packet; pyghmi reads with the same size.
_MAX_PACKET = 3000

_install_lock = threading.Lock()
_installed = False


def install() -> None:
    """Put the fixes in place for this process; later calls do nothing."""
    global _installed
    with _install_lock:
        if _installed:
            return
        pyghmi_session._io_sendto = send_keeping_mode
        pyghmi_session._io_graball = route_incoming
        pyghmi_session._io_wait = _io_wait
        # A send holds KEEPALIVE_SESSIONS and then takes WAITING_SESSIONS, while the event
        # loop holds WAITING_SESSIONS and, on a timeout, takes KEEPALIVE_SESSIONS.
        pyghmi_session.WAITING_SESSIONS = pyghmi_session.KEEPALIVE_SESSIONS
        pyghmi_session.Session._mark_broken = _message_first(pyghmi_session.Session._mark_broken)
        pyghmi_session.Session.logout = _own_entry_only(pyghmi_session.Session.logout)
        _installed = True


def _message_first(mark_broken: Callable[..., None]) -> Callable[..., None]:
    """pyghmi's ``_mark_broken`` logs out first, which flags the session broken, and
    sets ``errormsg`` last; a thread waiting for the login sees ``broken`` in between."""

    def marked(session: Any, error: Any = None) -> None:
        session.errormsg = error
        mark_broken(session, error)

    return marked


def _own_entry_only(logout: Callable[..., Any]) -> Callable[..., Any]:
    """pyghmi's ``logout`` deletes the table entry for its BMC and socket port, whoever
    holds it; put back an entry that belonged to another session."""

    def logged_out(session: Any, *args: Any, **kwargs: Any) -> Any:
        handlers = pyghmi_session.Session.bmc_handlers
        port = None
        with contextlib.suppress(AttributeError, OSError):
            port = session.socket.getsockname()[1]
        others = {}
        for sockaddr in getattr(session, "allsockaddrs", ()):
            holder = handlers.get(sockaddr, {}).get(port)
            if holder is not None and holder is not session:
                others[sockaddr] = holder
        try:
            return logout(session, *args, **kwargs)
        finally:
            for sockaddr, holder in others.items():
                handlers.setdefault(sockaddr, {})[port] = holder

    return logged_out


def send_keeping_mode(sock: socket.socket, packet: bytes, sockaddr: Any) -> None:
    """Replaces ``session._io_sendto``, which switches the socket to blocking for each
    send while the I/O thread switches it back before reading: interleaved, the I/O
    thread blocked reading an idle socket and every session of the process stalled.

    A full send buffer drops the datagram, as pyghmi drops any failed send: its retry
    timer sends again. Waiting for room instead could hold up the thread that sends,
    which may be handling another session's packets or serving every BMC of a lab.
    """
    with contextlib.suppress(OSError):
        sock.sendto(packet, socket.MSG_DONTWAIT, sockaddr)


def route_incoming(sockets: list[socket.socket], waiters: dict[Any, list[Any]]) -> list[Any]:
    """Replaces ``session._io_graball`` in the I/O thread, with the same routing: a
    packet from a peer with a session goes to that session, any other to the BMC server
    listening on the socket; threads waiting on that peer are woken."""
    handlers = pyghmi_session.Session.bmc_handlers
    senders = []
    for sock in sockets:
        while True:
            try:
                data, sockaddr = sock.recvfrom(_MAX_PACKET, socket.MSG_DONTWAIT)
            except OSError:
                break  # drained
            if len(data) < 4:
                continue  # pyghmi's wake-up byte
            try:
                ports = handlers.get(sockaddr)
                target = ports.get(sock.getsockname()[1]) if ports else None
                if target is not None:
                    entry = (data, sockaddr, sock, True)
                else:
                    server = handlers.get(sock)
                    target = server.get(0) if server else None
                    entry = (data, sockaddr, sock, False)
                if target is not None:
                    target.pktqueue.append(entry)
                    pyghmi_session.sessionqueue.append(target)
                for waiter in waiters.pop(sockaddr, ()):
                    waiter[1].set()
                senders.append(sockaddr)
            except Exception:  # see the docstring of the module
                log.exception("pyghmi I/O thread: dropped a packet it could not route")
    return senders


def _io_wait(timeout: float, myaddr: Any = None, evq: Any = None) -> None:
    """Replaces ``session._io_wait`` (same steps), closing a lost wake-up.

    A thread waiting for a BMC's answer is woken by the I/O thread only for a packet
    that arrives after its wait was registered; an answer that came in just before was
    left queued until pyghmi's retry timer, 0.5-1 s later. So look for one after
    registering, before sleeping.
    """
    evt = threading.Event()
    if evq is not None:
        evq.append(evt)
    deadline = timeout + pyghmi_session._monotonic_time()  # pyghmi's clock, not ours
    pyghmi_session.ioqueue.append((deadline, evt, myaddr))
    # Only for a wait for an answer (pyghmi's _cmdwait passes evq and is woken through it;
    # it does not read packets, so returning early there would only spin).
    if myaddr is not None and evq is None and _answer_queued(myaddr):
        return
    if deadline < pyghmi_session.selectdeadline:
        wake_event_loop()
    evt.wait()


def _answer_queued(sockaddr: Any) -> bool:
    sessions = pyghmi_session.Session.bmc_handlers.get(sockaddr)
    return bool(sessions) and any(s.pktqueue for s in list(sessions.values()))


def wake_event_loop() -> None:
    """Wake every thread waiting in pyghmi's event loop without a packet for it, as
    pyghmi itself does: a byte to its own first socket ends the I/O thread's wait."""
    with contextlib.suppress(OSError, IndexError):
        sock = pyghmi_session.iosockets[0]
        sock.sendto(b"\x01", (pyghmi_session.myself, sock.getsockname()[1]))
