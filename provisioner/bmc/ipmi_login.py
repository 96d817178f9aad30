"""Logging in to a BMC over IPMI with pyghmi 1.6.19, under the service's own deadline.

pyghmi's login can wait forever for a BMC that stays silent on an unknown user, proposes
a cipher suite the BMC may ignore, shares sessions between callers and raises whatever
Python raises on an answer it cannot parse (docs/pyghmi.md). :func:`log_in` opens a
session of its own, gives up at ``target.timeout`` and turns every failure into a
:class:`BmcError` whose message says what to check. Passwords never reach a message.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import pyghmi.ipmi.private.session as pyghmi_session
from pyghmi.ipmi.command import Command

from provisioner.bmc import pyghmi_fixes
from provisioner.bmc.base import BmcError, ErrorKind, Target

log = logging.getLogger(__name__)

SUPPORTED_CIPHER_SUITES = (3, 17)

# How long a login keeps pumping pyghmi's event loop between looks at its own deadline;
# another thread (the keepalive loop, another call) may have handled our packet meanwhile.
_PUMP_INTERVAL = 0.05

_AUTH_PHRASES = (
    "incorrect password",
    "unauthorized name",
    "invalid username",
    "unauthorized role",
    "invalid role",
    "invalid integrity check",
    "rakp",
    "kg",
)

_keepalive_lock = threading.Lock()
_keepalive_thread: threading.Thread | None = None


def start_keepalive() -> None:
    """Start, once per process, the thread that keeps idle pyghmi sessions alive.

    pyghmi sends keepalives only while some thread waits inside its event loop. Its own
    ``Housekeeper`` spins a CPU while no session exists (``wait_for_rsp()`` without a
    timeout returns at once) and dies on the first exception a packet handler raises;
    this loop waits at most a second at a time and survives such packets.
    """
    global _keepalive_thread
    with _keepalive_lock:
        if _keepalive_thread is not None:
            return
        _keepalive_thread = threading.Thread(
            target=_keepalive_loop, name="ipmi-keepalive", daemon=True
        )
        _keepalive_thread.start()


def _keepalive_loop() -> None:
    while True:
        try:
            pyghmi_session.Session.wait_for_rsp(timeout=1.0)
        except Exception:
            log.exception("IPMI event loop: a packet handler failed; carrying on")


class IpmiSession(pyghmi_session.Session):  # type: ignore[misc]
    """A client session that proposes the target's cipher suite, handles the answers to
    its commands in the thread that waits for them, and keeps handler faults to itself.

    Stock pyghmi always proposes suite 17 first; a BMC that ignores the proposal and
    answers with suite 3 makes the client fail with a ``struct.error`` deep in RAKP2
    (trap 1). Such faults are raised in whichever thread pumps the event loop, so they
    are recorded here and reported by the login that owns the session.
    """

    suite = 17
    fault: BaseException | None = None
    # The thread waiting in awaitresponse for this session's answer, if any.
    _owner: int | None = None

    def _initsession(self) -> None:
        super()._initsession()
        # pyghmi's attemptedhash: 256 proposes suite 17 (then falls back to 3), 1 suite 3.
        self.attemptedhash = 1 if self.suite == 3 else 256

    def _mark_broken(self, error: Any = None) -> None:
        # Its logout sends through raw_command, which first waits for the command in
        # progress to end; when a command times out, that is the very command failing
        # here, in this thread, while pyghmi holds its session lock: every session of
        # the process would wait with it. The failing command is over; say so first.
        self.incommand = False
        super()._mark_broken(error)

    def awaitresponse(self, retry: bool, netfn: int, command: int) -> None:
        self._owner = threading.get_ident()
        try:
            super().awaitresponse(retry, netfn, command)
        finally:
            self._owner = None

    def process_pktqueue(self) -> None:
        owner = self._owner
        if owner is not None and owner != threading.get_ident():
            # Leave the answer to the thread waiting for it: pyghmi wakes that thread for
            # it, but if another thread took the packet first, the waiter found nothing,
            # slept again and noticed the answer only at its retry timer (0.5-1 s late).
            return
        try:
            super().process_pktqueue()
        except Exception as exc:
            self.fault = exc
            with contextlib.suppress(Exception):
                self.onlogon({"error": f"unreadable answer ({type(exc).__name__})"})


class _Suite3Session(IpmiSession):
    suite = 3


_SESSION_CLASSES: dict[int, type[IpmiSession]] = {3: _Suite3Session, 17: IpmiSession}


class _OwnKey(bytes):
    """The Kg to log in with: the password, which is what pyghmi uses when given no Kg,
    but equal only to itself. pyghmi hands a login an existing session whose
    credentials compare equal, even one that is failing or proposed another cipher
    suite; with this key a login only ever gets the session it opened, and one
    driver's logout cannot break another's session."""

    def __eq__(self, other: object) -> bool:
        return self is other

    def __hash__(self) -> int:
        return id(self)


@dataclass(frozen=True)
class Login:
    """A logged-in session, and pyghmi's ``Command`` on it for the commands pyghmi
    parses (FRU, SDR, sensors)."""

    session: IpmiSession
    command: Command


def log_in(target: Target) -> Login:
    """Open a session of our own to ``target`` within ``target.timeout`` seconds."""
    if target.cipher_suite not in SUPPORTED_CIPHER_SUITES:
        raise BmcError(
            ErrorKind.UNSUPPORTED,
            f"Cipher suite {target.cipher_suite} is not supported for the BMC at "
            f"{where(target)}; set it to 3 (SHA-1) or 17 (SHA-256).",
        )
    pyghmi_fixes.install()
    start_keepalive()
    kg = _OwnKey(target.password.encode())
    session = _open(target, kg)
    return Login(session, _attach_command(target, kg, session))


def _session_key(target: Target, kg: _OwnKey) -> dict[str, Any]:
    """What pyghmi keys its session cache on: the session we open and the Command we
    attach must give the same, or the Command would log in again on its own. Bytes,
    not str: the cache compares stored bytes and would spin on a live session when
    given str (trap 3)."""
    return {
        "bmc": target.address,
        "userid": target.username.encode(),
        "password": target.password.encode(),
        "port": target.port,
        "kg": kg,
    }


def _open(target: Target, kg: _OwnKey) -> IpmiSession:
    done = threading.Event()
    outcome: dict[str, Any] = {}

    def onlogon(response: dict[str, Any]) -> None:
        outcome.update(response)
        done.set()
        # Another thread may have finished our login: without this, we would notice
        # only after _PUMP_INTERVAL.
        pyghmi_fixes.wake_event_loop()

    started = time.monotonic()
    deadline = started + target.timeout
    session_class = _SESSION_CLASSES[target.cipher_suite]
    try:
        # onlogon makes the login asynchronous, so that our deadline rules, not
        # pyghmi's (trap 4).
        for attempt in (1, 2):
            try:
                session = session_class(**_session_key(target, kg), onlogon=onlogon)
                break
            except KeyError:
                # pyghmi prunes a broken cached session in __new__ while its I/O
                # thread may prune the same one: the loser's del raises KeyError.
                # The cache is clean afterwards, so one more try is enough.
                if attempt == 2:
                    raise
        while not done.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            pyghmi_session.Session.wait_for_rsp(timeout=min(remaining, _PUMP_INTERVAL))
    except BmcError:
        raise
    except Exception as exc:
        raise protocol_error(target, "login", type(exc).__name__) from exc
    if not done.is_set():
        session._mark_broken()  # stop pyghmi's retries for this abandoned login
        raise _silent(target, session, time.monotonic() - started)
    if "error" in outcome:
        raise _refused(target, session, outcome["error"], time.monotonic() - started)
    # pyghmi logs in again when a command times out, from inside whichever thread
    # handles the answer, which then waits there for the timed-out command (up to
    # tens of seconds): a login or call for another BMC would be stuck with it. A
    # timed-out command fails instead; the pool retries reads with a new session.
    session.logontries = 0
    return session


def _attach_command(target: Target, kg: _OwnKey, session: IpmiSession) -> Command:
    # Command's constructor finds our logged-in session in pyghmi's session cache (same
    # key object) and adopts it; with onlogon it never starts a blocking login.
    command = Command(**_session_key(target, kg), onlogon=lambda response, command: None)
    if command.ipmi_session is not session:
        with contextlib.suppress(Exception):
            command.ipmi_session.logout()
        with contextlib.suppress(Exception):
            session.logout()
        raise protocol_error(target, "login", "a session other than the one just opened")
    return command


def _silent(target: Target, session: IpmiSession, elapsed: float) -> BmcError:
    if session.fault is not None:
        return protocol_error(target, "login", describe(session.fault))
    if getattr(session, "currentchannel", None) is None:
        return unreachable(target, elapsed)
    return BmcError(
        ErrorKind.TIMEOUT,
        f"The BMC at {where(target)} answered but did not finish the login for user "
        f"{target.username!r} within {target.timeout:g} s; check the username (many BMCs "
        "stay silent for an unknown user) and that the BMC is not overloaded.",
    )


def _refused(target: Target, session: IpmiSession, error: Any, elapsed: float) -> BmcError:
    if session.fault is not None:
        return protocol_error(target, "login", describe(session.fault))
    text = str(error or "")
    lowered = text.lower()
    if not text or lowered == "timeout" or "no longer connected" in lowered:
        return unreachable(target, elapsed)
    if "cipher suite" in lowered:
        return BmcError(
            ErrorKind.UNSUPPORTED,
            f"The BMC at {where(target)} does not accept cipher suite "
            f"{target.cipher_suite}; set the BMC's cipher suite to one it supports "
            "(3 or 17).",
        )
    if "insufficient resources" in lowered:
        return BmcError(
            ErrorKind.PROTOCOL,
            f"The BMC at {where(target)} has no free session ({text}); wait for idle "
            "sessions to expire or reset the BMC.",
        )
    if any(phrase in lowered for phrase in _AUTH_PHRASES):
        return BmcError(
            ErrorKind.AUTH,
            f"The BMC at {where(target)} refused the credentials for user "
            f"{target.username!r} ({text}); check the username and password.",
        )
    return protocol_error(target, "login", text)


# -- messages shared with the driver's commands ------------------------------------


def unreachable(target: Target, elapsed: float) -> BmcError:
    return BmcError(
        ErrorKind.UNREACHABLE,
        f"No answer from the BMC at {where(target)} within {elapsed:.1f} s; check "
        "the address, the port and that IPMI over LAN is enabled.",
    )


def protocol_error(target: Target, name: str, detail: str) -> BmcError:
    return BmcError(
        ErrorKind.PROTOCOL,
        f"The BMC at {where(target)} gave an answer to {name} that could not be "
        f"used ({detail}); check its firmware, or try cipher suite 3.",
    )


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def where(target: Target) -> str:
    return f"{target.address}:{target.port}"
