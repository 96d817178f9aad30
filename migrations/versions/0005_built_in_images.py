"""built-in images

The catalogue a fresh service starts with: one image per answer-file format, booting the
distributions' own netboot kernels from their public mirrors. They are ordinary rows
from then on: operators change or delete them through /api/v1/images, and nothing puts
them back.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25 19:45:00.000000
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ROCKY = "https://dl.rockylinux.org/pub/rocky/9/BaseOS/x86_64/os"
_ALMA = "https://repo.almalinux.org/almalinux/9/BaseOS/x86_64/os"
_DEBIAN_NETBOOT = (
    "https://deb.debian.org/debian/dists/bookworm/main/installer-amd64/current/images/"
    "netboot/debian-installer/amd64"
)
_UBUNTU = "https://releases.ubuntu.com/24.04"

IMAGES = [
    {
        "name": "rocky-9",
        "os_family": "rhel",
        "version": "9",
        "kernel_url": f"{_ROCKY}/images/pxeboot/vmlinuz",
        "initrd_url": f"{_ROCKY}/images/pxeboot/initrd.img",
        "repo_url": f"{_ROCKY}/",
        "answer_template": "kickstart",
        "kernel_args": "",
    },
    {
        "name": "alma-9",
        "os_family": "rhel",
        "version": "9",
        "kernel_url": f"{_ALMA}/images/pxeboot/vmlinuz",
        "initrd_url": f"{_ALMA}/images/pxeboot/initrd.img",
        "repo_url": f"{_ALMA}/",
        "answer_template": "kickstart",
        "kernel_args": "",
    },
    {
        "name": "debian-12",
        "os_family": "debian",
        "version": "12",
        "kernel_url": f"{_DEBIAN_NETBOOT}/linux",
        "initrd_url": f"{_DEBIAN_NETBOOT}/initrd.gz",
        "repo_url": "https://deb.debian.org/debian",
        "answer_template": "preseed",
        "kernel_args": "",
    },
    {
        "name": "ubuntu-24.04",
        "os_family": "ubuntu",
        "version": "24.04",
        "kernel_url": f"{_UBUNTU}/netboot/amd64/linux",
        "initrd_url": f"{_UBUNTU}/netboot/amd64/initrd",
        "repo_url": "http://archive.ubuntu.com/ubuntu",
        "answer_template": "autoinstall",
        # The netboot kernel boots the live server ISO as its root file system.
        "kernel_args": f"url={_UBUNTU}/ubuntu-24.04.3-live-server-amd64.iso "
        "cloud-config-url=/dev/null",
    },
]


def upgrade() -> None:
    table = sa.table(
        "os_image",
        *(sa.column(key) for key in IMAGES[0]),
        sa.column("created_at", sa.DateTime(timezone=True)),
        sa.column("updated_at", sa.DateTime(timezone=True)),
    )
    now = datetime.now(UTC)
    op.bulk_insert(table, [{**image, "created_at": now, "updated_at": now} for image in IMAGES])


def downgrade() -> None:
    op.execute(
        sa.text("DELETE FROM os_image WHERE name IN :names").bindparams(
            sa.bindparam("names", [image["name"] for image in IMAGES], expanding=True)
        )
    )
