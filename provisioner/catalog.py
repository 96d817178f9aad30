"""Roles and OS images: named records that nodes refer to by name."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from pydantic import BaseModel
from sqlmodel import Session, SQLModel, col, func, select

from provisioner.boot import answers
from provisioner.errors import Problem
from provisioner.models import Node, OsImage, Role, utcnow
from provisioner.schemas import ImageIn, RoleIn

Row = TypeVar("Row", Role, OsImage)

_WHAT = {Role: "role", OsImage: "image"}


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
        _check_renders(values)
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
        _check_renders(row.model_dump() | changes)
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
