"""The live stream of timeline events: one poller per process and database, fanned out to
every connected client as Server-Sent Events.

Replicas share one database, so a replica learns of an event another replica wrote only
by reading it: one :class:`EventFeed` per engine polls the ``event`` table by its id (one
small query a tick, whoever is listening) and hands each new event, already rendered as
an SSE frame, to every subscriber's queue. With no subscriber it stops polling.

Ids are handed out when a row is inserted, not when its transaction commits, so on
PostgreSQL an event with a lower id can become visible after a higher one. The feed
keeps such holes below the highest id it has delivered open for :data:`GAP_WAIT` seconds
(a rolled-back insert leaves one for good), and the SSE id it sends with a frame is its
*horizon*: the highest id below which everything has been delivered or given up on. A
client that reconnects with that ``Last-Event-ID`` is sent every event above it again, so
it loses nothing, and may see an event twice (each frame's data has the event's own
``id`` to tell).
"""

from __future__ import annotations

import asyncio
import json
import time
import weakref
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

from sqlalchemy import Engine, bindparam, func, or_, select
from sqlalchemy.engine import Connection

from provisioner import outage
from provisioner.models import Event, Node, table_of

_event = table_of(Event)
_node = table_of(Node)

# How long a hole in the ids is waited for before it counts as a rolled-back insert.
GAP_WAIT = 30.0
# Holes waited for at once, at most: a rolled-back bulk insert must not grow the set.
MAX_GAPS = 1000
# Events read a tick; a fuller tick is followed by another at once.
BATCH = 1000
# Frames held for one slow client; past it the client is dropped and resumes by id.
QUEUE = 5000
# Events sent again at most to a client that resumes with Last-Event-ID.
REPLAY = 10_000
# Streams one process serves at once; more are turned away (each holds a queue).
MAX_CLIENTS = 1000

_COLUMNS = (
    _event.c.id,
    _event.c.time,
    _event.c.actor,
    _event.c.kind,
    _event.c.from_state,
    _event.c.to_state,
    _event.c.message,
    _node.c.name,
    _node.c.state,
    _node.c.power_state,
    _node.c.maintenance,
    _node.c.role,
    _node.c.rack,
    _node.c.rack_unit,
)
_FROM = _event.join(_node, _node.c.id == _event.c.node_id)
_NEWER = (
    select(*_COLUMNS)
    .select_from(_FROM)
    .where(_event.c.id > bindparam("after"))
    .order_by(_event.c.id)
    .limit(bindparam("limit"))
)
_NEWER_OR_GAPS = (
    select(*_COLUMNS)
    .select_from(_FROM)
    .where(
        or_(
            _event.c.id > bindparam("after"),
            _event.c.id.in_(bindparam("gaps", expanding=True)),
        )
    )
    .order_by(_event.c.id)
    .limit(bindparam("limit"))
)
_TOP = select(func.max(_event.c.id))


@dataclass(frozen=True)
class StreamEvent:
    """One timeline event with its node as it is now (state, power, place)."""

    id: int
    data: dict[str, Any]

    @classmethod
    def of(cls, row: Any) -> StreamEvent:
        data = dict(row._mapping)
        data["node"] = data.pop("name")
        # SQLite hands back naive datetimes; everything is stored in UTC.
        when = row.time if row.time.tzinfo else row.time.replace(tzinfo=UTC)
        data["time"] = when.isoformat(timespec="milliseconds")
        return cls(row.id, data)

    def frame(self, position: int) -> bytes:
        """The SSE frame, with ``position`` (the resume point) as its id."""
        payload = json.dumps(self.data, separators=(",", ":"))
        return f"id: {position}\ndata: {payload}\n\n".encode()


def read_after(engine: Engine, after: int, limit: int = REPLAY) -> list[StreamEvent]:
    """Events with an id above ``after``, oldest first (for a client that resumes)."""
    with engine.connect() as connection:
        rows = connection.execute(_NEWER, {"after": after, "limit": limit}).all()
    return [StreamEvent.of(row) for row in rows]


@dataclass(eq=False)  # each one itself, in a set
class Subscription:
    """One client's queue of (event id, frame); None in it means: the feed dropped you."""

    node: str | None
    queue: asyncio.Queue[tuple[int, bytes] | None] = field(
        default_factory=lambda: asyncio.Queue(QUEUE)
    )


class EventFeed:
    """The one poller of an engine's events in this process."""

    def __init__(self, engine: Engine, interval: float = 1.0) -> None:
        self.engine = engine
        self.interval = interval
        self._subscribers: set[Subscription] = set()
        self._task: asyncio.Task[None] | None = None
        self._started: asyncio.Future[None] | None = None
        # Everything with an id <= horizon has been delivered or given up on; above it,
        # ``_above`` has been delivered and ``_gaps`` (id -> first seen) is awaited.
        self.horizon = 0
        self._above: set[int] = set()
        self._gaps: dict[int, float] = {}

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    @asynccontextmanager
    async def subscribe(self, node: str | None = None) -> AsyncIterator[Subscription]:
        """A queue of the events written from now on (of ``node`` only, when given)."""
        subscription = Subscription(node)
        self._subscribers.add(subscription)
        try:
            if self._task is None or self._task.done():
                # No await between the check and the start: one poller, however many
                # clients arrive at once.
                self._started = asyncio.get_running_loop().create_future()
                self._task = asyncio.create_task(self._run(self._started), name="event-feed")
            assert self._started is not None
            # Started reading before the caller replays anything: what commits in
            # between is above the feed's start and reaches the queue.
            await asyncio.shield(self._started)
            yield subscription
        finally:
            self._subscribers.discard(subscription)
            if not self._subscribers and self._task is not None:
                self._task.cancel()
                self._task = None

    def _top(self) -> int:
        with self.engine.connect() as connection:
            return int(connection.execute(_TOP).scalar() or 0)

    async def _run(self, started: asyncio.Future[None]) -> None:
        try:
            top = await asyncio.to_thread(self._top)
        except Exception as exc:
            started.set_exception(exc)  # each waiting client's stream ends with it
            return
        self.horizon, self._above, self._gaps = top, set(), {}
        started.set_result(None)
        watcher = outage.of(self.engine)
        while self._subscribers:
            full = False
            with watcher.watch("reading events for the event stream"):
                full = await asyncio.to_thread(self.tick)
            if not full:
                await asyncio.sleep(self.interval)

    def tick(self) -> bool:
        """Read and hand out what is new; whether there may be more right away."""
        top = self.horizon if not self._above else max(self._above)
        with self.engine.connect() as connection:
            rows = self._read(connection, top)
            if not rows and top > self.horizon:
                # Not a hole, just quiet: unless the newest events were deleted (with
                # their node), which SQLite would hand out again.
                newest = int(connection.execute(_TOP).scalar() or 0)
                if newest < top:
                    self._forget_above(newest)
        events = [StreamEvent.of(row) for row in rows if row.id not in self._above]
        self._above.update(e.id for e in events)
        self._advance(time.monotonic())
        for event in events:
            self._publish(event, min(event.id, self.horizon))
        return len(rows) >= BATCH

    def _read(self, connection: Connection, top: int) -> Sequence[Any]:
        params: dict[str, Any] = {"after": top, "limit": BATCH}
        if not self._gaps:
            return connection.execute(_NEWER, params).all()
        params["gaps"] = sorted(self._gaps)
        return connection.execute(_NEWER_OR_GAPS, params).all()

    def _forget_above(self, newest: int) -> None:
        self._above = {i for i in self._above if i <= newest}
        self._gaps = {i: t for i, t in self._gaps.items() if i <= newest}
        self.horizon = min(self.horizon, newest)

    def _advance(self, now: float) -> None:
        """Record new holes, give up on old ones, and move the horizon up."""
        if self._above:
            newest = max(self._above)
            # Ids far below the newest are not waited for (a jump of the sequence).
            for missing in range(max(self.horizon + 1, newest - MAX_GAPS), newest):
                if missing not in self._above:
                    self._gaps.setdefault(missing, now)
        for gap, seen in list(self._gaps.items()):
            if gap in self._above or now - seen > GAP_WAIT:
                del self._gaps[gap]
        waiting = min(self._gaps, default=None)
        newest = max(self._above, default=self.horizon)
        self.horizon = newest if waiting is None else waiting - 1
        self._above = {i for i in self._above if i > self.horizon}

    def _publish(self, event: StreamEvent, position: int) -> None:
        frame = event.frame(position)
        for subscription in list(self._subscribers):
            if subscription.node is not None and subscription.node != event.data["node"]:
                continue
            try:
                subscription.queue.put_nowait((event.id, frame))
            except asyncio.QueueFull:
                # A client this far behind resumes from the database instead.
                self._subscribers.discard(subscription)
                subscription.queue._queue.clear()  # type: ignore[attr-defined]
                subscription.queue.put_nowait(None)


_feeds: weakref.WeakKeyDictionary[Engine, EventFeed] = weakref.WeakKeyDictionary()


def feed_for(engine: Engine) -> EventFeed:
    """This process's feed of ``engine``'s events."""
    feed = _feeds.get(engine)
    if feed is None:
        feed = _feeds[engine] = EventFeed(engine)
    return feed


async def frames(
    feed: EventFeed,
    last_event_id: int | None,
    *,
    node: str | None = None,
    heartbeat: float = 15.0,
    lifetime: float = 900.0,
) -> AsyncIterator[bytes]:
    """The SSE body of one client: the events after ``last_event_id`` (when it resumes),
    then each new one as the feed reads it, a comment every ``heartbeat`` seconds so
    proxies keep the connection, and an end after ``lifetime`` seconds (the client
    reconnects with its last id: no stream outlives a service's graceful shutdown by
    long)."""
    ends = time.monotonic() + lifetime
    async with feed.subscribe(node) as subscription:
        yield b"retry: 2000\n\n"
        replayed: set[int] = set()
        if last_event_id is not None:
            events = await asyncio.to_thread(read_after, feed.engine, last_event_id)
            for event in events:
                if node is None or event.data["node"] == node:
                    yield event.frame(min(event.id, feed.horizon))
                replayed.add(event.id)
        while (left := ends - time.monotonic()) > 0:
            try:
                item = await asyncio.wait_for(subscription.queue.get(), min(heartbeat, left))
            except TimeoutError:
                yield b": keepalive\n\n"
                continue
            if item is None:
                return
            event_id, frame = item
            if event_id not in replayed:
                yield frame
