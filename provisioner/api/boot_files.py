"""GET/HEAD /boot/files/{path}: kernels, initrds and disk images for booting nodes.

Node-facing, so no API token; ``?token=`` (the deployment's) only names the boot the
download belongs to, for the observer that puts it on the node's timeline."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from provisioner.boot.files import (
    BootFile,
    BootFileResponse,
    FileObserver,
    accel_redirect,
    select,
)
from provisioner.errors import Problem

router = APIRouter(tags=["boot"])

_PROBLEM: dict[int | str, dict[str, Any]] = {
    status: {"content": {"application/problem+json": {}}, "description": description}
    for status, description in (
        (404, "No such file inside the images directory."),
        (416, "The range starts past the end of the file."),
    )
}


_ROUTE: dict[str, Any] = {
    "path": "/boot/files/{path:path}",
    "response_class": Response,
    "responses": {
        200: {"content": {"application/octet-stream": {}}},
        206: {"description": "The one byte range asked for."},
        304: {"description": "The node's copy is current."},
        **_PROBLEM,
    },
}


# Two routes rather than one with both methods: each gets its own OpenAPI operation id.
@router.get(**_ROUTE)
@router.head(**_ROUTE)
async def boot_file(request: Request, path: str, token: str | None = None) -> Response:
    """A file from the images directory, with Range and conditional requests."""
    settings = request.app.state.settings
    root = settings.resolved_images_dir
    observer: FileObserver | None = getattr(request.app.state, "file_observer", None)
    client = request.client.host if request.client else "unknown"

    def on_end(bytes_sent: int, status: int, complete: bool) -> None:
        if observer is not None:
            observer(token, client, path, bytes_sent, status, complete)

    try:
        if settings.accel_redirect:
            response = accel_redirect(settings.accel_redirect, root, path)
            on_end(0, response.status_code, True)
            return response
        file = BootFile.open(root, path)
    except Problem as problem:
        on_end(0, problem.status, True)
        raise
    try:
        selection = select(file, request.headers)
    except Problem as problem:
        file.close()
        on_end(0, problem.status, True)
        raise
    return BootFileResponse(file, selection, on_end)
