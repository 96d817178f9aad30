"""The one writer of node state and events: transitions with their event in one
transaction, refused when the node moved meanwhile or is leased to someone else."""

from __future__ import annotations

import uuid

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlmodel import Session, col, select

from provisioner import timeline
from provisioner.lifecycle import Action, IllegalAction, Outcome, State
from provisioner.models import Event, InventoryFact, Node
from provisioner.timeline import Actor, EventKind
from tests.conftest import node_body


@pytest.fixture
def node_id(client: TestClient, admin: dict[str, str]) -> uuid.UUID:
    response = client.post("/api/v1/nodes", json=node_body(), headers=admin)
    assert response.status_code == 201, response.text
    return uuid.UUID(response.json()["id"])


def _node(app: FastAPI, node_id: uuid.UUID) -> Node:
    with Session(app.state.services.engine, expire_on_commit=False) as session:
        node = session.get(Node, node_id)
        assert node is not None
        return node


def _events(app: FastAPI, node_id: uuid.UUID) -> list[Event]:
    with Session(app.state.services.engine) as session:
        query = select(Event).where(Event.node_id == node_id).order_by(col(Event.id))
        return list(session.exec(query))


def test_a_stored_kind_names_one_thing() -> None:
    values = [kind.value for kind in [*Action, *Outcome, *EventKind]]
    assert len(values) == len(set(values))


def test_a_transition_writes_state_version_and_event_together(
    app: FastAPI, node_id: uuid.UUID
) -> None:
    before = _node(app, node_id)
    with Session(app.state.services.engine) as session:
        moved = timeline.transition(
            session,
            before,
            Action.INSPECT,
            "ops-token",
            "looking",
            facts=("ipmi", {"vendor": "Fake"}),
        )
        session.commit()
    assert (moved.from_state, moved.to_state) == (State.ENROLLED, State.INSPECTING)
    after = _node(app, node_id)
    assert (after.state, after.version) == ("inspecting", before.version + 1)
    last = _events(app, node_id)[-1]
    assert (last.kind, last.actor, last.from_state, last.to_state, last.message) == (
        "inspect",
        "ops-token",
        "enrolled",
        "inspecting",
        "looking",
    )
    with Session(app.state.services.engine) as session:
        fact = session.exec(select(InventoryFact).where(InventoryFact.node_id == node_id)).one()
        assert fact.facts == {"vendor": "Fake"}


def test_a_stale_read_writes_nothing(app: FastAPI, node_id: uuid.UUID) -> None:
    stale = _node(app, node_id)
    with Session(app.state.services.engine) as session:
        timeline.change(session, stale, {"rack_unit": 7}, EventKind.UPDATE, "ops", "moved")
        session.commit()
    count = len(_events(app, node_id))
    with Session(app.state.services.engine) as session, pytest.raises(timeline.Stale):
        timeline.transition(session, stale, Action.INSPECT, "ops", "too late")
    assert _node(app, node_id).state == "enrolled"
    assert len(_events(app, node_id)) == count


def test_a_lease_held_by_another_replica_refuses_the_write(
    app: FastAPI, node_id: uuid.UUID
) -> None:
    with Session(app.state.services.engine) as session:
        session.execute(update(Node).where(col(Node.id) == node_id).values(lease_owner="other"))
        session.commit()
    node = _node(app, node_id)
    with Session(app.state.services.engine) as session, pytest.raises(timeline.Stale):
        timeline.transition(
            session, node, Action.INSPECT, Actor.PROVISIONER, "mine?", lease_owner="me"
        )
    with Session(app.state.services.engine) as session:
        timeline.transition(
            session, node, Action.INSPECT, Actor.PROVISIONER, "theirs", lease_owner="other"
        )
        session.commit()
    assert _node(app, node_id).state == "inspecting"


def test_failing_keeps_where_and_why_and_leaving_failed_clears_them(
    app: FastAPI, node_id: uuid.UUID
) -> None:
    with Session(app.state.services.engine) as session:
        timeline.transition(session, _node(app, node_id), Action.INSPECT, "ops", "go")
        session.commit()
    with Session(app.state.services.engine) as session:
        timeline.transition(
            session, _node(app, node_id), Outcome.FAIL, Actor.PROVISIONER, "BMC silent"
        )
        session.commit()
    failed = _node(app, node_id)
    assert (failed.state, failed.failed_from, failed.last_error) == (
        "failed",
        "inspecting",
        "BMC silent",
    )
    with Session(app.state.services.engine) as session:
        timeline.transition(session, failed, Action.RETRY, "ops", "again")
        session.commit()
    retried = _node(app, node_id)
    assert (retried.state, retried.failed_from, retried.last_error) == ("inspecting", None, None)


def test_an_illegal_change_raises_and_writes_nothing(app: FastAPI, node_id: uuid.UUID) -> None:
    count = len(_events(app, node_id))
    with Session(app.state.services.engine) as session, pytest.raises(IllegalAction):
        timeline.transition(session, _node(app, node_id), Outcome.DEPLOYED, "ops", "no")
    assert len(_events(app, node_id)) == count


def test_state_changes_only_through_transition(app: FastAPI, node_id: uuid.UUID) -> None:
    with (
        Session(app.state.services.engine) as session,
        pytest.raises(ValueError, match="transition"),
    ):
        timeline.change(
            session, _node(app, node_id), {"state": "active"}, EventKind.UPDATE, "ops", "cheat"
        )
