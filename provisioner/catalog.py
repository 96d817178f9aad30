"""Roles and OS images: named records that nodes refer to by name."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from pydantic import BaseModel
from sqlmodel import Session, SQLModel, col, func, select

from provisioner.boot import answers
from provisioner.catalog_schemas import IMAGE_FIELDS, INSTALLER_FIELDS
from provisioner.errors import Problem
from provisioner.models import Node, OsImage, Role, utcnow
from provisioner.schemas import ImageIn, RoleIn

Row = TypeVar("Row", Role, OsImage)

_WHAT = {Role: "role", OsImage: "image"}
# repo_url and kernel_args may be empty (the template's mirror, no extra arguments).
_INSTALLER_NEEDS = ("kernel_url", "initrd_url", "answer_template")


def get(session: Session, model: type[Row], name: str) -> Row:
    row = session.get(model, name.lower())
    if row is None:
        raise Problem(404, f"No {_WHAT[model]} is named {name!r}.")
    return row


def listing(session: Session, model: type[Row]) -> list[Row]:
    return list(session.exec(select(model).order_by(col(model.name))))


def create(
    session: Session, model: type[Row], data: RoleIn | ImageIn, sealed: dict[str, Any] | None = None
) -> Row:
    """``sealed``: columns the caller derived from write-only input (encrypted secrets)."""
    name = data.name
    if session.get(model, name) is not None:
        raise Problem(409, f"A {_WHAT[model]} named {name!r} exists already.")
    _check_default_image(session, data)
    values = data.model_dump() | (sealed or {})
    if model is OsImage:
        # Left out (None): a field the image's way of deploying does not use.
        values = {k: "" if v is None else v for k, v in values.items()}
        _check_image(values)
    row = model.model_validate(values)
    session.add(row)
    session.commit()
    session.refresh(row)
    return row


def change(
    session: Session, row: SQLModel, patch: BaseModel, sealed: dict[str, Any] | None = None
) -> None:
    _check_default_image(session, patch)
    changes = patch.model_dump(exclude_unset=True) | (sealed or {})
    if isinstance(row, OsImage):
        changes = _image_changes(row, changes)
        _check_image(row.model_dump() | changes)
    for key, value in changes.items():
        setattr(row, key, value)
    row.updated_at = utcnow()
    session.add(row)
    session.commit()
    session.refresh(row)


def remove(session: Session, row: Role | OsImage) -> None:
    if isinstance(row, Role):
        users = select(func.count()).select_from(Node).where(Node.role == row.name)
    else:
        users = select(func.count()).select_from(Node).where(Node.image == row.name)
        roles = session.exec(select(Role.name).where(Role.default_image == row.name)).all()
        if roles:
            raise Problem(
                409,
                f"Image {row.name!r} is the default of role(s) {', '.join(roles)}; change "
                "those first.",
            )
    count = session.exec(users).one()
    if count:
        raise Problem(
            409, f"{count} node(s) still use {_WHAT[type(row)]} {row.name!r}; change them first."
        )
    session.delete(row)
    session.commit()


def _check_default_image(session: Session, data: BaseModel) -> None:
    image = getattr(data, "default_image", None)
    if image and session.get(OsImage, image) is None:
        raise Problem(
            422,
            f"Unknown image {image!r}; create it first (POST /api/v1/images).",
            errors=[{"field": "default_image", "message": "unknown image"}],
        )


def _image_changes(row: OsImage, changes: dict[str, Any]) -> dict[str, Any]:
    """A change of ``deploy`` also empties what only the old way used, unless the same
    change sets it: an image is never left holding two ways of deploying."""
    deploy = changes.get("deploy", row.deploy)
    if deploy == row.deploy:
        return changes
    unused = INSTALLER_FIELDS if deploy == "image" else IMAGE_FIELDS
    return dict.fromkeys(unused, "") | changes


def _check_image(image: dict[str, Any]) -> None:
    """Refuse an image that holds fields of both ways of deploying, or misses some of its
    own; an installer image must render too."""
    deploy = image["deploy"]
    needed, unused = (
        (IMAGE_FIELDS, INSTALLER_FIELDS) if deploy == "image" else (_INSTALLER_NEEDS, IMAGE_FIELDS)
    )
    extra = [field for field in unused if image[field]]
    if extra:
        raise Problem(
            422,
            f"Image {image['name']!r} has deploy {deploy!r}, which does not use "
            f"{', '.join(extra)}; leave {'it' if len(extra) == 1 else 'them'} out.",
            errors=[
                {"field": field, "message": f"not used by deploy {deploy!r}"} for field in extra
            ],
        )
    missing = [field for field in needed if not image[field]]
    if missing:
        raise Problem(
            422,
            f"Image {image['name']!r} has deploy {deploy!r}, which needs "
            f"{', '.join(needed)}; give {', '.join(missing)}.",
            errors=[
                {"field": field, "message": f"required by deploy {deploy!r}"} for field in missing
            ],
        )
    if deploy == "installer":
        _check_renders(image)


def _check_renders(image: dict[str, Any]) -> None:
    """Refuse an image no node could be installed from, by the renderer's own rules: every
    boot from it would fail otherwise, long after the change that broke it."""
    spec = answers.ImageSpec(
        **{f.name: image[f.name] for f in dataclasses.fields(answers.ImageSpec)}
    )
    try:
        answers.check_image(spec)
    except answers.ImageError as exc:
        raise Problem(
            422,
            f"No node could be installed from image {spec.name!r} ({exc}); fill in or "
            f"correct {exc.field}.",
            errors=[{"field": exc.field, "message": str(exc)}],
        ) from None
