"""/api/v1/profiles: the hardware profiles loaded at start."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient
from sqlmodel import Session

from provisioner.app import create_app
from provisioner.profiles import shipped_profiles_dir
from provisioner.settings import Settings
from provisioner.tokens import create_token
from tests.conftest import auth

SHIPPED_ORDER = [
    "lab-qemu",  # 210
    "lab-virtual-server",  # 200
    "dell-poweredge",  # 100, then by name
    "hpe-proliant",
    "lenovo-thinksystem",
    "supermicro",
    "generic",  # 0
]


def test_viewers_list_the_shipped_profiles(client: TestClient, viewer: dict[str, str]) -> None:
    response = client.get("/api/v1/profiles", headers=viewer)
    assert response.status_code == 200, response.text
    body = response.json()
    assert [p["name"] for p in body["items"]] == SHIPPED_ORDER
    assert body["errors"] is None  # load errors are for operators and admins
    dell = body["items"][SHIPPED_ORDER.index("dell-poweredge")]
    assert dell["match"] == {"vendor": ["^Dell\\b"], "product": ["^PowerEdge\\b"]}
    assert dell["boot_mode"] == "uefi"
    assert dell["console"] == {"port": "ttyS1", "speed": 115200}
    assert dell["root_disk"]["hint"] == "smallest"
    assert set(dell) == {
        "name",
        "description",
        "priority",
        "match",
        "boot_mode",
        "console",
        "root_disk",
        "kernel_args",
        "notes",
    }
    assert body["items"][-1]["match"] == {"vendor": [], "product": []}


def test_show_one_profile(client: TestClient, viewer: dict[str, str]) -> None:
    response = client.get("/api/v1/profiles/lab-virtual-server", headers=viewer)
    assert response.status_code == 200, response.text
    assert response.json()["match"]["product"] == ["^Virtual Server VS-1$"]
    missing = client.get("/api/v1/profiles/cray-xc40", headers=viewer)
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    assert "generic" in missing.json()["detail"]


def test_profiles_need_a_token(client: TestClient) -> None:
    for path in ("/api/v1/profiles", "/api/v1/profiles/generic"):
        response = client.get(path)
        assert response.status_code == 401
        assert response.headers["content-type"] == "application/problem+json"


def test_operators_see_why_a_profile_was_skipped(settings: Settings, tmp_path: Path) -> None:
    profiles_dir = tmp_path / "profiles"
    profiles_dir.mkdir()
    (profiles_dir / "generic.yaml").write_bytes(
        (shipped_profiles_dir() / "generic.yaml").read_bytes()
    )
    (profiles_dir / "acme.yaml").write_text("name: acme\nboot_mode: floppy\n", encoding="utf-8")
    app = create_app(settings.model_copy(update={"profiles_dir": profiles_dir}))
    with TestClient(app) as client, Session(app.state.services.engine) as session:
        _, operator = create_token(session, name="ops", scope="operator")
        _, viewer = create_token(session, name="view", scope="viewer")
        listed = client.get("/api/v1/profiles", headers=auth(operator)).json()
        assert [p["name"] for p in listed["items"]] == ["generic"]
        fields = {(e["file"], e["field"]) for e in listed["errors"]}
        assert ("acme.yaml", "boot_mode") in fields
        assert ("acme.yaml", "console") in fields
        assert client.get("/api/v1/profiles", headers=auth(viewer)).json()["errors"] is None
