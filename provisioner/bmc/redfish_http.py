"""HTTP for the Redfish driver: one keep-alive connection per BMC session on the
standard library's ``http.client``, the certificate policy of :class:`Target`, the
Redfish session login (basic authentication where a BMC has no sessions), and
``Retry-After`` on 503/429. Every failure becomes a :class:`BmcError` that says what to
check; passwords and session tokens never reach a message or a log.

Why ``http.client`` rather than httpx or urllib3 (docs/redfish.md, "Transport"): a
driver holds one connection to one BMC and makes one request at a time, which is what
``http.client`` is; we need the socket itself (the peer certificate's DER for pinning,
``shutdown`` from another thread for :meth:`abort`), and it costs the least per request.
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import hashlib
import http.client
import json
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from provisioner.bmc.base import BmcError, ErrorKind, Target

log = logging.getLogger(__name__)

SESSIONS = "/redfish/v1/SessionService/Sessions"  # fixed by DSP0266, no discovery needed
_JSON = "application/json"
_BASE_HEADERS = {"Accept": _JSON, "OData-Version": "4.0"}
# A BMC's answer to 503/429 without Retry-After: try again after this long.
_DEFAULT_RETRY_AFTER = 1.0
# A keep-alive connection the BMC closed while idle fails like this on its next request;
# the request never reached the BMC, so it is sent again on a new connection.
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ssl.SSLEOFError)

OnPin = Callable[[Target, str], None]
"""Called with a BMC's certificate fingerprint when it is pinned on first contact."""


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes
    where: str
    path: str

    def json(self) -> dict[str, Any]:
        try:
            value = json.loads(self.body) if self.body else {}
        except (ValueError, UnicodeDecodeError):
            value = None
        if not isinstance(value, dict):
            raise BmcError(
                ErrorKind.PROTOCOL,
                f"The BMC at {self.where} answered for {self.path} with something that is not "
                "a JSON object; check that the address and port are its Redfish service.",
            )
        return value

    def message(self) -> str:
        """The Redfish error's own words (``@Message.ExtendedInfo``), or the status."""
        try:
            error = json.loads(self.body).get("error", {})
            infos = error.get("@Message.ExtendedInfo") or []
            words = [str(i.get("Message")) for i in infos if isinstance(i, dict)]
            text = " ".join(w for w in words if w) or str(error.get("message") or "")
        except (ValueError, AttributeError, UnicodeDecodeError):
            text = ""
        return f"HTTP {self.status}" + (f": {text.strip()}" if text.strip() else "")


def where(target: Target) -> str:
    return f"{target.address}:{target.port}"


def fingerprint_of(der: bytes) -> str:
    return "sha256:" + hashlib.sha256(der).hexdigest()


def _normal_fingerprint(value: str) -> str:
    return "sha256:" + value.lower().removeprefix("sha256:").replace(":", "")


class RedfishHttp:
    """One BMC's connection and login. Not thread-safe, except :meth:`abort`."""

    def __init__(self, target: Target, on_pin: OnPin | None = None) -> None:
        self.target = target
        self.where = where(target)
        self.fingerprint: str | None = None
        """The certificate the BMC presented on the latest connection (None: plain HTTP)."""
        self._on_pin = on_pin
        self._pinned = (
            _normal_fingerprint(target.tls_fingerprint) if target.tls_fingerprint else None
        )
        self._plain = target.address.startswith("http://")
        self._host = target.address.removeprefix("http://").removeprefix("https://")
        self._conn: http.client.HTTPConnection | None = None
        self._sock: socket.socket | None = None
        self._reused = False
        self._token: str | None = None
        self._session: str | None = None
        self._basic: str | None = None
        self._aborted = threading.Event()

    # -- login ----------------------------------------------------------------------

    def log_in(self, deadline: float) -> None:
        """A Redfish session (POST to Sessions, then ``X-Auth-Token``); basic
        authentication where the BMC has no session service."""
        body = {"UserName": self.target.username, "Password": self.target.password}
        reply = self._send("POST", SESSIONS, body, deadline, auth=False)
        if reply.status in (200, 201) and reply.headers.get("x-auth-token"):
            self._token = reply.headers["x-auth-token"]
            self._session = reply.headers.get("location") or str(reply.json().get("@odata.id"))
            self._basic = None
            return
        if reply.status in (401, 403):
            raise self.refused(reply)
        if 400 <= reply.status < 500:
            # No session service (404, 405, 501...): basic authentication on each request.
            log.debug("BMC %s: no Redfish sessions (%s); basic auth", self.where, reply.status)
            secret = f"{self.target.username}:{self.target.password}".encode()
            self._basic = "Basic " + base64.b64encode(secret).decode()
            return
        raise self.failed("POST", SESSIONS, reply)

    def log_out(self) -> None:
        """DELETE the session; never raises, and gives up after a second."""
        session, self._session = self._session, None
        if session is None or self._conn is None or self._aborted.is_set():
            return
        try:
            self._exchange("DELETE", session, None, time.monotonic() + 1.0, True, None)
        except (BmcError, OSError) as exc:
            log.debug("logout from %s failed: %s", self.where, exc)
        self._token = None

    def refused(self, reply: Reply) -> BmcError:
        return BmcError(
            ErrorKind.AUTH,
            f"The BMC at {self.where} refused user {self.target.username!r} "
            f"({reply.message()}); check the username and password, and that the user "
            "may log in over Redfish.",
        )

    def failed(self, method: str, path: str, reply: Reply, hint: str = "") -> BmcError:
        kind = ErrorKind.UNSUPPORTED if reply.status in (404, 405, 501) else ErrorKind.PROTOCOL
        # BMCs end their messages with a full stop, or not.
        said = reply.message().rstrip(".")
        return BmcError(
            kind,
            f"The BMC at {self.where} answered {method} {path} with {said}"
            + (f"; {hint}." if hint else "."),
        )

    # -- requests -------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        deadline: float,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        """Send with the session's credentials; a session that expired is logged in
        again once."""
        reply = self._send(method, path, body, deadline, headers=headers)
        if reply.status == 401 and self._token is not None:
            log.info("BMC %s: Redfish session ended; logging in again", self.where)
            self._token = self._session = None
            self.log_in(deadline)
            reply = self._send(method, path, body, deadline, headers=headers)
        if reply.status in (401, 403):
            raise self.refused(reply)
        return reply

    def _send(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        deadline: float,
        *,
        auth: bool = True,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        """One request, sent again while the BMC says busy and the call's time allows."""
        while True:
            reply = self._exchange(method, path, body, deadline, auth, headers)
            if reply.status not in (429, 503):
                return reply
            wait = _retry_after(reply.headers.get("retry-after"))
            left = deadline - time.monotonic()
            if wait >= left:
                raise BmcError(
                    ErrorKind.BUSY,
                    f"The BMC at {self.where} is busy (HTTP {reply.status}); it asked to retry "
                    f"after {wait:g} s, longer than the {max(left, 0):.3g} s this call had "
                    "left. Try again later.",
                    retry_after=wait,
                )
            log.info("BMC %s busy (HTTP %s); retrying in %g s", self.where, reply.status, wait)
            self.pause(wait)

    def pause(self, seconds: float) -> None:
        """Sleep, or give up at once when the call is aborted."""
        if self._aborted.wait(max(0.0, seconds)):
            raise BmcError(ErrorKind.TIMEOUT, f"The call to the BMC at {self.where} was aborted.")

    def _exchange(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        deadline: float,
        auth: bool,
        extra: dict[str, str] | None,
    ) -> Reply:
        headers = dict(_BASE_HEADERS)
        if auth and self._token is not None:
            headers["X-Auth-Token"] = self._token
        elif auth and self._basic is not None:
            headers["Authorization"] = self._basic
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = _JSON
        headers.update(extra or {})
        for attempt in (1, 2):
            conn = self._connection(deadline)
            try:
                conn.request(method, path, payload, headers)
                _ack_at_once(self._sock)
                response = conn.getresponse()
                data = response.read()
            except _STALE as exc:
                reused, self._reused = self._reused, False
                self._drop()
                if reused and attempt == 1:
                    continue
                raise self._lost(method, path, exc) from None
            except (TimeoutError, OSError, http.client.HTTPException) as exc:
                self._drop()
                raise self._lost(method, path, exc) from None
            self._reused = True
            if response.will_close:
                self._drop()
            names = {k.lower(): v for k, v in response.getheaders()}
            return Reply(response.status, names, data, self.where, path)
        raise AssertionError("unreachable")  # the loop returns or raises

    def _lost(self, method: str, path: str, exc: BaseException) -> BmcError:
        if self._aborted.is_set():
            return BmcError(ErrorKind.TIMEOUT, f"The call to the BMC at {self.where} was aborted.")
        if isinstance(exc, TimeoutError):
            return BmcError(
                ErrorKind.TIMEOUT,
                f"The BMC at {self.where} did not answer {method} {path} in time (timeout "
                f"{self.target.timeout:g} s); check that the BMC is responsive.",
            )
        return BmcError(
            ErrorKind.PROTOCOL,
            f"The BMC at {self.where} dropped the connection during {method} {path} "
            f"({type(exc).__name__}); check the BMC's web service.",
        )

    # -- the connection -------------------------------------------------------------

    def _connection(self, deadline: float) -> http.client.HTTPConnection:
        left = min(self.target.timeout, deadline - time.monotonic())
        if self._aborted.is_set() or left <= 0:
            raise BmcError(
                ErrorKind.TIMEOUT,
                f"The call to the BMC at {self.where} ran out of time "
                f"(timeout {self.target.timeout:g} s).",
            )
        conn = self._conn
        if conn is None or conn.sock is None:
            conn = self._connect(left)
        else:
            conn.sock.settimeout(left)
        return conn

    def _connect(self, timeout: float) -> http.client.HTTPConnection:
        self._drop()
        try:
            sock = socket.create_connection((self._host, self.target.port), timeout)
        except OSError as exc:
            raise BmcError(
                ErrorKind.UNREACHABLE,
                f"Cannot connect to the BMC at {self.where} "
                f"({exc.strerror or type(exc).__name__}); check the address and port, that "
                "its Redfish service is enabled, and the network path to it.",
            ) from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        if not self._plain:
            sock = self._handshake(sock)
        conn = http.client.HTTPConnection(self._host, self.target.port, timeout=timeout)
        conn.sock = sock
        self._conn, self._sock, self._reused = conn, sock, False
        return conn

    def _handshake(self, sock: socket.socket) -> ssl.SSLSocket:
        target = self.target
        try:
            tls = _context(target).wrap_socket(sock, server_hostname=self._host)
        except ssl.SSLCertVerificationError as exc:
            sock.close()
            raise BmcError(
                ErrorKind.CERTIFICATE,
                f"The BMC at {self.where} presented a certificate that does not verify "
                f"against {target.ca_bundle} ({exc.verify_message}); check the CA bundle "
                "and the name or address the certificate was issued for.",
            ) from None
        except (TimeoutError, OSError) as exc:
            sock.close()
            raise self._lost("TLS", "handshake", exc) from None
        self._sock = tls
        der = tls.getpeercert(binary_form=True) or b""
        shown = fingerprint_of(der)
        self.fingerprint = shown
        if not target.tls_verify:
            _warn_unverified(self.where)
        elif target.ca_bundle is None:
            self._check_pin(shown, tls)
        return tls

    def _check_pin(self, shown: str, tls: ssl.SSLSocket) -> None:
        if self._pinned is None:
            self._pinned = shown
            if self._on_pin is not None:
                try:
                    self._on_pin(self.target, shown)
                except Exception:
                    # Not recording the pin must not fail the call: the next driver for
                    # this BMC pins again, on first use as this one did.
                    log.exception("BMC %s: recording its certificate %s failed", self.where, shown)
            return
        if shown != self._pinned:
            tls.close()
            raise BmcError(
                ErrorKind.CERTIFICATE,
                f"The BMC at {self.where} presented certificate {shown}, not the pinned "
                f"{self._pinned}. If the BMC's certificate was replaced on purpose, accept "
                "the new one with `provisioner node bmc accept-certificate NODE` "
                "(POST /api/v1/nodes/{node}/bmc/accept-certificate).",
            )

    def _drop(self) -> None:
        conn, self._conn, self._sock = self._conn, None, None
        if conn is not None:
            conn.close()

    def abort(self) -> None:
        """From another thread: wake a blocked send or receive and stop waiting."""
        self._aborted.set()
        sock = self._sock
        if sock is not None:
            # The plain socket's shutdown: SSLSocket's own would also drop its TLS state
            # under the thread that is reading.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def close(self) -> None:
        self.log_out()
        self._drop()


def _ack_at_once(sock: socket.socket | None) -> None:
    """Linux: acknowledge the answer's first segment at once. A BMC that writes its
    headers and body separately without TCP_NODELAY (the lab's, embedded web servers)
    holds the body back until that ACK, which delayed ACK sends 40 ms late; measured
    against the lab: 44 ms per request without, 0.5 ms with. Quick-ACK mode does not
    last, so it is asked for before every answer."""
    if sock is not None and _QUICKACK is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)


_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)


def _retry_after(value: str | None) -> float:
    """Seconds from a Retry-After header: a number of seconds or an HTTP date."""
    if not value:
        return _DEFAULT_RETRY_AFTER
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return _DEFAULT_RETRY_AFTER
    return max(0.0, when.timestamp() - time.time())


# -- TLS contexts: made once per process (loading CAs costs milliseconds) ---------------

_contexts: dict[tuple[str, float], ssl.SSLContext] = {}
_warned: set[str] = set()
_lock = threading.Lock()


def _unverified() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # pinned by fingerprint after the handshake, or not
    return context


_UNVERIFIED = _unverified()


def _context(target: Target) -> ssl.SSLContext:
    if not target.tls_verify or target.ca_bundle is None:
        return _UNVERIFIED
    path = target.ca_bundle
    try:
        key = (path, os.stat(path).st_mtime)  # a bundle replaced on disk is read again
        with _lock:
            context = _contexts.get(key)
            if context is None:
                context = ssl.create_default_context(cafile=path)
                _contexts[key] = context
    except (OSError, ssl.SSLError) as exc:
        raise BmcError(
            ErrorKind.CERTIFICATE,
            f"Cannot use the CA bundle {path} for the BMC at {where(target)} ({exc}); "
            "check that the file exists and holds PEM certificates.",
        ) from None
    return context


def _warn_unverified(place: str) -> None:
    with _lock:
        if place in _warned:
            return
        _warned.add(place)
    log.warning("certificate not verified for BMC %s (verify: false set for it)", place)
