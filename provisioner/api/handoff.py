"""/api/v1/handoff: what Puppet and Ansible ask about installed nodes.

The ``provisioner enc``, ``autosign`` and ``ansible-inventory`` commands are thin
clients of these routes, so the Puppet server and the Ansible controller need only the
CLI and a token, not the database.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Response
from fastapi.responses import JSONResponse

from provisioner.api.deps import Operator, SessionDep, SettingsDep, VaultDep, Viewer
from provisioner.api.problems import API_ERRORS, responses
from provisioner.handoff import ansible, puppet
from provisioner.puppet_formats import enc_yaml
from provisioner.schemas import AutosignIn, AutosignOut

router = APIRouter(prefix="/api/v1/handoff", tags=["hand-off"], responses=API_ERRORS)

_YAML = "application/yaml"


@router.get(
    "/puppet/enc/{certname}",
    responses={
        200: {"content": {_YAML: {}, "application/json": {}}},
        **responses((404, "No node has this certname.")),
    },
)
def puppet_enc(
    certname: str,
    session: SessionDep,
    settings: SettingsDep,
    _: Viewer,
    accept: Annotated[str, Header()] = _YAML,
) -> Response:
    """The node's Puppet classification, as ``external_nodes`` prints it (YAML; JSON
    when only JSON is accepted). Fetching it for a provisioned node of an ``enc`` role
    completes that node's hand-off."""
    classification = puppet.enc(session, settings, certname)
    if "json" in accept and "yaml" not in accept:
        return JSONResponse(classification)
    return Response(enc_yaml(classification), media_type=_YAML)


@router.post(
    "/puppet/autosign", response_model=AutosignOut, responses=responses(400, 403, 413, 422)
)
def puppet_autosign(
    body: AutosignIn, session: SessionDep, vault: VaultDep, settings: SettingsDep, _: Operator
) -> puppet.Decision:
    """Whether the Puppet CA should sign a CSR with this challenge and ``pp_role``.

    A refusal is an answer, not an error: ``sign`` is false and ``reason`` says why.
    """
    return puppet.autosign(session, vault, settings, body.certname, body.challenge, body.pp_role)


@router.get("/ansible")
def ansible_inventory(session: SessionDep, settings: SettingsDep, _: Viewer) -> dict[str, Any]:
    """Ansible's dynamic inventory (``--list``): installed nodes by role and by rack."""
    return ansible.inventory(session, settings)
