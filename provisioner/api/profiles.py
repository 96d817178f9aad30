"""/api/v1/profiles: the hardware profiles loaded at start, read by viewers.

``GET /api/v1/profiles`` returns ``{"items": [...], "errors": [...]}``: ``items`` are the
valid profiles, highest priority first, then by name, with every field (patterns as
strings); ``errors`` lists the files skipped at load as ``{"file", "field", "message"}``
for operator and admin tokens, and is null for viewer tokens, which are not the ones to
fix a profile. ``GET /api/v1/profiles/{name}`` returns one profile.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from provisioner.api.deps import ServicesDep, Viewer
from provisioner.api.problems import API_ERRORS, responses
from provisioner.errors import Problem
from provisioner.profiles import Profile, ProfileList, ProfileSet
from provisioner.tokens import scope_allows

router = APIRouter(prefix="/api/v1/profiles", tags=["profiles"], responses=API_ERRORS)


async def get_profiles(services: ServicesDep) -> ProfileSet:
    return services.profiles


ProfilesDep = Annotated[ProfileSet, Depends(get_profiles)]


@router.get("", response_model=ProfileList)
def list_profiles(token: Viewer, profiles: ProfilesDep) -> ProfileList:
    errors = list(profiles.errors) if scope_allows(token.scope, "operator") else None
    return ProfileList(items=list(profiles.profiles), errors=errors)


@router.get("/{name}", response_model=Profile, responses=responses(404))
def show_profile(name: str, _: Viewer, profiles: ProfilesDep) -> Profile:
    profile = profiles.get(name)
    if profile is None:
        known = ", ".join(p.name for p in profiles.profiles) or "none"
        raise Problem(404, f"There is no hardware profile {name!r}; loaded profiles: {known}.")
    return profile
