"""What a machine booting the deploy agent is told: the build's kernel and initramfs, by
the key of the build this replica serves, and the agent's kernel command line."""

from __future__ import annotations

from provisioner.agent.build import current as built_agent
from provisioner.boot import scripts
from provisioner.deployments import Live
from provisioner.profiles import Profile
from provisioner.settings import Settings


def discovers(settings: Settings) -> bool:
    """Unknown machines run the deploy agent when it is built, unless a discovery image
    of the operator's own is configured."""
    own = settings.discovery_kernel_url and settings.discovery_initrd_url
    return not own and built_agent(settings.resolved_agent_dir) is not None


def plan(
    settings: Settings, profile: Profile | None, title: str, mac: str, live: Live, base: str
) -> scripts.Install:
    """The deploy agent's kernel and initramfs, with its deployment's token. Their URLs
    name the build, so both files come from it, whichever replica serves each."""
    agent = built_agent(settings.resolved_agent_dir)
    if agent is None:
        raise ValueError(
            "the deploy agent is not built on this replica: run `provisioner agent build` "
            "into PROVISIONER_AGENT_DIR, a directory all replicas share"
        )
    console = profile.console if profile else None
    consoles = (
        f"console={console.port},{console.speed}n8"
        if console
        else "console=tty0 console=ttyS0,115200n8"
    )
    args = (
        f"provisioner.url={base} provisioner.token={live.token} "
        f"BOOTIF=01-{mac.replace(':', '-')} {consoles} {settings.agent_kernel_args}"
    )
    url = f"{base}/boot/agent/{agent.key}"
    return scripts.Install(
        title=f"{title} (deployment {str(live.row.id)[:8]})",
        kernel_url=f"{url}/vmlinuz?token={live.token}",
        initrd_url=f"{url}/initrd.img?token={live.token}",
        kernel_args=args.strip(),
    )
