"""GET /api/v1/events/stream: every node's timeline as it is written, as Server-Sent
Events (provisioner/events_stream.py), for scripts and the web view alike."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse

from provisioner import events_stream
from provisioner.api.deps import ServicesDep, Viewer
from provisioner.api.problems import API_ERRORS, responses
from provisioner.errors import Problem
from provisioner.schema_types import NodeName

router = APIRouter(prefix="/api/v1/events", tags=["events"], responses=API_ERRORS)

_STREAM: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "A text/event-stream: each event's `data` is a JSON object (the "
        "event's id, time, actor, kind, from_state, to_state and message, and its node's "
        "name, state, power_state, maintenance, role, rack and rack_unit now). The SSE "
        "`id` is the point to resume from with `Last-Event-ID`; after a resume an event "
        "may come twice (same `data.id`), none is lost.",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}


def sse_response(
    services: ServicesDep, last_event_id: str | None, node: str | None = None
) -> StreamingResponse:
    """The stream of one client; shared with the web view, which signs in by cookie."""
    feed = events_stream.feed_for(services.engine)
    if feed.subscribers >= events_stream.MAX_CLIENTS:
        raise Problem(
            503,
            f"This service process already streams to {feed.subscribers} clients; "
            "try again in a minute or ask another replica.",
            headers={"Retry-After": "60"},
        )
    resume = int(last_event_id) if last_event_id and last_event_id.isdecimal() else None
    body = events_stream.frames(feed, resume, node=node)
    # no-transform and X-Accel-Buffering: a proxy (nginx) must pass frames on as they come.
    headers = {"Cache-Control": "no-cache, no-transform", "X-Accel-Buffering": "no"}
    return StreamingResponse(body, media_type="text/event-stream", headers=headers)


@router.get("/stream", response_class=StreamingResponse, responses={**_STREAM, **responses(422)})
async def stream(
    services: ServicesDep,
    _: Viewer,
    node: Annotated[NodeName | None, Query(description="Only this node's events.")] = None,
    last_event_id: Annotated[
        str | None, Header(max_length=20, description="The `id` of the last event received.")
    ] = None,
) -> StreamingResponse:
    """Timeline events as they are written, by any replica, with a comment line every
    15 s while nothing happens; resumable with `Last-Event-ID`."""
    return sse_response(services, last_event_id, node)
