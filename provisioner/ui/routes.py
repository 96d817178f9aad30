"""/ui: the web view's pages, rendered on the server.

Thin, as the API's handlers: reading is :mod:`provisioner.ui.views`, acting and enrolling
are the node services the API calls (:func:`provisioner.nodes.act`,
:func:`provisioner.nodes.change`), with the signed-in token's name as the actor, so an
action from the page is checked, recorded and carried out exactly as one from the API.
"""

from __future__ import annotations

import functools
import mimetypes
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import jinja2
from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import ValidationError
from sqlmodel import Session as DbSession

from provisioner import nodes
from provisioner.api.deps import run_db
from provisioner.api.events import sse_response
from provisioner.bmc.registry import DRIVER_NAMES
from provisioner.errors import Problem
from provisioner.lifecycle import Action, IllegalAction
from provisioner.schemas import ActionRequest, NodePatch
from provisioner.services import Services
from provisioner.ui import sessions, views
from provisioner.ui.sessions import Session

T = TypeVar("T")
HERE = Path(__file__).parent
router = APIRouter(prefix="/ui", include_in_schema=False)

_ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
# Served from the package, never a CDN: the page works on an isolated boot network.
_STATIC = {p.name: p for p in (HERE / "static").iterdir() if p.is_file()}
_HEADERS = {
    # Scripts and styles only from the service's own files: no inline script runs.
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
# What each action's confirmation says it will do.
EFFECTS = {
    "power-on": "power it on",
    "power-off": "power it off",
    "power-cycle": "power it off and on again",
    "provision": "install it in a role with an image",
    "reimage": "install it again, erasing what runs on it now",
    "release": "wipe its disks and return it to the pool (ready)",
    "inspect": "read its hardware inventory",
    "maintenance-on": "set maintenance: the service leaves it alone",
    "maintenance-off": "end maintenance: the service works on it again",
    "abort": "stop the work in progress",
    "retry": "try the failed step again",
}


def page(template: str, user: Session | None, status: int = 200, **context: Any) -> HTMLResponse:
    html = _ENV.get_template(template).render(user=user, **context)
    return HTMLResponse(html, status, headers=_HEADERS)


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


async def _db(request: Request, call: Callable[[DbSession], T]) -> T:
    """Run ``call`` with a database session as the API's handlers do (deps.run_db)."""
    with DbSession(_services(request).engine, expire_on_commit=False) as session:
        return await run_db(session, functools.partial(call, session))


def _to_login() -> RedirectResponse:
    return RedirectResponse("/ui/login", 303)


@router.get("/static/{name}")
async def static(name: str) -> Response:
    path = _STATIC.get(name)
    if path is None:
        return Response("not found", 404, media_type="text/plain")
    kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
    headers = {"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"}
    return Response(path.read_bytes(), media_type=kind, headers=headers)


@router.get("/login")
async def login_form(request: Request) -> Response:
    if await sessions.current(request) is not None:
        return RedirectResponse("/ui", 303)
    return _login_page(request, None, 200)


def _login_page(request: Request, error: str | None, status: int) -> Response:
    csrf = sessions.login_csrf(request)
    response = page("login.html", None, status, login_csrf=csrf, error=error)
    sessions.keep_login_csrf(request, response, csrf)
    return response


@router.post("/login")
async def login(request: Request) -> Response:
    fields = await sessions.form(request)
    if not sessions.csrf_ok(request.cookies.get(sessions.LOGIN_COOKIE), fields):
        return _login_page(request, "The form had expired; paste the token again.", 403)
    done = RedirectResponse("/ui", 303)
    if await sessions.sign_in(request, done, fields.get("token", "")) is None:
        return _login_page(request, "That token is unknown, revoked or expired.", 401)
    return done


@router.post("/logout")
async def logout(request: Request) -> Response:
    user = await sessions.current(request)
    fields = await sessions.form(request)
    if user is not None and not sessions.csrf_ok(user.csrf, fields):
        return page("error.html", user, 403, message="The sign-out form had expired.")
    out = _to_login()
    sessions.sign_out(out)
    return out


@router.get("")
async def racks(request: Request) -> Response:
    user = await sessions.current(request)
    if user is None:
        return _to_login()
    filters = views.Filters.of(dict(request.query_params))
    view = await _db(request, lambda s: views.racks(s, filters))
    return page("racks.html", user, view=view, filters=filters, states=views.STATES)


@router.get("/events")
async def events(request: Request) -> Response:
    """The API's event stream, for a signed-in page (EventSource sends no token)."""
    if await sessions.current(request) is None:
        return Response("sign in first", 401, media_type="text/plain")
    node = request.query_params.get("node") or None
    return sse_response(_services(request), request.headers.get("last-event-id"), node)


@router.get("/nodes/{name}")
async def node(request: Request, name: str) -> Response:
    user = await sessions.current(request)
    if user is None:
        return _to_login()
    try:
        view = await _db(
            request, lambda s: views.node_view(s, nodes.find(s, name), _services(request).profiles)
        )
    except Problem as problem:
        return page("error.html", user, problem.status, message=problem.detail)
    return page("node.html", user, view=view, node=view.node, effects=EFFECTS)


@router.get("/nodes/{name}/actions/{action}")
async def confirm(request: Request, name: str, action: str) -> Response:
    user = await sessions.current(request)
    if user is None:
        return _to_login()
    return await _action_page(request, user, name, action, None, 200)


async def _action_page(
    request: Request, user: Session, name: str, action: str, error: str | None, status: int
) -> Response:
    if not user.may("operator"):
        message = "Actions need an operator token; you are signed in as a viewer."
        return page("error.html", user, 403, message=message)
    if action not in EFFECTS:
        return page("error.html", user, 404, message=f"There is no action {action!r}.")
    try:
        view = await _db(
            request, lambda s: views.node_view(s, nodes.find(s, name), _services(request).profiles)
        )
    except Problem as problem:
        return page("error.html", user, problem.status, message=problem.detail)
    return page(
        "confirm.html",
        user,
        status,
        view=view,
        node=view.node,
        action=action,
        effect=EFFECTS[action],
        error=error,
    )


@router.post("/nodes/{name}/actions/{action}")
async def act(request: Request, name: str, action: str) -> Response:
    user = await sessions.current(request)
    if user is None:
        return _to_login()
    fields = await sessions.form(request)
    if not sessions.csrf_ok(user.csrf, fields):
        return page("error.html", user, 403, message="The form had expired; try again.")
    if not user.may("operator") or action not in EFFECTS:
        return await _action_page(request, user, name, action, None, 403)
    services = _services(request)
    try:
        body = ActionRequest(
            reason=fields.get("reason") or None,
            role=fields.get("role") or None,
            image=fields.get("image") or None,
            skip_wipe=fields.get("skip_wipe") == "on",
        )
    except ValidationError as err:
        error = "; ".join(str(e["msg"]) for e in err.errors())
        return await _action_page(request, user, name, action, error, 422)

    def run(session: DbSession) -> None:
        nodes.act(
            session,
            nodes.find(session, name),
            Action(action),
            body,
            user.token.name,
            vault=services.vault,
            settings=services.settings,
        )

    try:
        await _db(request, run)
    except Problem as problem:
        return await _action_page(request, user, name, action, problem.detail, problem.status)
    except IllegalAction as illegal:
        why = str(illegal).capitalize() + "."
        return await _action_page(request, user, name, action, why, 409)
    return RedirectResponse(f"/ui/nodes/{name}", 303)


@router.get("/discovered")
async def discovered(request: Request) -> Response:
    user = await sessions.current(request)
    if user is None:
        return _to_login()
    machines = await _db(request, views.discovered)
    unknown = await _db(request, views.unknown_hops)
    return page("discovered.html", user, machines=machines, unknown=unknown)


@router.get("/discovered/{name}/enroll")
async def enroll_form(request: Request, name: str) -> Response:
    user = await sessions.current(request)
    if user is None:
        return _to_login()
    return await _enroll_page(request, user, name, {}, None, 200)


async def _enroll_page(
    request: Request,
    user: Session,
    name: str,
    given: dict[str, str],
    error: str | None,
    status: int,
) -> Response:
    if not user.may("operator"):
        message = "Enrolling needs an operator token; you are signed in as a viewer."
        return page("error.html", user, 403, message=message)
    try:
        found = await _db(
            request, lambda s: views.node_view(s, nodes.find(s, name), _services(request).profiles)
        )
    except Problem as problem:
        return page("error.html", user, problem.status, message=problem.detail)
    given = {k: v for k, v in given.items() if k not in ("password", "csrf")}
    return page(
        "enroll.html", user, status, view=found, given=given, error=error, drivers=DRIVER_NAMES
    )


@router.post("/discovered/{name}/enroll")
async def enroll(request: Request, name: str) -> Response:
    user = await sessions.current(request)
    if user is None:
        return _to_login()
    fields = await sessions.form(request)
    if not sessions.csrf_ok(user.csrf, fields):
        return page("error.html", user, 403, message="The form had expired; try again.")
    if not user.may("operator"):
        return await _enroll_page(request, user, name, fields, None, 403)
    try:
        patch = NodePatch.model_validate(_patch_of(fields))
    except ValidationError as err:
        error = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        return await _enroll_page(request, user, name, fields, error, 422)
    services = _services(request)

    def run(session: DbSession) -> str:
        node = nodes.change(
            session,
            services.vault,
            nodes.find(session, name),
            patch,
            user.token.name,
            None,
            inspect=services.settings.inspect_on_enroll,
        )
        return node.name

    try:
        new_name = await _db(request, run)
    except Problem as problem:
        detail = problem.detail
        if errors := problem.extra.get("errors"):
            detail += " " + "; ".join(f"{e.get('field')}: {e.get('message')}" for e in errors)
        return await _enroll_page(request, user, name, fields, detail, problem.status)
    return RedirectResponse(f"/ui/nodes/{new_name}", 303)


def _patch_of(fields: dict[str, str]) -> dict[str, Any]:
    """A node PATCH from the enrollment form: blank fields are left out."""
    patch: dict[str, Any] = {}
    for name in ("name", "rack", "role"):
        if fields.get(name):
            patch[name] = fields[name]
    if fields.get("rack_unit"):
        patch["rack_unit"] = fields["rack_unit"]
    bmc = {
        key: fields[f"bmc_{key}"]
        for key in ("driver", "address", "port", "username", "password")
        if fields.get(f"bmc_{key}")
    }
    patch["bmc"] = bmc
    return patch
