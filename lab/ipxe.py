"""Just enough of iPXE's script language for an emulated machine to follow what the
service tells it: ``chain``, ``kernel``, ``initrd``, ``boot``, ``sanboot``, ``exit``,
``reboot``, ``goto``, ``sleep``, ``echo``, ``set``, ``iseq``/``isset``, and the ``||`` and
``&&`` that join them. Fetching is left to a `Host`, so this module does no I/O.

Semantics follow iPXE where the service's scripts rely on them: ``${name}`` expands
when the command runs (unknown names expand to nothing), ``a || b`` runs b when a
failed, ``a && b`` runs b when a succeeded, an empty command succeeds, a chained script
replaces the current one, and a script that ends hands the machine back to its
firmware (the next boot device: the local disk).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urljoin

_VARIABLE = re.compile(r"\$\{([^}]*)\}")
# Options of kernel/initrd/chain that take a value (the others are flags).
_VALUED_OPTIONS = frozenset({"-n", "--name", "-t", "--timeout"})
# A script that runs this many commands without fetching or sleeping is looping.
_MAX_IDLE_COMMANDS = 1000


class FetchError(Exception):
    """A download failed (connection, HTTP status, TFTP error)."""


class ScriptError(Exception):
    """The script cannot go on: not a script, an unknown label, an endless loop."""


@dataclass(frozen=True)
class Installer:
    """``boot`` with a kernel loaded: the machine runs it."""

    kernel_url: str
    args: str  # the kernel command line
    console: tuple[str, ...]  # what ``echo`` printed on the way


@dataclass(frozen=True)
class LocalBoot:
    """``sanboot``, ``exit`` or the end of the script: the firmware boots the disk."""

    reason: str


@dataclass(frozen=True)
class Reboot:
    pass


Outcome = Installer | LocalBoot | Reboot


class Host(Protocol):
    async def script(self, url: str) -> str:
        """The script at ``url``; raises FetchError."""

    async def file(self, url: str, what: str) -> int:
        """Download ``url`` (a kernel or initrd) and return its size; raises FetchError."""

    async def sleep(self, seconds: float) -> None: ...


@dataclass(frozen=True)
class _Goto:
    label: str


@dataclass(frozen=True)
class _Chain:
    url: str
    text: str


class _Run:
    def __init__(self, variables: dict[str, str], host: Host) -> None:
        self.variables = dict(variables)
        self.host = host
        self.kernel: tuple[str, str] | None = None
        self.console: list[str] = []

    async def command(self, words: list[str], base: str) -> bool | _Goto | _Chain | Outcome:
        if not words:
            return True
        name, args = words[0], words[1:]
        if name == "goto" and args:
            return _Goto(args[0])
        if name == "sleep" and args:
            await self.host.sleep(float(args[0]))
            return True
        if name == "echo":
            self.console.append(" ".join(a for a in args if a != "-n"))
            return True
        if name == "set" and args:
            self.variables[args[0]] = " ".join(args[1:])
            return True
        if name == "iseq":
            return len(args) == 2 and args[0] == args[1]
        if name == "isset":
            return bool(args)
        if name in ("dhcp", "ifopen", "ifconf"):
            return True  # the lab's NIC is always up and configured
        if name in ("chain", "kernel", "initrd", "imgfetch", "module"):
            return await self._fetch(name, _positional(args), base)
        if name == "boot":
            if self.kernel is None:
                return False
            return Installer(self.kernel[0], self.kernel[1], tuple(self.console))
        if name == "sanboot":
            return LocalBoot("sanboot " + " ".join(_positional(args)))
        if name == "exit":
            return LocalBoot("exit")
        if name == "reboot":
            return Reboot()
        return False  # iPXE: "command not found"

    async def _fetch(self, name: str, args: list[str], base: str) -> bool | _Chain:
        if not args:
            return False
        url = urljoin(base, args[0])
        try:
            if name == "chain":
                return _Chain(url, await self.host.script(url))
            await self.host.file(url, "kernel" if name == "kernel" else "initrd")
        except FetchError:
            return False
        if name == "kernel":
            self.kernel = (url, " ".join(args[1:]))
        return True


def _positional(args: list[str]) -> list[str]:
    out: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg in _VALUED_OPTIONS:
            skip = True
        elif not arg.startswith("-") or out:
            out.append(arg)
    return out


def _pipeline(words: list[str]) -> list[tuple[str, list[str]]]:
    """``a || b && c`` as [("", a), ("||", b), ("&&", c)]."""
    steps: list[tuple[str, list[str]]] = [("", [])]
    for word in words:
        if word in ("||", "&&"):
            steps.append((word, []))
        else:
            steps[-1][1].append(word)
    return steps


async def run(url: str, variables: dict[str, str], host: Host) -> Outcome:
    """Chain to the script at ``url`` (what DHCP told iPXE) and run it to its outcome."""
    state = _Run(variables, host)
    try:
        text = await host.script(url)
    except FetchError as exc:
        raise ScriptError(f"could not fetch {url}: {exc}") from exc
    while True:
        result = await _execute(state, url, text)
        if not isinstance(result, _Chain):
            return result
        url, text = result.url, result.text


async def _execute(state: _Run, url: str, text: str) -> Outcome | _Chain:
    lines = text.splitlines()
    if not lines or not lines[0].startswith("#!ipxe"):
        raise ScriptError(f"{url} is not an iPXE script")
    labels = {line.strip()[1:]: i for i, line in enumerate(lines) if line.strip().startswith(":")}
    index, idle = 0, 0
    while index < len(lines):
        line = lines[index].strip()
        index += 1
        if not line or line.startswith(("#", ":")):
            continue
        idle += 1
        if idle > _MAX_IDLE_COMMANDS:
            raise ScriptError(f"{url} loops without fetching or sleeping")
        words = _VARIABLE.sub(lambda m: state.variables.get(m[1], ""), line).split()
        ok = True
        for operator, command in _pipeline(words):
            if (operator == "||" and ok) or (operator == "&&" and not ok):
                continue
            result = await state.command(command, url)
            if isinstance(result, bool):
                ok = result
                if command and command[0] in ("chain", "kernel", "initrd", "sleep"):
                    idle = 0
                continue
            if isinstance(result, _Goto):
                if result.label not in labels:
                    raise ScriptError(f"{url}: no label {result.label!r}")
                index = labels[result.label] + 1
                break
            return result
    return LocalBoot(f"{url} ended")
