"""GET/HEAD /boot/files/{path}: kernels, initrds and disk images for booting nodes.

Node-facing, so no API token; ``?token=`` (the deployment's) only names the boot the
download belongs to, for the observer that puts it on the node's timeline."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from provisioner.api.deps import ServicesDep
from provisioner.api.problems import responses
from provisioner.boot import files

router = APIRouter(tags=["boot (node-facing)"])

_ROUTE: dict[str, Any] = {
    "path": "/boot/files/{path:path}",
    "response_class": Response,
    "responses": {
        200: {"content": {"application/octet-stream": {}}},
        206: {"description": "The one byte range asked for."},
        304: {"description": "The node's copy is current."},
        **responses(
            (404, "No such file inside the images directory."),
            (416, "The range starts past the end of the file."),
        ),
    },
}


# Two routes rather than one with both methods: each gets its own OpenAPI operation id.
@router.get(**_ROUTE)
@router.head(**_ROUTE)
async def boot_file(
    request: Request, services: ServicesDep, path: str, token: str | None = None
) -> Response:
    """A file from the images directory, with Range and conditional requests."""
    client = request.client.host if request.client else "unknown"
    settings = services.settings
    return files.respond(
        settings.resolved_images_dir,
        settings.accel_redirect,
        path,
        request.headers,
        files.report_to(services.file_observer, token, client, path),
    )
