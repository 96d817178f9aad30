"""The web view in a real browser: Debian's chromium, driven by selenium through Debian's
chromium-driver (nothing downloaded at run time), against a real `provisioner serve`
and a lab rack of 12 that network-boots from it.

Signing in; the racks view following the rack to ``active`` without a reload; a node's
timeline with its boot hops; a viewer seeing no action; the keyboard reaching every
action; a reimage from the page reaching ``active``; and axe-core (vendored in
tests/ui/vendor/) finding no serious or critical accessibility violation on any page.
A failing test leaves a screenshot and the page's HTML in ``test-artefacts/`` (or
``$PROVISIONER_TEST_ARTEFACTS``); the racks view's screenshot is kept there always.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.lab.conftest import Site, site
from tests.serving import poll

REQUIRE_TOOLS = os.environ.get("PROVISIONER_REQUIRE_TOOLS") == "1"
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
if not (CHROMIUM and DRIVER and importlib.util.find_spec("selenium")):
    why = "needs Debian's chromium and chromium-driver, and selenium"
    if REQUIRE_TOOLS:
        pytest.fail(f"PROVISIONER_REQUIRE_TOOLS=1 but this {why}", pytrace=False)
    pytest.skip(why, allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402

RACK = 12
AXE = Path(__file__).parent / "vendor" / "axe-core" / "axe.min.js"
ARTEFACTS = Path(os.environ.get("PROVISIONER_TEST_ARTEFACTS", "test-artefacts"))
FIRST = "lab-r01-u01"


@pytest.fixture(scope="module")
def rack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    # Installs take a few seconds, so the page is open while the rack comes up.
    with site(
        tmp_path_factory.mktemp("ui-rack"), RACK, "--role", "compute", install_time=3.0
    ) as up:
        yield up


@pytest.fixture(scope="module")
def tokens(rack: Site) -> dict[str, str]:
    made = {}
    for scope in ("viewer", "operator"):
        response = rack.service.api.post(
            "/api/v1/tokens", json={"name": f"ui-{scope}", "scope": scope}
        )
        assert response.status_code == 201, response.text
        made[scope] = response.json()["token"]
    return made


@pytest.fixture
def browser(request: pytest.FixtureRequest) -> Iterator[WebDriver]:
    os.environ["SE_OFFLINE"] = "true"  # selenium must not look for a browser to download
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM or ""
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(DRIVER))
    driver.implicitly_wait(0)
    yield driver
    if getattr(request.node, "call_failed", False):
        keep = ARTEFACTS / request.node.name
        keep.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(keep / "page.png"))
        (keep / "page.html").write_text(driver.page_source)
        print(f"screenshot and page kept in {keep}")
    driver.quit()


def sign_in(driver: WebDriver, url: str, token: str) -> None:
    driver.get(f"{url}/ui/login")
    field = driver.find_element(By.ID, "token")
    field.send_keys(token)
    field.submit()
    poll(lambda: driver.current_url == f"{url}/ui", 20, lambda: driver.current_url)


def states(driver: WebDriver) -> dict[str, str]:
    found: dict[str, str] = driver.execute_script(
        "const s = {}; document.querySelectorAll('.racks [data-node]').forEach("
        "c => { s[c.dataset.node] = c.querySelector('[data-field=state]').textContent; });"
        "return s;"
    )
    return found


def axe_violations(driver: WebDriver) -> list[dict[str, Any]]:
    """axe-core's serious and critical findings on the page shown."""
    driver.set_script_timeout(60)
    driver.execute_script(AXE.read_text())
    result: dict[str, Any] = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "axe.run(document).then(r => done(r), e => done({error: String(e)}));"
    )
    assert "error" not in result, result
    return [
        {"id": v["id"], "impact": v["impact"], "nodes": [n["html"] for n in v["nodes"]][:3]}
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]


def test_sign_in_and_watch_the_rack_come_up(
    browser: WebDriver, rack: Site, tokens: dict[str, str]
) -> None:
    url = rack.service.url
    sign_in(browser, url, tokens["viewer"])
    assert tokens["viewer"] not in browser.page_source
    assert tokens["viewer"] not in browser.current_url
    # HttpOnly: the page's scripts cannot read the session.
    assert "provisioner_session" not in browser.execute_script("return document.cookie")
    rack.import_manifest()
    browser.get(f"{url}/ui")
    first = states(browser)
    assert len(first) == RACK
    browser.execute_script("window.stillTheSamePage = true;")
    poll(
        lambda: set(states(browser).values()) == {"active"},
        180,
        lambda: f"first {first}, now {states(browser)}\n{rack.explain(rack.names)}",
    )
    assert set(first.values()) != {"active"}, "the rack was up before the page loaded"
    assert browser.execute_script("return window.stillTheSamePage") is True
    assert browser.find_element(By.CSS_SELECTOR, '[data-count="active"]').text == str(RACK)
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTEFACTS / "ui-racks.png"))


def test_a_nodes_timeline_shows_its_boot_hops(
    browser: WebDriver, rack: Site, tokens: dict[str, str]
) -> None:
    rack.wait_for(rack.names, "active", 180)
    sign_in(browser, rack.service.url, tokens["viewer"])
    browser.get(f"{rack.service.url}/ui/nodes/{FIRST}")
    hops = browser.find_elements(By.CSS_SELECTOR, "table.timeline tr.hop")
    kinds = {row.find_elements(By.TAG_NAME, "td")[2].text.removesuffix(" hop") for row in hops}
    assert {"boot-tftp", "boot-ipxe", "callback-done"} <= kinds, kinds
    assert any(row.find_elements(By.TAG_NAME, "td")[1].text.startswith("+") for row in hops)


def test_a_viewer_sees_no_actions(browser: WebDriver, rack: Site, tokens: dict[str, str]) -> None:
    sign_in(browser, rack.service.url, tokens["viewer"])
    browser.get(f"{rack.service.url}/ui/nodes/{FIRST}")
    assert browser.find_elements(By.CSS_SELECTOR, "a[href*='/actions/']") == []
    assert browser.find_elements(By.ID, "actions-heading") == []


def test_the_keyboard_reaches_every_action(
    browser: WebDriver, rack: Site, tokens: dict[str, str]
) -> None:
    sign_in(browser, rack.service.url, tokens["operator"])
    browser.get(f"{rack.service.url}/ui/nodes/{FIRST}")
    actions = {
        a.get_attribute("href")
        for a in browser.find_elements(By.CSS_SELECTOR, "a[href*='/actions/']")
    }
    assert len(actions) >= 5
    reached = set()
    for _ in range(60):
        ActionChains(browser).send_keys(Keys.TAB).perform()
        reached.add(browser.switch_to.active_element.get_attribute("href"))
    assert actions <= reached, actions - reached


def test_a_reimage_from_the_page_reaches_active(
    browser: WebDriver, rack: Site, tokens: dict[str, str]
) -> None:
    rack.wait_for(rack.names, "active", 180)
    url = rack.service.url
    sign_in(browser, url, tokens["operator"])
    browser.get(f"{url}/ui/nodes/{FIRST}")
    browser.find_element(By.CSS_SELECTOR, f"a[href='/ui/nodes/{FIRST}/actions/reimage']").click()
    assert FIRST in browser.find_element(By.TAG_NAME, "h1").text
    # The confirmation's own button, not the header's sign-out.
    browser.find_element(By.CSS_SELECTOR, "form[action$='/actions/reimage'] button").click()
    poll(lambda: browser.current_url == f"{url}/ui/nodes/{FIRST}", 20, lambda: browser.current_url)

    def shown() -> str:
        head = browser.find_element(By.CSS_SELECTOR, ".node-head")
        return head.get_attribute("data-state") or ""

    poll(lambda: shown() == "active", 180, lambda: f"{shown()}\n{rack.explain([FIRST])}")
    kinds = [e["kind"] for e in rack.events(FIRST)]
    assert "handed-off" in kinds[kinds.index("reimage") :], kinds
    assert "reimage" in browser.find_element(By.CSS_SELECTOR, "table.timeline").text


def test_no_serious_accessibility_violations(
    browser: WebDriver, rack: Site, tokens: dict[str, str]
) -> None:
    url = rack.service.url
    browser.get(f"{url}/ui/login")
    found = {"login": axe_violations(browser)}
    sign_in(browser, url, tokens["operator"])
    for name, path in (
        ("racks", "/ui"),
        ("node", f"/ui/nodes/{FIRST}"),
        ("confirm", f"/ui/nodes/{FIRST}/actions/power-cycle"),
        ("discovered", "/ui/discovered"),
    ):
        browser.get(url + path)
        found[name] = axe_violations(browser)
    assert not any(found.values()), found
