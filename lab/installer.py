"""What an emulated installer reads: where its answer file is (from the kernel command
line, as Anaconda, debian-installer and cloud-init find it) and which callbacks that
answer file makes. The callbacks are taken from the rendered file itself, one per line
holding the literal URL, never from anything the service tells the lab on the side.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import yaml

KINDS = ("started", "progress", "done", "failed")
_CALLBACK_URL = re.compile(rf"https?://\S+/callback/[^/\s]+/({'|'.join(KINDS)})")
# Options of curl and busybox wget that carry the request body.
_BODY_OPTIONS = frozenset({"-d", "--data", "--data-raw", "--post-data"})
_IMAGE = re.compile(r"^#.*\bimage ([A-Za-z0-9][A-Za-z0-9._-]*)", re.M)
_WIPE = "provisioner.callback="


@dataclass(frozen=True)
class Answer:
    url: str
    yaml: bool  # cloud-init user-data: the commands are strings inside a YAML document


@dataclass(frozen=True)
class Callback:
    url: str
    kind: str
    body: str | None


def answer_of(kernel_args: str) -> Answer | None:
    """The answer file named on the kernel command line: ``inst.ks=`` (Anaconda),
    ``url=`` (debian-installer), ``ds=nocloud-net;s=URL/`` (cloud-init, which reads
    ``URL/user-data``)."""
    for arg in kernel_args.split():
        name, _, value = arg.partition("=")
        if name in ("inst.ks", "ks", "url", "preseed/url") and value:
            return Answer(value, yaml=False)
        if name == "ds" and value.startswith("nocloud"):
            for part in value.split(";"):
                if part.startswith(("s=", "seedfrom=")):
                    seed = part.partition("=")[2]
                    return Answer(seed.rstrip("/") + "/user-data", yaml=True)
    return None


def wipe_callback(kernel_args: str) -> str | None:
    """The wipe image has no answer file: it calls back the URL on its command line."""
    for arg in kernel_args.split():
        if arg.startswith(_WIPE):
            return arg.removeprefix(_WIPE).rstrip("/")
    return None


def image_of(answer: str) -> str | None:
    """The image an answer file installs, from its header comment."""
    found = _IMAGE.search(answer)
    return found[1] if found else None


def callbacks(answer: str, *, is_yaml: bool) -> list[Callback]:
    """Every callback the answer file makes, in file order, with the body it sends."""
    found: list[Callback] = []
    for line in _command_lines(answer, is_yaml):
        if "/callback/" in line:
            found.extend(_from_line(line))
    return found


def _command_lines(answer: str, is_yaml: bool) -> Iterator[str]:
    if not is_yaml:
        yield from answer.splitlines()
        return
    # In YAML a command may be quoted (doubled quotes) or folded: the strings it holds
    # are the shell lines the installer runs.
    for text in _strings(yaml.safe_load(answer)):
        yield from text.splitlines()


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


def _from_line(line: str) -> list[Callback]:
    # A preseed command continues on the next line after a backslash.
    line = line.rstrip().removesuffix("\\")
    try:
        words = shlex.split(line)
    except ValueError:
        words = line.split()
    found = []
    body: str | None = None
    for i, word in enumerate(words):
        name, eq, value = word.partition("=")
        if word in _BODY_OPTIONS and i + 1 < len(words):
            body = words[i + 1]
        elif eq and name in _BODY_OPTIONS:
            body = value
        elif match := _CALLBACK_URL.fullmatch(word):
            found.append(Callback(word, match[1], body or None))
            body = None
    return found
