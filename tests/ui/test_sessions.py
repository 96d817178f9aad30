"""Signing in to /ui: a token pasted once becomes a session cookie (HttpOnly, SameSite
Strict, Secure over TLS, expiring), never a URL or a page; CSRF on every form; sign-out;
a revoked token ends its sessions."""

from __future__ import annotations

import json
import re
import time

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import Session

from provisioner import tokens as token_store
from provisioner.secrets import hash_token
from provisioner.tokens import create_token
from provisioner.ui import sessions
from tests.ui.signin import csrf_of, sign_in


def test_pages_need_a_session(client: TestClient) -> None:
    for path in ("/ui", "/ui/nodes/x", "/ui/discovered", "/ui/nodes/x/actions/power-on"):
        response = client.get(path, follow_redirects=False)
        assert response.status_code == 303, path
        assert response.headers["location"] == "/ui/login"
    assert client.get("/ui/events").status_code == 401


def test_sign_in_sets_a_strict_http_only_expiring_cookie(
    client: TestClient, tokens: dict[str, str]
) -> None:
    form = client.get("/ui/login")
    response = client.post(
        "/ui/login",
        data={"token": tokens["viewer"], "csrf": csrf_of(form.text)},
        follow_redirects=False,
    )
    assert response.status_code == 303
    cookie = next(
        c for c in response.headers.get_list("set-cookie") if c.startswith(sessions.COOKIE)
    )
    attributes = cookie.lower()
    assert "httponly" in attributes
    assert "samesite=strict" in attributes
    assert "path=/ui" in attributes
    assert "secure" not in attributes  # plain HTTP here: a Secure cookie would be lost
    max_age = int(re.search(r"max-age=(\d+)", attributes).group(1))  # type: ignore[union-attr]
    assert 0 < max_age <= sessions.LIFETIME
    # The token is nowhere: not in the cookie, the address or the page.
    assert tokens["viewer"] not in cookie
    racks = client.get("/ui")
    assert racks.status_code == 200
    assert tokens["viewer"] not in racks.text
    assert "test-viewer" in racks.text
    assert str(racks.url) == "http://testserver/ui"


def test_the_cookie_is_secure_over_tls(app: FastAPI, tokens: dict[str, str]) -> None:
    with TestClient(app, base_url="https://testserver") as client:
        form = client.get("/ui/login")
        assert "secure" in form.headers["set-cookie"].lower()
        response = client.post(
            "/ui/login",
            data={"token": tokens["viewer"], "csrf": csrf_of(form.text)},
            follow_redirects=False,
        )
        assert response.status_code == 303
        assert "; secure" in response.headers["set-cookie"].lower()


def test_a_wrong_token_or_a_missing_csrf_value_signs_nobody_in(
    client: TestClient, tokens: dict[str, str]
) -> None:
    form = client.get("/ui/login")
    wrong = client.post("/ui/login", data={"token": "prov_nope", "csrf": csrf_of(form.text)})
    assert wrong.status_code == 401
    assert "unknown" in wrong.text
    no_csrf = client.post("/ui/login", data={"token": tokens["viewer"]})
    assert no_csrf.status_code == 403
    assert tokens["viewer"] not in no_csrf.text
    assert client.get("/ui", follow_redirects=False).status_code == 303


def test_a_forged_or_expired_cookie_is_refused(
    client: TestClient, app: FastAPI, tokens: dict[str, str]
) -> None:
    client.cookies.set(sessions.COOKIE, "not-a-sealed-session", path="/ui")
    assert client.get("/ui", follow_redirects=False).status_code == 303
    vault = app.state.services.vault
    payload = {"h": hash_token(tokens["admin"]), "exp": int(time.time()) - 1, "csrf": "x"}
    expired = json.dumps(payload)
    client.cookies.set(sessions.COOKIE, vault.encrypt("ui session " + expired), path="/ui")
    assert client.get("/ui", follow_redirects=False).status_code == 303


def test_sign_out_needs_the_csrf_value_and_ends_the_session(
    client: TestClient, tokens: dict[str, str]
) -> None:
    sign_in(client, tokens["viewer"])
    page = client.get("/ui")
    refused = client.post("/ui/logout", data={"csrf": "wrong"})
    assert refused.status_code == 403
    assert client.get("/ui", follow_redirects=False).status_code == 200
    out = client.post("/ui/logout", data={"csrf": csrf_of(page.text)}, follow_redirects=False)
    assert out.status_code == 303
    assert client.get("/ui", follow_redirects=False).status_code == 303


def test_revoking_the_token_ends_its_sessions(
    client: TestClient, app: FastAPI, tokens: dict[str, str]
) -> None:
    with Session(app.state.services.engine) as session:
        row, token = create_token(session, name="short-lived", scope="viewer")
    sign_in(client, token)
    assert client.get("/ui", follow_redirects=False).status_code == 200
    with Session(app.state.services.engine) as session:
        token_store.revoke(session, app.state.services.token_cache, row.id)
    assert client.get("/ui", follow_redirects=False).status_code == 303
