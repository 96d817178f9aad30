"""The ``provisioner`` command line against a real HTTP server (uvicorn in a thread), the
way operators and scripts use it: exit codes, one-line errors, and no secrets printed."""

from __future__ import annotations

import inspect
import itertools
import json
import os
import pty
import re
import select
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import httpx
import pytest
import typer
import uvicorn
from alembic.script import ScriptDirectory
from typer.testing import CliRunner, Result

from provisioner.app import create_app
from provisioner.cli import app
from provisioner.cli.server import masked_url
from provisioner.db import migrations_dir
from provisioner.settings import Settings

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "scripts" / "demo"
BMC_PASSWORD = "Bmc-pw-9f3kQ2"
TOKEN_RE = re.compile(r"^prov_[A-Za-z0-9_-]{20,}\n$")

runner = CliRunner()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Service:
    url: str
    data_dir: Path


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    data_dir = tmp_path_factory.mktemp("cli-service")
    port = _free_port()
    config = uvicorn.Config(
        create_app(Settings(data_dir=data_dir, reconciler=False)),
        host="127.0.0.1",
        port=port,
        log_level="warning",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        assert thread.is_alive(), "the server thread died while starting"
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the server did not become ready in 30 s"
        time.sleep(0.05)
    yield Service(url, data_dir)
    server.should_exit = True
    thread.join(timeout=10)


@dataclass
class Cli:
    """Runs CLI commands with a clean environment, and checks every run for leaks."""

    service: Service
    config_home: Path
    secrets: set[str] = field(default_factory=lambda: {BMC_PASSWORD})

    def env(self, token: str | None, url: str | None) -> dict[str, str | None]:
        return {
            "PROVISIONER_URL": url or self.service.url,
            "PROVISIONER_TOKEN": token,
            "PROVISIONER_DATA_DIR": str(self.service.data_dir),
            "PROVISIONER_DATABASE_URL": None,
            "PROVISIONER_BMC_PASSWORD": None,
            "XDG_CONFIG_HOME": str(self.config_home),
        }

    def __call__(
        self,
        *args: str,
        token: str | None = None,
        url: str | None = None,
        stdin: str | None = None,
        env: dict[str, str | None] | None = None,
    ) -> Result:
        result = runner.invoke(
            app, list(args), env={**self.env(token, url), **(env or {})}, input=stdin
        )
        self._check(result, result.stdout + result.stderr)
        return result

    def token(self, scope: str, name: str | None = None) -> str:
        """A token created offline, the way an operator bootstraps the service."""
        args = ["token", "create", "--scope", scope] + (["--name", name] if name else [])
        result = runner.invoke(app, args, env=self.env(None, None))
        self._check(result, result.stderr)
        assert result.exit_code == 0, result.stderr
        assert TOKEN_RE.match(result.stdout), "stdout must hold the token and nothing else"
        token = result.stdout.strip()
        self.secrets.add(token)
        return token

    def _check(self, result: Result, printed: str) -> None:
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        assert "Traceback" not in printed
        for secret in self.secrets:
            assert secret not in printed, "a token or BMC password was printed"


@pytest.fixture
def cli(service: Service, tmp_path: Path) -> Cli:
    return Cli(service, tmp_path / "config")


@pytest.fixture
def operator_token(cli: Cli) -> str:
    return cli.token("operator")


@pytest.fixture
def admin_token(cli: Cli) -> str:
    return cli.token("admin")


def fails(result: Result, *phrases: str) -> str:
    """The command failed with exactly one line of reason on stderr; return it."""
    assert result.exit_code == 1, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for phrase in phrases:
        assert phrase in lines[0]
    return lines[0]


# One BMC address and port is one machine: every node enrolled here gets a port of its own.
_bmc_ports = itertools.count(20_001)


def enroll(cli: Cli, token: str, name: str, mac: str, *extra: str) -> Result:
    return cli(
        "node", "enroll", name, "--bmc-address", "10.0.0.1", "--bmc-username", "admin",
        "--bmc-port", str(next(_bmc_ports)), "--mac", mac, *extra,
        token=token,
        env={"PROVISIONER_BMC_PASSWORD": BMC_PASSWORD},
    )  # fmt: skip


def test_offline_token_create_prints_only_the_token_which_then_works(cli: Cli) -> None:
    result = runner.invoke(app, ["token", "create", "--scope", "viewer"], env=cli.env(None, None))
    assert result.exit_code == 0, result.stderr
    assert TOKEN_RE.match(result.stdout)
    assert "bootstrap-viewer" in result.stderr
    assert result.stdout.strip() not in result.stderr
    listed = cli("node", "list", "--json", token=result.stdout.strip())
    assert listed.exit_code == 0, listed.stderr
    assert "items" in json.loads(listed.stdout)


def test_token_create_rejects_a_bad_name(cli: Cli) -> None:
    fails(cli("token", "create", "--scope", "viewer", "--name", "no spaces"), "invalid token")


def test_node_enroll_list_show_action_events_delete(cli: Cli, operator_token: str) -> None:
    result = enroll(cli, operator_token, "cli-n1", "52:54:00:aa:00:01", "--rack", "r9", "--u", "4")
    assert result.exit_code == 0, result.stderr
    assert "cli-n1" in result.stdout

    table = cli("node", "list", "--rack", "r9", token=operator_token)
    assert table.exit_code == 0, table.stderr
    header, row = table.stdout.splitlines()[0], table.stdout.splitlines()[2]
    assert header.split() == ["NAME", "STATE", "POWER", "RACK", "U", "ROLE", "MAINT", "PXE", "MAC"]
    assert row.split() == [
        "cli-n1",
        "enrolled",
        "unknown",
        "r9",
        "4",
        "-",
        "-",
        "52:54:00:aa:00:01",
    ]

    page = json.loads(cli("node", "list", "--rack", "r9", "--json", token=operator_token).stdout)
    assert [n["name"] for n in page["items"]] == ["cli-n1"]
    assert page["next_cursor"] is None

    shown = cli("node", "show", "cli-n1", token=operator_token)
    assert shown.exit_code == 0
    assert re.search(r"ipmi://admin@10\.0\.0\.1:\d+ ", shown.stdout)
    assert "inspect" in shown.stdout
    node = json.loads(cli("node", "show", "cli-n1", "--json", token=operator_token).stdout)
    assert "password" not in node["bmc"]

    acted = cli("node", "action", "cli-n1", "inspect", "--reason", "cli test", token=operator_token)
    assert acted.exit_code == 0, acted.stderr
    # What happened and the node's row, in this order, in one stream: `> log` keeps both.
    accepted, acted_row = acted.stdout.split("\n", 1)
    assert accepted == "inspect accepted for cli-n1: now inspecting"
    assert acted_row.splitlines()[2].split()[:2] == ["cli-n1", "inspecting"]
    assert acted.stderr == ""

    events = json.loads(cli("node", "events", "cli-n1", "--json", token=operator_token).stdout)
    assert [e["kind"] for e in events] == ["enroll", "inspect"]
    assert events[-1]["message"] == "cli test"
    assert "cli test" in cli("node", "events", "cli-n1", token=operator_token).stdout

    # An inspecting node is only deleted on purpose: maintenance first.
    assert cli("node", "action", "cli-n1", "maintenance-on", token=operator_token).exit_code == 0
    deleted = cli("node", "delete", "cli-n1", "--yes", token=operator_token)
    assert deleted.exit_code == 0, deleted.stderr
    fails(cli("node", "show", "cli-n1", token=operator_token), "not found")


def test_delete_asks_first(cli: Cli, operator_token: str) -> None:
    assert enroll(cli, operator_token, "cli-keep", "52:54:00:aa:00:02").exit_code == 0
    refused = cli("node", "delete", "cli-keep", token=operator_token, stdin="n\n")
    assert refused.exit_code == 1
    assert cli("node", "show", "cli-keep", token=operator_token).exit_code == 0


def test_bmc_password_from_stdin(cli: Cli, operator_token: str) -> None:
    result = cli(
        "node", "enroll", "cli-pw-stdin", "--bmc-address", "bmc.example.net",
        "--bmc-username", "root", "--bmc-port", "20000", "--bmc-password-stdin",
        token=operator_token,
        stdin=BMC_PASSWORD + "\n",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert cli("node", "show", "cli-pw-stdin", token=operator_token).exit_code == 0


def _enroll_command(cli: Cli, token: str, name: str, port: int) -> tuple[list[str], dict[str, str]]:
    """The installed command and its environment, for the runs that need a real stdin."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONER_")}
    env |= {k: v for k, v in cli.env(token, None).items() if v is not None}
    command = [
        str(Path(sys.executable).parent / "provisioner"), "node", "enroll", name,
        "--bmc-address", "bmc.example.net", "--bmc-username", "root", "--bmc-port", str(port),
    ]  # fmt: skip
    return command, env


def test_bmc_password_prompt_on_a_terminal(cli: Cli, operator_token: str) -> None:
    command, env = _enroll_command(cli, operator_token, "cli-pw-prompt", 20100)
    controller, terminal = pty.openpty()
    # A session of its own has no controlling terminal: getpass asks on stdin, the pty.
    enrolling = subprocess.Popen(
        command, stdin=terminal, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=env, start_new_session=True,
    )  # fmt: skip
    os.close(terminal)
    try:
        assert enrolling.stderr is not None
        asked = b""
        # getpass flushes pending input when it turns echo off, then writes its prompt.
        while not asked.endswith(b"BMC password: "):
            ready, _, _ = select.select([enrolling.stderr], [], [], 30)
            assert ready, f"no prompt in 30 s: {asked!r}"
            chunk = os.read(enrolling.stderr.fileno(), 100)
            assert chunk, f"the command ended before asking: {asked!r}"
            asked += chunk
        os.write(controller, BMC_PASSWORD.encode() + b"\n")
        stdout, stderr = enrolling.communicate(timeout=30)
    finally:
        enrolling.kill()
        os.close(controller)
    assert enrolling.returncode == 0, stderr
    assert b"enrolled cli-pw-prompt" in stdout
    assert BMC_PASSWORD.encode() not in stdout + stderr
    assert b"Warning" not in stderr


def test_no_terminal_and_no_password_says_to_use_stdin(cli: Cli, operator_token: str) -> None:
    command, env = _enroll_command(cli, operator_token, "cli-pw-none", 20200)
    result = subprocess.run(
        command, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 1
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: no BMC password: stdin is not a terminal"), line
    assert "--bmc-password-stdin" in line
    assert "PROVISIONER_BMC_PASSWORD" in line
    assert "Warning" not in result.stderr


def test_list_follows_cursors_with_all(cli: Cli, operator_token: str) -> None:
    for i in range(3):
        assert (
            enroll(
                cli, operator_token, f"cli-pg{i}", f"52:54:00:bb:00:0{i}", "--rack", "pg"
            ).exit_code
            == 0
        )
    first = cli("node", "list", "--rack", "pg", "--limit", "2", token=operator_token)
    assert first.exit_code == 0
    assert "cli-pg1" in first.stdout
    assert "cli-pg2" not in first.stdout
    assert first.stdout.splitlines()[-1] == "showing the first 2 nodes; pass --all for the rest"
    everything = json.loads(
        cli(
            "node", "list", "--rack", "pg", "--limit", "2", "--all", "--json", token=operator_token
        ).stdout
    )
    assert [n["name"] for n in everything["items"]] == ["cli-pg0", "cli-pg1", "cli-pg2"]
    assert everything["next_cursor"] is None


def test_rack_import(cli: Cli, operator_token: str, tmp_path: Path) -> None:
    manifest = tmp_path / "rack-c1.yaml"
    manifest.write_text(
        f"""
defaults:
  rack: c1
  bmc_username: admin
  bmc_password: "{BMC_PASSWORD}"
nodes:
  - {{name: c1-n1, u: 1, bmc_address: 10.3.0.1, macs: ["52:54:00:cc:00:01"]}}
  - {{name: c1-n2, u: 2, bmc_address: 10.3.0.2, macs: ["52:54:00:cc:00:02"]}}
"""
    )
    result = cli("rack", "import", str(manifest), token=operator_token)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "created 2 node(s) from rack-c1.yaml"
    assert "c1-n1" in result.stdout
    assert "c1-n2" in result.stdout
    names = [
        n["name"]
        for n in json.loads(
            cli("node", "list", "--rack", "c1", "--json", token=operator_token).stdout
        )["items"]
    ]
    assert names == ["c1-n1", "c1-n2"]


def test_rack_import_lists_every_row_error(cli: Cli, operator_token: str, tmp_path: Path) -> None:
    manifest = tmp_path / "bad.yml"
    manifest.write_text(
        f"""
defaults: {{rack: c2, bmc_username: admin, bmc_password: "{BMC_PASSWORD}"}}
nodes:
  - {{name: c2-n1, u: 1, bmc_address: 10.4.0.1, macs: ["not-a-mac"]}}
  - {{name: c2_n2, u: 2, bmc_address: 10.4.0.2}}
"""
    )
    result = cli("rack", "import", str(manifest), token=operator_token)
    assert result.exit_code == 1
    assert result.stdout == ""
    *table, last = result.stderr.strip().splitlines()
    assert last == "error: bad.yml was not imported: 2 problem(s), listed above"
    rows = [line.split()[:2] for line in table[2:]]
    assert rows == [["1", "macs"], ["2", "name"]]
    assert "not a MAC address" in result.stderr


def test_rack_import_needs_a_known_extension(cli: Cli, operator_token: str, tmp_path: Path) -> None:
    manifest = tmp_path / "rack.txt"
    manifest.write_text("nodes: []\n")
    fails(cli("rack", "import", str(manifest), token=operator_token), ".yaml, .yml or .csv")


def test_roles_images_and_tokens(cli: Cli, admin_token: str) -> None:
    created = cli(
        "role", "create", "cli-web", "--description", "Web [front] ends",
        "--puppet-class", "role::web", "--puppet-class", "profile::base", "--no-auto-provision",
        token=admin_token,
    )  # fmt: skip
    assert created.exit_code == 0, created.stderr
    role = json.loads(cli("role", "show", "cli-web", "--json", token=admin_token).stdout)
    assert role["puppet_classes"] == ["role::web", "profile::base"]
    assert role["auto_provision"] is False
    assert "Web [front] ends" in cli("role", "list", token=admin_token).stdout
    assert "profile::base" in cli("role", "show", "cli-web", token=admin_token).stdout

    image = cli(
        "image", "create", "cli-deb12", "--os-family", "debian", "--version", "12",
        "--kernel-url", "http://mirror.example/linux", "--initrd-url", "http://mirror.example/initrd.gz",
        "--answer-template", "preseed",
        token=admin_token,
    )  # fmt: skip
    assert image.exit_code == 0, image.stderr
    assert "cli-deb12" in cli("image", "list", token=admin_token).stdout
    assert (
        json.loads(cli("image", "show", "cli-deb12", "--json", token=admin_token).stdout)["version"]
        == "12"
    )
    assert (
        "http://mirror.example/initrd.gz"
        in cli("image", "show", "cli-deb12", token=admin_token).stdout
    )

    assert cli("role", "delete", "cli-web", token=admin_token).exit_code == 0
    assert cli("image", "delete", "cli-deb12", token=admin_token).exit_code == 0
    fails(cli("role", "show", "cli-web", token=admin_token), "not found")

    via_api = cli(
        "token", "create", "--scope", "viewer", "--name", "cli-api", "--via-api", token=admin_token
    )
    assert via_api.exit_code == 0, via_api.stderr
    new_token = via_api.stdout.strip()
    assert TOKEN_RE.match(via_api.stdout)
    listed = json.loads(cli("token", "list", "--json", token=admin_token).stdout)
    (row,) = [t for t in listed if t["name"] == "cli-api"]
    assert row["prefix"] in cli("token", "list", token=admin_token).stdout
    assert cli("token", "delete", row["id"], token=admin_token).exit_code == 0
    fails(cli("node", "list", token=new_token), "refused the token")


def test_role_hand_off_from_the_command_line(cli: Cli, admin_token: str) -> None:
    secret = "cli-webhook-secret-0123"
    cli.secrets.add(secret)
    enc = cli(
        "role", "create", "cli-enc", "--handoff", "enc", "--puppet-environment", "staging",
        "--package", "chrony", "--package", "jq", "--json",
        token=admin_token,
    )  # fmt: skip
    assert enc.exit_code == 0, enc.stderr
    role = json.loads(enc.stdout)
    assert (role["handoff"], role["puppet_environment"]) == ("enc", "staging")
    assert role["packages"] == ["chrony", "jq"]

    hooked = cli(
        "role", "create", "cli-hook", "--handoff", "webhook",
        "--webhook-url", "https://cmdb.example.com/hooks/prov",
        "--webhook-secret-stdin", "--json",
        token=admin_token,
        stdin=secret + "\n",
    )  # fmt: skip
    assert hooked.exit_code == 0, hooked.stderr
    assert json.loads(hooked.stdout)["webhook_secret_set"] is True
    shown = cli("role", "show", "cli-hook", token=admin_token).stdout
    assert "webhook to https://cmdb.example.com/hooks/prov (secret set)" in shown
    listed = cli("role", "list", token=admin_token).stdout.splitlines()
    assert "HAND-OFF" in listed[0]
    (enc_row,) = [line for line in listed if line.startswith("cli-enc ")]
    assert enc_row.split()[1] == "enc"

    no_secret = cli(
        "role", "create", "cli-nohook", "--handoff", "webhook",
        "--webhook-url", "https://cmdb.example.com/hooks/prov",
        token=admin_token,
    )  # fmt: skip
    fails(no_secret, "webhook_secret")
    assert cli("role", "create", "cli-bad", "--handoff", "later").exit_code == 2
    for name in ("cli-enc", "cli-hook"):
        assert cli("role", "delete", name, token=admin_token).exit_code == 0


def test_role_update_changes_only_what_is_given(cli: Cli, admin_token: str) -> None:
    created = cli(
        "role", "create", "cli-upd", "--description", "before", "--package", "chrony",
        "--puppet-class", "role::db", "--puppet-environment", "staging", "--no-auto-provision",
        token=admin_token,
    )  # fmt: skip
    assert created.exit_code == 0, created.stderr
    secret = "cli-update-secret-4567"
    cli.secrets.add(secret)
    updated = cli(
        "role", "update", "cli-upd", "--handoff", "webhook",
        "--webhook-url", "https://cmdb.example.com/hooks/upd", "--webhook-secret-stdin",
        "--package", "jq", "--package", "htop",
        token=admin_token,
        stdin=secret + "\n",
    )  # fmt: skip
    assert updated.exit_code == 0, updated.stderr
    assert updated.stdout == (
        "updated role cli-upd: handoff, packages, webhook_secret, webhook_url\n"
    )
    role = json.loads(cli("role", "show", "cli-upd", "--json", token=admin_token).stdout)
    assert (role["handoff"], role["webhook_url"], role["webhook_secret_set"]) == (
        "webhook",
        "https://cmdb.example.com/hooks/upd",
        True,
    )
    assert role["packages"] == ["jq", "htop"]
    # Untouched by the PATCH:
    assert (role["description"], role["puppet_environment"]) == ("before", "staging")
    assert (role["puppet_classes"], role["auto_provision"]) == (["role::db"], False)

    cleared = cli(
        "role", "update", "cli-upd", "--handoff", "enc", "--no-webhook-url",
        "--clear-packages", "--clear-puppet-classes", "--auto-provision", "--json",
        token=admin_token,
    )  # fmt: skip
    assert cleared.exit_code == 0, cleared.stderr
    role = json.loads(cleared.stdout)
    assert (role["handoff"], role["webhook_url"]) == ("enc", None)
    assert (role["packages"], role["puppet_classes"], role["auto_provision"]) == ([], [], True)
    assert role["description"] == "before"

    fails(cli("role", "update", "cli-upd", token=admin_token), "nothing to change")
    fails(
        cli("role", "update", "cli-upd", "--package", "x", "--clear-packages", token=admin_token),
        "--package or --clear-packages",
    )
    missing = cli("role", "update", "no-such-role", "--description", "x", token=admin_token)
    fails(missing, "not found")
    assert cli("role", "delete", "cli-upd", token=admin_token).exit_code == 0


def test_image_update_changes_only_what_is_given(cli: Cli, admin_token: str) -> None:
    help_text = cli("image", "create", "--help", env={"COLUMNS": "200"}).stdout
    assert "path in the service's images directory" in " ".join(help_text.split())
    created = cli(
        "image", "create", "cli-img", "--os-family", "debian", "--version", "12",
        "--kernel-url", "debian12/linux", "--initrd-url", "debian12/initrd.gz",
        "--answer-template", "preseed", "--kernel-args", "quiet",
        token=admin_token,
    )  # fmt: skip
    assert created.exit_code == 0, created.stderr
    updated = cli(
        "image", "update", "cli-img", "--version", "12.5", "--kernel-args", "",
        "--kernel-url", "http://mirror.example/debian/linux",
        token=admin_token,
    )  # fmt: skip
    assert updated.exit_code == 0, updated.stderr
    assert updated.stdout == "updated image cli-img: kernel_args, kernel_url, version\n"
    image = json.loads(cli("image", "show", "cli-img", "--json", token=admin_token).stdout)
    assert (image["version"], image["kernel_args"]) == ("12.5", "")
    assert image["kernel_url"] == "http://mirror.example/debian/linux"
    assert (image["initrd_url"], image["answer_template"]) == ("debian12/initrd.gz", "preseed")
    fails(
        cli("image", "update", "cli-img", "--kernel-url", "../etc/passwd", token=admin_token),
        "invalid request",
        "kernel_url",
    )
    fails(cli("image", "update", "cli-img", token=admin_token), "nothing to change")
    assert cli("image", "delete", "cli-img", token=admin_token).exit_code == 0


def test_cli_choices_mirror_the_api_schema() -> None:
    """The CLI keeps its own copies of the API's choices (importing the schemas would
    slow every command); a value the API gains must reach the CLI too."""
    from provisioner import schemas
    from provisioner.cli import catalog

    assert get_args(catalog.OsFamily) == get_args(schemas.OsFamily)
    assert get_args(catalog.AnswerTemplate) == get_args(schemas.AnswerTemplate)
    assert get_args(catalog.ScopeName) == get_args(schemas.Scope)
    assert set(get_args(catalog.HandoffName)) == {h.value for h in schemas.Handoff}


# Any: typer's own copy of click's classes, or click's, depending on the version.
def _commands(group: Any, ctx: Any) -> Iterator[Any]:
    """A context for every command under ``group``, as `--help` would build it."""
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None
        sub = command.make_context(name, [], parent=ctx, resilient_parsing=True)
        yield sub
        if hasattr(command, "list_commands"):
            yield from _commands(command, sub)


@pytest.mark.parametrize("columns", [60, 200])
def test_help_is_wrapped_to_the_terminal_and_never_cut(
    columns: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every command's help: rewrapped to COLUMNS whatever the source's line breaks,
    with every option's name and every summary whole."""
    monkeypatch.setenv("COLUMNS", str(columns))
    root = typer.main.get_command(app)
    top = root.make_context("provisioner", [], resilient_parsing=True)
    contexts = [top, *_commands(root, top)]
    assert len(contexts) > 40
    for ctx in contexts:
        text = ctx.command.get_help(ctx)
        where = f"{ctx.command_path} --help at {columns} columns:\n{text}"
        assert max(len(line) for line in text.splitlines()) <= columns, where
        # Compared without whitespace: a line may break after a hyphen.
        flat = "".join(text.split())
        for paragraph in inspect.cleandoc(ctx.command.help or "").split("\n\n"):
            assert "".join(paragraph.split()) in flat, where
        for param in ctx.command.params:
            for name in (*param.opts, *param.secondary_opts):
                if name.startswith("-"):
                    assert name in text.split() or f"{name}," in text, (name, where)
        if hasattr(ctx.command, "list_commands"):
            for name in ctx.command.list_commands(ctx):
                sub = ctx.command.get_command(ctx, name)
                assert sub is not None
                summary = sub.get_short_help_str(limit=10_000)
                assert "".join(summary.split()) in flat, where
                assert not summary.endswith("..."), where


def test_help_follows_columns_as_the_installed_command() -> None:
    command = [str(Path(sys.executable).parent / "provisioner"), "token", "create", "--help"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONER_")}
    wide = subprocess.run(
        command, capture_output=True, text=True, env=env | {"COLUMNS": "200"}, check=True
    ).stdout
    # The docstring breaks its lines after "before the" and "with its PROVISIONER_*".
    assert "so it works before the server runs: run it on the server, as the" in wide, wide
    assert max(len(line) for line in wide.splitlines()) > 150, wide
    assert max(len(line) for line in wide.splitlines()) <= 200, wide
    narrow = subprocess.run(
        command, capture_output=True, text=True, env=env | {"COLUMNS": "50"}, check=True
    ).stdout
    assert max(len(line) for line in narrow.splitlines()) <= 50, narrow
    assert "--expires-in-days" in narrow.split()


def test_config_file_and_environment_precedence(cli: Cli, operator_token: str) -> None:
    config = cli.config_home / "provisioner" / "cli.toml"
    config.parent.mkdir(parents=True)
    config.write_text(f'url = "{cli.service.url}"\ntoken = "{operator_token}"\n')
    from_file = runner.invoke(
        app, ["node", "list"], env={**cli.env(None, None), "PROVISIONER_URL": None}
    )
    assert from_file.exit_code == 0, from_file.stderr
    config.write_text(f'url = "http://127.0.0.1:{_free_port()}"\ntoken = "prov_wrong"\n')
    assert cli("node", "list", token=operator_token).exit_code == 0
    config.write_text("url = [")
    fails(
        cli("node", "list", token=operator_token, url=None, env={"PROVISIONER_URL": None}),
        "cli.toml",
    )


def test_unreachable_server(cli: Cli, operator_token: str) -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    line = fails(
        cli("node", "list", token=operator_token, url=url), f"cannot reach the provisioner at {url}"
    )
    assert "PROVISIONER_URL" in line


def test_bad_url(cli: Cli, operator_token: str) -> None:
    fails(cli("node", "list", token=operator_token, url="localhost:8080"), "http://")


def test_bad_or_missing_token(cli: Cli) -> None:
    fails(cli("node", "list", token="prov_not-a-real-token-at-all"), "the server refused the token")
    fails(cli("--token", "prov_given-on-the-command-line", "node", "list"), "refused the token")
    fails(cli("node", "list"), "no API token is set", "provisioner token create")


def test_viewer_cannot_enroll(cli: Cli) -> None:
    viewer = cli.token("viewer", name="cli-viewer")
    fails(enroll(cli, viewer, "cli-v1", "52:54:00:dd:00:01"), "permission denied", "operator")


def test_unknown_node(cli: Cli, operator_token: str) -> None:
    fails(cli("node", "show", "no-such-node", token=operator_token), "not found", "no-such-node")
    fails(cli("node", "action", "no-such-node", "inspect", token=operator_token), "not found")


def test_illegal_action_names_the_allowed_ones(cli: Cli, operator_token: str) -> None:
    assert enroll(cli, operator_token, "cli-illegal", "52:54:00:ee:00:01").exit_code == 0
    line = fails(
        cli("node", "action", "cli-illegal", "provision", token=operator_token), "conflict"
    )
    assert "inspect" in line
    assert "allowed" in line


def test_unknown_action_is_a_usage_error(cli: Cli, operator_token: str) -> None:
    result = cli("node", "action", "cli-illegal", "explode", token=operator_token)
    assert result.exit_code == 2
    assert "inspect" in result.stderr


def test_bad_mac_shows_the_field(cli: Cli, operator_token: str) -> None:
    fails(
        enroll(cli, operator_token, "cli-mac", "zz:zz"),
        "invalid request",
        "nics.0.mac",
        "not a MAC",
    )


def test_duplicate_name_is_a_conflict(cli: Cli, operator_token: str) -> None:
    assert enroll(cli, operator_token, "cli-dup", "52:54:00:ee:00:02").exit_code == 0
    fails(enroll(cli, operator_token, "cli-dup", "52:54:00:ee:00:03"), "conflict", "cli-dup")


def test_long_bmc_password_is_not_echoed(cli: Cli, operator_token: str) -> None:
    too_long = "x" * 21 + "-secret"
    cli.secrets.add(too_long)
    result = cli(
        "node", "enroll", "cli-long", "--bmc-address", "10.0.0.9", "--bmc-username", "admin",
        token=operator_token,
        env={"PROVISIONER_BMC_PASSWORD": too_long},
    )  # fmt: skip
    fails(result, "bmc.password")


def test_db_upgrade(cli: Cli, tmp_path: Path) -> None:
    result = cli("db", "upgrade", env={"PROVISIONER_DATA_DIR": str(tmp_path / "fresh")})
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "fresh" / "provisioner.db").is_file()
    assert "migrated sqlite:///" in result.stdout
    head = ScriptDirectory(str(migrations_dir())).get_current_head()
    assert f"from an empty database to {head}, the latest schema" in result.stdout
    again = cli("db", "upgrade", env={"PROVISIONER_DATA_DIR": str(tmp_path / "fresh")})
    assert again.exit_code == 0, again.stderr
    assert "has the latest schema already; nothing to migrate" in again.stdout


def test_client_commands_do_not_import_the_service() -> None:
    code = (
        "import sys, provisioner.cli; "
        "print(' '.join(m for m in ('sqlalchemy', 'uvicorn', 'pydantic', 'provisioner.app') "
        "if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""


def test_masked_database_url() -> None:
    shown = masked_url("postgresql+psycopg://prov:hunter2@db.example/prov")
    assert "hunter2" not in shown
    assert "db.example/prov" in shown


@pytest.mark.skipif(not DEMO.exists(), reason="scripts/demo is not in this checkout")
def test_demo_runs_to_the_end() -> None:
    """The README's first command: a rack of 12 lab machines from manifest to active."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONER_")}
    result = subprocess.run(
        [str(DEMO)], cwd=REPO, env=env, capture_output=True, text=True, timeout=240
    )
    output = result.stdout + result.stderr
    kept = re.search(r"^logs kept in (\S+): service\.log, lab\.log$", result.stdout, re.M)
    assert kept, output
    run_dir = Path(kept.group(1))
    try:
        # The logs outlive the demo, for a look at what happened; the rest is gone.
        assert result.stdout.splitlines()[-1] == kept.group(0), output
        assert sorted(p.name for p in run_dir.iterdir()) == ["lab.log", "service.log"]
        assert "TFTP" in (run_dir / "service.log").read_text()
        assert "lab up: 12/12 BMCs answering" in (run_dir / "lab.log").read_text()
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    assert result.returncode == 0, output
    assert "all 12 node(s) active" in output
    assert "role_compute: lab-r01-u01, lab-r01-u02" in output
    assert "role_storage:" in output
    assert "Timeline of lab-r01-u01" in output
    for hop in (
        "boot-tftp",
        "boot-ipxe",
        "boot-file",
        "boot-answer",
        "callback-done",
        "handed-off",
    ):
        assert hop in output, hop
    assert "/docs" in output


@pytest.mark.skipif(not DEMO.exists(), reason="scripts/demo is not in this checkout")
def test_demo_keep_keeps_the_whole_run() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONER_")}
    result = subprocess.run(
        [str(DEMO), "--nodes", "2", "--keep"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    output = result.stdout + result.stderr
    kept = re.search(r"^kept in (\S+): service\.log, lab\.log, work/", result.stdout, re.M)
    assert kept, output
    run_dir = Path(kept.group(1))
    try:
        assert result.returncode == 0, output
        assert (run_dir / "service.log").stat().st_size > 0
        assert (run_dir / "work" / "data" / "provisioner.db").is_file()
        assert (run_dir / "work" / "rack.csv").is_file()
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
