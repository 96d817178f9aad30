"""`provisioner pxe ...` as operators run it: assets into a TFTP root, a dnsmasq file that
dnsmasq accepts, and `pxe serve` as a real process that curl fetches from over TFTP."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from provisioner.cli import app
from pxe.assets import BOOT_FILES, DEBIAN_IPXE_DIR

REQUIRE_TOOLS = os.environ.get("PROVISIONER_REQUIRE_TOOLS") == "1"
TOKEN = "prov_pxe-test-token-abcdefghijkl"

runner = CliRunner()


def tool(name: str, package: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        if REQUIRE_TOOLS:
            pytest.fail(f"PROVISIONER_REQUIRE_TOOLS=1 but {name} is not installed")
        pytest.skip(f"{name} is not installed (apt-get install {package})")
    return path


@pytest.fixture
def source(tmp_path: Path) -> Path:
    directory = tmp_path / "build"
    directory.mkdir()
    for name in BOOT_FILES:
        (directory / name).write_bytes(os.urandom(3000))
    return directory


def test_assets_from_a_directory(source: Path, tmp_path: Path) -> None:
    root = tmp_path / "tftp"
    result = runner.invoke(app, ["pxe", "assets", "--source", str(source), "--root", str(root)])
    assert result.exit_code == 0, result.output
    for name in BOOT_FILES:
        assert (root / name).read_bytes() == (source / name).read_bytes()
        assert name in result.stdout
    assert "copied" in result.stdout
    again = runner.invoke(app, ["pxe", "assets", "--source", str(source), "--root", str(root)])
    assert "unchanged" in again.stdout
    assert "copied" not in again.stdout


def test_assets_default_root_is_in_the_data_dir(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROVISIONER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("PROVISIONER_TFTP_ROOT", raising=False)
    result = runner.invoke(app, ["pxe", "assets", "--source", str(source)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "data" / "tftp" / "ipxe.efi").is_file()


def test_assets_from_debians_ipxe_package(tmp_path: Path) -> None:
    if not all((DEBIAN_IPXE_DIR / name).is_file() for name in BOOT_FILES):
        if REQUIRE_TOOLS:
            pytest.fail("PROVISIONER_REQUIRE_TOOLS=1 but Debian's ipxe package is not installed")
        pytest.skip("Debian's ipxe package is not installed (apt-get install ipxe)")
    root = tmp_path / "tftp"
    result = runner.invoke(app, ["pxe", "assets", "--root", str(root)])
    assert result.exit_code == 0, result.output
    for name in BOOT_FILES:
        assert (root / name).read_bytes() == (DEBIAN_IPXE_DIR / name).read_bytes()


def test_assets_say_what_to_do_when_a_file_is_missing(source: Path, tmp_path: Path) -> None:
    (source / "undionly.kpxe").unlink()
    root = tmp_path / "tftp"
    result = runner.invoke(app, ["pxe", "assets", "--source", str(source), "--root", str(root)])
    assert result.exit_code == 1
    assert "missing" in result.stdout
    assert "lacks undionly.kpxe" in result.stderr
    assert "apt-get install ipxe" in result.stderr
    assert "--source DIR" in result.stderr
    assert (root / "ipxe.efi").is_file()


def test_dnsmasq_config_to_a_file(tmp_path: Path) -> None:
    output = tmp_path / "boot.conf"
    args = ["pxe", "dnsmasq-config", "--mode", "full", "--network", "10.30.0.0/24"]
    args += ["--tftp-server", "10.30.0.2", "--api", "http://10.30.0.2:8080"]
    args += ["--range-start", "10.30.0.50", "--range-end", "10.30.0.99", "--router", "10.30.0.1"]
    args += ["--dns-server", "10.30.0.1", "--interface", "eth1", "--snponly", "-o", str(output)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    text = output.read_text()
    assert "dhcp-boot=tag:efi64,tag:!ipxe,snponly.efi,,10.30.0.2" in text
    check = subprocess.run(
        [tool("dnsmasq", "dnsmasq-base"), "--test", f"--conf-file={output}"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert check.returncode == 0, check.stderr


def test_dnsmasq_config_to_stdout_takes_the_api_from_the_environment() -> None:
    args = ["pxe", "dnsmasq-config", "--mode", "proxy", "--network", "10.30.0.0/24"]
    args += ["--tftp-server", "10.30.0.2"]
    result = runner.invoke(app, args, env={"PROVISIONER_BOOT_URL": "http://10.30.0.2:8080"})
    assert result.exit_code == 0, result.output
    assert "dhcp-range=10.30.0.0,proxy,255.255.255.0" in result.stdout
    assert "http://10.30.0.2:8080/boot/bootstrap.ipxe" in result.stdout


def test_dnsmasq_config_refuses_bad_input_in_one_line() -> None:
    args = ["pxe", "dnsmasq-config", "--mode", "full", "--network", "10.30.0.0/24"]
    args += ["--tftp-server", "10.30.0.2", "--api", "http://localhost:8080"]
    args += ["--range-start", "10.30.0.50", "--range-end", "10.31.0.99"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: invalid options: ")
    assert "--api: booting machines cannot reach localhost" in line
    assert "--range-end: 10.31.0.99 is not a host address of 10.30.0.0/24" in line


# ---- pxe serve as a process ------------------------------------------------------------


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PxeProcess:
    def __init__(self, tmp: Path, root: Path, *extra: str, env: dict[str, str]) -> None:
        self.port = _free_udp_port()
        command = [sys.executable, "-c", "from provisioner.cli import main; main()"]
        command += ["pxe", "serve", "--root", str(root), "--tftp-address", "127.0.0.1"]
        command += ["--tftp-port", str(self.port), *extra]
        environment = {**os.environ, "PROVISIONER_DATA_DIR": str(tmp / "data"), **env}
        self.process = subprocess.Popen(
            command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=environment
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.wait_for("pxe: serving")

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float = 20) -> str:
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no {text!r}:\n" + "\n".join(self.output)) from None
            self.output.append(line)
            if text in line:
                return line

    def fetch(self, name: str, out: Path) -> subprocess.CompletedProcess[str]:
        url = f"tftp://127.0.0.1:{self.port}/{name}"
        return subprocess.run(
            [tool("curl", "curl"), "-sS", "--max-time", "20", "-o", str(out), url],
            capture_output=True,
            text=True,
            timeout=30,
        )

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=15)
        finally:
            if self.process.poll() is None:
                self.process.kill()
            self._reader.join(timeout=5)
            while not self.lines.empty():
                self.output.append(self.lines.get())
        return code


@pytest.fixture
def root(tmp_path: Path) -> Path:
    directory = tmp_path / "tftp"
    directory.mkdir()
    for name in BOOT_FILES:
        (directory / name).write_bytes(os.urandom(70_000))
    return directory


def test_serve_static_files_then_stop_cleanly(tmp_path: Path, root: Path) -> None:
    tool("curl", "curl")
    pxe = PxeProcess(tmp_path, root, env={})
    try:
        got = tmp_path / "got"
        result = pxe.fetch("undionly.kpxe", got)
        assert result.returncode == 0, result.stderr
        assert got.read_bytes() == (root / "undionly.kpxe").read_bytes()
        assert "undionly.kpxe via 127.0.0.1: ok, 70000 bytes" in pxe.wait_for("undionly.kpxe")
        missing = pxe.fetch("pxelinux.cfg/01-aa-bb-cc-dd-ee-ff", tmp_path / "none")
        assert missing.returncode != 0  # no --api: only the root's own files
    finally:
        code = pxe.stop()
    assert code == 0, "\n".join(pxe.output)
    assert pxe.output[-1].endswith("pxe: stopped")


class StubApi(BaseHTTPRequestHandler):
    files = {"/boot/tftp/pxelinux.cfg/01-52-54-00-aa-bb-cc": b"DEFAULT install\n"}
    requests: list[tuple[str, str, dict[str, str], Any]] = []

    def do_GET(self) -> None:
        self.requests.append(("GET", self.path, dict(self.headers), None))
        body = self.files.get(self.path.split("?")[0])
        self.send_response(200 if body else 404)
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        payload = json.loads(self.rfile.read(length))
        self.requests.append(("POST", self.path, dict(self.headers), payload))
        self.send_response(202)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def stub_api() -> Iterator[str]:
    StubApi.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), StubApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_serve_fetches_per_node_files_and_reports_transfers(
    tmp_path: Path, root: Path, stub_api: str
) -> None:
    tool("curl", "curl")
    pxe = PxeProcess(tmp_path, root, "--api", stub_api, env={"PROVISIONER_TOKEN": TOKEN})
    try:
        got = tmp_path / "got"
        result = pxe.fetch("pxelinux.cfg/01-52-54-00-aa-bb-cc", got)
        assert result.returncode == 0, result.stderr
        assert got.read_bytes() == b"DEFAULT install\n"
        assert pxe.fetch("pxelinux.cfg/01-52-54-00-00-00-01", tmp_path / "no").returncode != 0
        assert pxe.fetch("snponly.efi", got).returncode == 0
    finally:
        code = pxe.stop()
    assert code == 0, "\n".join(pxe.output)
    gets = [r for r in StubApi.requests if r[0] == "GET"]
    assert gets[0][1] == "/boot/tftp/pxelinux.cfg/01-52-54-00-aa-bb-cc?client=127.0.0.1"
    reports = [t for r in StubApi.requests if r[0] == "POST" for t in r[3]["transfers"]]
    assert all(r[1] == "/boot/trace/tftp" for r in StubApi.requests if r[0] == "POST")
    assert all(
        r[2]["Authorization"] == f"Bearer {TOKEN}" for r in StubApi.requests if r[0] == "POST"
    )
    assert [(t["file"], t["result"], t["bytes"]) for t in reports] == [
        ("pxelinux.cfg/01-52-54-00-aa-bb-cc", "ok", 16),
        ("pxelinux.cfg/01-52-54-00-00-00-01", "file not found", 0),
        ("snponly.efi", "ok", 70_000),
    ]
    assert TOKEN not in "\n".join(pxe.output)


def test_serve_reports_the_dhcp_answers_dnsmasq_logs(
    tmp_path: Path, root: Path, stub_api: str
) -> None:
    dnsmasq_log = tmp_path / "dnsmasq.log"
    dnsmasq_log.write_text("Dec  3 16:43:14 dnsmasq[1]: started, version 2.90 DNS disabled\n")
    extra = ("--api", stub_api, "--dhcp-log", str(dnsmasq_log))
    pxe = PxeProcess(tmp_path, root, *extra, env={"PROVISIONER_TOKEN": TOKEN})
    try:
        pxe.wait_for("pxe: reporting DHCP answers")
        with dnsmasq_log.open("a") as log:
            log.write(
                "Dec  3 16:43:17 dnsmasq-dhcp[1]: 9 vendor class: PXEClient:Arch:00007\n"
                "Dec  3 16:43:17 dnsmasq-dhcp[1]: 9 DHCPACK(br0) 10.0.0.5 52:54:00:aa:bb:cc \n"
                "Dec  3 16:43:17 dnsmasq-dhcp[1]: 9 bootfile name: snponly.efi\n"
            )
        deadline = time.monotonic() + 20  # the report goes out within a second
        while not any(r[1] == "/boot/trace/dhcp" for r in StubApi.requests):
            assert time.monotonic() < deadline, "\n".join(pxe.output)
            time.sleep(0.05)
    finally:
        code = pxe.stop()
    assert code == 0, "\n".join(pxe.output)
    [report] = [r for r in StubApi.requests if r[1] == "/boot/trace/dhcp"]
    assert report[2]["Authorization"] == f"Bearer {TOKEN}"
    assert report[3]["exchanges"] == [
        {
            "mac": "52:54:00:aa:bb:cc",
            "interface": "br0",
            "kind": "ack",
            "address": "10.0.0.5",
            "vendor_class": "PXEClient:Arch:00007",
            "user_class": "",
            "bootfile": "snponly.efi",
            "note": "",
        }
    ]


def test_dhcp_log_without_api_is_refused(tmp_path: Path, root: Path) -> None:
    result = CliRunner().invoke(
        app, ["pxe", "serve", "--root", str(root), "--dhcp-log", str(tmp_path / "x.log")]
    )
    assert result.exit_code != 0
    assert "--dhcp-log reports to the provisioner: give --api too" in result.output


def test_serve_without_a_root_says_how_to_make_one(tmp_path: Path) -> None:
    result = runner.invoke(app, ["pxe", "serve", "--root", str(tmp_path / "nope")])
    assert result.exit_code == 1
    assert "provisioner pxe assets --root" in result.stderr
