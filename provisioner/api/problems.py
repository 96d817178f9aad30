"""Errors as RFC 9457 ``application/problem+json``: a title, the status, and a ``detail``
sentence that tells the caller what to do. Field errors are listed in ``errors``."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import IntegrityError, OperationalError
from starlette.exceptions import HTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from provisioner import outage
from provisioner.bmc.base import BmcError
from provisioner.errors import Problem
from provisioner.lifecycle import IllegalAction

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"

_TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    412: "Precondition failed",
    413: "Content too large",
    415: "Unsupported media type",
    422: "Unprocessable content",
    428: "Precondition required",
    500: "Internal server error",
    503: "Service unavailable",
}

# A BMC that cannot be reached or does not answer in time is a gateway's 504; one that
# answers wrongly (a refused login, an error) a 502.
# A busy BMC asks to be asked again later, as 503 does; a refused certificate is an
# answer the operator acts on (its message says how to accept a new one).
_BMC_ERROR_STATUS = {
    "unreachable": 504,
    "timed-out": 504,
    "authentication-failed": 502,
    "busy": 503,
    "certificate-refused": 502,
}


# What each status means wherever the service answers it; a route says more where it
# knows more (see ``responses``).
_MEANINGS = {
    400: "The request is malformed: a body that is not JSON, a header in the wrong form.",
    401: "No API token, or one that is unknown, revoked or expired.",
    403: "The API token's scope does not allow this.",
    404: "There is no such resource.",
    409: "The request conflicts with the current state: `detail` says what is allowed.",
    412: "If-Match names a version that is no longer current.",
    413: "The request body is larger than the service accepts.",
    415: "The body is not in a media type this operation takes.",
    422: "The request is well formed but its values are refused; `errors` names the fields. "
    "Besides the constraints in this schema: references to roles, images or nodes that "
    "do not exist, and rules that span fields.",
    502: "The node's BMC answered with an error (`bmc_error` says which).",
    503: "The database is unavailable, or the node's BMC said it is busy "
    "(`bmc_error` busy); retry shortly (after Retry-After when given).",
    504: "The node's BMC did not answer in time.",
}

PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}


class ProblemFieldError(BaseModel):
    model_config = ConfigDict(extra="allow")

    field: str | None = None
    message: str
    row: int | None = Field(default=None, description="The manifest row, from 1.")


class ProblemDetails(BaseModel):
    """RFC 9457 problem details; members beyond these may be added (``allowed_actions``
    on a refused lifecycle action, ``bmc_error`` on a BMC failure)."""

    model_config = ConfigDict(extra="allow", title="Problem")

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    errors: list[ProblemFieldError] | None = None
    allowed_actions: list[str] | None = None
    bmc_error: str | None = None


def responses(*statuses: int | tuple[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the errors an operation answers, each as
    ``application/problem+json``; a ``(status, description)`` pair says what the status
    means there."""
    out: dict[int | str, dict[str, Any]] = {}
    for item in statuses:
        status, description = item if isinstance(item, tuple) else (item, _MEANINGS[item])
        out[status] = {
            "description": description,
            "content": {PROBLEM_JSON: {"schema": PROBLEM_REF}},
        }
    return out


# What every /api/v1 operation may answer: each needs a token and the database.
API_ERRORS = responses(401, 503)


def problem_component() -> dict[str, dict[str, Any]]:
    """The schemas the ``Problem`` reference needs, for ``components.schemas``."""
    schema = ProblemDetails.model_json_schema(ref_template="#/components/schemas/{model}")
    defs = schema.pop("$defs", {})
    return {"Problem": schema, **defs}


def document(schema: dict[str, Any]) -> None:
    """Complete an OpenAPI document: the ``Problem`` schema in its components, and the
    422 FastAPI describes on its own for operations with parameters answered as what
    the service sends (problem+json), not as FastAPI's default body."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.update(problem_component())
    for path_item in schema.get("paths", {}).values():
        for operation in path_item.values():
            answers = operation.get("responses", {})
            if "application/json" in answers.get("422", {}).get("content", {}):
                answers["422"] = responses(422)[422]
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)


def problem_response(
    status: int, detail: str, headers: Mapping[str, str] | None = None, **extra: Any
) -> JSONResponse:
    # RFC 9457: with type about:blank, the title is the status's own phrase.
    title = _TITLES.get(status) or HTTPStatus(status).phrase
    body = {"type": "about:blank", "title": title, "status": status}
    body["detail"] = detail
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


# Characters of a refused value an error quotes back: enough to recognise it, and a
# 100 KB value does not come back as a 100 KB answer.
_QUOTED = 40
_MESSAGE = 300


def field_errors(errors: Any) -> list[dict[str, str]]:
    """Pydantic errors as ``{"field", "message"}``, without echoing the input (it may be
    a password); a message of our own validators that quotes a long value quotes its
    start only."""
    out = []
    for err in errors:
        message = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        value = err.get("input")
        if isinstance(value, str) and len(value) > _QUOTED:
            message = message.replace(repr(value), repr(value[:_QUOTED]) + "...")
        out.append({"field": _field(tuple(err.get("loc", ()))), "message": _cut(message)})
    return out


def _cut(text: str) -> str:
    return text if len(text) <= _MESSAGE else text[:_MESSAGE] + "..."


def _shown_path(path: str) -> str:
    """The path as an error quotes it: node-facing routes carry a deployment's token in
    the path (/callback/TOKEN/..., /boot/answers/TOKEN), which no answer repeats."""
    parts = path.split("/")
    for i in range(1, len(parts)):
        if parts[i - 1] in ("callback", "answers"):
            parts[i] = "<token>"
    return _cut("/".join(parts))


async def _on_problem(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Problem)
    return problem_response(exc.status, exc.detail, headers=exc.headers, **exc.extra)


async def _on_http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    detail = exc.detail
    # Starlette's own 404/405 carry just the status phrase: say what was asked for.
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"There is no {_shown_path(request.url.path)}; the API is described at /docs."
    headers = exc.headers
    if exc.status_code == 405 and detail == "Method Not Allowed":
        allowed = _allowed_methods(request)
        detail = (
            f"{request.method} is not allowed on {_shown_path(request.url.path)}; "
            f"use {', '.join(allowed)}."
        )
        # Starlette names the methods of the first route on the path only; a path served
        # by several routes (GET, PATCH, DELETE) allows all of theirs.
        headers = {**(headers or {}), "Allow": ", ".join(allowed)}
    return problem_response(exc.status_code, str(detail), headers=headers)


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def _allowed_methods(request: Request) -> list[str]:
    # Asked of the routes method by method: included routers keep theirs inside.
    routes = request.app.router.routes
    return [
        method
        for method in _METHODS
        if any(r.matches({**request.scope, "method": method})[0] is Match.FULL for r in routes)
    ]


async def _on_validation(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = field_errors(exc.errors())
    fields = ", ".join(sorted({e["field"] for e in errors}))
    return problem_response(422, f"The request has invalid fields: {fields}.", errors=errors)


async def _on_illegal(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, IllegalAction)
    return problem_response(409, str(exc).capitalize() + ".", allowed_actions=exc.allowed)


async def _on_bmc_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, BmcError)
    status = _BMC_ERROR_STATUS.get(exc.kind.value, 502)
    headers = None
    if status == 503 and exc.retry_after:
        headers = {"Retry-After": str(math.ceil(exc.retry_after))}
    return problem_response(status, str(exc), headers, bmc_error=exc.kind.value)


# The constraints whose failure is a conflict with other data, by PostgreSQL SQLSTATE
# and SQLite extended result code. Any other (NOT NULL, CHECK) means the request lacked
# a value or held one the schema should have refused: the caller's input, not a conflict.
_TAKEN = {"23505", "SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY"}
_DANGLING = {"23503", "SQLITE_CONSTRAINT_FOREIGNKEY"}
_NOT_NULL = {"23502", "SQLITE_CONSTRAINT_NOTNULL"}


def _constraint(error: Any) -> str:
    return str(getattr(error, "sqlstate", None) or getattr(error, "sqlite_errorname", ""))


def _null_column(error: Any) -> str:
    """The column a NOT NULL failure names: psycopg has it apart, SQLite only in its
    message ("NOT NULL constraint failed: table.column")."""
    diag = getattr(error, "diag", None)
    column = getattr(diag, "column_name", None)
    return column or str(error).partition(": ")[2].rpartition(".")[2] or "body"


async def _on_integrity(_: Request, exc: Exception) -> JSONResponse:
    # Services check what they can first with a precise message; this is the fallback
    # for races and for what no check caught.
    assert isinstance(exc, IntegrityError)
    constraint = _constraint(exc.orig)
    log.warning("integrity error: %s %s", type(exc.orig).__name__, constraint)
    if constraint in _TAKEN:
        return problem_response(
            409, "The change conflicts with existing data (a name or MAC is already in use)."
        )
    if constraint in _DANGLING:
        return problem_response(
            409,
            "The change refers to a record that no longer exists, or removes one that others "
            "still refer to; reload and retry.",
        )
    if constraint in _NOT_NULL:
        field = _null_column(exc.orig)
        return problem_response(
            422,
            f"The request leaves {field} empty; give it a value.",
            errors=[{"field": field, "message": "a value is required"}],
        )
    return problem_response(
        422, "The request holds a value the service cannot store; check it against /docs."
    )


async def _on_database_down(request: Request, exc: Exception) -> JSONResponse:
    return database_down(request.app, request.method, request.url.path, exc)


# Seconds a client is asked to wait before it retries a request the database failed:
# curl, as installers run it, honours it.
RETRY_AFTER = "5"


def database_down(app: Any, method: str, path: str, exc: Exception) -> JSONResponse:
    """503 for a request the database did not answer, which the caller retries (an
    installer's curl does). Logged once per outage with the loops' failures
    (:mod:`provisioner.outage`), not once per request: in an outage every request
    fails, and a boot storm is hundreds a second."""
    services = getattr(app.state, "services", None)
    doing = f"answering {method} {_shown_path(path)}"
    if services is not None:
        outage.of(services.engine).failed(doing, exc)
    else:
        log.error("%s: database unavailable: %s", doing, outage.reason(exc))
    return problem_response(
        503,
        "The database is unavailable; try again shortly.",
        headers={"Retry-After": RETRY_AFTER},
    )


def install(app: FastAPI) -> None:
    app.add_exception_handler(Problem, _on_problem)
    app.add_exception_handler(HTTPException, _on_http)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(IllegalAction, _on_illegal)
    app.add_exception_handler(BmcError, _on_bmc_error)
    app.add_exception_handler(IntegrityError, _on_integrity)
    app.add_exception_handler(OperationalError, _on_database_down)
    app.add_exception_handler(Exception, _on_unexpected)


_UNEXPECTED = "The service hit an unexpected error; it is in the service log."


async def _on_unexpected(_: Request, exc: Exception) -> JSONResponse:
    # Reached only by an error in a middleware outside UnexpectedErrors.
    return problem_response(500, _UNEXPECTED)


class UnexpectedErrors:
    """ASGI middleware: an unexpected exception is answered 500 (problem+json) and
    logged here, and goes no further. Starlette's exception handler for ``Exception``
    answers too but then raises it again, for the server, and uvicorn closes the
    connection of an exception it sees after a response: the client's next request on
    that keep-alive connection was reset."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception as exc:
            if started:  # half a response is out: only closing the connection ends it
                raise
            if outage.unreachable(exc):
                # From a middleware ahead of the routes' handlers (/boot/ipxe), or a dead
                # connection whose error is not an OperationalError.
                down = database_down(scope["app"], scope["method"], scope["path"], exc)
                await down(scope, receive, send)
                return
            log.exception(
                "unexpected error answering %s %s", scope["method"], _shown_path(scope["path"])
            )
            await problem_response(500, _UNEXPECTED)(scope, receive, send)
