"""The Redfish options of ``provisioner-lab up`` (`lab.cli`): which BMCs each node has,
the dialect of its Redfish BMC, plain HTTP for debugging; and what they become for
`lab.rack` (plans, settings, the manifest's driver column)."""

from __future__ import annotations

import argparse
from typing import Any

from lab.rack import PROTOCOLS
from lab.redfish.dialects import Dialect, parse_dialect
from lab.redfish.serving import CERTIFICATE_FILE


def add(up: argparse.ArgumentParser) -> None:
    group = up.add_argument_group("Redfish", "Redfish BMCs in front of the same machines")
    group.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="ipmi",
        help="each node's BMCs: IPMI on UDP port P, Redfish (HTTPS) on TCP port P, or "
        "both (default: %(default)s)",
    )
    group.add_argument(
        "--redfish-dialect",
        action="append",
        default=[],
        metavar="DIALECT|NODE=DIALECT",
        help=f"{', '.join(d.value for d in Dialect)}; lab-wide or per node (default: generic)",
    )
    group.add_argument(
        "--redfish-http", action="store_true", help="plain HTTP instead of HTTPS, for debugging"
    )


def plan(args: argparse.Namespace) -> dict[str, Any]:
    """`lab.rack.plan_rack`'s dialect arguments: ``--redfish-dialect hpe`` for the whole
    lab, ``--redfish-dialect NODE=hpe`` for one node."""
    default, per_node = Dialect.GENERIC, {}
    for value in args.redfish_dialect:
        node, sep, name = value.rpartition("=")
        if sep:
            per_node[node.strip().lower()] = parse_dialect(name)
        else:
            default = parse_dialect(name)
    if args.redfish_dialect and args.protocol == "ipmi":
        raise ValueError("--redfish-dialect is for Redfish BMCs: add --protocol redfish or both")
    return {"dialect": default, "dialects": per_node}


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """`lab.rack.LabSettings`' Redfish fields."""
    return {"protocol": args.protocol, "redfish_http": args.redfish_http}


def driver(args: argparse.Namespace) -> str | None:
    """The manifest's ``bmc_driver`` column: only a lab of Redfish BMCs alone has one; with
    both, the manifest stays the IPMI one the service imports today."""
    return "redfish" if args.protocol == "redfish" else None


def describe(args: argparse.Namespace) -> str:
    """What ``up`` says of its Redfish BMCs, if any ("" with IPMI only)."""
    if args.protocol == "ipmi":
        return ""
    if args.redfish_http:
        return "; Redfish over plain HTTP on the same TCP ports"
    return f"; Redfish over HTTPS on the same TCP ports ({args.control_dir / CERTIFICATE_FILE})"


def refuse_with_vms(args: argparse.Namespace) -> None:
    if args.protocol != "ipmi" or args.redfish_dialect or args.redfish_http:
        raise ValueError("--vms have IPMI BMCs only: --protocol and --redfish-* are for --nodes")
