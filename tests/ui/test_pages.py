"""The web view's pages, rendered: racks with every node in its slot, counts, filters and
search; a node with its inventory, BMC (never the password), deployment and timeline;
actions for operators only, each confirmed and recorded; discovered machines enrolled
from a form."""

from __future__ import annotations

import re
from datetime import timedelta

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from provisioner import timeline
from provisioner.models import InventoryFact, Node, utcnow
from provisioner.timeline import Actor, EventKind
from tests.conftest import auth, node_body
from tests.ui.signin import csrf_of, sign_in


def enroll(client: TestClient, token: str, **kw: object) -> None:
    response = client.post("/api/v1/nodes", json=node_body(**kw), headers=auth(token))  # type: ignore[arg-type]
    assert response.status_code == 201, response.text


def _slot(html: str, unit: str) -> str:
    """The markup of one row of U slots of the (first) rack: ``U7``, or ``U6-U1``."""
    found = re.search(rf'<li class="slot"><span class="u">{unit}</span>(.*?)</li>', html, re.S)
    assert found, f"no slot {unit}"
    return found.group(1)


def test_racks_show_each_node_in_its_slot_with_state_power_and_role(
    client: TestClient, tokens: dict[str, str]
) -> None:
    enroll(client, tokens["operator"], name="r01-u07", rack="r01", rack_unit=7)
    enroll(client, tokens["operator"], name="loose", mac="52:54:00:00:09:09", rack=None)
    sign_in(client, tokens["viewer"])
    html = client.get("/ui").text
    slot = _slot(html, "U7")
    assert 'data-node="r01-u07"' in slot
    # The state is written out, and the colour (the class) repeats it.
    assert 'class="card state-enrolled"' in slot
    assert '<span class="state" data-field="state">enrolled</span>' in slot
    assert "power unknown" in slot
    assert "no role" in slot
    # A full-height rack, its empty units one row per run.
    assert "empty (35 U)" in _slot(html, "U42-U8")
    assert "empty (6 U)" in _slot(html, "U6-U1")
    unracked = html.split('id="unracked-heading"')[1]
    assert 'data-node="loose"' in unracked
    assert '<strong data-count="enrolled">2</strong>' in html
    assert '<strong data-count="active">0</strong>' in html
    assert 'data-live="/ui/events"' in html


def test_filters_and_search(client: TestClient, app: FastAPI, tokens: dict[str, str]) -> None:
    enroll(client, tokens["operator"], name="a1", mac="52:54:00:00:01:01", rack="r01", rack_unit=1)
    enroll(client, tokens["operator"], name="b2", mac="52:54:00:00:02:02", rack="r02", rack_unit=1)
    with Session(app.state.services.engine) as session:
        node = session.exec(select(Node).where(Node.name == "b2")).one()
        session.add(InventoryFact(node_id=node.id, source="ipmi", facts={"serial": "SN-XY42"}))
        session.commit()
    sign_in(client, tokens["viewer"])

    def shown(**params: str) -> set[str]:
        html = client.get("/ui", params=params).text
        return set(re.findall(r'data-node="([^"]+)"', html))

    assert shown() == {"a1", "b2"}
    assert shown(rack="r02") == {"b2"}
    assert shown(state="enrolled") == {"a1", "b2"}
    assert shown(state="active") == set()
    assert shown(role="compute") == set()
    assert shown(q="A1") == {"a1"}
    assert shown(q="52-54-00-00-02") == {"b2"}
    assert shown(q="xy42") == {"b2"}
    assert shown(q="nothing-like-it") == set()


def _hops(app: FastAPI, name: str) -> None:
    """A boot trace, a few seconds apart, as the boot service writes it."""
    with Session(app.state.services.engine) as session:
        node = session.exec(select(Node).where(Node.name == name)).one()
        start = utcnow()
        rows = [
            timeline.event_row(
                node.id, kind, Actor.NODE, message, time=start + timedelta(seconds=seconds)
            )
            for seconds, kind, message in (
                (0, EventKind.BOOT_TFTP, "TFTP undionly.kpxe"),
                (2.5, EventKind.BOOT_IPXE, "iPXE script"),
                (4, EventKind.BOOT_FILE, "kernel vmlinuz"),
                (9, EventKind.CALLBACK_DONE, "installer done"),
            )
        ]
        timeline.note_many(session, rows)
        session.commit()


def test_the_node_view(client: TestClient, app: FastAPI, tokens: dict[str, str]) -> None:
    enroll(client, tokens["operator"], rack_unit=3, hardware_profile="generic")
    _hops(app, "r01-u01")
    sign_in(client, tokens["viewer"])
    page = client.get("/ui/nodes/r01-u01")
    assert page.status_code == 200
    html = page.text
    assert "s3cret-bmc-pw" not in html
    assert "set (never shown)" in html
    assert "127.0.0.1:" in html
    assert "52:54:00:00:01:01" in html
    for heading in ("Inventory", "BMC", "Network interfaces", "Current deployment", "Timeline"):
        assert f">{heading}</h2>" in html
    rows = re.findall(r'<tr class="hop".*?</tr>', html, re.S)
    assert len(rows) == 4
    assert "+2.5 s" in rows[1]
    assert "+5.0 s" in rows[3]
    assert "callback-done" in rows[3]
    assert 'data-live="/ui/events?node=r01-u01"' in html
    assert "<h3>Hardware profile generic</h3>" in html
    assert "<dt>Boot mode</dt>" in html
    assert client.get("/ui/nodes/nope").status_code == 404


def test_the_node_view_says_how_a_redfish_bmc_certificate_is_trusted(
    client: TestClient, tokens: dict[str, str]
) -> None:
    redfish = {"driver": "redfish", "address": "127.0.0.1", "username": "admin"}
    for name, mac, extra in (
        ("rf-pin", "52:54:00:00:02:01", {}),
        ("rf-off", "52:54:00:00:02:02", {"tls_verify": False}),
    ):
        bmc = {**redfish, "port": 8443 + len(extra), "password": "s3cret-bmc-pw", **extra}
        enroll(client, tokens["operator"], name=name, mac=mac, bmc=bmc)
    sign_in(client, tokens["viewer"])
    pinned = client.get("/ui/nodes/rf-pin").text
    assert "verified against the CA bundle, or pinned on first contact" in pinned
    unverified = client.get("/ui/nodes/rf-off").text
    assert "not verified (<code>tls_verify: false</code> set for this BMC)" in unverified
    assert "s3cret-bmc-pw" not in pinned + unverified


def test_the_last_error_in_plain_words(
    client: TestClient, app: FastAPI, tokens: dict[str, str]
) -> None:
    enroll(client, tokens["operator"])
    with Session(app.state.services.engine) as session:
        node = session.exec(select(Node).where(Node.name == "r01-u01")).one()
        node.last_error = "the installer reported: no disk large enough"
        node.failed_from = "provisioning"
        node.state = "failed"
        session.add(node)
        session.commit()
    sign_in(client, tokens["viewer"])
    html = client.get("/ui/nodes/r01-u01").text
    assert "Last error" in html
    assert "the installer reported: no disk large enough" in html
    assert "It failed while provisioning." in html


def test_a_viewer_sees_no_actions_and_cannot_act(
    client: TestClient, tokens: dict[str, str]
) -> None:
    enroll(client, tokens["operator"])
    sign_in(client, tokens["viewer"])
    html = client.get("/ui/nodes/r01-u01").text
    assert "/actions/" not in html
    assert ">Actions</h2>" not in html
    assert client.get("/ui/nodes/r01-u01/actions/power-on").status_code == 403
    refused = client.post("/ui/nodes/r01-u01/actions/power-on", data={"csrf": csrf_of(html)})
    assert refused.status_code == 403
    events = client.get("/api/v1/nodes/r01-u01/events", headers=auth(tokens["viewer"])).json()
    assert "power-on" not in [e["kind"] for e in events]


def test_an_operator_confirms_an_action_and_it_is_on_the_timeline(
    client: TestClient, tokens: dict[str, str]
) -> None:
    enroll(client, tokens["operator"])
    sign_in(client, tokens["operator"])
    html = client.get("/ui/nodes/r01-u01").text
    for action in ("power-on", "power-off", "power-cycle", "inspect", "maintenance-on"):
        assert f'href="/ui/nodes/r01-u01/actions/{action}"' in html
    confirm = client.get("/ui/nodes/r01-u01/actions/power-off")
    assert "<h1>power-off node r01-u01?</h1>" in confirm.text
    assert "Yes, power-off r01-u01" in confirm.text
    # Without the form's CSRF value nothing happens.
    assert client.post("/ui/nodes/r01-u01/actions/power-off", data={}).status_code == 403
    done = client.post(
        "/ui/nodes/r01-u01/actions/power-off",
        data={"csrf": csrf_of(confirm.text), "reason": "cabling"},
        follow_redirects=False,
    )
    assert done.status_code == 303
    assert done.headers["location"] == "/ui/nodes/r01-u01"
    node = client.get("/api/v1/nodes/r01-u01", headers=auth(tokens["viewer"])).json()
    assert node["target_power"] == "off"
    events = client.get("/api/v1/nodes/r01-u01/events", headers=auth(tokens["viewer"])).json()
    assert (events[-1]["kind"], events[-1]["actor"], events[-1]["message"]) == (
        "power-off",
        "test-operator",
        "cabling",
    )
    assert "cabling" in client.get("/ui/nodes/r01-u01").text


def test_a_refused_action_says_why_on_the_confirmation(
    client: TestClient, tokens: dict[str, str]
) -> None:
    enroll(client, tokens["operator"])
    sign_in(client, tokens["operator"])
    confirm = client.get("/ui/nodes/r01-u01/actions/provision")
    assert '<select id="role" name="role">' in confirm.text
    refused = client.post(
        "/ui/nodes/r01-u01/actions/provision", data={"csrf": csrf_of(confirm.text)}
    )
    assert refused.status_code == 409
    assert "Cannot provision a node that is enrolled; allowed now: inspect" in refused.text


def test_discovered_machines_are_listed_and_enrolled_from_the_form(
    client: TestClient, tokens: dict[str, str]
) -> None:
    assert client.get("/boot/ipxe", params={"mac": "52:54:00:aa:bb:cc"}).status_code == 200
    sign_in(client, tokens["operator"])
    listing = client.get("/ui/discovered").text
    assert "discovered-525400aabbcc" in listing
    assert "52:54:00:aa:bb:cc" in listing
    assert "network boot from unknown MAC" in listing
    form = client.get("/ui/discovered/discovered-525400aabbcc/enroll")
    assert form.status_code == 200
    fields = {
        "csrf": csrf_of(form.text),
        "name": "r09-u04",
        "rack": "r09",
        "rack_unit": "4",
        "bmc_driver": "ipmi",
        "bmc_address": "127.0.0.1",
        "bmc_port": "6999",
        "bmc_username": "admin",
        "bmc_password": "pw-never-shown",
    }
    bad = client.post(
        "/ui/discovered/discovered-525400aabbcc/enroll", data={**fields, "rack_unit": "99"}
    )
    assert bad.status_code == 422
    assert "rack_unit" in bad.text
    assert "pw-never-shown" not in bad.text
    done = client.post(
        "/ui/discovered/discovered-525400aabbcc/enroll", data=fields, follow_redirects=False
    )
    assert done.status_code == 303, done.text
    assert done.headers["location"] == "/ui/nodes/r09-u04"
    node = client.get("/api/v1/nodes/r09-u04", headers=auth(tokens["viewer"])).json()
    assert (node["state"], node["rack"], node["rack_unit"]) == ("enrolled", "r09", 4)
    assert node["nics"][0]["mac"] == "52:54:00:aa:bb:cc"
    assert "discovered-525400aabbcc" not in client.get("/ui/discovered").text


def test_a_viewer_cannot_enroll(client: TestClient, tokens: dict[str, str]) -> None:
    client.get("/boot/ipxe", params={"mac": "52:54:00:aa:bb:cc"})
    sign_in(client, tokens["viewer"])
    listing = client.get("/ui/discovered").text
    assert "/enroll" not in listing
    assert client.get("/ui/discovered/discovered-525400aabbcc/enroll").status_code == 403


def test_static_files_come_from_the_package(client: TestClient) -> None:
    script = client.get("/ui/static/ui.js")
    assert script.status_code == 200
    assert "javascript" in script.headers["content-type"]
    assert client.get("/ui/static/ui.css").status_code == 200
    assert client.get("/ui/static/..%2Fviews.py").status_code == 404
    assert client.get("/ui/static/nope.js").status_code == 404


def test_pages_load_nothing_from_elsewhere(client: TestClient, tokens: dict[str, str]) -> None:
    sign_in(client, tokens["viewer"])
    response = client.get("/ui")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert re.findall(r'(?:src|href)="(https?:)?//', response.text) == []
