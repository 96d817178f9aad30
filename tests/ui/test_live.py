"""The web view's live updates against a real uvicorn server: a signed-in page's event
stream (/ui/events, by session cookie: EventSource sends no token) carries an action
taken from another page, with the node's new state, power and place."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import httpx
import pytest
from sqlmodel import Session

from provisioner.app import create_app
from provisioner.settings import Settings
from provisioner.tokens import create_token
from tests.conftest import auth, node_body
from tests.serving import InThread

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@pytest.fixture
def server(settings: Settings) -> Iterator[tuple[InThread, dict[str, str]]]:
    app = create_app(settings)
    served = InThread(app)
    with Session(app.state.services.engine) as session:
        made = {s: create_token(session, name=f"t-{s}", scope=s)[1] for s in ("viewer", "operator")}
    yield served, made
    served.stop()


def _signed_in(url: str, token: str) -> httpx.Client:
    browser = httpx.Client(base_url=url, timeout=20)
    form = browser.get("/ui/login")
    csrf = _CSRF.search(form.text).group(1)  # type: ignore[union-attr]
    assert browser.post("/ui/login", data={"token": token, "csrf": csrf}).status_code == 303
    return browser


def _after_action(
    api: httpx.Client, page: httpx.Client, operator: dict[str, str]
) -> dict[str, object]:
    """The stream's maintenance-on event, after the API is asked for one."""
    with page.stream("GET", "/ui/events") as stream:
        assert stream.status_code == 200
        response = api.post("/api/v1/nodes/r01-u01/actions/maintenance-on", headers=operator)
        assert response.status_code == 202
        for line in stream.iter_lines():
            if line.startswith("data: "):
                event: dict[str, object] = json.loads(line[6:])
                if event["kind"] == "maintenance-on":
                    return event
    raise AssertionError("the stream ended before the event")


def test_a_page_sees_an_action_taken_elsewhere(server: tuple[InThread, dict[str, str]]) -> None:
    served, tokens = server
    operator = auth(tokens["operator"])
    with httpx.Client(base_url=served.url, timeout=20) as api:
        body = node_body(rack="r07", rack_unit=12)
        assert api.post("/api/v1/nodes", json=body, headers=operator).status_code == 201
        page = _signed_in(served.url, tokens["viewer"])
        try:
            event = _after_action(api, page, operator)
        finally:
            page.close()
    assert (event["node"], event["rack"], event["rack_unit"]) == ("r01-u01", "r07", 12)
    assert (event["state"], event["maintenance"]) == ("enrolled", True)


def test_the_stream_needs_a_session(server: tuple[InThread, dict[str, str]]) -> None:
    served, tokens = server
    with httpx.Client(base_url=served.url, timeout=20) as anonymous:
        assert anonymous.get("/ui/events").status_code == 401
        # An API token in a header is not a session: the page's stream takes cookies only.
        assert anonymous.get("/ui/events", headers=auth(tokens["viewer"])).status_code == 401
