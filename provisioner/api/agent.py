"""Node-facing routes of the deploy agent: what it posts (inventory, heartbeats, job
results) and what it downloads (its kernel and initramfs, the image it writes, the config
drive). No API token: the deployment's token in the path is the agent's only credential,
as for an installer's callbacks (docs/agent.md)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from starlette.concurrency import run_in_threadpool

from provisioner.agent import protocol
from provisioner.agent.build import current as built_agent
from provisioner.agent.jobs import AgentJobs
from provisioner.api.deps import ServicesDep
from provisioner.api.problems import responses
from provisioner.boot import files
from provisioner.errors import Problem

router = APIRouter(tags=["boot (node-facing)"])

_TEXT = "text/plain; charset=utf-8"
_TOKEN = (
    (404, "No agent deployment has this token."),
    (410, "The deployment has ended; its token is spent."),
)
_FILE: dict[str, Any] = {
    "response_class": Response,
    "responses": {
        200: {"content": {"application/octet-stream": {}}},
        206: {"description": "The one byte range asked for."},
        304: {"description": "The node's copy is current."},
        **responses(*_TOKEN, (416, "The range starts past the end of the file."), 503),
    },
}
_AGENT_FILES = ("vmlinuz", "initrd.img")


async def _jobs(services: ServicesDep) -> AgentJobs:
    return services.agent


Jobs = Annotated[AgentJobs, Depends(_jobs)]


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


@router.post(
    "/agent/{token}/inventory",
    response_class=Response,
    responses={200: {"content": {_TEXT: {}}}, **responses(400, *_TOKEN, 413, 422, 503)},
)
async def inventory(request: Request, jobs: Jobs, token: str, body: protocol.Inventory) -> Response:
    """The machine's hardware as the agent sees it from the inside."""
    await run_in_threadpool(jobs.inventory, token, body, _client(request))
    return Response("ok\n", media_type=_TEXT)


@router.post(
    "/agent/{token}/heartbeat",
    response_class=Response,
    responses={
        200: {
            "description": "The agent's next command: wait N, deploy ..., wipe ..., "
            "reboot or poweroff.",
            "content": {_TEXT: {"schema": {"type": "string"}}},
        },
        **responses(400, *_TOKEN[:1], 413, 422, 503),
    },
)
async def heartbeat(jobs: Jobs, token: str, body: protocol.Heartbeat) -> Response:
    """The agent is alive; the answer is what it does next."""
    command = await run_in_threadpool(jobs.heartbeat, token, body)
    return Response(command + "\n", media_type=_TEXT)


@router.post(
    "/agent/{token}/result",
    response_class=Response,
    responses={
        200: {"content": {_TEXT: {}}},
        **responses(
            400, *_TOKEN, (409, "A result of another job than this deployment's."), 413, 422, 503
        ),
    },
)
async def result(request: Request, jobs: Jobs, token: str, body: protocol.Result) -> Response:
    """A finished job: an image written and read back, or disks wiped with evidence."""
    await run_in_threadpool(jobs.result, token, body, _client(request))
    return Response("ok\n", media_type=_TEXT)


@router.get("/agent/{token}/image", **_FILE)
async def image(request: Request, services: ServicesDep, token: str) -> Response:
    """The image the agent writes, raw or gzip-compressed raw."""
    prepared = await run_in_threadpool(services.agent.image, token)
    return files.respond(
        prepared.path.parent,
        None,
        prepared.path.name,
        request.headers,
        files.report_to(services.file_observer, token, _client(request), "image"),
    )


@router.get(
    "/agent/{token}/config-drive",
    response_class=Response,
    responses={200: {"content": {"application/x-tar": {}}}, **responses(*_TOKEN, 503)},
)
async def config_drive(request: Request, services: ServicesDep, token: str) -> Response:
    """The config drive's files as a tar, for the agent to put on a config-2 filesystem."""
    base = services.boot.base_url(str(request.base_url))
    data = await run_in_threadpool(services.agent.config_drive, token, base)
    return Response(data, media_type="application/x-tar")


@router.get("/boot/agent/{name}", **_FILE)
@router.head("/boot/agent/{name}", **_FILE)
async def agent_file(
    request: Request, services: ServicesDep, name: str, token: str | None = None
) -> Response:
    """The deploy agent's kernel and initramfs (``provisioner agent build``)."""
    agent = built_agent(services.settings.data_dir)
    if agent is None or name not in _AGENT_FILES:
        raise Problem(
            404, f"No agent file {name!r}: build the agent with `provisioner agent build`."
        )
    return files.respond(
        agent.directory,
        None,
        name,
        request.headers,
        files.report_to(services.file_observer, token, _client(request), f"agent/{name}"),
    )
