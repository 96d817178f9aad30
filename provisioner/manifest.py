"""Rack manifests: the YAML or CSV file an operator writes to register a whole rack in one
request. Import is all-or-nothing, and every problem in every row is reported at once so
that a bad manifest is fixed in one pass rather than one error per attempt."""

from __future__ import annotations

import csv
import difflib
import io
import re
from collections.abc import Callable, Iterator

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from provisioner import validation
from provisioner.schemas import NodeCreate

try:
    from yaml import CSafeLoader as _BaseLoader
except ImportError:  # PyYAML built without libyaml: correct, only slower.
    from yaml import SafeLoader as _BaseLoader  # type: ignore[assignment]

MAX_NODES = 10_000
MAX_MACS = 16
COLUMNS = (
    "name",
    "rack",
    "u",
    "role",
    "bmc_address",
    "bmc_port",
    "bmc_username",
    "bmc_password",
    "bmc_driver",
    "bmc_tls_verify",
    "macs",
    "hardware_profile",
    "image",
)
# A node's identity and position differ on every row, so a default for them is a mistake.
DEFAULTABLE = frozenset(COLUMNS) - {"name", "macs", "bmc_address", "u"}
CSV_REQUIRED = ("name", "bmc_address", "bmc_username", "bmc_password")
YAML_TYPES = frozenset({"application/yaml", "application/x-yaml", "text/yaml"})
CSV_TYPES = frozenset({"text/csv"})

_PLAIN_FIELDS = ("name", "rack", "role", "hardware_profile", "image")
_BMC_COLUMNS = ("bmc_address", "bmc_port", "bmc_username", "bmc_password", "bmc_driver")
# CSV and YAML alike give text (see _Loader): only these two spellings, so that a typo
# such as "flase" is an error rather than pydantic's idea of a boolean.
_BOOLEANS = {"true": True, "false": False}
_FIELD_TO_COLUMN = {"rack_unit": "u", "nics": "macs"}
_MAC_SEPARATORS = re.compile(r"[\s;]+")
# A repr()-quoted value, escapes included.
_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")
_NULL_TAG = "tag:yaml.org,2002:null"
_NULLS = frozenset({"", "~", "null", "Null", "NULL"})
# The deepest a manifest goes is document > nodes > node > macs > MAC.
_MAX_DEPTH = 5

Error = dict[str, object]
RowProblem = tuple[str, str]  # (column, message) within one row


class ManifestError(ValueError):
    """A manifest that cannot be imported; ``errors`` lists every problem found, each as
    ``{"row": int | None, "field": str | None, "message": str}``."""

    def __init__(self, errors: list[Error]) -> None:
        super().__init__(_summarise(errors))
        self.errors = errors


def parse_manifest(body: bytes, media_type: str) -> list[NodeCreate]:
    """One NodeCreate per manifest row, in order (row N is index N-1), or ManifestError."""
    kind = media_type.split(";", 1)[0].strip().lower()
    if kind not in YAML_TYPES | CSV_TYPES:
        raise _fatal(f"unsupported content type {media_type!r}; send application/yaml or text/csv")
    text = _decode(body)
    errors = _Errors()
    defaults: dict[str, object] = {}
    if kind in CSV_TYPES:
        rows = _csv_rows(text, errors)
    else:
        rows, defaults = _yaml_rows(text)
    if not rows:
        raise _fatal("the manifest has no nodes")
    if len(rows) > MAX_NODES:
        raise _fatal(f"the manifest has more than {MAX_NODES} nodes; split it into several imports")
    seen = _Seen()
    nodes = [_node(number, raw, defaults, seen, errors) for number, raw in enumerate(rows, 1)]
    errors.raise_if_any()
    return [node for node in nodes if node is not None]


class _Errors:
    def __init__(self) -> None:
        self.items: list[Error] = []
        self._manifest_level: set[tuple[str | None, str]] = set()

    def add(self, row: int | None, field: str | None, message: str) -> None:
        if row is None:
            # A bad default surfaces on every row that inherits it; report it once.
            if (field, message) in self._manifest_level:
                return
            self._manifest_level.add((field, message))
        self.items.append({"row": row, "field": field, "message": message})

    def raise_if_any(self) -> None:
        if self.items:
            raise ManifestError(sorted(self.items, key=_row_order))


class _Seen:
    """First row on which each MAC, name and rack position appeared."""

    def __init__(self) -> None:
        self.macs: dict[str, int] = {}
        self.names: dict[str, int] = {}
        self.positions: dict[tuple[str, int], int] = {}


def _row_order(error: Error) -> int:
    row = error["row"]
    return row if isinstance(row, int) else 0


def _fatal(message: str) -> ManifestError:
    return ManifestError([{"row": None, "field": None, "message": message}])


def _summarise(errors: list[Error]) -> str:
    shown = "; ".join(_describe(error) for error in errors[:3])
    return shown + (f" (and {len(errors) - 3} more)" if len(errors) > 3 else "")


def _describe(error: Error) -> str:
    where = []
    if error["row"] is not None:
        where.append(f"row {error['row']}")
    if error["field"] is not None:
        where.append(str(error["field"]))
    return f"{', '.join(where)}: {error['message']}" if where else str(error["message"])


def _decode(body: bytes) -> str:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = body[: exc.start].count(b"\n") + 1
        raise _fatal(
            f"the manifest is not UTF-8 text (byte 0x{body[exc.start]:02x} on line {line}); "
            "save it as UTF-8"
        ) from None
    # Spreadsheets often start UTF-8 exports with a byte-order mark.
    return text.removeprefix("\ufeff")


# --- CSV -----------------------------------------------------------------------------


def _csv_rows(text: str, errors: _Errors) -> list[object]:
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader, None)
        if header is None:
            return []
        columns = _csv_header(header, errors)
        # Rows cannot be checked against a header with wrong or missing columns.
        errors.raise_if_any()
        rows: list[object] = []
        for cells in reader:
            if not any(cell.strip() for cell in cells):
                continue
            rows.append(_csv_row(len(rows) + 1, columns, cells, errors))
            if len(rows) > MAX_NODES:
                break
    except csv.Error as exc:
        raise _fatal(f"the CSV could not be read at line {reader.line_num}: {exc}") from None
    return rows


def _csv_header(header: list[str], errors: _Errors) -> list[str]:
    columns = [cell.strip() for cell in header]
    named = [column for column in columns if column]
    for column in dict.fromkeys(named):
        if column not in COLUMNS:
            errors.add(None, column, _unknown(column, "column"))
        elif named.count(column) > 1:
            errors.add(None, column, "the column appears more than once in the header")
    for column in CSV_REQUIRED:
        if column not in named:
            errors.add(None, column, "a required column is missing from the header")
    return columns


def _csv_row(number: int, columns: list[str], cells: list[str], errors: _Errors) -> object:
    row: dict[str, object] = {}
    for index, cell in enumerate(cells):
        value = cell.strip()
        column = columns[index] if index < len(columns) else ""
        if value and column:
            row[column] = value
        elif value:
            errors.add(number, None, f"cell {index + 1} has a value but no column in the header")
    return row


# --- YAML ----------------------------------------------------------------------------


class _Loader(_BaseLoader):
    """Reads every plain scalar except null as text, as CSV does. YAML 1.1 would turn
    MACs such as 10:20:30:40:50:54 into base-60 numbers, 0123 into 83 and `yes` into
    true, corrupting names, MACs and passwords; numeric columns are converted later.
    Skipping PyYAML's list of implicit-type patterns also makes composing faster."""

    def resolve(self, kind: type[yaml.Node], value: str | None, implicit: tuple[bool, bool]) -> str:
        if kind is yaml.SequenceNode:
            return self.DEFAULT_SEQUENCE_TAG
        if kind is yaml.MappingNode:
            return self.DEFAULT_MAPPING_TAG
        return _NULL_TAG if implicit[0] and value in _NULLS else self.DEFAULT_SCALAR_TAG


def _yaml_rows(text: str) -> tuple[list[object], dict[str, object]]:
    document = _load_yaml(text)
    if document is None:
        return [], {}
    if isinstance(document, list):
        return document, {}
    if not isinstance(document, dict):
        raise _fatal(
            "a manifest is a mapping with a 'nodes:' list, or a list of nodes; "
            f"this one is {_kind(document)}"
        )
    errors = _Errors()
    for key in document:
        if key not in ("defaults", "nodes"):
            errors.add(None, key, f"unknown key {key!r}; a manifest has 'defaults:' and 'nodes:'")
    nodes = document.get("nodes")
    if nodes is None:
        nodes = []
    elif not isinstance(nodes, list):
        errors.add(None, "nodes", f"must be a list of nodes, not {_kind(nodes)}")
    defaults = _defaults(document.get("defaults"), errors)
    # Every row depends on the manifest's shape and defaults; check rows once those are right.
    errors.raise_if_any()
    return nodes, defaults


def _load_yaml(text: str) -> object:
    try:
        # Composing and converting the node tree here is about twice as fast as PyYAML's
        # constructor, and lets duplicate keys be refused with their line.
        root = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        raise _yaml_error(exc.problem_mark or exc.context_mark, exc.problem or "") from None
    except yaml.reader.ReaderError as exc:
        # The C and Python readers disagree on what `position` counts; the first
        # occurrence of the refused character is where both stopped.
        line = text.count("\n", 0, text.find(chr(exc.character))) + 1
        raise _fatal(
            f"invalid YAML at line {line}: character U+{exc.character:04X} is not allowed"
        ) from None
    return None if root is None else _plain(root, {}, 0)


def _plain(node: yaml.Node, built: dict[int, object], depth: int) -> object:
    """Lists, dicts, text and None from a composed node; aliases share one object."""
    if isinstance(node, yaml.ScalarNode):
        return None if node.tag == _NULL_TAG else node.value
    if id(node) in built:
        return built[id(node)]
    if depth >= _MAX_DEPTH:
        raise _yaml_error(node.start_mark, "nested deeper than any part of a manifest")
    if isinstance(node, yaml.SequenceNode):
        items: list[object] = []
        built[id(node)] = items
        items.extend(_plain(item, built, depth + 1) for item in node.value)
        return items
    mapping: dict[str, object] = {}
    built[id(node)] = mapping
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            raise _yaml_error(key_node.start_mark, "a key must be plain text")
        if key_node.value in mapping:
            # PyYAML would silently keep the last value, hiding copy-paste mistakes.
            raise _yaml_error(key_node.start_mark, f"key {key_node.value!r} appears twice")
        mapping[key_node.value] = _plain(value_node, built, depth + 1)
    return mapping


def _yaml_error(mark: yaml.Mark | None, problem: str) -> ManifestError:
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    return _fatal(f"invalid YAML{where}: {problem}")


def _defaults(value: object, errors: _Errors) -> dict[str, object]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        errors.add(
            None, "defaults", f"must be a mapping of column names to values, not {_kind(value)}"
        )
        return {}
    for key in value:
        if key in DEFAULTABLE:
            continue
        message = (
            "cannot have a default: it differs on every node"
            if key in COLUMNS
            else _unknown(key, "key")
        )
        errors.add(None, f"defaults.{key}", message)
    return {key: item for key, item in value.items() if item is not None}


# --- rows ----------------------------------------------------------------------------


def _node(
    number: int, raw: object, defaults: dict[str, object], seen: _Seen, errors: _Errors
) -> NodeCreate | None:
    if not isinstance(raw, dict):
        errors.add(number, None, f"a node is a mapping of column names to values, not {_kind(raw)}")
        return None
    row = {key: value for key, value in raw.items() if value is not None}
    inherited = defaults.keys() - row.keys()
    row.update((key, defaults[key]) for key in inherited)
    problems = [(key, _unknown(key, "key")) for key in row if key not in COLUMNS]
    macs = _macs(row.get("macs", []), problems)
    tls_verify = _tls_verify(row.get("bmc_tls_verify"), problems)
    node, invalid = _validate(row, macs, tls_verify)
    problems.extend(invalid)
    problems.extend(_duplicates(number, _identity(node, row, macs), seen))
    # The rack-wide password may be typed into a row that overrides its own.
    passwords = (row.get("bmc_password"), defaults.get("bmc_password"))
    for column, message in problems:
        if column in inherited:
            errors.add(None, f"defaults.{column}", _redact(message, passwords))
        else:
            errors.add(number, column, _redact(message, passwords))
    return None if problems else node


def _macs(value: object, problems: list[RowProblem]) -> list[object]:
    """The MACs to validate, from a YAML list or one string separated by spaces or ';'."""
    macs = [mac for mac in _MAC_SEPARATORS.split(value) if mac] if isinstance(value, str) else value
    if not isinstance(macs, list):
        problems.append(("macs", f"macs must be a list of MAC addresses, not {_kind(macs)}"))
        return []
    if len(macs) > MAX_MACS:
        # Refused before validation: YAML aliases can make a short file hold huge lists.
        problems.append(("macs", f"a node has at most {MAX_MACS} MACs; this one has {len(macs)}"))
        return []
    return macs


def _tls_verify(value: object, problems: list[RowProblem]) -> bool | None:
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lower() in _BOOLEANS:
        return _BOOLEANS[value.strip().lower()]
    shown = repr(value) if isinstance(value, str) else _kind(value)
    problems.append(("bmc_tls_verify", f"bmc_tls_verify must be true or false, not {shown}"))
    return None


def _validate(
    row: dict[str, object], macs: list[object], tls_verify: bool | None
) -> tuple[NodeCreate | None, list[RowProblem]]:
    try:
        return NodeCreate.model_validate(_payload(row, macs, tls_verify)), []
    except ValidationError as exc:
        return None, [_problem(error) for error in exc.errors(include_url=False)]


def _payload(
    row: dict[str, object], macs: list[object], tls_verify: bool | None
) -> dict[str, object]:
    payload = {key: row[key] for key in _PLAIN_FIELDS if key in row}
    if "u" in row:
        payload["rack_unit"] = row["u"]
    # Without bmc_driver, the API's default (ipmi); with auto, the import probes.
    bmc = {key.removeprefix("bmc_"): row[key] for key in _BMC_COLUMNS if key in row}
    if tls_verify is not None:
        bmc["tls_verify"] = tls_verify
    payload["bmc"] = bmc
    # The first MAC listed is the NIC the node PXE-boots from.
    payload["nics"] = [{"mac": mac, "pxe": index == 0} for index, mac in enumerate(macs)]
    return payload


def _problem(error: ErrorDetails) -> RowProblem:
    loc = error["loc"]
    column = _column(loc)
    kind = error["type"]
    if kind == "missing":
        return column, f"{column} is required"
    if kind == "string_type":
        subject = f"MAC {int(loc[1]) + 1}" if column == "macs" and len(loc) > 1 else column
        return column, f"{subject} must be a single value, not {_kind(error['input'])}"
    if kind == "too_long":
        # pydantic counts SecretStr limits in "items"; say characters.
        limit = error.get("ctx", {}).get("max_length")
        return column, f"{column} must be at most {limit} characters long"
    if kind == "too_short":
        return column, f"{column} must not be empty"
    return column, error["msg"].removeprefix("Value error, ")


def _column(loc: tuple[int | str, ...]) -> str:
    if not loc:
        # NodeCreate's only whole-model rule is the check for a MAC listed twice.
        return "macs"
    if loc[0] == "bmc" and len(loc) > 1:
        return f"bmc_{loc[1]}"
    return _FIELD_TO_COLUMN.get(str(loc[0]), str(loc[0]))


Identity = tuple[list[str], str | None, tuple[str, int] | None]  # MACs, name, position


def _identity(node: NodeCreate | None, row: dict[str, object], macs: list[object]) -> Identity:
    """What must be unique across the manifest, normalised as the database will store it.
    A row that failed validation still contributes the parts that are valid, so that its
    duplicates are reported in the same pass as its other problems."""
    if node is not None:
        position = (node.rack, node.rack_unit) if node.rack and node.rack_unit else None
        return [nic.mac for nic in node.nics], node.name, position
    normalised_macs = [_normalised(validation.normalize_mac, mac) for mac in macs]
    rack = _normalised(validation.rack_name, row.get("rack"))
    unit = row.get("u")
    position = (rack, int(unit)) if rack and isinstance(unit, str) and unit.isdigit() else None
    name = _normalised(validation.node_name, row.get("name"))
    return [mac for mac in normalised_macs if mac], name, position


def _duplicates(number: int, identity: Identity, seen: _Seen) -> Iterator[RowProblem]:
    macs, name, position = identity
    for mac in dict.fromkeys(macs):
        first = seen.macs.setdefault(mac, number)
        if first != number:
            yield "macs", f"MAC {mac!r} is already listed on row {first}"
    if name is not None:
        first = seen.names.setdefault(name, number)
        if first != number:
            yield "name", f"name {name!r} is already used on row {first}"
    if position is not None:
        first = seen.positions.setdefault(position, number)
        if first != number:
            rack, unit = position
            yield "u", f"rack {rack!r} unit {unit} is already taken by row {first}"


def _normalised(check: Callable[[str], str], value: object) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return check(value)
    except ValueError:
        return None


def _redact(message: str, passwords: tuple[object, ...]) -> str:
    # Messages quote the values they complain about; a password typed into the wrong
    # column must still never reach an error response or a log line. Only quoted values
    # are searched so that a short password cannot mangle the rest of the sentence.
    secrets = {p.strip() for p in passwords if isinstance(p, str) and p.strip()}
    if not secrets:
        return message
    forms = [form for secret in secrets for form in (secret, repr(secret)[1:-1])]
    return _QUOTED.sub(
        lambda match: "'********'" if any(form in match[0] for form in forms) else match[0],
        message,
    )


def _unknown(name: str, what: str) -> str:
    close = difflib.get_close_matches(name, COLUMNS, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"known {what}s: {', '.join(COLUMNS)}"
    return f"unknown {what} {name!r}; {hint}"


def _kind(value: object) -> str:
    if value is None:
        return "an empty value"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return "text"
