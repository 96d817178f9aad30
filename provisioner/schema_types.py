"""The constrained values the API's models are built from: names, MACs, hosts, BMC
credentials. Each is checked by a validator of provisioner/validation.py, with a
sentence that says what a good value looks like, and documented in the OpenAPI schema by
the same rule (``json_schema_extra``), so that a value the schema allows is one the
service accepts and the other way round."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, SecretStr

from provisioner import validation
from provisioner.bmc.registry import DRIVER_NAMES


def _described(**schema: Any) -> Any:
    return Field(json_schema_extra=schema)


Mac = Annotated[
    str,
    AfterValidator(validation.normalize_mac),
    _described(
        pattern=validation.MAC_PATTERN,
        # The all-zero MAC is no NIC's.
        **{"not": {"pattern": validation.NOT_ZERO_MAC_PATTERN}},
        description="A NIC's MAC: six hex octets apart by ':' or '-', twelve hex digits, "
        "or three groups of four apart by '.'.",
        examples=["52:54:00:12:34:56"],
    ),
]
NodeName = Annotated[
    str,
    AfterValidator(validation.node_name),
    _described(
        pattern=validation.NODE_NAME_PATTERN,
        maxLength=63,
        **{"not": {"pattern": validation.UUID_LIKE_PATTERN}},
        description="A hostname of at most 63 characters, not a UUID; stored in lower case.",
    ),
]
RackName = Annotated[
    str,
    AfterValidator(validation.rack_name),
    _described(pattern=validation.RACK_PATTERN, description="Stored in lower case."),
]
Slug = Annotated[
    str,
    AfterValidator(validation.slug),
    _described(pattern=validation.SLUG_PATTERN, description="Stored in lower case."),
]
Host = Annotated[
    str,
    AfterValidator(validation.host),
    _described(
        anyOf=[
            {"pattern": validation.IPV4_PATTERN},
            {"format": "ipv6"},
            {
                "pattern": validation.HOSTNAME_PATTERN,
                "maxLength": 253,
                "not": {"pattern": validation.DIGITS_AND_DOTS_PATTERN},
            },
        ],
        description="An IPv4 or IPv6 address or a DNS hostname.",
    ),
]


def _json_number(value: Any) -> Any:
    # JSON's numbers only: pydantic would otherwise take "5" or true for a number. A
    # whole float (5.0) is an integer to JSON Schema, and stays one.
    if isinstance(value, bool | str | bytes):
        raise ValueError("must be a JSON number")
    return value


# Last in an Annotated, after any Field constraints: the schema then keeps them as
# minimum and maximum.
JSON_NUMBER = BeforeValidator(_json_number)
JsonInt = Annotated[int, JSON_NUMBER]
JsonFloat = Annotated[float, JSON_NUMBER]


def never_null(schema: dict[str, Any]) -> None:
    """For a query parameter ``X | None``: it is left out or given, and a null would be
    sent as the text "null"; the schema is X's alone."""
    choices = [c for c in schema.pop("anyOf", ()) if c != {"type": "null"}]
    if len(choices) == 1:
        schema.update(choices[0])
    elif choices:
        schema["anyOf"] = choices


Port = Annotated[int, Field(ge=1, le=65535)]
RackUnit = Annotated[int, Field(ge=1, le=60)]
Scope = Literal["viewer", "operator", "admin"]


def _as_utc(value: Any) -> Any:
    # SQLite hands back naive datetimes; everything is stored in UTC.
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


UtcDatetime = Annotated[datetime, BeforeValidator(_as_utc)]


class Strict(BaseModel):
    # No global whitespace stripping: it would alter passwords. Validators of names,
    # MACs and hosts strip what they normalise.
    model_config = ConfigDict(extra="forbid")


BmcTimeout = Annotated[float, Field(gt=0, le=120, description="Seconds per attempt.")]
BmcRetries = Annotated[int, Field(ge=0, le=10)]
# pyghmi speaks suite 3 (SHA-1) and 17 (SHA-256); BMCs differ in which they allow.
CipherSuite = Literal[3, 17]


def _known_driver(name: str) -> str:
    if name not in DRIVER_NAMES:
        raise ValueError(f"unknown BMC driver {name!r}; use one of {', '.join(DRIVER_NAMES)}")
    return name


BmcDriver = Annotated[str, AfterValidator(_known_driver), _described(enum=list(DRIVER_NAMES))]

AUTO_DRIVER = "auto"


def _known_driver_or_auto(name: str) -> str:
    if name != AUTO_DRIVER and name not in DRIVER_NAMES:
        raise ValueError(
            f"unknown BMC driver {name!r}; use one of {', '.join(DRIVER_NAMES)}, "
            f"or {AUTO_DRIVER} to find out"
        )
    return name


# On input only: "auto" is resolved by probing the BMC before anything is stored.
BmcDriverChoice = Annotated[
    str,
    AfterValidator(_known_driver_or_auto),
    _described(enum=[*DRIVER_NAMES, AUTO_DRIVER]),
]


# IPMI 2.0 keeps 16 bytes of a user name and 20 of a password; BMCs cut longer ones
# silently. Printable ASCII only, so the lengths in characters are the ones in bytes.
BmcUser = Annotated[
    str,
    Field(min_length=1, max_length=16),
    AfterValidator(validation.ipmi_user),
    _described(pattern=validation.PRINTABLE_ASCII_PATTERN),
]
BmcPassword = Annotated[
    SecretStr,
    Field(min_length=1, max_length=20),
    AfterValidator(validation.ipmi_password),
    _described(pattern=validation.PRINTABLE_ASCII_PATTERN),
]
