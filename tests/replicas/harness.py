"""Several real ``provisioner serve`` replicas against one PostgreSQL (a private cluster,
:mod:`tests.replicas.postgres`), behind a load balancer (:mod:`tests.replicas.balancer`),
with a lab rack whose machines boot through it:

- every replica is its own process on its own free loopback port, with its own data
  directory and the one shared secret key and images directory;
- replica 0 also serves TFTP (the lab's DHCP names one next-server, as a boot network
  has one ``pxe`` edge), or with ``tftp_edge`` a ``provisioner pxe serve`` process of
  its own does (the replicas may then all be restarted); every other boot request,
  answer file and callback goes through the balancer (``PROVISIONER_BOOT_URL`` is the
  balancer's URL on every replica), so a machine's callbacks reach whichever replica is
  next, not the one that rendered its boot script;
- the test reads the database directly (:attr:`Fleet.db`) for what only it can tell:
  leases, deployments, whole timelines.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from cryptography.fernet import Fernet
from sqlalchemy import Engine, create_engine, text

from tests.lab.conftest import TINY_IMAGE, Lab
from tests.replicas.balancer import Balancer
from tests.replicas.postgres import Cluster
from tests.serving import BIN, clean_env, free_port, free_udp_port, poll


class Replica:
    """One ``provisioner serve`` process; :meth:`kill` is a crash (SIGKILL)."""

    def __init__(self, index: int, tmp: Path, env: dict[str, str]) -> None:
        self.index = index
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = env
        self.log = tmp / f"replica-{index}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [BIN / "provisioner", "serve", "--port", str(self.port)],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(
                f"replica {self.index} exited ({self.process.returncode}):\n{self.log_tail()}"
            )
        try:
            return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def kill(self) -> float:
        """SIGKILL, nothing cleaned up; returns the moment (time.time()) it was sent."""
        assert self.process is not None
        at = time.time()
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=15)
        return at

    def terminate(self, timeout: float = 60) -> tuple[int, float]:
        """SIGTERM, a graceful stop; waits for the exit and returns its status and the
        seconds it took."""
        assert self.process is not None
        at = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=timeout)
        return code, time.monotonic() - at

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)

    def owns(self, lease_owner: str | None) -> bool:
        """Whether a lease was written by this process (owners are host:pid:random)."""
        return lease_owner is not None and lease_owner.split(":")[1] == str(self.pid)

    def log_tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class Fleet:
    cluster: Cluster
    replicas: list[Replica]
    balancer: Balancer
    lab: Lab
    db: Engine
    api: httpx.Client  # replica 0's API, admin token
    token: str

    @property
    def names(self) -> list[str]:
        return [n.name for n in self.lab.nodes]

    def client(self, replica: int = 0, url: str | None = None) -> httpx.Client:
        """An admin client of replica ``replica``, or of ``url``."""
        return httpx.Client(
            base_url=url or self.replicas[replica].url,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=30,
        )

    def import_manifest(self) -> None:
        response = self.api.post(
            "/api/v1/racks/import",
            content=self.lab.manifest.read_bytes(),
            headers={"Content-Type": "text/csv"},
            timeout=120,
        )
        assert response.status_code == 201, response.text

    def rows(self, query: str, **params: Any) -> list[Any]:
        with self.db.connect() as connection:
            return list(connection.execute(text(query), params).all())

    def states(self) -> dict[str, str]:
        return dict(self.rows("SELECT name, state FROM node"))

    def explain(self, names: list[str], tail: int = 10) -> str:
        out = []
        for name in names:
            node = self.rows(
                "SELECT state, last_error, lease_owner, wake_at FROM node WHERE name = :n", n=name
            )
            out.append(f"{name}: {node[0] if node else 'not a node'}")
            events = self.rows(
                "SELECT e.time, e.kind, e.from_state, e.to_state, e.message FROM event e "
                "JOIN node n ON n.id = e.node_id WHERE n.name = :n ORDER BY e.id DESC LIMIT :t",
                n=name,
                t=tail,
            )
            for time_, kind, from_, to, message in reversed(events):
                moved = f" {from_}->{to}" if to else ""
                out.append(f"    {time_:%H:%M:%S.%f} {kind}{moved}: {message}")
        return "\n".join(out)

    def wait_all_active(self, nodes: int, timeout: float) -> None:
        """Until all ``nodes`` nodes are ``active``; fails at once if one has failed."""

        def all_active() -> bool:
            states = self.states()
            failed = [n for n, s in states.items() if s == "failed"]
            assert not failed, "nodes failed:\n" + self.explain(failed)
            return len(states) == nodes and all(s == "active" for s in states.values())

        poll(
            all_active,
            timeout,
            lambda: (
                "not every node active:\n"
                + self.explain([n for n, s in self.states().items() if s != "active"][:5])
                + "\n"
                + self.logs()
            ),
        )

    def logs(self) -> str:
        return "\n".join(f"--- replica {r.index}:\n{r.log_tail()}" for r in self.replicas)


@contextmanager
def fleet(
    tmp: Path,
    bin_dir: Path,
    *,
    replicas: int,
    nodes: int,
    role: dict[str, Any] | None = None,
    install_time: float = 0.5,
    reboot_delay: float = 0.3,
    tftp_edge: bool = False,
    **settings: str,
) -> Iterator[Fleet]:
    """A PostgreSQL cluster, ``replicas`` replicas behind a balancer, the image ``tiny``
    and ``role`` (by default ``compute``, auto-provisioned with ``tiny``), and a lab of
    ``nodes`` machines of that role booting through the balancer (not yet imported).
    ``settings`` are more ``PROVISIONER_*`` variables for every replica. TFTP is replica
    0's, or with ``tftp_edge`` a ``provisioner pxe serve`` process's (static files)."""
    role = role or {"name": "compute", "default_image": "tiny"}
    cluster = Cluster(bin_dir)
    started: list[Replica] = []
    balancer: Balancer | None = None
    lab: Lab | None = None
    db: Engine | None = None
    api: httpx.Client | None = None
    edge: subprocess.Popen[bytes] | None = None
    try:
        images = tmp / "images" / "tiny"
        images.mkdir(parents=True)
        (images / "vmlinuz").write_bytes(os.urandom(64_000))
        (images / "initrd.img").write_bytes(os.urandom(128_000))
        tftp_root = tmp / "tftp"
        tftp_root.mkdir()
        for loader in ("undionly.kpxe", "ipxe.efi"):
            (tftp_root / loader).write_bytes(os.urandom(70_000))
        tftp_port = free_udp_port()
        shared = clean_env(tmp / "home")
        shared.update(
            PROVISIONER_DATABASE_URL=cluster.url,
            PROVISIONER_SECRET_KEY=Fernet.generate_key().decode(),
            PROVISIONER_IMAGES_DIR=str(tmp / "images"),
            PROVISIONER_TFTP_ROOT=str(tftp_root),
        )
        shared.update({f"PROVISIONER_{k.upper()}": v for k, v in settings.items()})
        # The schema, and a token every replica accepts (both in the shared database).
        token = subprocess.run(
            [BIN / "provisioner", "token", "create", "--scope", "admin"],
            env={**shared, "PROVISIONER_DATA_DIR": str(tmp / "cli")},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        members = [Replica(i, tmp, {}) for i in range(replicas)]
        balancer = Balancer([r.url for r in members])
        for replica in members:
            replica.env = {
                **shared,
                "PROVISIONER_DATA_DIR": str(tmp / f"replica-{replica.index}"),
                "PROVISIONER_BOOT_URL": balancer.url,
            }
            if replica.index == 0 and not tftp_edge:
                replica.env.update(
                    PROVISIONER_TFTP_ENABLED="1",
                    PROVISIONER_TFTP_ADDRESS="127.0.0.1",
                    PROVISIONER_TFTP_PORT=str(tftp_port),
                )
            replica.start()
            started.append(replica)
        if tftp_edge:
            with (tmp / "pxe.log").open("ab") as log:
                edge = subprocess.Popen(
                    [
                        *(BIN / "provisioner", "pxe", "serve", "--root", str(tftp_root)),
                        *("--tftp-address", "127.0.0.1", "--tftp-port", str(tftp_port)),
                    ],
                    env={**shared, "PROVISIONER_DATA_DIR": str(tmp / "pxe")},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
        for replica in members:
            poll(replica.ready, 90, functools.partial(_not_ready, replica))
        api = httpx.Client(
            base_url=members[0].url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )
        for path, body in (
            ("/api/v1/images", TINY_IMAGE),
            ("/api/v1/roles", role),
        ):
            response = api.post(path, json=body)
            assert response.status_code == 201, f"POST {path}: {response.text}"
        lab = Lab(
            tmp,
            nodes,
            "--role",
            role["name"],
            "--tftp",
            f"127.0.0.1:{tftp_port}",
            "--ipxe-url",
            f"{balancer.url}/boot/bootstrap.ipxe",
            "--install-time",
            str(install_time),
            "--reboot-delay",
            str(reboot_delay),
        )
        db = create_engine(cluster.url, pool_pre_ping=True)
        yield Fleet(cluster, members, balancer, lab, db, api, token)
    finally:
        try:
            if lab is not None:
                lab.stop()
        finally:
            if api is not None:
                api.close()
            for replica in started:
                replica.stop()
            if edge is not None:
                edge.terminate()
                edge.wait(timeout=15)
            if balancer is not None:
                balancer.stop()
            if db is not None:
                db.dispose()
            cluster.close()


def _not_ready(replica: Replica) -> str:
    return f"replica {replica.index} did not become ready:\n{replica.log_tail()}"
