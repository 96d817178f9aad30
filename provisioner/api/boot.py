"""Node-facing routes: what a network-booting machine and its installer ask for.

No API token here (firmware cannot send one): ``/boot/ipxe`` answers by MAC with
nothing secret in it but the node's own deployment token, answer files and callbacks
take only that token. The pxe process's trace reports are the exception: they write to
timelines, so they need an operator token like any other write.
"""

from __future__ import annotations

import json
from typing import Annotated, Any
from urllib.parse import unquote_plus

from fastapi import APIRouter, Depends, Query, Request, Response, status
from pydantic import AfterValidator
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from provisioner.api.deps import Operator, ServicesDep
from provisioner.api.problems import problem_response, responses
from provisioner.boot import scripts
from provisioner.boot.service import BootService
from provisioner.deployments import Callback
from provisioner.errors import Problem
from provisioner.schemas import CallbackOut, DhcpTrace, TftpTrace
from provisioner.services import Services
from provisioner.validation import MAC_PATTERN, NOT_ZERO_MAC_PATTERN, normalize_mac

_TAG = "boot (node-facing)"
router = APIRouter(tags=[_TAG])

_TEXT = "text/plain; charset=utf-8"
_TEXT_BYTES = _TEXT.encode()
_MAX_MESSAGE = 2000


async def _boot(services: ServicesDep) -> BootService:
    # Async: a plain def dependency would cost every boot request a thread hand-off.
    return services.boot


Boot = Annotated[BootService, Depends(_boot)]

_SCRIPT: dict[str, Any] = {"content": {_TEXT: {"schema": {"type": "string"}}}}
_ANSWER: dict[str, Any] = {
    "description": "A kickstart, preseed or cloud-init file.",
    "content": {
        media: {"schema": {"type": "string"}} for media in ("text/plain", "application/yaml")
    },
}
Mac = Annotated[str, AfterValidator(normalize_mac)]
_BAD_HOST = (400, "The Host header is not a plain host or host:port a script could carry.")


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _base(request: Request, boot: BootService) -> str:
    return boot.base_url(str(request.base_url))


_TOKEN = (
    (404, "No deployment has this token."),
    (410, "The deployment has ended, or failed now because its answer file cannot be rendered."),
)


@router.get(
    "/boot/bootstrap.ipxe",
    response_class=Response,
    responses={200: _SCRIPT, **responses(_BAD_HOST)},
)
def bootstrap(request: Request, boot: Boot) -> Response:
    """The script DHCP names for iPXE: chains to /boot/ipxe with the machine's MAC."""
    return Response(scripts.bootstrap(_base(request, boot)), media_type=_TEXT)


_IPXE_OPERATION: dict[str, Any] = {
    "tags": [_TAG],
    "summary": "The iPXE script for a machine",
    "description": "What the service wants the machine with this MAC to do next: boot its "
    "installer, its disk, or wait. An unknown MAC is recorded as a `discovered` node, "
    "within the discovery limits.",
    "parameters": [
        {
            "name": "mac",
            "in": "query",
            "required": True,
            "description": "The booting NIC's MAC (iPXE's ${net0/mac}).",
            "schema": {
                "type": "string",
                "pattern": MAC_PATTERN,
                "not": {"pattern": NOT_ZERO_MAC_PATTERN},
            },
        }
    ],
    "responses": {
        "200": {
            "description": "An iPXE script.",
            "content": {_TEXT: {"schema": {"type": "string"}}},
        },
        **{
            str(status): response
            for status, response in responses(
                _BAD_HOST, (422, "`mac` is missing or not a NIC's MAC.")
            ).items()
        },
    },
}

# The middleware answers ahead of the routing, so no route describes it: this does.
IPXE_PATH_ITEM = {
    "get": {**_IPXE_OPERATION, "operationId": "ipxe_script_boot_ipxe_get"},
    "head": {**_IPXE_OPERATION, "operationId": "ipxe_script_boot_ipxe_head"},
}


class IpxeScripts:
    """``GET /boot/ipxe?mac=``: the iPXE script for the machine with this MAC, by what the
    service wants for it.

    Served by this middleware ahead of FastAPI's routing and dependency machinery: a boot
    storm asks hundreds of times a second, and those layers cost several times the
    lookup itself. The metrics middleware outside it still counts every request.
    """

    path = "/boot/ipxe"

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        scope["route"] = self  # the metrics label
        if scope["method"] not in ("GET", "HEAD"):
            refusal = problem_response(
                405, "Only GET and HEAD are allowed here.", {"Allow": "GET, HEAD"}
            )
            await refusal(scope, receive, send)
            return
        try:
            mac = normalize_mac(_query_value(scope["query_string"], "mac"))
        except ValueError as exc:
            refusal = problem_response(
                422, f"mac: {exc}", errors=[{"field": "mac", "message": str(exc)}]
            )
            await refusal(scope, receive, send)
            return
        services: Services = scope["app"].state.services
        boot = services.boot
        client = scope["client"][0] if scope.get("client") else "unknown"
        try:
            base = boot.base_url(_request_base(scope))
        except Problem as problem:
            await problem_response(problem.status, problem.detail)(scope, receive, send)
            return
        script = await boot.ipxe(mac, client, base)
        body = script.encode()
        headers = [(b"content-type", _TEXT_BYTES), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _query_value(query_string: bytes, name: str) -> str:
    """The first ``name=`` value of a query string, as Starlette's QueryParams gives it."""
    for pair in query_string.decode("latin-1").split("&"):
        key, _, value = pair.partition("=")
        if key == name:
            return unquote_plus(value) if "%" in value or "+" in value else value
    return ""


def _request_base(scope: Scope) -> str:
    # What Request.base_url gives, without building URL objects on the hot path.
    host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), None)
    if host is None:
        server = scope.get("server") or ("localhost", 80)
        host = f"{server[0]}:{server[1]}"
    return f"{scope['scheme']}://{host}{scope.get('root_path', '')}"


@router.get(
    "/boot/answers/{token}",
    response_class=Response,
    responses={200: _ANSWER, **responses(_BAD_HOST, *_TOKEN, 503)},
)
def answer(request: Request, boot: Boot, token: str) -> Response:
    """The deployment's kickstart, preseed or autoinstall file."""
    text, media = boot.answer(token, "answer", _base(request, boot))
    return Response(text, media_type=media)


@router.get(
    "/boot/answers/{token}/{part}",
    response_class=Response,
    responses={
        200: _ANSWER,
        **responses(
            _BAD_HOST,
            (404, "No deployment has this token, or there is no such part."),
            _TOKEN[1],
            503,
        ),
    },
)
def answer_part(request: Request, boot: Boot, token: str, part: str) -> Response:
    """cloud-init's ``user-data`` and ``meta-data``: Ubuntu's installer fetches both
    below the URL given in ``ds=nocloud-net;s=...``."""
    if part not in ("user-data", "meta-data"):
        raise Problem(404, f"No answer part {part!r}: use user-data or meta-data.")
    text, media = boot.answer(token, part, _base(request, boot))
    return Response(text, media_type=media)


@router.post(
    "/callback/{token}/{kind}",
    response_model=CallbackOut,
    responses=responses(
        *_TOKEN,
        (409, "The deployment is past this step (a late or repeated callback)."),
        413,
        (422, "`kind` is not one of the callbacks."),
        503,
    ),
)
async def callback(request: Request, boot: Boot, token: str, kind: Callback) -> CallbackOut:
    """An installer reports: started, progress, done or failed. Optional body: JSON
    ``{"message": ...}`` or plain text."""
    message = _message(await request.body())
    await run_in_threadpool(boot.callback, token, kind, message, _client(request))
    return CallbackOut(status=kind.value)


def _message(body: bytes) -> str:
    # Installers send what their shell can: JSON from curl, form or nothing from wget.
    text = body.decode("utf-8", "replace").strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            pass
        else:
            if isinstance(data, dict):
                text = str(data.get("message", ""))
    return " ".join(text.split())[:_MAX_MESSAGE]


@router.get(
    "/boot/tftp/{path:path}",
    response_class=Response,
    responses={
        200: _SCRIPT,
        **responses(_BAD_HOST, (404, "No dynamic boot file has this path."), 422, 503),
    },
)
def tftp_file(
    request: Request, boot: Boot, path: str, client: Annotated[str, Query(max_length=45)]
) -> Response:
    """Per-MAC files for loaders that are not iPXE (``pxelinux.cfg/01-<mac>``,
    ``grub/grub.cfg-01-<mac>``), asked for by the pxe process on a machine's behalf."""
    text = boot.tftp_file(path, client, _base(request, boot))
    if text is None:
        raise Problem(404, f"No dynamic boot file {path!r}.")
    return Response(text, media_type=_TEXT)


@router.post(
    "/boot/trace/tftp",
    status_code=status.HTTP_202_ACCEPTED,
    responses=responses(400, 401, 403, 413, 422, 503),
)
def tftp_trace(body: TftpTrace, boot: Boot, _: Operator) -> dict[str, int]:
    """Finished TFTP transfers, reported by a pxe process, for the nodes' timelines."""
    boot.record_tftp(body.transfers)
    return {"accepted": len(body.transfers)}


@router.post(
    "/boot/trace/dhcp",
    status_code=status.HTTP_202_ACCEPTED,
    responses=responses(400, 401, 403, 413, 422, 503),
)
def dhcp_trace(body: DhcpTrace, boot: Boot, _: Operator) -> dict[str, int]:
    """DHCP answers read from dnsmasq's log by a pxe process, for the nodes' timelines."""
    boot.record_dhcp(body.exchanges)
    return {"accepted": len(body.exchanges)}
