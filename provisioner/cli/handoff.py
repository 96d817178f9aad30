"""``provisioner enc|autosign|ansible-inventory``: the executables Puppet and Ansible
run. Their output contracts are Puppet's and Ansible's, so on success they print only
what those tools read, and on failure nothing on stdout and one line on stderr."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from provisioner import puppet_formats
from provisioner.cli.client import CliError, path_segment, request

# A CSR is a few KiB; anything far larger is not one.
_MAX_CSR_BYTES = 64 * 1024

Certname = Annotated[str, typer.Argument(help="The Puppet certname (node name or FQDN).")]


def enc(ctx: typer.Context, certname: Certname) -> None:
    """Puppet external node classifier (`external_nodes`): print CERTNAME's classes,
    parameters and environment as YAML; exit 1 for an unknown node."""
    classification = request(ctx, "GET", f"/handoff/puppet/enc/{path_segment(certname)}")
    typer.echo(puppet_formats.enc_yaml(classification), nl=False)


def autosign(ctx: typer.Context, certname: Certname) -> None:
    """Puppet policy autosign (`autosign = ...`): exit 0 only if the CSR on stdin carries
    the challenge of CERTNAME's current installation and its role as pp_role."""
    try:
        facts = puppet_formats.read_csr(sys.stdin.buffer.read(_MAX_CSR_BYTES))
    except ValueError:
        raise CliError("not signed: stdin is not a PEM certificate signing request") from None
    if facts.common_name != certname:
        raise CliError(f"not signed: the CSR is for {facts.common_name!r}, not {certname!r}")
    decision = request(
        ctx,
        "POST",
        "/handoff/puppet/autosign",
        json={"certname": certname, "challenge": facts.challenge, "pp_role": facts.pp_role},
    )
    if not decision["sign"]:
        raise CliError(f"not signed: {decision['reason']}")


def ansible_inventory(
    ctx: typer.Context,
    list_: Annotated[bool, typer.Option("--list", help="Every group and host.")] = False,
    host: Annotated[str | None, typer.Option("--host", help="One host's variables.")] = None,
) -> None:
    """Ansible dynamic inventory of installed nodes, grouped by role and rack; use it
    with `ansible-inventory -i <script that runs this>`."""
    if list_ == (host is not None):
        raise CliError("give exactly one of --list and --host HOST")
    inventory = request(ctx, "GET", "/handoff/ansible")
    out = inventory if list_ else inventory["_meta"]["hostvars"].get(host, {})
    typer.echo(json.dumps(out, indent=2, sort_keys=True))
