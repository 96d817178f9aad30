"""``provisioner node power|bootdev|inventory``: what the node's BMC controls directly,
and what inspection found (the BMC's facts and the deploy agent's in-band ones);
``provisioner node bmc accept-certificate``: trust a Redfish BMC's new certificate."""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Annotated, Any

import typer

from provisioner.cli.client import ApiError, CliError, api, path_segment, request
from provisioner.cli.groups import command_group
from provisioner.cli.nodes import NodeArg, node_app
from provisioner.cli.output import (
    JsonOption,
    cell,
    info,
    key_values,
    print_json,
    print_table,
    show,
    size_text,
    spinner,
)

bmc_app = command_group("What concerns a node's BMC itself.")
node_app.add_typer(bmc_app, name="bmc")


class PowerVerb(StrEnum):
    ON = "on"
    OFF = "off"
    CYCLE = "cycle"
    STATUS = "status"


class BootTarget(StrEnum):
    PXE = "pxe"
    DISK = "disk"


@node_app.command("power")
def node_power(
    ctx: typer.Context,
    node: NodeArg,
    verb: Annotated[PowerVerb, typer.Argument(help="on, off, cycle or status.")],
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="Wait until the BMC has done it.")
    ] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait.")] = 120.0,
    as_json: JsonOption = False,
) -> None:
    """Read the power state live from the BMC, or switch it."""
    ref = path_segment(node)
    with api(ctx) as client:
        if verb is PowerVerb.STATUS:
            data = client.get(f"/nodes/{ref}/power")
            if as_json:
                print_json(data)
            else:
                info(f"{node}: power is {data['power_state']}")
            return
        data = client.post(f"/nodes/{ref}/actions/power-{verb.value}", json={})
        if wait:
            data = _wait_for_power(client, ref, timeout)
    if as_json:
        print_json(data)
    elif data["target_power"]:
        info(f"power {verb.value} requested for {data['name']}")
    elif data["power_reason"]:
        raise CliError(f"{data['name']}: {data['power_reason']}")
    else:
        info(f"{data['name']}: power is {data['power_state']}")


def _wait_for_power(client: Any, ref: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    with spinner("waiting for the BMC"):
        while True:
            data = client.get(f"/nodes/{ref}")
            if not data["target_power"]:
                return data
            if time.monotonic() > deadline:
                raise CliError(
                    f"the power action is still pending after {timeout:.0f} s; "
                    f"see `provisioner node events {ref}`"
                )
            time.sleep(0.5)


@node_app.command("bootdev")
def node_bootdev(
    ctx: typer.Context,
    node: NodeArg,
    device: Annotated[BootTarget, typer.Argument(help="pxe (network) or disk.")],
    persistent: Annotated[bool, typer.Option(help="Every boot, not only the next one.")] = False,
    uefi: Annotated[
        bool | None,
        typer.Option("--uefi/--bios", help="Boot mode; default: the hardware profile's."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Set the boot device through the BMC."""
    body: dict[str, Any] = {
        "device": "network" if device is BootTarget.PXE else "disk",
        "persistent": persistent,
    }
    if uefi is not None:
        body["uefi"] = uefi
    data = request(ctx, "PUT", f"/nodes/{path_segment(node)}/boot-device", json=body)
    if as_json:
        print_json(data)
        return
    how = "every boot" if data["persistent"] else "next boot"
    info(f"{node}: {how} from {data['device']} ({'UEFI' if data['uefi'] else 'BIOS'})")


@node_app.command("inventory")
def node_inventory(ctx: typer.Context, node: NodeArg, as_json: JsonOption = False) -> None:
    """Show what inspection found: the BMC's facts and the deploy agent's.

    The BMC's FRU and device data, and, when the deploy agent ran, what it saw from the
    inside: DMI, CPUs, memory, boot mode, disks and NICs."""
    show(request(ctx, "GET", f"/nodes/{path_segment(node)}/inventory"), as_json, _inventory)


def _inventory(data: dict[str, Any]) -> None:
    facts = data["facts"]
    device = facts.get("device_id") or {}
    in_band = facts.get("in_band")
    key_values(
        [
            ("Manufacturer", facts.get("manufacturer")),
            ("Product", facts.get("product")),
            ("Serial", facts.get("serial")),
            ("Asset tag", facts.get("asset_tag")),
            (
                "Board",
                " ".join(
                    filter(None, [facts.get("board_manufacturer"), facts.get("board_product")])
                ),
            ),
            ("Board serial", facts.get("board_serial")),
            ("BMC firmware", facts.get("firmware")),
            ("Device id", ", ".join(f"{k}={v}" for k, v in device.items())),
            ("GUID", facts.get("guid")),
            ("MACs", ", ".join(facts.get("macs") or [])),
            *(_in_band_facts(in_band) if in_band else []),
            ("Profile", data["hardware_profile"]),
            ("Read", f"{data['collected_at']} over {data['source']}"),
        ]
    )
    if not in_band:
        info(
            "no in-band facts: the deploy agent has not reported from this node "
            "(inspection boots it when it is built: provisioner agent build)"
        )
        return
    _disks(in_band.get("disks") or [])
    _nics(in_band.get("nics") or [])


def _in_band_facts(in_band: dict[str, Any]) -> list[tuple[str, Any]]:
    """What the deploy agent saw from the inside, as rows of the detail view."""
    system = in_band.get("system") or {}
    cpu = in_band.get("cpu") or {}
    bios = " ".join(filter(None, [system.get("bios_vendor"), system.get("bios_version")]))
    if system.get("bios_date"):
        bios += f" ({system['bios_date']})"
    dmi = " ".join(filter(None, [system.get("vendor"), system.get("product")]))
    if system.get("serial"):
        dmi += f", serial {system['serial']}"
    cpus = " x ".join(filter(None, [str(cpu.get("count") or ""), cpu.get("model")]))
    memory = in_band.get("memory_bytes")
    return [
        ("System (DMI)", dmi),
        ("System UUID", system.get("uuid")),
        ("BIOS", bios),
        ("CPUs", cpus),
        ("Memory", size_text(memory, binary=True) if memory else None),
        ("Boot mode", in_band.get("boot_mode")),
    ]


def _disks(disks: list[dict[str, Any]]) -> None:
    if not disks:
        info("no disks seen by the deploy agent")
        return
    info("\nDisks, as the deploy agent saw them:")
    print_table(
        ("NAME", "SIZE", "MODEL", "SERIAL", "ROTATIONAL", "WWN"),
        (
            (
                d.get("name"),
                size_text(d.get("size_bytes")),
                d.get("model"),
                d.get("serial"),
                bool(d.get("rotational")),
                d.get("wwn"),
            )
            for d in disks
        ),
    )


def _nics(nics: list[dict[str, Any]]) -> None:
    if not nics:
        info("no NICs seen by the deploy agent")
        return
    info("\nNICs, as the deploy agent saw them:")
    print_table(
        ("NAME", "MAC", "DRIVER", "LINK", "BOOTED"),
        (
            (
                n.get("name"),
                n.get("mac"),
                n.get("driver"),
                cell("up", "green") if n.get("link") else cell("down", "dim"),
                cell("yes", "bold") if n.get("booted") else cell(False),
            )
            for n in nics
        ),
    )


@bmc_app.command("accept-certificate")
def accept_certificate(
    ctx: typer.Context,
    node: NodeArg,
    fingerprint: Annotated[
        str | None,
        typer.Option(
            help="The certificate you expect (sha256:<hex>, e.g. from the BMC's web page); "
            "nothing is accepted if the BMC presents another."
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Trust the certificate a Redfish BMC presents now, in place of the pinned one."""
    body = {"fingerprint": fingerprint} if fingerprint else {}
    try:
        data = request(
            ctx, "POST", f"/nodes/{path_segment(node)}/bmc/accept-certificate", json=body
        )
    except ApiError as error:
        if error.status == 409 and error.problem.get("presented"):
            raise CliError(
                f"{error} Compare it with the certificate on the BMC itself (its console "
                "or web page); if they match, run again with "
                f"--fingerprint {error.problem['presented']}"
            ) from None
        raise
    if as_json:
        print_json(data)
        return
    previous = data["previous"] or "none"
    info(f"{node}: BMC certificate {data['fingerprint']} accepted (was {previous})")
