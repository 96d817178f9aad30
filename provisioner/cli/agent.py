"""``provisioner agent build``: the deploy agent's kernel and initramfs, made on the
server from Debian packages and kept in its agent directory (``PROVISIONER_AGENT_DIR``)."""

from __future__ import annotations

from provisioner.cli.client import CliError
from provisioner.cli.groups import command_group
from provisioner.cli.output import info, print_table
from provisioner.cli.server import _settings

agent_app = command_group("The deploy agent: a kernel and initramfs nodes boot to be inspected.")


@agent_app.command("build")
def build_agent() -> None:
    """Build the agent from the Debian packages apt offers (linux-image-amd64,
    busybox-static) into PROVISIONER_AGENT_DIR (default <data_dir>/agent), or say it is
    built already. It is built again only when a package version or the agent's own
    scripts change. Replicas share one directory, so they boot machines with one build."""
    from provisioner.agent import build

    agent_dir = _settings().resolved_agent_dir
    try:
        agent = build.build(agent_dir, info)
    except build.BuildError as exc:
        raise CliError(f"the agent was not built: {exc}") from None
    print_table(
        ["file", "bytes", "path"],
        [
            [name, f"{path.stat().st_size:,}", str(path)]
            for name, path in (("kernel", agent.kernel), ("initramfs", agent.initrd))
        ],
    )
    packages = ", ".join(package.pinned for package in agent.packages)
    info(f"build {agent.key}: kernel {agent.kernel_version}; built from {packages}")
