"""The boot decisions: what a machine that network-boots gets, by what the service wants
for its MAC, and the answer files and callbacks of its installer.

One object per app (``app.state.services.boot``); every method opens its own short
session, so the node-facing routes stay independent of the API's request sessions.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import jinja2
from sqlalchemy import (
    Connection,
    Engine,
    PoolProxiedConnection,
    Select,
    bindparam,
    select,
    update,
)
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from provisioner import deployments, timeline
from provisioner.boot import agent_boot, answers, dhcp, scripts
from provisioner.boot.discovery import Discovery
from provisioner.boot.files import FileServed
from provisioner.boot.hops import HopRecorder
from provisioner.deployments import Callback, Live
from provisioner.errors import Problem
from provisioner.lifecycle import NETBOOT_STATES, State
from provisioner.metrics import DiscoveryCounters
from provisioner.models import Deployment, Nic, Node, OsImage, Role, table_of, utcnow
from provisioner.profiles import ProfileSet
from provisioner.schemas import DhcpExchange, TftpTransfer
from provisioner.secrets import Vault
from provisioner.settings import Settings
from provisioner.steps import LIVE, DeploymentKind, DeploymentStatus, Method
from provisioner.timeline import Actor, EventKind
from provisioner.validation import normalize_mac
from pxe import dhcp_log

log = logging.getLogger(__name__)

_node = table_of(Node)
_nic = table_of(Nic)
_deployment = table_of(Deployment)

# What rendering a boot chain raises for records it cannot render: answers and scripts
# refuse a value with a ValueError naming it; a template can fail on its own.
_RENDER_ERRORS = (ValueError, jinja2.TemplateError)
# Renders a boot loader's text from a plan, or from why there is none.
Render = Callable[[scripts.Install | None, str], str]
# A base URL every script and answer file can carry as it is (answers.py checks URLs the
# same way): printable ASCII, none of iPXE's or the kernel's special characters.
_BASE_URL = re.compile(r"https?://[\x21-\x7e]+")
_BASE_UNSAFE = frozenset('${}"\\')

# PXELINUX asks for "01-<mac with dashes>" (01 = Ethernet); GRUB for "grub.cfg-01-<mac>".
_PER_MAC_FILE = re.compile(
    r"^(?:pxelinux\.cfg/01-|grub/grub\.cfg-01-)((?:[0-9a-f]{2}[-:]){5}[0-9a-f]{2})$", re.I
)

# Built once: compiling a statement's cache key costs more than SQLite's own lookup.
_BY_MAC = (
    select(
        _node.c.id,
        _node.c.name,
        _node.c.state,
        _node.c.hardware_profile,
        _nic.c.mac,
        _nic.c.boot_ip,
    )
    .join(_nic, _nic.c.node_id == _node.c.id)
    .where(_nic.c.mac == bindparam("mac"))
)


# A deploying node's role and image, read on every boot request it makes (see
# deployments.live_for_node for why without the ORM).
_IMAGE = table_of(OsImage).select().where(table_of(OsImage).c.name == bindparam("name"))
_ROLE = table_of(Role).select().where(table_of(Role).c.name == bindparam("name"))
Entry = TypeVar("Entry", OsImage, Role)


def _booting_node(connection: Connection, mac: str) -> BootingNode | None:
    row = connection.execute(_BY_MAC, {"mac": mac}).first()
    return None if row is None else BootingNode(*row)


@dataclass(frozen=True)
class BootingNode:
    """The node that owns a network-booting MAC, as the boot decisions need it."""

    node_id: uuid.UUID
    name: str
    state: str
    hardware_profile: str | None
    mac: str
    boot_ip: str | None


class BootService:
    def __init__(
        self,
        engine: Engine,
        vault: Vault,
        settings: Settings,
        profiles: Callable[[], ProfileSet],
        hops: HopRecorder,
        discovery: DiscoveryCounters,
    ) -> None:
        self._engine = engine
        self._vault = vault
        self._settings = settings
        self._profiles = profiles
        self.hops = hops
        self._inline = engine.dialect.name == "sqlite"
        self._reader: PoolProxiedConnection | None = None
        self._by_mac_sql = ""
        self._discovery = Discovery(engine, settings, discovery)

    def base_url(self, request_base: str) -> str:
        """Where nodes reach the service: the configured URL, else the one they used.
        A Host header no script could carry is refused here: it is the asker's doing,
        and must not fail the deployment of the node it names."""
        base = (self._settings.boot_url or request_base).rstrip("/")
        if not _BASE_URL.fullmatch(base) or not _BASE_UNSAFE.isdisjoint(base):
            raise Problem(
                400,
                "The Host header must be a plain host or host:port: boot scripts carry it "
                "as it is.",
            )
        return base

    # --- iPXE ---------------------------------------------------------------------

    async def ipxe(self, mac: str, client: str, base: str) -> str:
        """The script for ``mac``. Boot storms ask hundreds of times a second: on SQLite
        the indexed lookup (tens of microseconds, never blocked by writers in WAL mode)
        runs on the event loop, sparing each request two thread hand-offs; a network
        database is asked from a worker thread."""
        if self._inline:
            return self._script(mac, client, base, self._read_inline(mac))
        return await run_in_threadpool(self._look_up_and_script, mac, client, base)

    def _look_up_and_script(self, mac: str, client: str, base: str) -> str:
        with self._engine.connect() as connection:
            node = _booting_node(connection, mac)
        return self._script(mac, client, base, node)

    def _read_inline(self, mac: str) -> BootingNode | None:
        # One DBAPI connection kept for the event loop's lookups: checking a connection
        # out of SQLAlchemy's pool and back costs more than the query.
        if self._reader is None:
            self._reader = self._engine.raw_connection()
            self._by_mac_sql = str(_BY_MAC.compile(dialect=self._engine.dialect))
        row = self._reader.cursor().execute(self._by_mac_sql, (mac,)).fetchone()
        return None if row is None else BootingNode(uuid.UUID(row[0]), *row[1:])

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def _script(self, mac: str, client: str, base: str, node: BootingNode | None) -> str:
        if node is None:
            return self._unknown(mac, client, base)
        self._seen(node, client)
        return self._loader_text(node, base, scripts.ipxe, EventKind.BOOT_IPXE, "iPXE script")

    def _seen(self, node: BootingNode, client: str) -> None:
        if node.boot_ip != client:
            self.hops.boot_ip(node.mac, client)

    def _unknown(self, mac: str, client: str, base: str) -> str:
        node_id = self._discovery.record(mac)
        if node_id is None:
            why = "not recorded: over PROVISIONER_DISCOVERY_RATE"
            self.hops.unknown(client, mac, EventKind.BOOT_IPXE, f"iPXE script: {why}")
            return scripts.later(base, "too many unknown machines at once")
        self.hops.boot_ip(mac, client)
        settings = self._settings
        if agent_boot.discovers(self._settings):
            live = self._discovery_job(node_id)
            plan = self._agent_plan(None, f"discovery of {mac}", mac, live, base)
            self.hops.node(node_id, EventKind.BOOT_IPXE, f"iPXE script: {plan.title}")
            return scripts.install(plan)
        if settings.discovery_kernel_url and settings.discovery_initrd_url:
            plan = scripts.Install(
                title=f"discovery of {mac}",
                kernel_url=self._file_url(settings.discovery_kernel_url, base, None),
                initrd_url=self._file_url(settings.discovery_initrd_url, base, None),
                kernel_args=f"{settings.discovery_kernel_args} provisioner.mac={mac}".strip(),
            )
            self.hops.node(node_id, EventKind.BOOT_IPXE, "iPXE script: discovery image")
            return scripts.install(plan)
        self.hops.node(node_id, EventKind.BOOT_IPXE, "iPXE script: local disk (no discovery image)")
        return scripts.local_disk("unknown machine, no discovery image configured")

    def _loader_text(
        self, node: BootingNode, base: str, render: Render, kind: EventKind, what: str
    ) -> str:
        """What ``node``'s boot loader is told (``render`` of its deployment's plan), with
        the hop on its timeline. A deployment whose boot chain cannot be rendered fails,
        and the loader is told why instead."""
        live = None
        try:
            with self._engine.connect() as connection:
                live, why = self._live(connection, node)
                plan, why = self._plan(connection, node, live, base) if live else (None, why)
            text = render(plan, why)
        except _RENDER_ERRORS as exc:
            if live is None:
                raise
            why = f"{scripts.BOOT_FAILED} ({what}): {exc}"
            plan, text = None, render(None, why)
            if self._fail(node.node_id, node.name, live, kind, why):
                return text  # the failure's event records this hop
        summary = plan.title if plan else f"local disk ({why})"
        self.hops.node(node.node_id, kind, f"{what}: {summary}")
        return text

    def _discovery_job(self, node_id: uuid.UUID) -> Live:
        """A discovered node's agent works for an inspection deployment of its own:
        its token is the only thing that lets the agent's inventory in."""
        with Session(self._engine) as session:
            deployments.start(
                session,
                self._vault,
                node_id,
                kind=DeploymentKind.INSPECT,
                method=Method.AGENT,
                role=None,
                image=None,
                timeout=self._settings.deploy_timeout,
            )
            session.commit()
        with self._engine.connect() as connection:
            live = deployments.live_for_node(connection, self._vault, node_id)
        if live is None:  # deleted by the discovery bound meanwhile
            raise Problem(503, "The discovered node was removed meanwhile; boot again.")
        return live

    def _live(self, connection: Connection, node: BootingNode) -> tuple[Live | None, str]:
        """The deployment a network boot of ``node`` is for, or why there is none."""
        if node.state == State.DISCOVERED.value and agent_boot.discovers(self._settings):
            # Enlistment goes on until the agent has reported, however often it boots.
            live = deployments.live_for_node(connection, self._vault, node.node_id)
            if live is not None:
                return live, ""
        if node.state not in NETBOOT_STATES:
            return None, f"{node.name} is {node.state}"
        live = deployments.live_for_node(connection, self._vault, node.node_id)
        if live is None:
            return None, f"{node.name} is {node.state} but has no live deployment"
        return live, ""

    def _plan(
        self, connection: Connection, node: BootingNode, live: Live, base: str
    ) -> tuple[scripts.Install | None, str]:
        if live.row.method == Method.AGENT.value:
            title = f"deploy agent for {live.row.kind} of {node.name}"
            return self._agent_plan(node.hardware_profile, title, node.mac, live, base), ""
        if node.state == State.WIPING:
            return self._wipe_plan(node, live, base)
        return self._install_plan(connection, node, live, base), ""

    def _fail(
        self, node_id: uuid.UUID, name: str, live: Live, kind: EventKind, message: str
    ) -> bool:
        """End ``live`` as failed with ``message``, and wake its node: the reconciler then
        fails the node through its timeline, as after an installer's ``failed``. Once:
        the machine asks again and again, and only the first request finds the
        deployment live (the others find no live deployment, and boot from disk).
        Whether this call ended it."""
        short = str(live.row.id)[:8]
        with self._engine.begin() as connection:
            ended = connection.execute(
                update(_deployment)
                .where(_deployment.c.id == live.row.id, _deployment.c.status.in_(LIVE))
                .values(
                    status=DeploymentStatus.FAILED.value,
                    message=message[:2000],
                    finished_at=utcnow(),
                )
            )
            if ended.rowcount != 1:
                return False
            connection.execute(update(_node).where(_node.c.id == node_id).values(wake_at=None))
            text = f"deployment {short} failed: {message}"
            timeline.note(connection, node_id, kind, Actor.PROVISIONER, text)
        # One line per failed deployment, not a traceback per request.
        log.warning("node %s: deployment %s failed: %s", name, short, message)
        return True

    def _install_plan(
        self, connection: Connection, node: BootingNode, live: Live, base: str
    ) -> scripts.Install:
        context, image = self._answer_context(connection, node.name, node, live, base)
        return scripts.Install(
            title=f"install {image.name} on {node.name} as role {live.row.role} "
            f"(deployment {str(live.row.id)[:8]})",
            kernel_url=self._file_url(image.kernel_url, base, live.token),
            initrd_url=self._file_url(image.initrd_url, base, live.token),
            kernel_args=answers.kernel_arguments(context),
        )

    def _agent_plan(
        self, profile_name: str | None, title: str, mac: str, live: Live, base: str
    ) -> scripts.Install:
        profile = self._profiles().get(profile_name) if profile_name else None
        return agent_boot.plan(self._settings, profile, title, mac, live, base)

    def _wipe_plan(
        self, node: BootingNode, live: Live, base: str
    ) -> tuple[scripts.Install | None, str]:
        settings = self._settings
        if not (settings.wipe_kernel_url and settings.wipe_initrd_url):
            return None, f"{node.name} is wiping but no wipe image is configured"
        callback = f"{base}/callback/{live.token}"
        args = f"{settings.wipe_kernel_args} provisioner.callback={callback}".strip()
        return (
            scripts.Install(
                title=f"wipe {node.name} (deployment {str(live.row.id)[:8]})",
                kernel_url=self._file_url(settings.wipe_kernel_url, base, live.token),
                initrd_url=self._file_url(settings.wipe_initrd_url, base, live.token),
                kernel_args=args,
            ),
            "",
        )

    def _file_url(self, location: str, base: str, token: str | None) -> str:
        """Absolute URLs (a public mirror) go as they are; anything else is a file in
        the images directory, fetched with the token so the fetch joins the trace."""
        if "://" in location:
            return location
        url = f"{base}/boot/files/{location.lstrip('/')}"
        return f"{url}?token={token}" if token else url

    def _answer_context(
        self, connection: Connection, hostname: str, node: BootingNode | None, live: Live, base: str
    ) -> tuple[answers.AnswerContext, OsImage]:
        row = live.row
        image = _catalog_entry(connection, _IMAGE, OsImage, row.image)
        role = _catalog_entry(connection, _ROLE, Role, row.role)
        if image is None or role is None:
            raise ValueError(
                f"deployment {str(row.id)[:8]} names role {row.role!r} and image "
                f"{row.image!r}, which no longer both exist; start a new deployment"
            )
        profile_name = node.hardware_profile if node else _profile_of(connection, row.node_id)
        profile = self._profiles().get(profile_name) if profile_name else None
        settings = self._settings
        context = answers.AnswerContext(
            hostname=hostname,
            domain=settings.domain,
            image=answers.ImageSpec(
                name=image.name,
                os_family=image.os_family,
                version=image.version,
                repo_url=image.repo_url,
                answer_template=image.answer_template,
                kernel_args=image.kernel_args,
            ),
            role=answers.RoleSpec(
                name=role.name,
                packages=tuple(role.packages),
                puppet_server=settings.puppet_server,
                puppet_environment=role.puppet_environment,
            ),
            profile=profile,
            challenge=live.challenge,
            callback_url=f"{base}/callback/{live.token}",
            answer_url=f"{base}/boot/answers/{live.token}",
            ssh_keys=tuple(settings.ssh_authorized_keys),
        )
        return context, image

    # --- answer files and callbacks -----------------------------------------------

    def answer(self, token: str, part: str, base: str) -> tuple[str, str]:
        """The answer file (or, for autoinstall, its ``user-data``/``meta-data``). One
        that cannot be rendered fails the deployment (410: its token is spent)."""
        with Session(self._engine) as session:
            live = deployments.by_token(session, self._vault, token)
            node = session.get(Node, live.row.node_id)
            if node is None:  # deleted between the two reads
                raise Problem(404, "No deployment has this token.")
            name = node.name
            try:
                context, image = self._answer_context(session.connection(), name, None, live, base)
                text, media = _answer_part(context, image, part)
            except _RENDER_ERRORS as exc:
                failure = f"{scripts.BOOT_FAILED} (answer file): {exc}"
            else:
                failure = ""
        node_id = live.row.node_id
        if failure:
            self._fail(node_id, name, live, EventKind.BOOT_ANSWER, failure)
            raise Problem(410, f"This deployment has failed: {failure}.")
        detail = f"answer file served: {image.answer_template} {part}"
        self.hops.node(node_id, EventKind.BOOT_ANSWER, detail)
        return text, media

    def callback(self, token: str, kind: Callback, message: str, client: str) -> None:
        with Session(self._engine) as session:
            deployments.callback(session, self._vault, token, kind, message, client)

    # --- TFTP ---------------------------------------------------------------------

    def tftp_file(self, path: str, client: str, base: str) -> str | None:
        """Per-MAC configuration for loaders that are not iPXE; None: no such file."""
        match = _PER_MAC_FILE.match(path)
        if match is None:
            return None
        mac = normalize_mac(match.group(1).replace("-", ":"))
        with self._engine.connect() as connection:
            node = _booting_node(connection, mac)
        if node is None:
            self.hops.unknown(client, mac, EventKind.TFTP_CONFIG, f"{path}: unknown MAC")
            return None
        self._seen(node, client)
        render = scripts.grub if path.startswith("grub/") else scripts.pxelinux
        return self._loader_text(node, base, render, EventKind.BOOT_TFTP, path)

    def record_tftp(self, transfers: Sequence[TftpTransfer]) -> None:
        """Put finished TFTP transfers on the timelines of the nodes that last booted
        from their addresses (TFTP requests name no MAC)."""
        for transfer in transfers:
            detail = (
                f"TFTP {transfer.file} to {transfer.client}: {transfer.result}, "
                f"{transfer.bytes:,} bytes in {transfer.duration:.2f} s"
            )
            self.hops.by_address(transfer.client, EventKind.BOOT_TFTP, detail)

    def record_dhcp(self, exchanges: Sequence[DhcpExchange]) -> None:
        """Put DHCP answers on the timelines of the nodes whose NICs they went to."""
        dhcp.record(self.hops, exchanges)

    def record_dhcp_log(self, exchanges: Sequence[dhcp_log.DhcpExchange]) -> None:
        """The same, for answers this process read from dnsmasq's log itself."""
        self.record_dhcp([DhcpExchange.model_validate(e.report()) for e in exchanges])

    def file_served(self, served: FileServed) -> None:
        """The boot-file route's observer: kernels and initrds fetched with a token."""
        detail = f"{served.path}: HTTP {served.status}, {served.bytes_sent:,} bytes"
        if not served.complete:
            detail += ", cut off"
        if served.token:
            self.hops.by_token(served.token, served.client, EventKind.BOOT_FILE, detail)
        else:
            self.hops.unknown(served.client, None, EventKind.HTTP_FILE, detail)


def _answer_part(context: answers.AnswerContext, image: OsImage, part: str) -> tuple[str, str]:
    """The text of an answer file's ``part`` and its media type."""
    if part == "meta-data":
        return answers.meta_data(context), "text/plain; charset=utf-8"
    return answers.render_answer(context), answers.answer_media_type(image.answer_template)


def _profile_of(connection: Connection, node_id: uuid.UUID) -> str | None:
    return connection.execute(
        select(_node.c.hardware_profile).where(_node.c.id == node_id)
    ).scalar_one_or_none()


def _catalog_entry(
    connection: Connection, statement: Select[Any], model: type[Entry], name: str | None
) -> Entry | None:
    found = connection.execute(statement, {"name": name}).first() if name else None
    return None if found is None else model(**found._mapping)
