"""/api/v1/roles and /api/v1/images: read by viewers, managed by admins."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from provisioner import catalog
from provisioner.api.deps import Admin, SessionDep, VaultDep, Viewer
from provisioner.api.problems import API_ERRORS, responses
from provisioner.handoff import roles as handoff_roles
from provisioner.models import OsImage, Role
from provisioner.schemas import ImageIn, ImageOut, ImagePatch, RoleIn, RoleOut, RolePatch

roles = APIRouter(prefix="/api/v1/roles", tags=["roles"], responses=API_ERRORS)
images = APIRouter(prefix="/api/v1/images", tags=["images"], responses=API_ERRORS)

_CREATE = responses(400, 403, (409, "The name is taken."), 413, 422)
_CHANGE = responses(400, 403, 404, 409, 413, 422)
_DELETE = responses(403, 404, (409, "Nodes or roles still use it."))


@roles.get("", response_model=list[RoleOut])
def list_roles(session: SessionDep, _: Viewer) -> list[Role]:
    return catalog.listing(session, Role)


@roles.post("", status_code=status.HTTP_201_CREATED, response_model=RoleOut, responses=_CREATE)
def create_role(body: RoleIn, session: SessionDep, vault: VaultDep, _: Admin) -> Role:
    return catalog.create(session, Role, body, handoff_roles.sealed(vault, None, body))


@roles.get("/{name}", response_model=RoleOut, responses=responses(404))
def show_role(name: str, session: SessionDep, _: Viewer) -> Role:
    return catalog.get(session, Role, name)


@roles.patch("/{name}", response_model=RoleOut, responses=_CHANGE)
def change_role(name: str, body: RolePatch, session: SessionDep, vault: VaultDep, _: Admin) -> Role:
    role = catalog.get(session, Role, name)
    catalog.change(session, role, body, handoff_roles.sealed(vault, role, body))
    return role


@roles.delete(
    "/{name}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response, responses=_DELETE
)
def delete_role(name: str, session: SessionDep, _: Admin) -> None:
    catalog.remove(session, catalog.get(session, Role, name))


@images.get("", response_model=list[ImageOut])
def list_images(session: SessionDep, _: Viewer) -> list[OsImage]:
    return catalog.listing(session, OsImage)


@images.post("", status_code=status.HTTP_201_CREATED, response_model=ImageOut, responses=_CREATE)
def create_image(body: ImageIn, session: SessionDep, _: Admin) -> OsImage:
    return catalog.create(session, OsImage, body)


@images.get("/{name}", response_model=ImageOut, responses=responses(404))
def show_image(name: str, session: SessionDep, _: Viewer) -> OsImage:
    return catalog.get(session, OsImage, name)


@images.patch("/{name}", response_model=ImageOut, responses=_CHANGE)
def change_image(name: str, body: ImagePatch, session: SessionDep, _: Admin) -> OsImage:
    image = catalog.get(session, OsImage, name)
    catalog.change(session, image, body)
    return image


@images.delete(
    "/{name}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response, responses=_DELETE
)
def delete_image(name: str, session: SessionDep, _: Admin) -> None:
    catalog.remove(session, catalog.get(session, OsImage, name))
