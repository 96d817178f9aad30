"""Installer answer files (kickstart, preseed, autoinstall) and the installer's kernel
arguments, rendered from an image, a hardware profile, a role and a node.

Everything that reaches a shell is quoted with :func:`shlex.quote` (the ``sh`` filter of
the templates) and everything that reaches a format with its own syntax (debconf lines,
kickstart options, kernel and iPXE command lines) is validated first: a value that the
format cannot carry safely is refused with a ValueError naming the field, never
rendered. The templates live in ``templates/`` beside this module.

The autoinstall document is a Python dict dumped with :func:`yaml.safe_dump` rather than
YAML written by hand in a template: YAML quoting depends on the value (a role named
``yes``, a password hash with ``: ``, a key with ``#``), and only a real emitter gets it
right every time. Its template carries just the shell commands.

Every installer reports to ``<callback_url>/{started,progress,done,failed}`` by itself,
one callback per line with the literal full URL, so the lab's emulated machine can find
and replay them in the rendered text.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import jinja2
import yaml

from provisioner import validation
from provisioner.profiles import Profile, RootDisk


@dataclass(frozen=True)
class ImageSpec:
    name: str
    os_family: str  # "rhel", "fedora", "debian" or "ubuntu"
    version: str
    repo_url: str
    answer_template: str  # "kickstart", "preseed" or "autoinstall"
    kernel_args: str = ""  # for the installer only, space-separated


class ImageError(ValueError):
    """An image no node can be installed from; ``field`` names the image field to fix."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class RoleSpec:
    name: str
    packages: tuple[str, ...] = ()
    puppet_server: str | None = None  # None: no Puppet configuration at all
    puppet_environment: str = "production"


@dataclass(frozen=True)
class AnswerContext:
    hostname: str
    domain: str | None
    image: ImageSpec
    role: RoleSpec
    profile: Profile | None
    challenge: str  # Puppet challengePassword, one per deployment
    callback_url: str  # <base>/callback/<token>
    answer_url: str  # where this answer file is served
    ssh_keys: tuple[str, ...] = ()
    root_password_hash: str | None = None  # None: root's password is locked


@dataclass(frozen=True)
class _Format:
    template: str
    families: frozenset[str]
    media_type: str


_FORMATS = {
    "kickstart": _Format("kickstart.ks.j2", frozenset({"rhel", "fedora"}), "text/plain"),
    "preseed": _Format("preseed.cfg.j2", frozenset({"debian"}), "text/plain"),
    # application/yaml is the registered type (RFC 9512); cloud-init does not look at it.
    "autoinstall": _Format("autoinstall-commands.sh.j2", frozenset({"ubuntu"}), "application/yaml"),
}

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("provisioner.boot", "templates"),
    # These are shell, kickstart and debconf files: HTML escaping would corrupt them.
    # Values are made safe by validation and the ``sh`` filter instead.
    autoescape=False,  # noqa: S701
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)
_ENV.filters["sh"] = shlex.quote
_ENV.filters["json"] = json.dumps

# Package names as RPM and dpkg spell them (with an optional dpkg ":arch"); kickstart also
# takes "@group" and "@^environment". Anything else (a space, ';', '$', a newline) is a
# broken or hostile role record, refused rather than quoted: the debconf
# pkgsel/include value is split on spaces and commas by the installer, not by a shell.
_PACKAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+~-]*(:[a-z0-9-]+)?")
_GROUP = re.compile(r"@\^?[A-Za-z0-9][A-Za-z0-9._-]*")
# Puppet's own rule for environment names.
_PUPPET_ENVIRONMENT = re.compile(r"[a-z0-9_]+")
# crypt(3) output: "$id$[params$]salt$hash" in the crypt alphabet; never a ':' (the
# shadow separator) nor whitespace.
_CRYPT_HASH = re.compile(r"\$[0-9a-z]+\$[./0-9A-Za-z$=,]+")
# One authorized_keys entry: type, base64 blob, optional comment. Options before the
# type are not accepted: they are how a key gets a forced command.
_SSH_KEY = re.compile(
    r"(ssh-(rsa|dss|ed25519)|ecdsa-sha2-nistp(256|384|521)|sk-[a-z0-9@.-]+)"
    r" [A-Za-z0-9+/]+={0,3}( [\x20-\x7e]*)?"
)
_PRINTABLE = re.compile(r"[\x21-\x7e]+")
# iPXE splits its command line on whitespace only, and has no quoting. It expands ${...}
# (again and again, with no escape), ends a command at a token that is exactly ";", "||"
# or "&&", and ignores everything from a token starting with "#" (src/core/exec.c). A ';'
# inside a token, as in ds=nocloud-net;s=..., is passed on as it is. The kernel then gives
# '"' a meaning of its own. Arguments holding any of these are refused.
_KERNEL_ARG_UNSAFE = frozenset('${}"\\')
_IPXE_TERMINATORS = frozenset({";", "||", "&&"})


def check_image(image: ImageSpec) -> None:
    """Raise :class:`ImageError` unless answers and kernel arguments can be rendered from
    ``image``: the renderer's own rules about the image alone, so that the catalog can
    refuse an image when it is stored instead of every boot from it failing."""
    _image_values(image)
    _image_kernel_args(image)


def render_answer(ctx: AnswerContext) -> str:
    """The answer file for ``ctx.image.answer_template``."""
    fmt = _format(ctx.image.answer_template)
    values = _values(ctx)
    if ctx.image.answer_template == "autoinstall":
        return _autoinstall(values)
    return _ENV.get_template(fmt.template).render(values)


def answer_media_type(template: str) -> str:
    return f"{_format(template).media_type}; charset=utf-8"


def kernel_arguments(ctx: AnswerContext) -> str:
    """The installer's kernel command line (after the kernel and ``initrd=``), safe to put
    on an iPXE ``kernel`` line as it is."""
    template = ctx.image.answer_template
    values = _values(ctx)
    answer_url = values["answer_url"]
    if template == "kickstart":
        args = [f"inst.ks={answer_url}", f"inst.repo={values['repo_url']}", "ip=dhcp"]
    elif template == "preseed":
        # d-i brings the network up by itself (interface=auto picks the NIC with a link).
        args = ["auto=true", "priority=critical", f"url={answer_url}", "interface=auto"]
        args.append(f"hostname={values['hostname']}")
        if values["domain"]:
            args.append(f"domain={values['domain']}")
    else:
        # cloud-init fetches <s>user-data and <s>meta-data: s= must end with a slash.
        seed = answer_url if answer_url.endswith("/") else answer_url + "/"
        args = ["autoinstall", f"ds=nocloud-net;s={seed}", "ip=dhcp"]
    # The serial console goes last: the kernel makes the last console= /dev/console,
    # which is where the installer's own output goes.
    args += values["installer_console"] + values["profile_kernel_args"]
    args += _image_kernel_args(ctx.image)
    return " ".join(_kernel_arg(arg, "kernel argument") for arg in args)


def meta_data(ctx: AnswerContext) -> str:
    """cloud-init ``meta-data`` served beside an autoinstall ``user-data``."""
    hostname = validation.node_name(ctx.hostname)
    # One instance-id per deployment (cloud-init re-runs its first-boot modules when it
    # changes), derived from the callback URL so that the token itself is not written
    # into the installed system.
    digest = hashlib.sha256(ctx.callback_url.encode()).hexdigest()[:16]
    document = {"instance-id": f"provisioner-{digest}", "local-hostname": hostname}
    return yaml.safe_dump(document, sort_keys=False)


def _format(template: str) -> _Format:
    try:
        return _FORMATS[template]
    except KeyError:
        known = ", ".join(sorted(_FORMATS))
        raise ImageError(
            "answer_template", f"unknown answer template {template!r}: use one of {known}"
        ) from None


def _image_values(image: ImageSpec) -> dict[str, Any]:
    """The image's template variables, every one validated for where it is going."""
    fmt = _format(image.answer_template)
    if image.os_family not in fmt.families:
        families = ", ".join(sorted(fmt.families))
        raise ImageError(
            "answer_template",
            f"image {image.name!r} is {image.os_family!r} but the {image.answer_template} "
            f"template installs {families}",
        )
    if not _PRINTABLE.fullmatch(image.version):
        raise ImageError(
            "version", f"image version {image.version!r} must be printable ASCII without spaces"
        )
    repo_url = _repo_url(image)
    mirror = urlsplit(repo_url)
    return {
        "image_name": validation.slug(image.name),
        "image_version": image.version,
        "repo_url": repo_url,
        # Rocky/Alma/RHEL split the distribution: BaseOS (the installer's source) and
        # AppStream, where most role packages live, side by side in the same tree.
        "appstream_url": repo_url.replace("/BaseOS/", "/AppStream/")
        if "/BaseOS/" in repo_url
        else None,
        # d-i wants its mirror as protocol, host[:port] and directory.
        "mirror": {"protocol": mirror.scheme, "host": mirror.netloc, "directory": mirror.path},
    }


def _image_kernel_args(image: ImageSpec) -> list[str]:
    try:
        return [_kernel_arg(arg, "image kernel_args") for arg in image.kernel_args.split()]
    except ValueError as exc:
        raise ImageError("kernel_args", str(exc)) from None


def _values(ctx: AnswerContext) -> dict[str, Any]:
    """The template variables, every one validated for where it is going."""
    image, role = ctx.image, ctx.role
    image_values = _image_values(image)
    hostname = validation.node_name(ctx.hostname)
    domain = _domain(ctx.domain) if ctx.domain else None
    profile = ctx.profile
    console = profile.console if profile else None
    serial = f"console={console.port},{console.speed}n8" if console else None
    profile_args = profile.kernel_args if profile else []
    profile_args = [_kernel_arg(arg, "profile kernel_args") for arg in profile_args]
    puppet = None
    if role.puppet_server is not None:
        env = role.puppet_environment
        if not _PUPPET_ENVIRONMENT.fullmatch(env):
            raise ValueError(f"puppet environment {env!r}: use lowercase letters, digits, '_'")
        puppet = {
            "csr_attributes": yaml.safe_dump(
                {
                    "custom_attributes": {"challengePassword": _challenge(ctx.challenge)},
                    "extension_requests": {"pp_role": validation.slug(role.name)},
                },
                sort_keys=False,
            ),
            "puppet_conf": (
                f"[main]\nserver = {validation.host(role.puppet_server)}\nenvironment = {env}\n"
            ),
        }
    password_hash = ctx.root_password_hash
    if password_hash is not None and not _CRYPT_HASH.fullmatch(password_hash):
        raise ValueError("root_password_hash must be a crypt(3) hash such as $6$salt$hash")
    for key in ctx.ssh_keys:
        if not _SSH_KEY.fullmatch(key):
            raise ValueError(f"{key[:40]!r}... is not one OpenSSH public key line")
    return image_values | {
        "role_name": validation.slug(role.name),
        "hostname": hostname,
        "domain": domain,
        "fqdn": f"{hostname}.{domain}" if domain else hostname,
        "packages": [_package(name, image.answer_template) for name in role.packages],
        "puppet": puppet,
        "ssh_keys": list(ctx.ssh_keys),
        "root_password_hash": password_hash,
        "callback_url": _url(ctx.callback_url, "callback_url"),
        "answer_url": _url(ctx.answer_url, "answer_url"),
        "boot_mode": profile.boot_mode if profile else None,
        "disk": _disk(profile.root_disk if profile else RootDisk()),
        # tty0 too, so that a crash cart on the VGA port also sees the boot.
        "installer_console": ["console=tty0", serial] if serial else [],
        "target_kernel_args": (["console=tty0", serial] if serial else []) + profile_args,
        "profile_kernel_args": profile_args,
        "printf_file": _printf_file,
    }


def _challenge(value: str) -> str:
    if not _PRINTABLE.fullmatch(value):
        # The value is a secret: not repeated in the message.
        raise ValueError("the Puppet challenge must be printable ASCII without spaces")
    return value


def _domain(value: str) -> str:
    domain = validation.host(value)
    if not re.search("[a-z]", domain):
        raise ValueError(f"domain {value!r} is an address, not a DNS domain")
    return domain


def _package(name: str, template: str) -> str:
    if _PACKAGE.fullmatch(name) or (template == "kickstart" and _GROUP.fullmatch(name)):
        return name
    groups = " (or @group)" if template == "kickstart" else ""
    raise ValueError(f"{name!r} is not a package name{groups}")


def _url(value: str, what: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{what} {value!r} must be an absolute http(s) URL")
    if not _PRINTABLE.fullmatch(value) or any(c in _KERNEL_ARG_UNSAFE for c in value):
        raise ValueError(f"{what} {value!r} holds spaces, quotes or characters iPXE expands")
    return value


def _repo_url(image: ImageSpec) -> str:
    if image.repo_url:
        try:
            return _url(image.repo_url, "image repo_url")
        except ValueError as exc:
            raise ImageError("repo_url", str(exc)) from None
    if image.answer_template == "kickstart":
        raise ImageError(
            "repo_url", f"image {image.name!r} needs a repo_url: Anaconda installs from it"
        )
    if image.answer_template == "preseed":
        return "http://deb.debian.org/debian"
    return ""  # autoinstall: the installer's default archive


def _kernel_arg(arg: str, what: str) -> str:
    if (
        not _PRINTABLE.fullmatch(arg)
        or any(c in _KERNEL_ARG_UNSAFE for c in arg)
        or arg in _IPXE_TERMINATORS
        or arg.startswith("#")
    ):
        raise ValueError(f"{what} {arg!r} cannot be passed safely on an iPXE kernel line")
    return arg


# Python regular expression syntax that POSIX grep -E (used on the machine) lacks.
_NOT_ERE = re.compile(r"\(\?|\\[dDsSwWbBAZ]|[*+?}]\?")


def _ere(pattern: re.Pattern[str] | None, what: str) -> str | None:
    if pattern is None:
        return None
    if _NOT_ERE.search(pattern.pattern):
        raise ValueError(
            f"root_disk.{what} {pattern.pattern!r} uses Python-only regex syntax; the "
            "installer matches it with grep -E (POSIX extended regular expressions)"
        )
    return pattern.pattern


def _disk(hints: RootDisk) -> dict[str, Any]:
    """Root-disk hints for the installers: kickstart and preseed run a shell selector
    (select-disk.sh.j2) over /sys/block; autoinstall uses curtin's ``match``."""
    device = hints.hint if hints.hint.startswith("/dev/") else None
    gb = hints.size_gb_min or 0
    return {
        "device": device,
        "order": None if device else hints.hint,
        # /sys/block/*/size counts 512-byte sectors whatever the disk's sector size;
        # at least 1 so that empty card readers (size 0) are never picked.
        "min_sectors": max(1, -(-gb * 10**9 // 512)),
        "model": _ere(hints.model, "model"),
        "serial": _ere(hints.serial, "serial"),
        "wwn": _ere(hints.wwn, "wwn"),
    }


def _printf_file(path: str, text: str, mode: str = "0644") -> str:
    """One shell command line that writes ``text`` to ``path``: each line of the file a
    quoted printf argument, so any content is safe and the command stays on one line
    (a debconf value cannot hold a newline)."""
    lines = " ".join(shlex.quote(line) for line in text.splitlines())
    directory = path.rsplit("/", 1)[0]
    quoted = shlex.quote(path)
    return (
        f"mkdir -p {shlex.quote(directory)} && "
        f"(umask 077 && printf '%s\\n' {lines} > {quoted}) && chmod {mode} {quoted}"
    )


def _glob(pattern: str | None, what: str) -> str | None:
    """curtin matches disks with fnmatch globs, not regular expressions: translate the
    patterns that are a literal with optional anchors and '.*', refuse the others."""
    if pattern is None:
        return None
    body = pattern.removeprefix("^")
    anchored_end = body.endswith("$") and not body.endswith("\\$")
    body = body.removesuffix("$") if anchored_end else body
    parts = body.split(".*")
    literal = re.compile(r"([A-Za-z0-9 _,:/=@-]|\\[.\-_ ])*")
    if not all(literal.fullmatch(part) for part in parts):
        raise ValueError(
            f"root_disk.{what} {pattern!r} cannot be expressed as an autoinstall match "
            "glob: use a literal with optional ^, $ and .*"
        )
    glob = "*".join(part.replace("\\", "") for part in parts)
    start = "" if pattern.startswith("^") else "*"
    end = "" if anchored_end else "*"
    return f"{start}{glob}{end}"


def _autoinstall(values: dict[str, Any]) -> str:
    module = _ENV.get_template(_FORMATS["autoinstall"].template).make_module(values)

    def commands(block: str) -> list[str]:
        return [line.strip() for line in str(getattr(module, block)).splitlines() if line.strip()]

    disk = values["disk"]
    if disk["device"]:
        match: dict[str, Any] = {"path": disk["device"]}
    else:
        # curtin's match has no minimum size: size_gb_min cannot be expressed here, only
        # the model/serial/wwn filters below narrow the choice.
        match = {"size": disk["order"]}
    for key in ("model", "serial", "wwn"):
        glob = _glob(disk[key], key)
        if glob is not None:
            match[key] = glob
    user_data: dict[str, Any] = {"hostname": values["hostname"], "disable_root": False}
    if values["domain"]:
        user_data["fqdn"] = values["fqdn"]
    document: dict[str, Any] = {
        "version": 1,
        "locale": "en_US.UTF-8",
        "keyboard": {"layout": "us"},
        "timezone": "Etc/UTC",
        "refresh-installer": {"update": False},
        # "direct" puts / on one disk and lets subiquity add the ESP or the BIOS-boot
        # partition that the firmware it booted from needs.
        "storage": {"layout": {"name": "direct", "match": match}},
        "ssh": {"install-server": True, "allow-pw": False},
        "packages": values["packages"],
        # With user-data present no "identity" (a first user) is required: root is the
        # only account, reached with the SSH keys written by late-commands.
        "user-data": user_data,
        "early-commands": commands("early_commands"),
        "late-commands": commands("late_commands"),
        "error-commands": commands("error_commands"),
    }
    if values["repo_url"]:
        document["apt"] = {"primary": [{"arches": ["default"], "uri": values["repo_url"]}]}
    header = (
        "#cloud-config\n"
        f"# Ubuntu autoinstall for {values['fqdn']}: image {values['image_name']}, "
        f"role {values['role_name']}.\n"
    )
    # A wide line so that no command (each callback with its full URL) is folded.
    body = yaml.safe_dump({"autoinstall": document}, sort_keys=False, width=1 << 16)
    return header + body
