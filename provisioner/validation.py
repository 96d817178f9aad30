"""Validators for what operators type: MACs, names, hosts. Each raises ValueError with
a sentence that says what a good value looks like."""

from __future__ import annotations

import ipaddress
import re
import uuid

from pydantic import SecretStr

_CANONICAL_MAC = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")
# Six octets apart by ':' or '-', twelve digits, or Cisco's three groups of four.
_MAC_FORMS = re.compile(
    r"([0-9a-f]{2}[:-]){5}[0-9a-f]{2}|[0-9a-f]{12}|([0-9a-f]{4}\.){2}[0-9a-f]{4}"
)
_MAC_SEPARATORS = re.compile(r"[:\-.]")
_DIGITS_AND_DOTS = re.compile(r"^[0-9.]+$")
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_HOSTNAME = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")
_RACK = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_SLUG = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_PRINTABLE_ASCII = re.compile(r"^[\x20-\x7e]*$")

# What each validator accepts, as JSON Schema (ECMA-262) patterns for the API's schema:
# surrounding whitespace and capitals are accepted, as the validators strip and lower.
_CI_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_X = "[0-9A-Fa-f]"
_FIRST = f"{_X}[02468aceACE]"  # the first octet of a NIC's MAC is even: not multicast
MAC_PATTERN = (
    rf"^[ \t]*({_FIRST}[:-]({_X}{{2}}[:-]){{4}}{_X}{{2}}|{_FIRST}{_X}{{10}}"
    rf"|{_FIRST}{_X}{{2}}\.{_X}{{4}}\.{_X}{{4}})[ \t]*$"
)
NOT_ZERO_MAC_PATTERN = r"^[ \t\-:.0]*$"
NODE_NAME_PATTERN = rf"^\s*{_CI_LABEL}(\.{_CI_LABEL})*\s*$"
# uuid.UUID takes any 32 hex digits with hyphens anywhere: such a name is refused.
UUID_LIKE_PATTERN = r"^\s*[0-9A-Fa-f](-*[0-9A-Fa-f]){31}\s*$"
SLUG_PATTERN = r"^\s*[A-Za-z0-9][A-Za-z0-9._-]{0,62}\s*$"
RACK_PATTERN = SLUG_PATTERN
_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
IPV4_PATTERN = rf"^\s*({_OCTET}\.){{3}}{_OCTET}\s*$"
HOSTNAME_PATTERN = rf"^\s*{_CI_LABEL}(\.{_CI_LABEL})*\.*\s*$"
DIGITS_AND_DOTS_PATTERN = r"^[\s0-9.]*$"
PRINTABLE_ASCII_PATTERN = _PRINTABLE_ASCII.pattern


def normalize_mac(value: str) -> str:
    """Accept aa:bb:.., AA-BB-.., aabb.ccdd.eeff or aabbccddeeff; return aa:bb:cc:dd:ee:ff."""
    canonical = _CANONICAL_MAC.fullmatch(value) is not None
    if canonical:
        # iPXE sends this form with every boot request: nothing to rewrite.
        digits = value.replace(":", "")
    else:
        raw = value.strip(" \t").lower()
        if not _MAC_FORMS.fullmatch(raw):
            raise ValueError(
                f"{value!r} is not a MAC address (expected six hex octets, aa:bb:cc:dd:ee:ff)"
            )
        digits = _MAC_SEPARATORS.sub("", raw)
    if int(digits[:2], 16) & 1:
        raise ValueError(f"{value!r} is a multicast/broadcast address, not a NIC's MAC")
    if digits == "0" * 12:
        raise ValueError(f"{value!r} is the all-zero MAC, not a NIC's MAC")
    return value if canonical else ":".join(digits[i : i + 2] for i in range(0, 12, 2))


def node_name(value: str) -> str:
    name = value.strip().lower()
    if len(name) > 63 or not _HOSTNAME.match(name):
        raise ValueError(
            f"{value!r} is not a valid node name: use a hostname of at most 63 characters "
            "(letters, digits, '-', '.'; no leading or trailing '-')"
        )
    try:
        uuid.UUID(name)
    except ValueError:
        return name
    raise ValueError(f"{value!r} looks like a node id; names must not be UUIDs")


def rack_name(value: str) -> str:
    rack = value.strip().lower()
    if not _RACK.match(rack):
        raise ValueError(
            f"{value!r} is not a valid rack name: 1-63 letters, digits, '.', '_' or '-'"
        )
    return rack


def slug(value: str) -> str:
    """Names of roles, images and profiles."""
    name = value.strip().lower()
    if not _SLUG.match(name):
        raise ValueError(
            f"{value!r} is not a valid name: 1-63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def host(value: str) -> str:
    """An IPv4/IPv6 address or a DNS hostname."""
    text = value.strip()
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    lowered = text.lower().rstrip(".")
    if _DIGITS_AND_DOTS.match(lowered) or len(lowered) > 253 or not _HOSTNAME.match(lowered):
        raise ValueError(f"{value!r} is neither an IP address nor a valid hostname")
    return lowered


def ipmi_user(value: str) -> str:
    """IPMI 2.0 keeps 16 bytes of a user name; a BMC cuts a longer one silently."""
    if len(value.encode()) > 16:
        raise ValueError(
            f"the BMC user name takes {len(value.encode())} bytes in UTF-8; IPMI allows 16"
        )
    _printable("user name", value)
    return value


def _printable(what: str, value: str) -> None:
    # BMCs take printable ASCII; it also makes the limit in bytes one a schema can state.
    if not _PRINTABLE_ASCII.match(value):
        raise ValueError(f"the BMC {what} must be printable ASCII (letters, digits, punctuation)")


def ipmi_password(value: SecretStr) -> SecretStr:
    """IPMI 2.0 keeps 20 bytes of a password; a BMC cuts a longer one silently, and the
    login then fails with a password that looks right. The message never quotes it."""
    size = len(value.get_secret_value().encode())
    if size > 20:
        raise ValueError(f"the BMC password takes {size} bytes in UTF-8; IPMI allows 20")
    _printable("password", value.get_secret_value())
    return value
