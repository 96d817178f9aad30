"""What a network-booting machine is told to do next, as iPXE scripts and as the
per-MAC configuration files of loaders that are not iPXE (PXELINUX, GRUB).

Pure text rendering: the caller decides *which* plan applies (see ``boot.service``).
Every script ends in a path that does not strand the machine: a failed download sleeps
and reboots (with a persistent network boot it tries again; with the one-time override
the reconciler sets, it falls back to its disk, and the deployment's deadline catches a
machine that never gets further), and local boot falls back to ``exit`` so the firmware
moves on to its next boot device.
"""

from __future__ import annotations

from dataclasses import dataclass

# iPXE expands ${...} on every line and has no escape for it, and a newline would start
# a command of its own: values holding these come from a bad image or profile record and
# are refused rather than passed on to the machine.
_IPXE_UNSAFE = frozenset('${}\n\r"')


# An echoed sentence may quote the record that could not be rendered: besides the above,
# iPXE ends a command at ";", "||" or "&&" and drops everything after a "#".
_ECHO_UNSAFE = _IPXE_UNSAFE | frozenset(";|&#")
# Seconds a machine the service does not answer for yet waits before it asks again.
RETRY_AFTER = 10
# How a deployment's message starts when the service failed it because its boot chain
# could not be rendered (see boot.service): the step runner then reports the message as
# it is, not as the installer's word.
BOOT_FAILED = "the boot chain could not be rendered"


def _safe(value: str, what: str) -> str:
    if not ipxe_safe(value):
        raise ValueError(f"{what} {value!r} contains characters iPXE would interpret")
    return value


def ipxe_safe(value: str) -> bool:
    """Whether ``value`` can go on an iPXE command line as it is."""
    return not any(c in _IPXE_UNSAFE for c in value)


def _echoed(sentence: str) -> str:
    return "".join("?" if c in _ECHO_UNSAFE else c for c in " ".join(sentence.split()))


@dataclass(frozen=True)
class Install:
    """Boot an installer (or any kernel + initrd): the provisioning and discovery plans."""

    title: str
    kernel_url: str
    initrd_url: str
    kernel_args: str


def bootstrap(base_url: str) -> str:
    """The script DHCP hands to iPXE: chain to the per-node script, named by MAC.

    Identifying the machine by its MAC in the URL (not by source address) keeps working
    through NAT and DHCP relays.
    """
    url = f"{_safe(base_url, 'boot URL')}/boot/ipxe"
    return (
        "#!ipxe\n"
        "# Chains to the script for this machine, identified by its first NIC's MAC.\n"
        ":retry\n"
        f"chain --autofree {url}?mac=${{net0/mac}}&platform=${{platform}}&arch=${{buildarch}}"
        " || goto failed\n"
        ":failed\n"
        "echo provisioner: could not fetch the boot script; retrying in 10 s\n"
        "sleep 10\n"
        "goto retry\n"
    )


def install(plan: Install) -> str:
    kernel = _safe(plan.kernel_url, "kernel URL")
    initrd = _safe(plan.initrd_url, "initrd URL")
    args = _safe(plan.kernel_args, "kernel arguments")
    # initrd=initrd names the initrd iPXE loaded: EFI-stub kernels find it by that name.
    return (
        "#!ipxe\n"
        f"echo provisioner: {_safe(plan.title, 'title')}\n"
        f"kernel --name kernel {kernel} initrd=initrd {args} || goto failed\n"
        f"initrd --name initrd {initrd} || goto failed\n"
        "boot || goto failed\n"
        ":failed\n"
        "echo provisioner: boot failed; rebooting in 30 s to try again\n"
        "sleep 30\n"
        "reboot\n"
    )


def ipxe(plan: Install | None, reason: str) -> str:
    """The iPXE script for ``plan``, or local boot saying why there is none."""
    return local_disk(reason) if plan is None else install(plan)


def local_disk(reason: str) -> str:
    # BIOS: boot the first disk directly, which works even when the firmware's boot
    # order puts the network first. UEFI: hand back to the firmware's boot manager.
    return (
        "#!ipxe\n"
        f"echo provisioner: {_echoed(reason)}; booting from local disk\n"
        "iseq ${platform} pcbios && sanboot --no-describe --drive 0x80 ||\n"
        "exit\n"
    )


def later(base_url: str, reason: str) -> str:
    """Ask again after a pause, from the start of the chain: for a machine the service
    does not answer for now (discovery over its rate). Falls back to the next boot
    device if the service cannot be reached."""
    url = f"{_safe(base_url, 'boot URL')}/boot/bootstrap.ipxe"
    return (
        "#!ipxe\n"
        f"echo provisioner: {_echoed(reason)}; asking again in {RETRY_AFTER} s\n"
        f"sleep {RETRY_AFTER}\n"
        f"chain --autofree {url} || exit\n"
    )


def pxelinux(plan: Install | None, reason: str) -> str:
    """``pxelinux.cfg/01-<mac>`` for machines whose firmware runs PXELINUX, not iPXE."""
    if plan is None:
        return _config(reason, "DEFAULT local", "LABEL local", "  LOCALBOOT 0")
    return _config(
        plan.title,
        "DEFAULT install",
        "LABEL install",
        f"  KERNEL {plan.kernel_url}",
        f"  INITRD {plan.initrd_url}",
        f"  APPEND {plan.kernel_args}",
    )


def grub(plan: Install | None, reason: str) -> str:
    """``grub/grub.cfg-01-<mac>`` for UEFI machines that network-boot GRUB."""
    if plan is None:
        return _config(reason, "set timeout=0", "exit")
    # ";" ends a GRUB command; Ubuntu's "ds=nocloud-net;s=..." must keep its own.
    args = plan.kernel_args.replace(";", "\\;")
    return _config(
        plan.title,
        "set timeout=0",
        "menuentry install {",
        f"  linux {_grub_path(plan.kernel_url)} {args}",
        f"  initrd {_grub_path(plan.initrd_url)}",
        "}",
    )


def _config(comment: str, *lines: str) -> str:
    """A boot loader's configuration, opened by a comment saying what it is for. The
    comment stays one line, so no name in it can add a directive."""
    head = "# " + " ".join(comment.splitlines())
    return "".join(f"{line}\n" for line in (head, *lines))


def _grub_path(url: str) -> str:
    """GRUB names files on a web server as ``(http,host:port)/path``; it has no TLS."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme != "http":
        raise ValueError(f"GRUB can only fetch http:// URLs, not {url!r}")
    host, _, path = rest.partition("/")
    return f"(http,{host})/{path}"
