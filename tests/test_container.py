"""The container image, built from the Dockerfile with podman and run as operators run it.

The image is built once per session on a Debian bookworm base that scripts/container-base
makes with debootstrap (no container registry is in reach of CI), or on the image named
by PROVISIONER_CONTAINER_BASE. Containers publish their port on 127.0.0.1 only.

Required in CI (PROVISIONER_REQUIRE_TOOLS=1), which runs as root with podman, runc and
debootstrap from scripts/test; skipped elsewhere when podman or the base is missing.
Everything the tests make (containers, volumes, the image) is removed afterwards, the
base image is kept for the next run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import httpx
import pytest

from tests.serving import free_port

REQUIRE_TOOLS = os.environ.get("PROVISIONER_REQUIRE_TOOLS") == "1"
ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = "/var/lib/provisioner"
UID = 10001
# What podman needs on these machines: its default limits exceed the hard limits here.
ULIMITS = ("--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768")
BUILD_TIMEOUT = 600.0
START_TIMEOUT = 60.0


def unavailable(why: str) -> NoReturn:
    if REQUIRE_TOOLS:
        pytest.fail(f"PROVISIONER_REQUIRE_TOOLS=1 but {why}")
    pytest.skip(why)


class Podman:
    """podman with runc (crun refuses this kernel's cgroup layout) and no systemd."""

    def __init__(self, binary: str) -> None:
        self.command = [binary]
        if shutil.which("runc"):
            self.command += ["--runtime", "runc"]
        if not Path("/run/systemd/system").is_dir():
            # Without systemd as init there is no journal and no transient units.
            self.command += ["--cgroup-manager", "cgroupfs", "--events-backend", "file"]

    def run(
        self, *args: str, check: bool = True, timeout: float = 120.0, secret: str = ""
    ) -> subprocess.CompletedProcess[str]:
        """``podman args``; on failure its output, with ``secret`` blotted out, fails the
        test."""
        result = subprocess.run(
            [*self.command, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            output = (result.stdout[-4000:] + result.stderr[-4000:]).strip()
            if secret:
                output = output.replace(secret, "<secret>")
            pytest.fail(f"podman {' '.join(args[:2])} exited {result.returncode}:\n{output}")
        return result


@pytest.fixture(scope="session")
def podman() -> Podman:
    binary = shutil.which("podman")
    if binary is None:
        unavailable("podman is not installed (apt-get install podman runc)")
    return Podman(binary)


def base_image() -> str:
    named = os.environ.get("PROVISIONER_CONTAINER_BASE")
    if named:
        return named
    if os.geteuid() != 0:
        unavailable(
            "scripts/container-base needs root (debootstrap); or name a base image "
            "in PROVISIONER_CONTAINER_BASE"
        )
    if shutil.which("debootstrap") is None:
        unavailable("debootstrap is not installed (apt-get install debootstrap)")
    made = subprocess.run(
        [str(ROOT / "scripts" / "container-base")],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    assert made.returncode == 0, f"scripts/container-base failed:\n{made.stderr[-6000:]}"
    return made.stdout.strip().splitlines()[-1]


def ca_bundle() -> str | None:
    """The CA bundle this machine's pip trusts, for pip inside the build."""
    for candidate in (
        os.environ.get("PIP_CERT"),
        os.environ.get("SSL_CERT_FILE"),
        "/etc/ssl/certs/ca-certificates.crt",
    ):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


@pytest.fixture(scope="session")
def image(podman: Podman) -> Iterator[str]:
    base = base_image()
    tag = f"localhost/provisioner-test:{uuid.uuid4().hex[:12]}"
    build = [
        "build",
        # The OCI format has no HEALTHCHECK; docker's keeps it.
        "--format",
        "docker",
        # No intermediate images are left behind to clean up.
        "--layers=false",
        "--network",
        "host",
        *ULIMITS,
        "--build-arg",
        f"BASE={base}",
        "--tag",
        tag,
    ]
    bundle = ca_bundle()
    if bundle:
        build += ["--secret", f"id=pip-cert,src={bundle}"]
    try:
        podman.run(*build, str(ROOT), timeout=BUILD_TIMEOUT)
        yield tag
    finally:
        podman.run("rmi", "--force", tag, check=False)


class Service:
    """One `provisioner serve` container at a time on a volume that outlives it."""

    def __init__(self, podman: Podman, image: str, volume: str) -> None:
        self.podman = podman
        self.image = image
        self.volume = volume
        self.name = ""
        self.names: list[str] = []
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, wait: bool = True) -> None:
        self.name = f"provisioner-test-{uuid.uuid4().hex[:12]}"
        self.names.append(self.name)
        self.port = free_port()
        self.podman.run(
            "run",
            "--detach",
            "--name",
            self.name,
            *ULIMITS,
            # Loopback only: the test machine's other addresses never see it.
            "--publish",
            f"127.0.0.1:{self.port}:8080",
            "--volume",
            f"{self.volume}:{DATA_DIR}",
            self.image,
        )
        if not wait:
            return
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            state = self.inspect("{{.State.Status}}")
            if state != "running" or time.monotonic() > deadline:
                pytest.fail(f"{self.name} is {state}, /healthz never answered:\n{self.logs()}")
            time.sleep(0.2)

    def stop(self) -> float:
        """``podman stop`` (SIGTERM, SIGKILL after 10 s); its duration in seconds."""
        started = time.monotonic()
        self.podman.run("stop", "--time", "10", self.name, timeout=60)
        return time.monotonic() - started

    def replace(self) -> None:
        self.stop()
        self.podman.run("rm", "--volumes", self.name)
        self.start()

    def inspect(self, template: str) -> str:
        return self.podman.run("inspect", "--format", template, self.name).stdout.strip()

    def exec(self, *command: str, env: dict[str, str] | None = None, secret: str = "") -> str:
        options = [f"--env={k}={v}" for k, v in (env or {}).items()]
        return self.podman.run("exec", *options, self.name, *command, secret=secret).stdout

    def logs(self) -> str:
        result = self.podman.run("logs", self.name, check=False)
        return result.stdout + result.stderr

    def all_logs(self) -> str:
        shown = [self.podman.run("logs", name, check=False) for name in self.names]
        return "".join(result.stdout + result.stderr for result in shown)

    def remove(self) -> None:
        for name in self.names:
            self.podman.run("rm", "--force", "--volumes", "--time", "0", name, check=False)


@contextlib.contextmanager
def service(podman: Podman, image: str, *, wait: bool = True) -> Iterator[Service]:
    volume = f"provisioner-test-{uuid.uuid4().hex[:12]}"
    podman.run("volume", "create", volume)
    running = Service(podman, image, volume)
    try:
        running.start(wait=wait)
        yield running
    finally:
        running.remove()
        podman.run("volume", "rm", "--force", volume, check=False)


@pytest.fixture(scope="module")
def served(podman: Podman, image: str) -> Iterator[Service]:
    with service(podman, image) as running:
        yield running


def admin_token(served: Service) -> str:
    """A token made the way operators bootstrap one: in the container, as its user."""
    token = served.exec("provisioner", "token", "create", "--scope", "admin").strip()
    # Never shown: a failure message names only its shape.
    if not token.startswith("prov_") or len(token.split()) != 1:
        pytest.fail("provisioner token create printed something other than one token")
    return token


def no_secret_in(text: str, secret: str, where: str) -> None:
    if secret in text:
        pytest.fail(f"a secret appears in {where}")  # and is not repeated here


def test_healthz_answers_and_the_healthcheck_is_healthy(served: Service) -> None:
    assert httpx.get(f"{served.url}/healthz", timeout=5).json() == {"status": "ok"}
    # Built --format docker, the image keeps its HEALTHCHECK; running it probes /healthz.
    test = json.loads(served.inspect("{{json .Config.Healthcheck.Test}}"))
    assert test[0] == "CMD", test
    result = served.podman.run("healthcheck", "run", served.name, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


PROCESSES = """
import json, pathlib
def status(pid):
    proc = pathlib.Path("/proc", str(pid))
    fields = dict(line.split(":", 1) for line in (proc / "status").read_text().splitlines())
    return {
        "comm": (proc / "comm").read_text().strip(),
        "args": (proc / "cmdline").read_bytes().decode().split("\\0"),
        "uid": fields["Uid"].split(),
        "gid": fields["Gid"].split(),
    }
children = pathlib.Path("/proc/1/task/1/children").read_text().split()
data = pathlib.Path("/var/lib/provisioner")
files = {f.name: [f.stat().st_uid, oct(f.stat().st_mode & 0o777)] for f in [data, *data.iterdir()]}
print(json.dumps({"init": status(1), "children": [status(c) for c in children], "files": files}))
"""


def test_runs_as_uid_10001_under_tini(served: Service) -> None:
    # The container's own view: PID 1 and its one child, the service.
    seen = json.loads(served.exec("python", "-c", PROCESSES))
    init = seen["init"]
    assert init["comm"] == "tini", seen
    (child,) = seen["children"]
    assert child["args"][1:3] == ["/opt/provisioner/bin/provisioner", "serve"], seen
    # Real, effective, saved and filesystem ids.
    for process in (init, child):
        assert process["uid"] == [str(UID)] * 4, seen
        assert process["gid"] == [str(UID)] * 4, seen
    files = seen["files"]
    assert files["provisioner"] == [UID, "0o700"], files
    assert files["secret.key"] == [UID, "0o600"], files
    assert files["provisioner.db"][0] == UID, files


def test_a_token_made_with_podman_exec_works_against_the_api(served: Service) -> None:
    assert httpx.get(f"{served.url}/api/v1/nodes", timeout=5).status_code == 401
    token = admin_token(served)
    answer = httpx.get(
        f"{served.url}/api/v1/nodes", headers={"Authorization": f"Bearer {token}"}, timeout=5
    )
    assert answer.status_code == 200, answer.text
    no_secret_in(served.all_logs(), token, "the container's log")


DECRYPTS = """
import hashlib, os
from sqlmodel import Session, select
from provisioner.db import make_engine
from provisioner.models import Bmc, Node
from provisioner.secrets import Vault
from provisioner.settings import Settings
settings = Settings()
engine = make_engine(settings.resolved_database_url)
with Session(engine) as session:
    bmc = session.exec(
        select(Bmc).join(Node, Node.id == Bmc.node_id).where(Node.name == os.environ["NODE"])
    ).one()
    plain = Vault.from_settings(settings).decrypt(bmc.password_encrypted)
print("same" if hashlib.sha256(plain.encode()).hexdigest() == os.environ["SHA256"] else "other")
"""


def test_the_data_volume_survives_a_container_replacement(served: Service) -> None:
    token = admin_token(served)
    headers = {"Authorization": f"Bearer {token}"}
    password = secrets.token_hex(8)
    node = f"container-{uuid.uuid4().hex[:8]}"
    body = {
        "name": node,
        "bmc": {
            "driver": "fake",
            "address": "192.0.2.10",
            "username": "admin",
            "password": password,
        },
    }
    enrolled = httpx.post(f"{served.url}/api/v1/nodes", json=body, headers=headers, timeout=10)
    assert enrolled.status_code == 201, enrolled.status_code
    no_secret_in(enrolled.text, password, "the enrollment's answer")
    first = served.name

    served.replace()

    assert served.name != first
    # The token and the node are in the database on the volume.
    got = httpx.get(f"{served.url}/api/v1/nodes/{node}", headers=headers, timeout=5)
    assert got.status_code == 200, got.text
    assert got.json()["bmc"]["username"] == "admin"
    # Asking the BMC decrypts the stored password with the key on the volume: a new key
    # would make this fail. The fake BMC takes whatever the service logs in with, so the
    # password itself is compared by its hash, inside the container.
    power = httpx.get(f"{served.url}/api/v1/nodes/{node}/power", headers=headers, timeout=35)
    assert power.status_code == 200, power.text
    same = served.exec(
        "python",
        "-c",
        DECRYPTS,
        env={"NODE": node, "SHA256": hashlib.sha256(password.encode()).hexdigest()},
    )
    assert same.strip() == "same"
    logs = served.all_logs()
    no_secret_in(logs, password, "the containers' logs")
    no_secret_in(logs, token, "the containers' logs")


@pytest.mark.parametrize("when", ["serving", "starting"])
def test_stops_within_2_seconds_on_sigterm(podman: Podman, image: str, when: str) -> None:
    # Its own container: the engine sends SIGTERM and waits 10 s before SIGKILL. While
    # it starts, before uvicorn handles SIGTERM, only tini as PID 1 makes it stop: the
    # kernel drops a signal PID 1 does not handle.
    with service(podman, image, wait=when == "serving") as running:
        took = running.stop()
        code = running.inspect("{{.State.ExitCode}}")
    assert took < 2.0, f"podman stop took {took:.1f} s"
    # 143: SIGTERM, which uvicorn raises again once it has shut down; 137 would be the
    # SIGKILL after the timeout.
    assert code in {"0", "143"}, code
