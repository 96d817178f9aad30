"""The agent build as several replicas see it: found in PROVISIONER_AGENT_DIR, its files
served under its key (``/boot/agent/{key}/{name}``) as the boot script names them, a
build this replica lacks refused with what to do, and /readyz saying which build a
replica serves. With stand-in builds (tests/agent/fake_build.py): no Debian packages."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from provisioner.agent import build
from provisioner.app import create_app
from provisioner.settings import Settings
from tests import flows
from tests.agent.fake_build import fake_build
from tests.flows import services

KEY_A, KEY_B = "a" * 16, "b" * 16
_FILES = re.compile(r"^(?:kernel|initrd) --name \w+ (\S+)", re.M)


def _replica(stack: ExitStack, tmp_path: Path, name: str, database_url: str) -> TestClient:
    """A replica: its own data directory, the database and the environment shared."""
    settings = Settings(data_dir=tmp_path / name, database_url=database_url, reconciler=False)
    return stack.enter_context(TestClient(create_app(settings)))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'shared.db'}"


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as replicas:
        yield replicas


def _agent_files(client: TestClient, mac: str) -> list[str]:
    """The kernel and initramfs URLs of the iPXE script an unknown machine gets (the
    agent discovers it), as paths."""
    with flows.machine(client, "10.20.0.9") as own:
        script = own.get("/boot/ipxe", params={"mac": mac}).text
    urls = _FILES.findall(script)
    assert len(urls) == 2, script
    return [url.removeprefix("http://testserver") for url in urls]


def test_the_files_are_served_by_the_key_the_script_names(
    stack: ExitStack, tmp_path: Path, sqlite_url: str
) -> None:
    agent = fake_build(tmp_path / "one" / "agent", KEY_A)
    client = _replica(stack, tmp_path, "one", sqlite_url)
    kernel, initrd = _agent_files(client, "52:54:00:00:aa:01")
    assert kernel.startswith(f"/boot/agent/{KEY_A}/vmlinuz?token=")
    assert initrd.startswith(f"/boot/agent/{KEY_A}/initrd.img?token=")
    assert client.get(kernel).content == agent.kernel.read_bytes()
    assert client.get(initrd).content == agent.initrd.read_bytes()
    # The file route's ways are kept: HEAD, ranges.
    head = client.head(f"/boot/agent/{KEY_A}/vmlinuz")
    assert (head.status_code, head.content) == (200, b"")
    assert head.headers["content-length"] == str(agent.kernel.stat().st_size)
    part = client.get(f"/boot/agent/{KEY_A}/initrd.img", headers={"Range": "bytes=10-19"})
    assert part.status_code == 206
    assert part.content == agent.initrd.read_bytes()[10:20]
    past = client.get(f"/boot/agent/{KEY_A}/vmlinuz", headers={"Range": "bytes=99999999-"})
    assert past.status_code == 416
    # The fetch is on the discovered node's timeline, naming the build.
    for path in (f"agent/{KEY_A}/vmlinuz", f"agent/{KEY_A}/initrd.img"):
        assert any(path in line for line in _hops(client)), path


def _hops(client: TestClient) -> list[str]:
    """Every timeline message in the database, whichever node it is of, once the boot
    trace's batch is written."""
    client.portal.call(services(client.app).boot.hops.flush)  # type: ignore[union-attr]
    with services(client.app).engine.connect() as connection:
        return list(connection.execute(text("SELECT message FROM event")).scalars())


def test_an_earlier_build_is_served_after_a_rebuild(
    stack: ExitStack, tmp_path: Path, sqlite_url: str
) -> None:
    """A machine told to boot build A before B was built still gets A's initramfs."""
    agent_dir = tmp_path / "one" / "agent"
    earlier = fake_build(agent_dir, KEY_A)
    fake_build(agent_dir, KEY_B)
    client = _replica(stack, tmp_path, "one", sqlite_url)
    assert client.get("/readyz").json()["agent"] == KEY_B
    got = client.get(f"/boot/agent/{KEY_A}/initrd.img")
    assert (got.status_code, got.content) == (200, earlier.initrd.read_bytes())


@pytest.mark.parametrize(
    ("key", "name", "says"),
    [
        (KEY_B, "vmlinuz", f"This replica has no agent build '{KEY_B}' in "),
        ("...", "vmlinuz", "This replica has no agent build '...' in "),
        ("A" * 16, "vmlinuz", f"This replica has no agent build '{'A' * 16}' in "),
        ("f" * 1000, "vmlinuz", f"This replica has no agent build '{'f' * 40}...' in "),
        ("current", "vmlinuz", "This replica has no agent build 'current' in "),
        (KEY_A, "build.json", "No agent file 'build.json': a build has vmlinuz and initrd.img."),
    ],
)
def test_what_a_replica_does_not_have_is_refused(
    stack: ExitStack, tmp_path: Path, sqlite_url: str, key: str, name: str, says: str
) -> None:
    agent_dir = tmp_path / "one" / "agent"
    fake_build(agent_dir, KEY_A)
    client = _replica(stack, tmp_path, "one", sqlite_url)
    refused = client.get(f"/boot/agent/{key}/{name}")
    assert refused.status_code == 404
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["detail"].startswith(says), refused.json()["detail"]
    if name == "vmlinuz":
        assert f"(it serves build {KEY_A})" in refused.json()["detail"]
        assert "PROVISIONER_AGENT_DIR" in refused.json()["detail"]


def test_readyz_names_the_build_a_replica_serves(
    stack: ExitStack, tmp_path: Path, sqlite_url: str
) -> None:
    none = _replica(stack, tmp_path, "none", sqlite_url)
    assert none.get("/readyz").json()["agent"] is None
    fake_build(tmp_path / "built" / "agent", KEY_A)
    built = _replica(stack, tmp_path, "built", sqlite_url)
    assert built.get("/readyz").json()["agent"] == KEY_A


def test_replicas_with_builds_of_their_own_refuse_each_others_files(
    stack: ExitStack, tmp_path: Path, sqlite_url: str
) -> None:
    """The defect the key in the URL turns from a kernel that cannot load its modules
    into a clear refusal: two replicas built on different days."""
    fake_build(tmp_path / "one" / "agent", KEY_A)
    fake_build(tmp_path / "two" / "agent", KEY_B)
    one = _replica(stack, tmp_path, "one", sqlite_url)
    two = _replica(stack, tmp_path, "two", sqlite_url)
    assert [r.get("/readyz").json()["agent"] for r in (one, two)] == [KEY_A, KEY_B]
    kernel, _ = _agent_files(one, "52:54:00:00:aa:02")
    refused = two.get(kernel)
    assert refused.status_code == 404
    detail = refused.json()["detail"]
    assert f"no agent build '{KEY_A}'" in detail
    assert f"(it serves build {KEY_B})" in detail
    assert "PROVISIONER_AGENT_DIR" in detail
    # A replica without a build says so.
    none = _replica(stack, tmp_path, "none", sqlite_url)
    assert "(it has no agent build)" in none.get(kernel).json()["detail"]


def test_replicas_sharing_an_agent_directory_serve_one_build(
    stack: ExitStack, tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PROVISIONER_AGENT_DIR shared: whichever replica renders the script and whichever
    serves each file, the machine gets one build's kernel and initramfs."""
    shared = tmp_path / "shared-agent"
    agent = fake_build(shared, KEY_A)
    monkeypatch.setenv("PROVISIONER_AGENT_DIR", str(shared))
    one = _replica(stack, tmp_path, "one", sqlite_url)
    two = _replica(stack, tmp_path, "two", sqlite_url)
    assert not (tmp_path / "one" / "agent").exists()
    assert [r.get("/readyz").json()["agent"] for r in (one, two)] == [KEY_A, KEY_A]
    kernel, initrd = _agent_files(one, "52:54:00:00:aa:03")
    assert two.get(kernel).content == agent.kernel.read_bytes()
    assert two.get(initrd).content == agent.initrd.read_bytes()
    # The other way round, and both decide the same: the agent discovers.
    kernel, initrd = _agent_files(two, "52:54:00:00:aa:04")
    assert one.get(initrd).content == agent.initrd.read_bytes()
    assert build.current(shared) == agent
