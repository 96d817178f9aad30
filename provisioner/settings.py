"""Service settings, read from ``PROVISIONER_*`` environment variables.

Zero configuration must work: everything has a default that suits one operator on one
machine (SQLite in a local data directory, API on loopback).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from provisioner.boot.scripts import ipxe_safe


def default_data_dir() -> Path:
    """``PROVISIONER_DATA_DIR``, else ``./var`` when run from a checkout, else the XDG
    data directory. Read here too for the tools that find the service's builds (the
    deploy agent, the lab image) without loading the settings."""
    if os.environ.get("PROVISIONER_DATA_DIR"):
        return Path(os.environ["PROVISIONER_DATA_DIR"])
    if Path("pyproject.toml").is_file() or Path("var").is_dir():
        return Path("var")
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "provisioner"


def default_agent_dir() -> Path:
    """``PROVISIONER_AGENT_DIR``, else ``agent`` in :func:`default_data_dir`: where the
    tools that build or boot the deploy agent find it without loading the settings."""
    if os.environ.get("PROVISIONER_AGENT_DIR"):
        return Path(os.environ["PROVISIONER_AGENT_DIR"])
    return default_data_dir() / "agent"


def seconds(default: float, description: str, *, allow_zero: bool = False) -> Any:
    """A duration in seconds: more than zero, or zero too where zero has a meaning."""
    if allow_zero:
        return Field(default=default, ge=0, description=description)
    return Field(default=default, gt=0, description=description)


def per_second(default: float, description: str, *, allow_zero: bool = False) -> Any:
    """A rate: more than zero, or zero too where zero has a meaning."""
    return seconds(default, description, allow_zero=allow_zero)


def at_least(minimum: int, default: int, description: str) -> Any:
    """A count that makes no sense below ``minimum``."""
    return Field(default=default, ge=minimum, description=description)


def unset(description: str) -> Any:
    """An optional setting whose absence the description explains."""
    return Field(default=None, description=description)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PROVISIONER_", extra="ignore")

    data_dir: Path = Field(default_factory=default_data_dir)
    database_url: str | None = unset(
        "SQLAlchemy URL; SQLite in the data directory when unset. "
        "PostgreSQL: postgresql+psycopg://user:pass@host/db"
    )
    secret_key: SecretStr | None = unset(
        "Fernet key encrypting BMC passwords; generated into "
        "<data_dir>/secret.key (mode 0600) when unset."
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    max_body_bytes: int = 1024 * 1024
    log_level: str = "info"
    access_log: bool = Field(
        default=False,
        description="Log every HTTP request. Off by default: boot storms would flood the "
        "log, and metrics and node timelines record what matters.",
    )

    # BMC calls: defaults for every BMC, each overridable per BMC.
    bmc_timeout: float = seconds(5.0, "Seconds per IPMI attempt.")
    bmc_retries: int = Field(default=2, ge=0, le=10)
    bmc_cipher_suite: int = Field(default=3, description="IPMI cipher suite: 3 or 17.")
    bmc_workers: int = at_least(1, 64, "BMC calls in flight at once.")
    bmc_per_bmc: int = at_least(1, 1, "Calls in flight per BMC.")
    bmc_power_deadline: float = seconds(
        20.0,
        "Seconds a power action may take to show in the power state the BMC reports "
        "(Redfish BMCs accept an action before carrying it out).",
    )
    bmc_ca_bundle: Path | None = unset(
        "PEM file of the CAs Redfish BMCs' certificates must chain to; when unset, each "
        "BMC's certificate is pinned on first contact (trust on first use)."
    )

    profiles_dir: Path | None = unset("Hardware profiles; the shipped ones when unset.")
    images_dir: Path | None = unset(
        "Kernels, initrds and disk images served under /boot/files; <data_dir>/images when unset."
    )
    accel_redirect: str | None = unset(
        "Internal nginx location (e.g. /_boot_files/) to hand file bytes to "
        "with X-Accel-Redirect; the service then only authorises."
    )

    reconciler: bool = Field(default=True, description="Carry out actions and inspections.")
    reconcile_interval: float = seconds(1.0, "Seconds between two reconciler passes.")
    lease_seconds: float = seconds(
        30.0,
        "Seconds a replica's claim on a node holds unless renewed (every third of it, while "
        "a step runs): how long a dead replica's nodes wait before another takes them over.",
    )
    inspect_on_enroll: bool = True
    power_sync_interval: float = seconds(
        60.0, "Seconds between power polls of every node; 0 stops it.", allow_zero=True
    )
    power_sync_failure_limit: int = at_least(
        1, 5, "Failed polls in a row before a node is flagged."
    )

    role_rules: Path | None = unset(
        "YAML rules giving inspected nodes without a role one (docs/role-rules.md)."
    )
    # Provisioning: how much at once, how fast, how long.
    default_image: str = Field(
        default="rocky-9", description="Image for roles without a default_image."
    )
    power_on_rate: float = per_second(
        10.0, "Machines powered on per second, service-wide (staggering)."
    )
    max_deploying: int = at_least(1, 200, "Installations in flight at once, service-wide.")
    max_deploying_per_rack: int = at_least(1, 48, "Installations in flight at once in one rack.")
    handoff_timeout: float = seconds(3600.0, "Seconds a role's hand-off may take.")

    # The boot network (node-facing routes and the embedded TFTP server).
    boot_url: str | None = unset(
        "Base URL booting nodes reach this service at, e.g. "
        "http://10.0.0.2:8080; the URL each request arrived on when unset."
    )
    deploy_timeout: float = seconds(3600.0, "Seconds an installation may take before it fails.")
    discovery_kernel_url: str | None = unset(
        "Kernel unknown machines boot to be inventoried; they boot from their "
        "local disk when unset."
    )
    discovery_initrd_url: str | None = None
    discovery_kernel_args: str = ""
    # Anyone on a boot network can ask for /boot/ipxe with any MAC: discovery is bounded.
    discovery_rate: float = per_second(
        5.0,
        "Unknown machines recorded as discovered nodes per second, at most, by each "
        "replica; the others are asked to boot again later. 0 records none.",
        allow_zero=True,
    )
    discovery_burst: int = at_least(
        1, 50, "Unknown machines recorded at once before the rate applies (a rack powered on)."
    )
    discovery_max: int = at_least(
        1, 1000, "Discovered nodes kept; the oldest are deleted to make room for a new one."
    )
    wipe_kernel_url: str | None = unset(
        "Kernel released machines boot to erase their disks; the wipe image "
        "calls back done when finished."
    )
    wipe_initrd_url: str | None = None
    wipe_kernel_args: str = ""
    # The deploy agent (docs/agent.md), used when `provisioner agent build` has built it.
    agent_dir: Path | None = unset(
        "Where `provisioner agent build` writes the deploy agent and the service finds it; "
        "<data_dir>/agent when unset. Replicas share one, as they share the images directory."
    )
    agent_heartbeat_interval: float = seconds(
        10.0, "Seconds between two heartbeats of a deploy agent, as it is told."
    )
    agent_heartbeat_timeout: float = seconds(
        120.0, "Seconds without a heartbeat after which a node's agent counts as lost."
    )
    agent_kernel_args: str = Field(
        default="", description="Extra kernel arguments for the deploy agent."
    )
    wipe_policy: Literal["metadata", "full"] = Field(
        default="metadata",
        description="How the agent wipes released disks: metadata (partition tables, "
        "signatures, first and last 64 MiB) or full (every byte, verified by sampling).",
    )
    domain: str | None = unset("DNS domain of installed nodes.")
    puppet_server: str | None = unset("Puppet server installed nodes use; no Puppet when unset.")
    ssh_authorized_keys: list[str] = Field(
        default_factory=list, description="SSH public keys for root on installed nodes (JSON)."
    )
    boot_hops_kept: int = at_least(100, 10_000, "Boot requests of unknown machines kept.")
    tftp_enabled: bool = Field(default=False, description="Serve TFTP from this process.")
    tftp_address: str = "0.0.0.0"  # noqa: S104 (boot networks reach it on any interface)
    tftp_port: int = Field(default=69, ge=0, le=65535)
    tftp_root: Path | None = unset("iPXE binaries served by TFTP; <data_dir>/tftp when unset.")
    dhcp_log: Path | None = unset(
        "dnsmasq's log file (its log-facility, with log-dhcp), read for the DHCP hops of the "
        "boot trace; no DHCP hops when unset."
    )
    # Role webhooks (provisioner/handoff/webhooks.py).
    webhook_timeout: float = seconds(10.0, "Seconds per delivery.")
    webhook_retry_base: float = seconds(2.0, "Seconds before the first retry; doubles each time.")
    webhook_retry_max: float = seconds(300.0, "Longest wait between two delivery attempts.")
    webhook_interval: float = seconds(1.0, "Seconds between two looks for due deliveries.")
    # Puppet CA clean-up on reimage and release (provisioner/handoff/puppet_ca.py).
    puppet_ca_url: str | None = unset(
        "Puppet CA to revoke and delete a reinstalled node's old certificate "
        "on, e.g. https://puppet.example.com:8140; the timeline names the manual command "
        "when unset."
    )
    puppet_ca_cert: Path | None = unset("Client certificate (PEM) the CA's auth.conf allows.")
    puppet_ca_key: Path | None = unset("Its private key (PEM, unencrypted).")
    puppet_ca_cacert: Path | None = unset("The CA's certificate bundle (its ca.pem).")
    puppet_ca_timeout: float = seconds(10.0, "Seconds per CA request.")
    puppet_ca_retry_limit: float = seconds(
        900.0,
        "Seconds the clean-up step keeps retrying before the node fails; 0 fails at once.",
        allow_zero=True,
    )

    @field_validator(
        "boot_url",
        "discovery_kernel_url",
        "discovery_initrd_url",
        "discovery_kernel_args",
        "wipe_kernel_url",
        "wipe_initrd_url",
        "wipe_kernel_args",
        "agent_kernel_args",
    )
    @classmethod
    def _ipxe_safe(cls, value: str | None, info: ValidationInfo) -> str | None:
        """These go on iPXE command lines as they are: refused at start-up, not at every
        boot."""
        if value and not ipxe_safe(value):
            raise ValueError(
                f"PROVISIONER_{str(info.field_name).upper()} must not hold $, {{, }}, "
                "double quotes or line breaks: iPXE would interpret them"
            )
        return value

    @model_validator(mode="after")
    def _puppet_ca_files(self) -> Settings:
        """With a CA URL, the three files must be there at start-up, not at the first
        reimage."""
        if not self.puppet_ca_url:
            return self
        scheme = urlsplit(self.puppet_ca_url)
        if scheme.scheme != "https" or not scheme.hostname:
            raise ValueError(
                f"PROVISIONER_PUPPET_CA_URL must be an https:// URL of the Puppet CA, "
                f"not {self.puppet_ca_url!r}"
            )
        problems = []
        for name in ("puppet_ca_cert", "puppet_ca_key", "puppet_ca_cacert"):
            path: Path | None = getattr(self, name)
            variable = f"PROVISIONER_{name.upper()}"
            if path is None:
                problems.append(f"{variable} is not set")
            elif not path.is_file() or not os.access(path, os.R_OK):
                problems.append(f"{variable} ({path}) is not a readable file")
        if problems:
            raise ValueError(
                "PROVISIONER_PUPPET_CA_URL is set, so the CA client needs its files: "
                + "; ".join(problems)
            )
        return self

    @field_validator("bmc_ca_bundle")
    @classmethod
    def _ca_bundle_readable(cls, path: Path | None) -> Path | None:
        """Checked at start-up: a missing bundle would otherwise refuse every Redfish BMC
        at its first contact, with a TLS error that does not name this setting."""
        if path is None:
            return None
        if not path.is_file() or not os.access(path, os.R_OK):
            raise ValueError(f"PROVISIONER_BMC_CA_BUNDLE ({path}) is not a readable file")
        if b"-----BEGIN CERTIFICATE-----" not in path.read_bytes():
            raise ValueError(
                f"PROVISIONER_BMC_CA_BUNDLE ({path}) holds no PEM certificate "
                "(-----BEGIN CERTIFICATE-----)"
            )
        return path

    @property
    def resolved_tftp_root(self) -> Path:
        return self.tftp_root or self.data_dir / "tftp"

    @property
    def resolved_images_dir(self) -> Path:
        return self.images_dir or self.data_dir / "images"

    @property
    def resolved_agent_dir(self) -> Path:
        return self.agent_dir or self.data_dir / "agent"

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'provisioner.db').resolve()}"


@lru_cache
def get_settings() -> Settings:
    return Settings()
