"""The boot decisions: what a machine that network-boots gets, by what the service wants
for its MAC, and the answer files and callbacks of its installer.

One object per app (``app.state.services.boot``); every method opens its own short
session, so the node-facing routes stay independent of the API's request sessions.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import (
    Connection,
    Engine,
    PoolProxiedConnection,
    Select,
    bindparam,
    insert,
    select,
)
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from provisioner import deployments
from provisioner.boot import answers, scripts
from provisioner.boot.files import FileServed
from provisioner.boot.hops import HopRecorder
from provisioner.deployments import Callback, Live
from provisioner.errors import Problem
from provisioner.lifecycle import NETBOOT_STATES, State
from provisioner.models import Nic, Node, OsImage, Role, table_of, utcnow
from provisioner.profiles import ProfileSet
from provisioner.schemas import TftpTransfer
from provisioner.secrets import Vault
from provisioner.settings import Settings
from provisioner.timeline import EventKind
from provisioner.validation import normalize_mac

_node = table_of(Node)
_nic = table_of(Nic)

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
    ) -> None:
        self._engine = engine
        self._vault = vault
        self._settings = settings
        self._profiles = profiles
        self.hops = hops
        self._inline = engine.dialect.name == "sqlite"
        self._reader: PoolProxiedConnection | None = None
        self._by_mac_sql = ""

    def base_url(self, request_base: str) -> str:
        """Where nodes reach the service: the configured URL, else the one they used."""
        return (self._settings.boot_url or request_base).rstrip("/")

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
            return self._script(mac, client, base, _booting_node(connection, mac))

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
            with Session(self._engine) as session:
                return self._discovered(session, mac, client, base)
        self._seen(node, client)
        if node.state in NETBOOT_STATES:
            with self._engine.connect() as connection:
                plan, why = self._plan(connection, node, base)
        else:
            plan, why = None, f"{node.name} is {node.state}"
        if plan is None:
            self.hops.node(node.node_id, EventKind.BOOT_IPXE, f"iPXE script: local disk ({why})")
            return scripts.local_disk(why)
        self.hops.node(node.node_id, EventKind.BOOT_IPXE, f"iPXE script: {plan.title}")
        return scripts.install(plan)

    def _seen(self, node: BootingNode, client: str) -> None:
        if node.boot_ip != client:
            self.hops.boot_ip(node.mac, client)

    def _discovered(self, session: Session, mac: str, client: str, base: str) -> str:
        node_id = self._discover(session, mac)
        self.hops.boot_ip(mac, client)
        settings = self._settings
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

    def _discover(self, session: Session, mac: str) -> uuid.UUID:
        """Record an unknown MAC as a ``discovered`` node, once however often it asks."""
        node_id = uuid.uuid4()
        now = utcnow()
        try:
            session.execute(
                insert(_node).values(
                    id=node_id,
                    name=f"discovered-{mac.replace(':', '')}",
                    state=State.DISCOVERED.value,
                    created_at=now,
                    updated_at=now,
                )
            )
            session.execute(insert(_nic).values(node_id=node_id, mac=mac, pxe=True))
            self.hops.node(node_id, EventKind.DISCOVERED, f"network boot from unknown MAC {mac}")
            session.commit()
        except IntegrityError:
            # A concurrent request for the same MAC (or a node already named so) won.
            session.rollback()
            node = _booting_node(session.connection(), mac)
            if node is None:
                raise
            return node.node_id
        return node_id

    def _plan(
        self, connection: Connection, node: BootingNode, base: str
    ) -> tuple[scripts.Install | None, str]:
        state = node.state
        if state not in NETBOOT_STATES:
            return None, f"{node.name} is {state}"
        live = deployments.live_for_node(connection, self._vault, node.node_id)
        if live is None:
            return None, f"{node.name} is {state} but has no live deployment"
        if state == State.WIPING:
            return self._wipe_plan(node, live, base)
        return self._install_plan(connection, node, live, base), ""

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
            raise Problem(
                409,
                f"Deployment {row.id} names role {row.role!r} and image {row.image!r}, which "
                "no longer both exist; start a new deployment.",
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
        """The answer file (or, for autoinstall, its ``user-data``/``meta-data``)."""
        with Session(self._engine) as session:
            live = deployments.by_token(session, self._vault, token)
            node = session.get(Node, live.row.node_id)
            if node is None:  # deleted between the two reads
                raise Problem(404, "No deployment has this token.")
            context, image = self._answer_context(session.connection(), node.name, None, live, base)
        if part == "meta-data":
            text, media = answers.meta_data(context), "text/plain; charset=utf-8"
        else:
            text = answers.render_answer(context)
            media = answers.answer_media_type(image.answer_template)
        self.hops.node(
            live.row.node_id,
            EventKind.BOOT_ANSWER,
            f"answer file served: {image.answer_template} {part}",
        )
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
        with Session(self._engine) as session:
            node = _booting_node(session.connection(), mac)
            if node is None:
                self.hops.unknown(client, mac, EventKind.TFTP_CONFIG, f"{path}: unknown MAC")
                return None
            self._seen(node, client)
            plan, why = self._plan(session.connection(), node, base)
        render = scripts.grub if path.startswith("grub/") else scripts.pxelinux
        try:
            text = render(plan, why or (plan.title if plan else ""))
        except ValueError as exc:
            text, why = render(None, str(exc)), str(exc)
        self.hops.node(node.node_id, EventKind.BOOT_TFTP, f"{path}: {why or 'install'}")
        return text

    def record_tftp(self, transfers: Sequence[TftpTransfer]) -> None:
        """Put finished TFTP transfers on the timelines of the nodes that last booted
        from their addresses (TFTP requests name no MAC)."""
        for transfer in transfers:
            detail = (
                f"TFTP {transfer.file} to {transfer.client}: {transfer.result}, "
                f"{transfer.bytes:,} bytes in {transfer.duration:.2f} s"
            )
            self.hops.by_address(transfer.client, EventKind.BOOT_TFTP, detail)

    def file_served(self, served: FileServed) -> None:
        """The boot-file route's observer: kernels and initrds fetched with a token."""
        detail = f"{served.path}: HTTP {served.status}, {served.bytes_sent:,} bytes"
        if not served.complete:
            detail += ", cut off"
        if served.token:
            self.hops.by_token(served.token, served.client, EventKind.BOOT_FILE, detail)
        else:
            self.hops.unknown(served.client, None, EventKind.HTTP_FILE, detail)


def _profile_of(connection: Connection, node_id: uuid.UUID) -> str | None:
    return connection.execute(
        select(_node.c.hardware_profile).where(_node.c.id == node_id)
    ).scalar_one_or_none()


def _catalog_entry(
    connection: Connection, statement: Select[Any], model: type[Entry], name: str | None
) -> Entry | None:
    found = connection.execute(statement, {"name": name}).first() if name else None
    return None if found is None else model(**found._mapping)
