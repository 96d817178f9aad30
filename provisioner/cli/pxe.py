"""``provisioner pxe ...``: the boot-network edge, run on a host of each L2 boot segment.

``assets`` fills the TFTP root with the iPXE binaries, ``dnsmasq-config`` writes the DHCP
side, and ``serve`` runs the TFTP server, linked to the API when given ``--api``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import tempfile
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from provisioner.cli.client import CliError, GlobalOptions, load_config, token_option
from provisioner.cli.groups import command_group
from provisioner.cli.output import info, note, print_table

if TYPE_CHECKING:
    from pxe.bridge import ApiBridge

log = logging.getLogger("provisioner.pxe")

pxe_app = command_group("Boot network: iPXE binaries, dnsmasq configuration, TFTP server.")


class DhcpMode(StrEnum):
    PROXY = "proxy"
    FULL = "full"


RootOption = Annotated[
    Path | None,
    typer.Option(
        help="TFTP root (default PROVISIONER_TFTP_ROOT or <data_dir>/tftp).",
        file_okay=False,
    ),
]


def _default_root() -> Path:
    from provisioner.cli.server import _settings

    return _settings().resolved_tftp_root


@pxe_app.command("assets")
def assets(
    source: Annotated[
        Path | None,
        typer.Option(help="Directory holding the iPXE binaries (default /usr/lib/ipxe)."),
    ] = None,
    root: RootOption = None,
) -> None:
    """Copy undionly.kpxe, ipxe.efi and snponly.efi into the TFTP root."""
    from pxe.assets import DEBIAN_IPXE_DIR, HOW_TO_GET_THEM, Action, AssetError, assemble

    source_dir = source or DEBIAN_IPXE_DIR
    target = root or _default_root()
    try:
        results = assemble(source_dir, target)
    except AssetError as exc:
        raise CliError(str(exc)) from exc
    print_table(
        ("FILE", "ACTION", "BYTES", "FROM"),
        ((r.name, r.action.value, r.size, r.source) for r in results),
    )
    missing = [r.name for r in results if r.action is Action.MISSING]
    if missing:
        raise CliError(f"{source_dir} lacks {', '.join(missing)}; {HOW_TO_GET_THEM}")
    info(f"TFTP root {target} is ready")


@pxe_app.command("dnsmasq-config")
def dnsmasq_config(
    mode: Annotated[
        DhcpMode,
        typer.Option(
            help="proxy: beside the site's DHCP server; full: the DHCP server of an "
            "isolated provisioning network.",
            show_default=False,
        ),
    ],
    network: Annotated[
        str, typer.Option(help="The boot network, e.g. 10.0.0.0/24.", show_default=False)
    ],
    tftp_server: Annotated[
        str,
        typer.Option(
            help="Address of the host running `provisioner pxe serve`.", show_default=False
        ),
    ],
    api: Annotated[
        str,
        typer.Option(
            envvar="PROVISIONER_BOOT_URL",
            help="Base URL booting machines reach the API at, e.g. http://10.0.0.2:8080.",
            show_default=False,
        ),
    ],
    snponly: Annotated[
        bool, typer.Option(help="UEFI x64 gets snponly.efi (the firmware's NIC driver).")
    ] = False,
    arm64_file: Annotated[
        str | None, typer.Option(help="Boot file for UEFI arm64 clients, under the TFTP root.")
    ] = None,
    http_boot_url: Annotated[
        str | None,
        typer.Option(help="iPXE for UEFI HTTP boot clients (default <api>/boot/assets/ipxe.efi)."),
    ] = None,
    interface: Annotated[
        list[str] | None, typer.Option(help="Answer only on this interface (repeatable).")
    ] = None,
    listen_address: Annotated[
        list[str] | None, typer.Option(help="Answer only on this address (repeatable).")
    ] = None,
    range_start: Annotated[
        str | None, typer.Option(help="Full mode: first address to lease.")
    ] = None,
    range_end: Annotated[str | None, typer.Option(help="Full mode: last address to lease.")] = None,
    lease_time: Annotated[
        str, typer.Option(help="Full mode: lease time (30m, 12h, 1d, infinite).")
    ] = "12h",
    router: Annotated[str | None, typer.Option(help="Full mode: default gateway.")] = None,
    dns_server: Annotated[
        list[str] | None, typer.Option(help="Full mode: DNS server for the nodes (repeatable).")
    ] = None,
    lab: Annotated[
        bool,
        typer.Option(
            help="Full mode on an isolated lab network: no ping before an offer, IPv6 router "
            "advertisements on the --interface (which needs an IPv6 address)."
        ),
    ] = False,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")
    ] = None,
) -> None:
    """Write a dnsmasq configuration for the boot network (DHCP only; no DNS, no TFTP)."""
    from pxe.dnsmasq import ConfigError, parse, render

    try:
        config = parse(
            mode=mode.value,
            network=network,
            api_url=api,
            tftp_server=tftp_server,
            snponly=snponly,
            arm64_file=arm64_file,
            http_boot_url=http_boot_url,
            interfaces=interface or (),
            listen_addresses=listen_address or (),
            range_start=range_start,
            range_end=range_end,
            lease_time=lease_time,
            router=router,
            dns_servers=dns_server or (),
            lab=lab,
        )
    except ConfigError as exc:
        raise CliError("invalid options: " + "; ".join(exc.problems)) from exc
    text = render(config)
    if output is None:
        typer.echo(text, nl=False)
        return
    _write_atomically(output, text)
    # Without -o the configuration itself is stdout: its remark is stderr either way.
    note(f"wrote {output}; check it with `dnsmasq --test --conf-file={output}`")


def _write_atomically(path: Path, text: str) -> None:
    # A dnsmasq restarting meanwhile reads the old file or the new one, never half.
    try:
        fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or Path())
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except OSError as exc:
        Path(temporary).unlink(missing_ok=True)
        raise CliError(f"cannot write {path}: {exc.strerror or exc}") from exc


@pxe_app.command("serve")
def serve(
    ctx: typer.Context,
    api: Annotated[
        str | None,
        typer.Option(
            help="Provisioner URL for per-node files and transfer reports; "
            "without it only the files in the root are served.",
        ),
    ] = None,
    token: Annotated[
        str | None,
        token_option("Operator token for transfer reports; prefer the environment variable."),
    ] = None,
    tftp_address: Annotated[str, typer.Option(help="Address to listen on.")] = "0.0.0.0",  # noqa: S104
    tftp_port: Annotated[int, typer.Option(min=0, max=65535, help="UDP port.")] = 69,
    root: RootOption = None,
    dhcp_log: Annotated[
        Path | None,
        typer.Option(
            help="dnsmasq's log file (its log-facility, with log-dhcp): its DHCP answers "
            "are reported as boot hops. Needs --api.",
        ),
    ] = None,
) -> None:
    """Run the TFTP server of this boot segment until SIGINT or SIGTERM."""
    from provisioner import logs
    from provisioner.cli.server import _settings
    from pxe.assets import BOOT_FILES

    settings = _settings()
    logs.configure(settings.log_level)
    directory = root or settings.resolved_tftp_root
    if not directory.is_dir():
        raise CliError(
            f"the TFTP root {directory} does not exist; fill it with "
            f"`provisioner pxe assets --root {directory}`"
        )
    missing = [name for name in BOOT_FILES if not (directory / name).is_file()]
    if missing:
        log.warning("pxe: %s lacks %s; run `provisioner pxe assets`", directory, ", ".join(missing))
    if dhcp_log is not None and api is None:
        raise CliError("--dhcp-log reports to the provisioner: give --api too")
    bridge = None
    if api is not None:
        options = ctx.find_root().obj
        fallback = options.token if isinstance(options, GlobalOptions) else None
        config = load_config(api, token or fallback)
        if config.token is None:
            log.warning("pxe: no token: the API will refuse transfer reports")
        from pxe.bridge import ApiBridge

        bridge = ApiBridge(config.url, config.token)
    try:
        asyncio.run(_serve(directory, tftp_address, tftp_port, bridge, dhcp_log))
    except OSError as exc:
        hint = " (ports below 1024 need root or CAP_NET_BIND_SERVICE)" if tftp_port < 1024 else ""
        raise CliError(
            f"cannot listen on {tftp_address}:{tftp_port}: {exc.strerror or exc}{hint}"
        ) from exc


async def _serve(
    root: Path, host: str, port: int, bridge: ApiBridge | None, dhcp_log: Path | None
) -> None:
    from pxe.dhcp_log import DhcpLogFollower
    from pxe.tftp import TftpServer

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    async with contextlib.AsyncExitStack() as stack:
        if bridge is None:
            server = TftpServer(root)
            how = "static files only (no --api)"
        else:
            # Entered first, left last: reports of transfers ended by the stop still go out.
            await stack.enter_async_context(bridge)
            server = TftpServer(root, dynamic=bridge.dynamic_file, observer=bridge.observe)
            how = f"per-node files and transfer reports via {bridge.api_url}"
        await server.start(host, port)
        stack.push_async_callback(server.stop)
        log.info("pxe: serving %s on %s:%d, %s", root, host, server.port, how)
        if bridge is not None and dhcp_log is not None:
            following = asyncio.create_task(DhcpLogFollower(dhcp_log, bridge.observe_dhcp).run())
            stack.callback(following.cancel)
            log.info("pxe: reporting DHCP answers logged in %s", dhcp_log)
        await stopping.wait()
    log.info("pxe: stopped")
