"""GET /api/v1/events/stream against a real uvicorn server: an action on a node is on
the stream, a client that reconnects with Last-Event-ID loses nothing, a viewer token
is enough and no token is a 401; and the feed's handling of ids that commit out of
order."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, insert
from sqlmodel import Session

from provisioner import events_stream
from provisioner.app import create_app
from provisioner.models import Event, Node, table_of
from provisioner.settings import Settings
from provisioner.tokens import create_token
from tests.conftest import auth, node_body
from tests.serving import InThread, poll


class Served:
    def __init__(self, settings: Settings) -> None:
        self.app = create_app(settings)
        self.server = InThread(self.app)
        self.engine = self.app.state.services.engine
        with Session(self.engine) as session:
            self.tokens = {
                scope: create_token(session, name=f"t-{scope}", scope=scope)[1]
                for scope in ("viewer", "operator")
            }
        self.http = httpx.Client(base_url=self.server.url, timeout=20)


@pytest.fixture
def served(settings: Settings) -> Iterator[Served]:
    served = Served(settings)
    yield served
    served.http.close()
    served.server.stop()


def frames(response: httpx.Response, within: float = 30.0) -> Iterator[dict[str, Any]]:
    """Each SSE message of the response as {"id", "data"} (comments skipped), once the
    service has subscribed the client: its first line, "retry:", is sent after that, and
    an event written before would not be on this stream. Fails when no message comes
    within ``within`` seconds (a keepalive comment every 15 s lets it notice)."""
    lines = response.iter_lines()
    first = next(lines)
    assert first.startswith("retry: "), first
    return _messages(lines, within)


def _messages(lines: Iterator[str], within: float) -> Iterator[dict[str, Any]]:
    message: dict[str, Any] = {}
    deadline = time.monotonic() + within
    for line in lines:
        if line.startswith("id: "):
            message["id"] = line[4:]
        elif line.startswith("data: "):
            message["data"] = json.loads(line[6:])
        elif line == "" and "data" in message:
            yield message
            message = {}
            deadline = time.monotonic() + within
        assert time.monotonic() < deadline, f"no event on the stream for {within:g} s"


def until(stream: Iterator[dict[str, Any]], kind: str, node: str) -> dict[str, Any]:
    for message in stream:
        if message["data"]["kind"] == kind and message["data"]["node"] == node:
            return message
    raise AssertionError(f"the stream ended before a {kind} event of {node}")


def act(served: Served, name: str, action: str) -> None:
    response = served.http.post(
        f"/api/v1/nodes/{name}/actions/{action}", headers=auth(served.tokens["operator"])
    )
    assert response.status_code == 202, response.text


def test_an_action_is_on_the_stream_and_a_resume_loses_nothing(served: Served) -> None:
    operator = auth(served.tokens["operator"])
    viewer = auth(served.tokens["viewer"])
    response = served.http.post("/api/v1/nodes", json=node_body(rack_unit=3), headers=operator)
    assert response.status_code == 201, response.text
    with served.http.stream("GET", "/api/v1/events/stream", headers=viewer) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        messages = frames(stream)
        act(served, "r01-u01", "power-on")
        seen = until(messages, "power-on", "r01-u01")
    data = seen["data"]
    assert data["message"] == "power-on requested"
    assert (data["state"], data["rack"], data["rack_unit"]) == ("enrolled", "r01", 3)
    assert data["actor"] == "t-operator"
    # While no one listens, two more things happen; a reconnect gets both, in order.
    act(served, "r01-u01", "maintenance-on")
    act(served, "r01-u01", "power-off")
    resume = {**viewer, "Last-Event-ID": seen["id"]}
    with served.http.stream("GET", "/api/v1/events/stream", headers=resume) as stream:
        messages = frames(stream)
        kinds = [next(messages)["data"]["kind"] for _ in range(2)]
        assert kinds == ["maintenance-on", "power-off"]
        # And it goes on live after the replay.
        act(served, "r01-u01", "maintenance-off")
        assert until(messages, "maintenance-off", "r01-u01")["data"]["maintenance"] is False


def test_one_nodes_events_only(served: Served) -> None:
    operator = auth(served.tokens["operator"])
    for unit, name in ((1, "a1"), (2, "b2")):
        body = node_body(name=name, mac=f"52:54:00:00:02:0{unit}")
        assert served.http.post("/api/v1/nodes", json=body, headers=operator).status_code == 201
    viewer = auth(served.tokens["viewer"])
    with served.http.stream(
        "GET", "/api/v1/events/stream", params={"node": "B2"}, headers=viewer
    ) as stream:
        messages = frames(stream)
        act(served, "a1", "power-on")
        act(served, "b2", "power-on")
        assert next(messages)["data"]["node"] == "b2"


def test_a_token_is_needed(served: Served) -> None:
    response = served.http.get("/api/v1/events/stream")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    bad = served.http.get("/api/v1/events/stream", headers=auth("prov_not-a-token"))
    assert bad.status_code == 401


def _feed_of_one_node(url: str) -> tuple[Engine, Any, events_stream.EventFeed]:
    """A fresh database at ``url`` with one node, its id, and a feed of its events that
    the test ticks by hand."""
    from provisioner import db

    engine = db.make_engine(url)
    db.upgrade(engine)
    with Session(engine) as session:
        node = Node(name="n1", state="enrolled")
        session.add(node)
        session.commit()
        node_id = node.id
    return engine, node_id, events_stream.EventFeed(engine)


def _event(engine: Any, node_id: Any, event_id: int, message: str) -> None:
    with engine.begin() as connection:
        row = {"id": event_id, "node_id": node_id, "actor": "t", "kind": "update"}
        connection.execute(insert(table_of(Event)), [{**row, "message": message}])


def test_an_id_that_commits_late_is_delivered_and_held_below_the_horizon(
    settings: Settings,
) -> None:
    """As on PostgreSQL, where id 2 may commit after id 3: the feed delivers 3, waits
    for 2 (its frames' resume point stays at 1), then delivers 2 and moves on."""
    engine, node_id, feed = _feed_of_one_node(settings.resolved_database_url)
    got: list[tuple[int, bytes]] = []
    feed._publish = lambda event, position: got.append((event.id, event.frame(position)))  # type: ignore[method-assign]
    _event(engine, node_id, 1, "one")
    feed.tick()
    _event(engine, node_id, 3, "three")
    feed.tick()
    assert [i for i, _ in got] == [1, 3]
    assert got[-1][1].startswith(b"id: 1\n")
    assert feed.horizon == 1
    _event(engine, node_id, 2, "two")
    feed.tick()
    assert [i for i, _ in got] == [1, 3, 2]
    assert feed.horizon == 3
    assert got[-1][1].startswith(b"id: 2\n")
    feed.tick()
    assert len(got) == 3
    engine.dispose()


def test_an_event_that_commits_after_a_newer_one_is_not_lost(database_url: str) -> None:
    """Two writers on PostgreSQL: the one holding the lower id commits last."""
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite has one writer at a time: its ids commit in order")
    engine, node_id, feed = _feed_of_one_node(database_url)
    feed.horizon = feed._top()
    got: list[str] = []
    feed._publish = lambda event, position: got.append(event.data["message"])  # type: ignore[method-assign]
    row = {"node_id": node_id, "actor": "t", "kind": "update"}
    with engine.connect() as slow:
        transaction = slow.begin()
        slow.execute(insert(table_of(Event)), [{**row, "message": "slow"}])
        with engine.begin() as fast:
            fast.execute(insert(table_of(Event)), [{**row, "message": "fast"}])
        feed.tick()
        assert got == ["fast"]
        transaction.commit()
    feed.tick()
    assert got == ["fast", "slow"]
    engine.dispose()


def test_a_replica_streams_what_another_replica_wrote(settings: Settings) -> None:
    """Two service processes (here two apps, each with its own engine and feed) on one
    database: the stream of one carries an action taken through the other."""
    first, second = Served(settings), Served(settings)
    try:
        operator = auth(first.tokens["operator"])
        assert (
            first.http.post("/api/v1/nodes", json=node_body(), headers=operator).status_code == 201
        )
        viewer = auth(second.tokens["viewer"])
        with second.http.stream("GET", "/api/v1/events/stream", headers=viewer) as stream:
            messages = frames(stream)
            act(first, "r01-u01", "inspect")
            assert until(messages, "inspect", "r01-u01")["data"]["state"] == "inspecting"
    finally:
        for served in (first, second):
            served.http.close()
            served.server.stop()


def test_streams_past_the_limit_are_turned_away(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(events_stream, "MAX_CLIENTS", 1)
    viewer = auth(served.tokens["viewer"])
    with served.http.stream("GET", "/api/v1/events/stream", headers=viewer) as first:
        assert first.status_code == 200
        lines = first.iter_lines()  # kept: a dropped iterator closes the response
        next(lines)  # it is subscribed once its first line is sent
        second = served.http.get("/api/v1/events/stream", headers=viewer)
        assert second.status_code == 503
        assert second.headers["retry-after"] == "60"
    # Once the service has seen the first client go, there is room again.
    feed = events_stream.feed_for(served.engine)
    poll(lambda: feed.subscribers == 0, 10, lambda: f"{feed.subscribers} still subscribed")
    with served.http.stream("GET", "/api/v1/events/stream", headers=viewer) as again:
        assert again.status_code == 200
