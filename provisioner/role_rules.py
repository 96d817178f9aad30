"""Role rules: which role a freshly inspected node gets when its manifest row named none.

A YAML file (``PROVISIONER_ROLE_RULES``) lists rules in order; the first whose every
condition holds gives the role. Conditions look at what the service knows right after
inspection: the hardware profile, the model the BMC reports, and the rack position.
The format is documented in ``docs/role-rules.md``::

    rules:
      - role: storage
        when: {profile: dell-poweredge, product: "PowerEdge R7*", units: "20-42"}
      - role: compute
        when: {rack: "r0*"}

A rule file that does not parse stops the service at start with the file, the rule and
the field at fault: a typo must not silently send a rack to the wrong role.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import AfterValidator, Field, ValidationError

from provisioner.schemas import Slug, Strict

_UNITS = re.compile(r"^(\d{1,2})(?:-(\d{1,2}))?$")


def _units(value: str) -> str:
    found = _UNITS.match(value.strip())
    if not found or (found.group(2) and int(found.group(2)) < int(found.group(1))):
        raise ValueError(f"{value!r} is not a rack unit range such as '12' or '20-42'")
    return value.strip()


class Conditions(Strict):
    """Every condition given must hold; globs (``*``, ``?``, ``[..]``) match whole
    values, case-insensitively for the model names the BMC reports."""

    profile: str | None = None
    manufacturer: str | None = None
    product: str | None = None
    rack: str | None = None
    units: Annotated[str, AfterValidator(_units)] | None = Field(
        default=None, description="A rack unit or a range, e.g. '20-42'."
    )


class Rule(Strict):
    role: Slug
    when: Conditions = Field(default_factory=Conditions)


class RuleFile(Strict):
    rules: list[Rule]


@dataclass(frozen=True)
class Position:
    """What a rule looks at."""

    rack: str | None
    rack_unit: int | None
    profile: str | None
    facts: dict[str, Any]


class RoleRulesError(Exception):
    """The rules file cannot be used; the message says where and why."""


@dataclass(frozen=True)
class RoleRules:
    rules: tuple[Rule, ...] = ()

    @classmethod
    def load(cls, path: Path | None) -> RoleRules:
        if path is None:
            return cls()
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise RoleRulesError(f"{path}: cannot read the role rules: {exc}") from exc
        try:
            parsed = RuleFile.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
            )
            raise RoleRulesError(f"{path}: {problems}") from exc
        return cls(tuple(parsed.rules))

    def role_for(self, position: Position) -> Rule | None:
        return next((rule for rule in self.rules if _holds(rule.when, position)), None)


def _holds(when: Conditions, at: Position) -> bool:
    checks = [
        (when.profile, at.profile, False),
        (when.manufacturer, at.facts.get("manufacturer"), True),
        (when.product, at.facts.get("product"), True),
        (when.rack, at.rack, False),
    ]
    for pattern, value, fold in checks:
        if pattern is None:
            continue
        if value is None:
            return False
        subject, glob = (str(value).lower(), pattern.lower()) if fold else (str(value), pattern)
        if not fnmatchcase(subject, glob):
            return False
    if when.units is not None:
        if at.rack_unit is None:
            return False
        low, _, high = when.units.partition("-")
        if not int(low) <= at.rack_unit <= int(high or low):
            return False
    return True
