"""Signing in to the web view from a test, as a browser does: the form, its CSRF value,
the session cookie."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(html: str) -> str:
    found = _CSRF.search(html)
    assert found, "the page has no form with a CSRF value"
    return found.group(1)


def sign_in(client: TestClient, token: str) -> None:
    form = client.get("/ui/login")
    assert form.status_code == 200
    response = client.post(
        "/ui/login",
        data={"token": token, "csrf": csrf_of(form.text)},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/ui"
