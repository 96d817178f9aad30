"""The service's side of the deploy agent: what its posts change, and what it is told.

An agent holds one deployment's token (its kernel command line carries it) and so works
for that deployment only: an inspection, an image deploy or a wipe. Its inventory is
kept as in-band facts and completes the node's NICs; each heartbeat records that it is
alive and answers its next command; a result ends its job, waking the node's
reconciler step (:func:`provisioner.waits.agent`). Every method opens its own short
session, as the boot service's do.
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import yaml
from sqlalchemy import Engine, update
from sqlmodel import Session, col, select

from provisioner import deployments, image_cache, inspection, timeline
from provisioner.agent import protocol
from provisioner.deployments import Live
from provisioner.errors import Problem
from provisioner.models import Deployment, DiskWipe, InventoryFact, Nic, Node, OsImage, utcnow
from provisioner.profiles import ProfileSet, RootDisk
from provisioner.secrets import Vault
from provisioner.settings import Settings
from provisioner.steps import INSTALL_KINDS, DeploymentKind, DeploymentStatus, Method, Step
from provisioner.timeline import Actor, EventKind
from provisioner.validation import normalize_mac
from provisioner.waits import AGENT_CANNOT, AGENT_FAILED

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    """The live deployment an agent works for, and its node's name."""

    live: Live
    node_name: str

    @property
    def row(self) -> Deployment:
        return self.live.row

    @property
    def kind(self) -> DeploymentKind:
        return DeploymentKind(self.row.kind)


# The result each kind of deployment's job ends with (an inspection's is its inventory).
_RESULT_OF = {
    DeploymentKind.PROVISION: "deploy",
    DeploymentKind.REIMAGE: "deploy",
    DeploymentKind.WIPE: "wipe",
}


class AgentJobs:
    def __init__(
        self,
        engine: Engine,
        vault: Vault,
        settings: Settings,
        profiles: Callable[[], ProfileSet],
    ) -> None:
        self._engine = engine
        self._vault = vault
        self._settings = settings
        self._profiles = profiles

    # --- what the agent posts -------------------------------------------------------

    def inventory(self, token: str, found: protocol.Inventory, client: str) -> None:
        """Keep the in-band facts, add the NICs the node did not have, and mark the
        deployment started (an inspection's job is then done)."""
        with Session(self._engine) as session:
            try:
                job = self._job(session, token)
            except Problem as problem:
                if problem.status == 410:
                    return  # posted again after its job ended: its answer was lost
                raise
            node_id = job.row.node_id
            session.add(
                InventoryFact(
                    node_id=node_id, source=inspection.IN_BAND, facts=found.model_dump(mode="json")
                )
            )
            added = self._add_nics(session, node_id, found.nics)
            now = utcnow()
            values: dict[str, object] = {"agent_seen_at": now}
            if job.row.status == DeploymentStatus.PENDING.value:
                values.update(status=DeploymentStatus.STARTED.value, started_at=now)
            if job.kind is DeploymentKind.INSPECT:
                values.update(
                    status=DeploymentStatus.DONE.value, finished_at=now, agent_done_at=now
                )
            self._update(session, job, values)
            system = found.system
            text = (
                f"agent inventory from {client}: {system.vendor} {system.product}, serial "
                f"{system.serial or 'none'}, {found.cpu.count} CPU(s), "
                f"{found.memory_bytes / 2**30:.1f} GiB, {len(found.disks)} disk(s), "
                f"{len(found.nics)} NIC(s), {found.boot_mode.upper()}"
            )
            if added:
                text += f"; NICs added: {', '.join(added)}"
            timeline.note(session, node_id, EventKind.AGENT, Actor.AGENT, text)
            session.commit()

    def heartbeat(self, token: str, beat: protocol.Heartbeat) -> str:
        """Record that the agent lives, and answer its next command. An agent whose
        deployment has ended is told to power off: nothing is left for it to do."""
        with Session(self._engine) as session:
            try:
                job = self._job(session, token)
            except Problem as problem:
                if problem.status == 410:
                    return protocol.POWEROFF
                raise
            self._update(session, job, {"agent_seen_at": utcnow()}, wake=False)
            session.commit()
            wait = protocol.wait(self._settings.agent_heartbeat_interval)
            row = job.row
            if beat.busy or row.agent_done_at is not None or row.step != Step.AGENT.value:
                return wait
            if job.kind in INSTALL_KINDS:
                return self._deploy_command(session, job) or wait
            if job.kind is DeploymentKind.WIPE:
                disks = self._disks(session, row.node_id)
                if not disks:
                    return self._fail(
                        session,
                        job,
                        "it found no disk to wipe; if the machine has disks, the agent has "
                        "no driver for their controller (docs/agent.md)",
                    )
                return protocol.wipe(self._settings.wipe_policy, disks)
            return wait

    def result(self, token: str, done: protocol.Result, client: str) -> None:
        """A finished job: the image written and verified, or the disks wiped (with
        their evidence). A failed one fails the deployment with the agent's reason."""
        with Session(self._engine) as session:
            job = self._job(session, token)
            # A result of another kind is not this job's: it must not end it.
            if done.command != _RESULT_OF.get(job.kind):
                raise Problem(409, f"This {job.kind.value} deployment's job is no {done.command}.")
            node_id, now = job.row.node_id, utcnow()
            # The agent's word is checked against what it was told: a result that does
            # not match fails as the service's finding, not as the agent's report.
            found = self._mismatch(session, job, done) if done.ok else None
            for disk in done.disks:
                session.add(
                    DiskWipe(
                        node_id=node_id,
                        deployment_id=job.row.id,
                        **disk.model_dump(),
                    )
                )
                timeline.note(session, node_id, EventKind.WIPE, Actor.AGENT, _wiped(disk))
            if done.ok and not found:
                values: dict[str, object] = {"agent_seen_at": now, "agent_done_at": now}
                if done.command == "wipe":
                    values.update(status=DeploymentStatus.DONE.value, finished_at=now)
                text = _written(job.row, done) if done.command == "deploy" else "disks wiped"
            else:
                if found:
                    message = (
                        f"{AGENT_CANNOT}: the agent reported its {done.command} done, but {found}"
                    )
                else:
                    reason = done.message or _first_failure(done) or "no reason given"
                    message = f"{AGENT_FAILED} that its {done.command} failed: {reason}"
                values = {
                    "status": DeploymentStatus.FAILED.value,
                    "finished_at": now,
                    "message": message[:2000],
                }
                text = message[:2000]
            self._update(session, job, values)
            timeline.note(session, node_id, EventKind.AGENT, Actor.AGENT, f"{text} (from {client})")
            session.commit()
        if not done.ok or found:
            log.warning("node %s: %s", job.node_name, text)

    # --- what the agent downloads ---------------------------------------------------

    def image(self, token: str) -> image_cache.Prepared:
        """The image an agent writes, prepared in this replica's cache."""
        with Session(self._engine) as session:
            job = self._job(session, token)
            image = session.get(OsImage, job.row.image) if job.row.image else None
        if job.kind not in INSTALL_KINDS or image is None or image.deploy != "image":
            raise Problem(404, "This deployment writes no image.")
        try:
            return image_cache.prepare(image, self._settings)
        except image_cache.ImageCacheError as err:
            raise Problem(503, f"The image cannot be served now: {err}") from err

    def config_drive(self, token: str, base: str) -> bytes:
        """The config drive's files as a tar (OpenStack's layout, which cloud-init and
        the lab image read): hostname, SSH keys, the first-boot callback and, with a
        Puppet server, the CSR attributes holding the deployment's challenge."""
        with Session(self._engine) as session:
            job = self._job(session, token)
            node = session.get(Node, job.row.node_id)
        if node is None or job.kind not in INSTALL_KINDS:
            raise Problem(404, "This deployment writes no config drive.")
        settings = self._settings
        hostname = f"{node.name}.{settings.domain}" if settings.domain else node.name
        meta = {
            "uuid": str(node.id),
            "name": node.name,
            "hostname": hostname,
            "public_keys": {f"key-{i}": key for i, key in enumerate(settings.ssh_authorized_keys)},
            "meta": {
                "provisioner_callback": f"{base}/callback/{token}/done",
                "role": job.row.role or "",
                "image": job.row.image or "",
            },
        }
        files = {"openstack/latest/meta_data.json": json.dumps(meta, indent=1)}
        if settings.puppet_server:
            files["puppet/csr_attributes.yaml"] = yaml.safe_dump(
                {
                    "custom_attributes": {"challengePassword": job.live.challenge},
                    "extension_requests": {"pp_role": job.row.role or ""},
                },
                sort_keys=False,
            )
        return _tar(files)

    # --- helpers --------------------------------------------------------------------

    def _job(self, session: Session, token: str) -> Job:
        live = deployments.by_token(session, self._vault, token)
        if live.row.method != Method.AGENT.value:
            raise Problem(404, "This deployment is not carried out by the deploy agent.")
        node = session.get(Node, live.row.node_id)
        if node is None:
            raise Problem(404, "No deployment has this token.")
        return Job(live, node.name)

    def _update(
        self, session: Session, job: Job, values: dict[str, object], *, wake: bool = True
    ) -> None:
        session.execute(update(Deployment).where(col(Deployment.id) == job.row.id).values(**values))
        if wake:
            # The node's agent step sleeps until a deadline: what the agent did decides it.
            session.execute(
                update(Node).where(col(Node.id) == job.row.node_id).values(wake_at=None)
            )

    def _add_nics(
        self, session: Session, node_id: uuid.UUID, nics: list[protocol.Nic]
    ) -> list[str]:
        added = []
        for nic in nics:
            try:
                mac = normalize_mac(nic.mac)
            except ValueError:
                continue
            owner = session.exec(select(Nic).where(col(Nic.mac) == mac)).first()
            if owner is None:
                session.add(Nic(node_id=node_id, mac=mac, pxe=nic.booted))
                added.append(mac)
            elif owner.node_id != node_id:
                other = session.get(Node, owner.node_id)
                timeline.note(
                    session,
                    node_id,
                    EventKind.AGENT,
                    Actor.AGENT,
                    f"NIC {mac} is also recorded on node {other.name if other else '?'}; "
                    "left there",
                )
        return added

    def _fail(self, session: Session, job: Job, why: str) -> str:
        """Fail the job before the agent starts it, and tell the agent to power off."""
        message = f"{AGENT_CANNOT}: {why}"
        values = {
            "status": DeploymentStatus.FAILED.value,
            "finished_at": utcnow(),
            "message": message,
        }
        self._update(session, job, values)
        timeline.note(session, job.row.node_id, EventKind.AGENT, Actor.PROVISIONER, message)
        session.commit()
        return protocol.POWEROFF

    def _disks(self, session: Session, node_id: uuid.UUID) -> list[protocol.Disk]:
        facts = inspection.kept(session, node_id).get("in_band") or {}
        return protocol.Inventory.model_validate(facts).disks

    def _target(
        self, session: Session, job: Job
    ) -> tuple[protocol.Disk, image_cache.Prepared] | None:
        """The disk the node's profile picks and the image written to it. Raises
        :class:`protocol.NoDisk` or :class:`image_cache.ImageCacheError`."""
        row = job.row
        node = session.get(Node, row.node_id)
        image = session.get(OsImage, row.image) if row.image else None
        if node is None or image is None:
            return None
        profile = self._profiles().get(node.hardware_profile) if node.hardware_profile else None
        disk = protocol.root_disk(
            self._disks(session, row.node_id), profile.root_disk if profile else RootDisk()
        )
        return disk, image_cache.prepare(image, self._settings)

    def _deploy_command(self, session: Session, job: Job) -> str | None:
        """``deploy`` for the disk the node's profile picks; a deployment no disk fits
        fails here, with the disks the agent saw."""
        try:
            target = self._target(session, job)
        except (protocol.NoDisk, image_cache.ImageCacheError) as err:
            return self._fail(session, job, f"the image cannot be deployed: {err}")
        if target is None:
            return None
        disk, prepared = target
        text = f"agent told to write image {job.row.image} to /dev/{disk.name}"
        timeline.note(session, job.row.node_id, EventKind.AGENT, Actor.PROVISIONER, text)
        session.commit()
        return protocol.deploy(disk, prepared.format, prepared.raw_bytes, prepared.raw_sha256)

    def _mismatch(self, session: Session, job: Job, done: protocol.Result) -> str | None:
        """How a successful result differs from the job it answers, if it does."""
        if done.command == "wipe":
            told = {f"/dev/{d.name}" for d in self._disks(session, job.row.node_id)}
            left = sorted(told - {d.disk for d in done.disks})
            return f"left out {', '.join(left)}, which it was told to wipe" if left else None
        try:
            target = self._target(session, job)
        except (protocol.NoDisk, image_cache.ImageCacheError) as err:
            return f"the service cannot check it: {err}"
        if target is None:
            return None
        disk, prepared = target
        if done.disk != f"/dev/{disk.name}":
            return f"it wrote {done.disk or 'no disk'}, not /dev/{disk.name} as it was told"
        if (done.bytes, done.sha256) != (prepared.raw_bytes, prepared.raw_sha256):
            return (
                f"it read back {done.bytes:,} bytes with SHA-256 {done.sha256 or 'none'}, "
                f"not the image's {prepared.raw_bytes:,} bytes with {prepared.raw_sha256}"
            )
        return None


def _written(row: Deployment, done: protocol.Result) -> str:
    return (
        f"image {row.image} written to {done.disk} and read back: {done.bytes:,} bytes, "
        f"SHA-256 {done.sha256[:16]}..., {done.seconds:.1f} s; config drive written"
    )


def _wiped(disk: protocol.DiskWiped) -> str:
    outcome = "wiped" if disk.ok else "NOT wiped"
    text = f"{disk.disk} {outcome} ({disk.method}): {disk.bytes:,} bytes in {disk.seconds:.1f} s"
    if disk.verified:
        text += f"; {disk.verified}"
    if disk.message:
        text += f"; {disk.message}"
    return text


def _first_failure(done: protocol.Result) -> str:
    failed = next((disk for disk in done.disks if not disk.ok), None)
    return "" if failed is None else f"{failed.disk}: {failed.message or 'failed'}"


def _tar(files: dict[str, str]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o600 if "csr_attributes" in name else 0o644
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()
