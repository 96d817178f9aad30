"""One Redfish BMC: the requests it answers for one emulated machine, in its dialect and
under its node's fault. Power and boot flags are the machine's own, which the IPMI BMC of
the same node drives too, so either protocol sees what the other did.

Called on the serving event loop (`lab.redfish.server`), one request at a time per
connection; nothing here blocks.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import ssl
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from lab import faults
from lab.machine import NOT_IN_PRESENT_STATE, Machine
from lab.redfish import errors
from lab.redfish.dialects import TASK_SECONDS, TRAITS, Dialect
from lab.redfish.hardware import hardware_of
from lab.redfish.http import Request, Response, Silence
from lab.redfish.odata import (
    METADATA,
    ROOT,
    Json,
    collection,
    expand,
    metadata_document,
    resource,
)
from lab.redfish.odata import service_document as odata_service_document
from lab.redfish.race import OtherClient
from lab.redfish.resources import SESSIONS, TOPS, service_routes
from lab.redfish.sessions import Session, Sessions
from lab.redfish.system import RESET_TYPES, patched_boot, system_routes
from lab.redfish.tasks import MONITORS, TASKS, Task, Tasks
from lab.redfish.tls import make_certificate

# What a busy BMC asks clients to wait before they try again.
RETRY_AFTER_SECONDS = 2
_JSON = "application/json; charset=utf-8"
_COMMON_HEADERS = [("OData-Version", "4.0"), ("Cache-Control", "no-cache")]


class RedfishBmc:
    def __init__(
        self,
        machine: Machine,
        username: str,
        password: str,
        gate: faults.FaultGate,
        *,
        address: str,
        port: int,
        dialect: Dialect = Dialect.GENERIC,
        session_timeout: float = 60.0,
    ) -> None:
        self.machine = machine
        self.gate = gate
        self.address = address
        self.port = port
        self.dialect = dialect
        self.traits = TRAITS[dialect]
        self.sessions = Sessions(session_timeout)
        self.tasks = Tasks()
        self._username = username
        self._password = password
        self._own_tls: ssl.SSLContext | None = None
        hardware = hardware_of(machine)
        self._routes: dict[str, Callable[[], Json]] = {
            **service_routes(machine, hardware, self.traits, address, session_timeout),
            **system_routes(machine, hardware, self.traits),
        }
        self._system = f"{ROOT}/Systems/{self.traits.system_id}"
        self._reset = f"{self._system}/Actions/ComputerSystem.Reset"
        # The System as it reads, with what another client wrote under etag-race, so
        # GETs and ETags show that write.
        self._other_client = OtherClient(machine.name)
        machine_view = self._routes[self._system]
        self._routes[self._system] = lambda: {**machine_view(), **self._other_client.written}

    # --- TLS ----------------------------------------------------------------------

    def tls_context(self, shared: ssl.SSLContext) -> ssl.SSLContext:
        """The lab's certificate, or under ``new-certificate`` one of this BMC's own,
        made when the fault is first seen and kept while it lasts."""
        if self.gate.fault.kind is not faults.Kind.NEW_CERTIFICATE:
            self._own_tls = None  # the next such fault brings yet another certificate
            return shared
        if self._own_tls is None:
            self._own_tls = make_certificate(
                self.address, f"lab BMC {self.machine.name}"
            ).server_context()
        return self._own_tls

    # --- requests -----------------------------------------------------------------

    async def handle(self, request: Request) -> Response | Silence:
        fault = self.gate.fault
        if fault.kind is faults.Kind.NO_ANSWER:
            return Silence.HANG
        verdict = self.gate.verdict()
        if verdict == faults.DROP:
            return Silence.CLOSE
        if verdict > 0:
            await asyncio.sleep(verdict)
        try:
            if fault.kind is faults.Kind.BUSY:
                raise errors.busy(RETRY_AFTER_SECONDS)
            return self._dispatch(request)
        except errors.RedfishError as exc:
            return _json(exc.status, exc.body(), list(exc.headers))

    def _dispatch(self, request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        path = request.path.rstrip("/") or "/"
        if path == "/redfish" and method == "GET":
            return _json(200, {"v1": f"{ROOT}/"})
        if method == "GET" and path in (ROOT, METADATA, f"{ROOT}/odata"):
            return self._public(request, path)
        if path == SESSIONS and method == "POST":
            return self._login(request)
        self._authenticate(request, path)
        if path == SESSIONS or path.startswith(f"{SESSIONS}/"):
            return self._session_request(request, method, path)
        if path == TASKS or path.startswith((f"{TASKS}/", f"{MONITORS}/")):
            return self._task_request(request, method, path)
        if path == self._reset:
            if method != "POST":
                raise errors.not_allowed(method, path, "POST")
            return self._reset_action(request)
        build = self._routes.get(path)
        if build is None:
            raise errors.not_found(request.path)
        if method == "GET":
            return self._get(request, self._expanded(request, build()))
        if path == self._system and method == "PATCH":
            return self._patch_system(request)
        allowed = "GET, HEAD, PATCH" if path == self._system else "GET, HEAD"
        raise errors.not_allowed(method, path, allowed)

    def _public(self, request: Request, path: str) -> Response:
        """What a client may read before it logs in (DSP0266: the service root, the
        metadata document and the OData service document)."""
        if path == METADATA:
            body = metadata_document().encode()
            return Response(200, body, [("Content-Type", "application/xml"), *_COMMON_HEADERS])
        if path == ROOT:
            return self._get(request, self._routes[ROOT]())
        return self._get(request, odata_service_document(TOPS))

    def _expanded(self, request: Request, payload: Json) -> Json:
        """The payload with ``$expand`` applied: ``.`` or ``*``, one level, in a dialect
        that advertises it; 501 elsewhere, as DSP0266 has it for an unsupported query."""
        given = parse_qs(request.query).get("$expand")
        if not given:
            return payload
        if not self.traits.expand_query:
            raise errors.RedfishError(
                501, "QueryNotSupported", "Querying is not supported by the implementation."
            )
        value = given[0].replace(" ", "")
        if value not in (".", "*", ".($levels=1)", "*($levels=1)"):
            raise errors.RedfishError(
                400,
                "QueryParameterValueFormatError",
                f"The value {given[0]} for the parameter $expand is of a different format "
                "than the parameter can accept.",
                (given[0], "$expand"),
            )

        def resolve(path: str) -> Json | None:
            build = self._routes.get(path)
            return build() if build is not None else None

        return expand(payload, resolve, links=value.startswith("*"))

    def _get(self, request: Request, payload: Json) -> Response:
        etag = etag_of(payload)
        if request.headers.get("if-none-match") == etag:
            return Response(304, b"", [("ETag", etag), *_COMMON_HEADERS])
        return _json(200, payload, [("ETag", etag)])

    # --- authentication and sessions ------------------------------------------------

    def _authenticate(self, request: Request, path: str) -> None:
        basic = self.traits.basic_auth
        token = request.headers.get("x-auth-token")
        if token is not None:
            if self.sessions.by_token(token) is None:
                raise errors.unauthorized(path, "the session token is not valid", basic=basic)
            return
        header = request.headers.get("authorization", "")
        if not header:
            raise errors.unauthorized(path, "no credentials were given", basic=basic)
        if not basic:
            raise errors.unauthorized(
                path, "basic authentication is disabled; create a session", basic=False
            )
        scheme, _, encoded = header.partition(" ")
        try:
            username, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            username = password = ""
        if scheme.lower() != "basic" or not self._credentials_match(username, password):
            raise errors.unauthorized(path, "the user name or password is wrong", basic=True)

    def _credentials_match(self, username: str, password: str) -> bool:
        expected = self.gate.password(self._password)
        name_ok = hmac.compare_digest(username.encode(), self._username.encode())
        return hmac.compare_digest(password.encode(), expected.encode()) and name_ok

    def _login(self, request: Request) -> Response:
        body = _body(request)
        for key in ("UserName", "Password"):
            if not isinstance(body.get(key), str):
                raise errors.RedfishError(
                    400,
                    "PropertyMissing",
                    f"The property {key} is a required property and must be included in "
                    "the request.",
                    (key,),
                )
        if not self._credentials_match(body["UserName"], body["Password"]):
            raise errors.unauthorized(SESSIONS, "the user name or password is wrong", basic=False)
        session = self.sessions.create(body["UserName"])
        location = f"{SESSIONS}/{session.ident}"
        payload = _session(session)
        return _json(
            201,
            payload,
            [("X-Auth-Token", session.token), ("Location", location), ("ETag", etag_of(payload))],
        )

    def _session_request(self, request: Request, method: str, path: str) -> Response:
        if path == SESSIONS:
            if method != "GET":
                raise errors.not_allowed(method, path, "GET, HEAD, POST")
            members = [f"{SESSIONS}/{ident}" for ident in self.sessions.ids()]
            return self._get(
                request, collection(SESSIONS, "Session", "Session Collection", members)
            )
        session = self.sessions.get(path.removeprefix(f"{SESSIONS}/"))
        if session is None:
            raise errors.not_found(path)
        if method == "DELETE":
            self.sessions.delete(session.ident)
            return Response(204, b"", list(_COMMON_HEADERS))
        if method != "GET":
            raise errors.not_allowed(method, path, "GET, HEAD, DELETE")
        return self._get(request, _session(session))

    # --- tasks --------------------------------------------------------------------

    def _task_request(self, request: Request, method: str, path: str) -> Response:
        if method != "GET":
            raise errors.not_allowed(method, path, "GET, HEAD")
        if path == TASKS:
            members = [f"{TASKS}/{ident}" for ident in self.tasks.ids()]
            return self._get(request, collection(TASKS, "Task", "Task Collection", members))
        monitor = path.startswith(f"{MONITORS}/")
        task = self.tasks.get(path.rsplit("/", 1)[1])
        if task is None or path not in (task.path, task.monitor):
            raise errors.not_found(request.path)
        if not monitor:
            return self._get(request, task.payload())
        # DSP0266: 202 while the operation runs, then what it would have answered.
        if task.running:
            return _json(202, task.payload(), [("Location", task.monitor), ("Retry-After", "1")])
        if task.state == "Completed":
            return Response(204, b"", list(_COMMON_HEADERS))
        raise errors.RedfishError(500, "GeneralError", f"The task {task.ident} failed.")

    # --- power and boot -------------------------------------------------------------

    def _reset_action(self, request: Request) -> Response:
        reset_type = _body(request).get("ResetType")
        if reset_type is None:
            raise errors.RedfishError(
                400,
                "ActionParameterMissing",
                "The action ComputerSystem.Reset requires the parameter ResetType to be "
                "present in the request body.",
                ("ComputerSystem.Reset", "ResetType"),
            )
        if reset_type not in RESET_TYPES:
            raise errors.value_not_in_list(reset_type, "ResetType", action=True)
        press = self._power_button(str(reset_type))
        needs_on = reset_type in ("GracefulShutdown", "ForceRestart", "PowerCycle")
        if needs_on and not self.machine.power_on:
            raise _powered_off(str(reset_type))
        hang = self.gate.fault.kind is faults.Kind.TASK_HANG
        if hang or self.traits.power_through_task:
            task = self.tasks.start(
                f"ComputerSystem.Reset {reset_type}",
                None if hang else lambda: _carry_out(press, str(reset_type)),
                TASK_SECONDS,
            )
            return _task_accepted(task)
        _carry_out(press, str(reset_type))
        return Response(204, b"", list(_COMMON_HEADERS))

    def _power_button(self, reset_type: str) -> Callable[[], int]:
        machine = self.machine
        return {
            "On": machine.press_power_on,
            "ForceOff": machine.press_power_off,
            "GracefulShutdown": machine.soft_off,
            "ForceRestart": machine.hard_reset,
            "PowerCycle": machine.power_cycle,
        }[reset_type]

    def _patch_system(self, request: Request) -> Response:
        given = request.headers.get("if-match")
        if given is None and self.traits.patch_needs_if_match:
            raise errors.RedfishError(
                428,
                "PreconditionRequired",
                "A precondition header or annotation is required to change the resource "
                f"at {self._system}.",
                (self._system,),
            )
        if given is not None:
            self._other_client.before_patch(self.gate.fault)
        current = etag_of(self._routes[self._system]())
        if given is not None and not _etag_matches(given, current):
            raise errors.RedfishError(
                412,
                "PreconditionFailed",
                f"The ETag supplied did not match the ETag required to change the resource "
                f"at {self._system}.",
                (self._system,),
            )
        body = _body(request)
        for key in body:
            if key != "Boot":
                raise errors.RedfishError(
                    400,
                    "PropertyNotWritable",
                    f"The property {key} is a read only property and cannot be assigned a value.",
                    (key,),
                )
        if "Boot" in body:
            self.machine.set_boot_flags(patched_boot(self.machine.boot, body["Boot"]))
        return self._get(request, self._routes[self._system]())


def etag_of(payload: Json) -> str:
    """A strong ETag: a digest of the payload, so it changes exactly when the payload
    does (a power change, a boot override set over either protocol)."""
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
    return f'"{digest[:20]}"'


def _etag_matches(header: str, current: str) -> bool:
    tags = [tag.strip().removeprefix("W/") for tag in header.split(",")]
    return "*" in tags or current in tags


def _body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(request.body or b"{}")
    except (ValueError, UnicodeDecodeError):
        body = None
    if not isinstance(body, dict):
        raise errors.RedfishError(
            400, "MalformedJSON", "The request body submitted was malformed JSON."
        )
    return body


def _json(status: int, payload: Json, headers: list[tuple[str, str]] | None = None) -> Response:
    body = json.dumps(payload, indent=1).encode()
    return Response(status, body, [("Content-Type", _JSON), *_COMMON_HEADERS, *(headers or [])])


def _session(session: Session) -> Json:
    return resource(
        f"{SESSIONS}/{session.ident}",
        "Session",
        session.ident,
        "User Session",
        UserName=session.username,
        Password=None,
    )


def _task_accepted(task: Task) -> Response:
    return _json(202, task.payload(), [("Location", task.monitor), ("Retry-After", "1")])


def _powered_off(reset_type: str) -> errors.RedfishError:
    return errors.RedfishError(
        409,
        "OperationNotAllowed",
        f"The reset type {reset_type} is not allowed while the system is powered off.",
    )


def _carry_out(press: Callable[[], int], reset_type: str) -> None:
    if press() == NOT_IN_PRESENT_STATE:
        raise _powered_off(reset_type)
