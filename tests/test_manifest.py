"""Rack manifest parsing: both formats, defaults, and one precise error per bad field."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisioner.manifest import MAX_NODES, ManifestError, parse_manifest
from provisioner.schemas import NodeCreate

YAML = "application/yaml"
CSV = "text/csv"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
HEADER = "name,rack,u,role,bmc_address,bmc_port,bmc_username,bmc_password,macs\n"


def parse(text: str, media_type: str = YAML) -> list[NodeCreate]:
    return parse_manifest(text.encode(), media_type)


def failure(text: str | bytes, media_type: str = YAML) -> ManifestError:
    body = text.encode() if isinstance(text, str) else text
    with pytest.raises(ManifestError) as caught:
        parse_manifest(body, media_type)
    return caught.value


def where(error: ManifestError) -> list[tuple[object, object]]:
    return [(e["row"], e["field"]) for e in error.errors]


def only_message(error: ManifestError) -> str:
    assert len(error.errors) == 1, error.errors
    assert error.errors[0]["row"] is None
    return str(error.errors[0]["message"])


def yaml_rows(*rows: str) -> str:
    """A manifest whose defaults supply the BMC login, with one flow-style row per line."""
    nodes = "".join(f"  - {{{row}}}\n" for row in rows)
    return f"defaults: {{bmc_username: admin, bmc_password: pw}}\nnodes:\n{nodes}"


def node(
    name: str, address: str, *macs: str, bmc: dict[str, object] | None = None, **fields: object
) -> NodeCreate:
    bmc = {"address": address, "username": "admin", "password": "pw", **(bmc or {})}
    nics = [{"mac": mac, "pxe": index == 0} for index, mac in enumerate(macs)]
    return NodeCreate.model_validate({"name": name, "bmc": bmc, "nics": nics, **fields})


# --- what good manifests become --------------------------------------------------------


def test_yaml_with_defaults_becomes_node_creates_in_order() -> None:
    nodes = parse(
        """
defaults:
  rack: A01
  role: compute
  bmc_username: admin
  bmc_password: pw
  bmc_port: 6230
nodes:
  - name: A01-N01
    u: 1
    bmc_address: 10.10.1.11
    macs: [AA-BB-CC-00-00-01, aabb.cc00.0002]
  - name: a01-n02
    u: "2"
    role: storage
    bmc_address: bmc-a01-n02.example.net
    bmc_port: 623
    bmc_password: other
    macs: [aabbcc000003]
    hardware_profile: r650
    image: rocky-9
"""
    )
    assert nodes == [
        node(
            "a01-n01",
            "10.10.1.11",
            "aa:bb:cc:00:00:01",
            "aa:bb:cc:00:00:02",
            rack="a01",
            rack_unit=1,
            role="compute",
            bmc={"port": 6230},
        ),
        node(
            "a01-n02",
            "bmc-a01-n02.example.net",
            "aa:bb:cc:00:00:03",
            rack="a01",
            rack_unit=2,
            role="storage",
            hardware_profile="r650",
            image="rocky-9",
            bmc={"port": 623, "password": "other"},
        ),
    ]


def test_csv_becomes_the_same_node_creates() -> None:
    nodes = parse(
        HEADER + "A01-N01,a01,1,compute,10.10.1.11,,admin,pw,AA-BB-CC-00-00-01 ; aabb.cc00.0002\n"
        "a01-n02,a01,2,storage,10.10.1.12,6230,admin,pw,aa:bb:cc:00:00:03\n",
        CSV,
    )
    assert nodes == [
        node(
            "a01-n01",
            "10.10.1.11",
            "aa:bb:cc:00:00:01",
            "aa:bb:cc:00:00:02",
            rack="a01",
            rack_unit=1,
            role="compute",
        ),
        node(
            "a01-n02",
            "10.10.1.12",
            "aa:bb:cc:00:00:03",
            rack="a01",
            rack_unit=2,
            role="storage",
            bmc={"port": 6230},
        ),
    ]
    assert nodes[0].bmc.port == 623


def test_first_mac_is_the_pxe_nic_and_macs_are_normalised() -> None:
    (only,) = parse(
        yaml_rows("name: n1, bmc_address: h1, macs: [0A-0B-0C-0D-0E-0F, 0a0b.0c0d.0e10]")
    )
    assert [(nic.mac, nic.pxe) for nic in only.nics] == [
        ("0a:0b:0c:0d:0e:0f", True),
        ("0a:0b:0c:0d:0e:10", False),
    ]


def test_a_bare_yaml_list_of_rows_is_a_manifest() -> None:
    (only,) = parse("- {name: n1, bmc_address: h1, bmc_username: u, bmc_password: p}\n")
    assert only.name == "n1"
    assert only.nics == []


def test_yaml_values_are_read_as_text_like_csv() -> None:
    # YAML 1.1 would read this MAC as a base-60 number, 0123 as octal and yes as true.
    (only,) = parse(
        "- {name: n1, bmc_address: h1, bmc_username: admin, bmc_password: 0123, "
        "role: yes, macs: [10:20:30:40:50:54, 102030405056]}\n"
    )
    assert only.bmc.password.get_secret_value() == "0123"
    assert only.role == "yes"
    assert [nic.mac for nic in only.nics] == ["10:20:30:40:50:54", "10:20:30:40:50:56"]


def test_yaml_macs_may_be_one_string_like_a_csv_cell() -> None:
    (only,) = parse(
        yaml_rows("name: n1, bmc_address: h1, macs: 'aa:bb:cc:00:00:01;aa:bb:cc:00:00:02'")
    )
    assert len(only.nics) == 2


def test_null_values_in_a_row_take_the_default() -> None:
    (only,) = parse(
        "defaults: {rack: r1, bmc_username: u, bmc_password: p}\n"
        "nodes:\n  - {name: n1, bmc_address: h1, rack: ~}\n"
    )
    assert only.rack == "r1"


def test_yaml_anchors_and_aliases_work() -> None:
    _, second = parse(
        "nodes:\n"
        "  - {name: n1, bmc_address: h1, bmc_username: &user admin, bmc_password: &pw s3cr3t}\n"
        "  - {name: n2, bmc_address: h2, bmc_username: *user, bmc_password: *pw}\n"
    )
    assert second.bmc.username == "admin"
    assert second.bmc.password.get_secret_value() == "s3cr3t"


def test_csv_tolerates_spreadsheet_habits() -> None:
    nodes = parse(
        "\ufeff name , bmc_address,bmc_username,bmc_password,\nn1 , h1 ,u,p,\n,,,,\n\nn2,h2,u,p\n",
        "text/csv; charset=utf-8",
    )
    assert [n.name for n in nodes] == ["n1", "n2"]
    assert nodes[0].bmc.address == "h1"


def test_the_example_manifests_describe_the_same_rack() -> None:
    from_yaml = parse_manifest((EXAMPLES / "rack-a01.yaml").read_bytes(), YAML)
    from_csv = parse_manifest((EXAMPLES / "rack-a01.csv").read_bytes(), CSV)
    assert from_yaml == from_csv
    assert len(from_yaml) == 8
    assert {n.role for n in from_yaml} == {"compute", "storage"}


@pytest.mark.parametrize("media_type", ["application/yaml", "application/x-yaml", "text/yaml"])
def test_every_yaml_media_type_is_accepted(media_type: str) -> None:
    assert len(parse(yaml_rows("name: n1, bmc_address: h1"), media_type)) == 1


# --- one precise error per bad field ----------------------------------------------------


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ("name: n1, bmc_address: h1, macs: [aa:bb:cc:dd:ee]", "macs"),
        ("name: n1, bmc_address: h1, macs: [ff:ff:ff:ff:ff:ff]", "macs"),
        ("name: n1, bmc_address: h1, macs: [aa:bb:cc:00:00:01, AA-BB-CC-00-00-01]", "macs"),
        ("name: n1, bmc_address: h1, macs: [[aa:bb:cc:00:00:01]]", "macs"),
        ("name: n1, bmc_address: h1, macs: {a: b}", "macs"),
        ("name: n1, bmc_address: 10.10.1.300", "bmc_address"),
        ("name: n1, bmc_address: bad_host!", "bmc_address"),
        ("name: n1, bmc_address: h1, bmc_port: 70000", "bmc_port"),
        ("name: n1, bmc_address: h1, bmc_port: ipmi", "bmc_port"),
        ("name: n1, bmc_address: h1, bmc_username: seventeen-chars-x", "bmc_username"),
        ("name: -n1, bmc_address: h1", "name"),
        ("name: 123e4567-e89b-12d3-a456-426614174000, bmc_address: h1", "name"),
        ("name: [n1], bmc_address: h1", "name"),
        ("name: n1, bmc_address: h1, rack: 'A 01'", "rack"),
        ("name: n1, bmc_address: h1, u: 61", "u"),
        ("name: n1, bmc_address: h1, u: top", "u"),
        ("name: n1, bmc_address: h1, role: Compute Nodes", "role"),
        ("name: n1, bmc_address: h1, image: '-rocky'", "image"),
        ("name: n1, bmc_address: h1, hardware_profile: r/650", "hardware_profile"),
        ("name: n1, bmc_adress: h1", "bmc_adress"),
        ("bmc_address: h1", "name"),
        ("name: n1", "bmc_address"),
    ],
)
def test_a_bad_field_is_reported_on_its_row_and_column(row: str, field: str) -> None:
    error = failure(yaml_rows("name: ok, bmc_address: h0", row))
    assert (2, field) in where(error)
    assert {r for r, _ in where(error)} == {2}


def test_too_many_macs_on_one_node() -> None:
    macs = ", ".join(f"aa:bb:cc:00:00:{i:02x}" for i in range(17))
    assert where(failure(yaml_rows(f"name: n1, bmc_address: h1, macs: [{macs}]"))) == [(1, "macs")]


def test_unknown_key_suggests_the_intended_column() -> None:
    error = failure(yaml_rows("name: n1, bmc_address: h1, bmc_pasword: x"))
    assert where(error) == [(1, "bmc_pasword")]
    assert "bmc_password" in str(error.errors[0]["message"])


def test_missing_login_without_defaults() -> None:
    error = failure("nodes:\n  - {name: n1, bmc_address: h1}\n")
    assert where(error) == [(1, "bmc_username"), (1, "bmc_password")]
    assert error.errors[0]["message"] == "bmc_username is required"


def test_several_bad_rows_are_all_reported_at_once() -> None:
    error = failure(
        yaml_rows(
            "name: n1, bmc_address: h1",
            "name: n2, bmc_address: 999.1.1.1, macs: [zz:zz:zz:zz:zz:zz], bmc_port: 0",
            "name: n3, bmc_address: h3",
            "name: n_4, bmc_address: h4, u: 0",
        )
    )
    assert where(error) == [
        (2, "bmc_address"),
        (2, "bmc_port"),
        (2, "macs"),
        (4, "name"),
        (4, "u"),
    ]
    assert all(isinstance(e["message"], str) and e["message"] for e in error.errors)
    assert not any(str(e["message"]).startswith("Value error") for e in error.errors)


def test_messages_are_sentences_without_pydantic_prefixes() -> None:
    error = failure(yaml_rows("name: n1, bmc_address: h1, macs: [nope]"))
    assert error.errors == [
        {
            "row": 1,
            "field": "macs",
            "message": "'nope' is not a MAC address (expected six hex octets, aa:bb:cc:dd:ee:ff)",
        }
    ]
    assert str(error).startswith("row 1, macs: 'nope' is not a MAC address")


# --- rules across rows -------------------------------------------------------------------


def test_a_mac_on_two_rows_is_reported_on_the_later_row() -> None:
    error = failure(
        yaml_rows(
            "name: n1, bmc_address: h1, macs: [aa:bb:cc:00:00:01]",
            "name: n2, bmc_address: h2",
            "name: n3, bmc_address: h3, macs: [aa:bb:cc:00:00:02, AA-BB-CC-00-00-01]",
        )
    )
    assert error.errors == [
        {"row": 3, "field": "macs", "message": "MAC 'aa:bb:cc:00:00:01' is already listed on row 1"}
    ]


def test_a_name_on_two_rows_is_reported_whatever_its_case() -> None:
    error = failure(yaml_rows("name: n1, bmc_address: h1", "name: N1, bmc_address: h2"))
    assert where(error) == [(2, "name")]
    assert "row 1" in str(error.errors[0]["message"])


def test_two_nodes_in_one_rack_unit() -> None:
    error = failure(
        "defaults: {rack: a01, bmc_username: u, bmc_password: p}\nnodes:\n"
        "  - {name: n1, bmc_address: h1, u: 7}\n"
        "  - {name: n2, bmc_address: h2, u: 8}\n"
        "  - {name: n3, bmc_address: h3, u: 7, rack: b01}\n"
        "  - {name: n4, bmc_address: h4, u: '07'}\n"
    )
    assert where(error) == [(4, "u")]
    assert "row 1" in str(error.errors[0]["message"])


def test_duplicates_are_found_on_rows_that_are_also_invalid() -> None:
    error = failure(
        yaml_rows(
            "name: n1, bmc_address: h1, macs: [aa:bb:cc:00:00:01]",
            "name: n1, bmc_address: not_a_host, macs: [aa:bb:cc:00:00:01, bad]",
        )
    )
    assert sorted(where(error), key=str) == [
        (2, "bmc_address"),
        (2, "macs"),
        (2, "macs"),
        (2, "name"),
    ]


def test_duplicates_in_csv_are_reported_too() -> None:
    error = failure(
        HEADER + "n1,a01,1,compute,h1,,u,p,aa:bb:cc:00:00:01\n"
        "n2,a01,1,compute,h2,,u,p,aa:bb:cc:00:00:01\n",
        CSV,
    )
    assert sorted(where(error), key=str) == [(2, "macs"), (2, "u")]


# --- defaults ----------------------------------------------------------------------------


def test_a_bad_default_is_reported_once_against_defaults() -> None:
    error = failure(
        "defaults: {bmc_port: 0, bmc_username: u, bmc_password: p}\nnodes:\n"
        "  - {name: n1, bmc_address: h1}\n"
        "  - {name: n2, bmc_address: h2}\n"
        "  - {name: n3, bmc_address: h3, bmc_port: 70000}\n"
    )
    assert where(error) == [(None, "defaults.bmc_port"), (3, "bmc_port")]


@pytest.mark.parametrize("key", ["name", "macs", "bmc_address", "u", "colour"])
def test_per_node_and_unknown_keys_cannot_be_defaults(key: str) -> None:
    error = failure(f"defaults: {{{key}: x}}\nnodes:\n  - {{name: n1}}\n")
    assert where(error) == [(None, f"defaults.{key}")]


def test_defaults_must_be_a_mapping() -> None:
    error = failure("defaults: [a]\nnodes:\n  - {name: n1}\n")
    assert where(error) == [(None, "defaults")]


# --- the manifest as a whole -------------------------------------------------------------


def test_yaml_syntax_error_names_the_line() -> None:
    message = only_message(failure("nodes:\n  - name: n1\n    macs: [aa:bb\n  - name: n2\n"))
    assert message.startswith("invalid YAML at line ")
    assert "line 4" in message


def test_a_key_given_twice_is_an_error_with_its_line() -> None:
    message = only_message(failure("nodes:\n  - name: n1\n    name: n2\n"))
    assert message == "invalid YAML at line 3, column 5: key 'name' appears twice"


def test_a_control_character_is_an_error_with_its_line() -> None:
    message = only_message(failure("nodes:\n  - name: n\x07\n"))
    assert message == "invalid YAML at line 2: character U+0007 is not allowed"


def test_yaml_nested_too_deeply_is_refused() -> None:
    message = only_message(failure("nodes: [[[[[[[x]]]]]]]\n"))
    assert "nested deeper" in message


@pytest.mark.parametrize(
    "document",
    ["nodes: 5\n", "just text\n", "nodes: [1]\nextra: 2\n"],
)
def test_a_yaml_document_of_the_wrong_shape(document: str) -> None:
    assert where(failure(document))[0][0] is None


def test_a_row_that_is_not_a_mapping() -> None:
    assert where(failure("- n1\n- [n2]\n")) == [(1, None), (2, None)]


@pytest.mark.parametrize(
    ("body", "media_type"),
    [
        ("", YAML),
        ("# nothing yet\n", YAML),
        ("nodes: []\n", YAML),
        ("defaults: {rack: a01}\nnodes:\n", YAML),
        ("", CSV),
        (HEADER, CSV),
        (HEADER + ",,,,,,,,\n", CSV),
    ],
)
def test_an_empty_manifest(body: str, media_type: str) -> None:
    assert only_message(failure(body, media_type)) == "the manifest has no nodes"


def test_more_than_the_row_limit() -> None:
    rows = "".join(f"n{i},h{i},u,p\n" for i in range(MAX_NODES + 1))
    message = only_message(failure("name,bmc_address,bmc_username,bmc_password\n" + rows, CSV))
    assert str(MAX_NODES) in message


def test_an_unsupported_content_type() -> None:
    message = only_message(failure(b'{"nodes": []}', "application/json"))
    assert message == (
        "unsupported content type 'application/json'; send application/yaml or text/csv"
    )


@pytest.mark.parametrize("media_type", [YAML, CSV])
def test_bytes_that_are_not_utf8(media_type: str) -> None:
    message = only_message(failure(b"name,bmc_address\nn\xe9,h1\n", media_type))
    assert "UTF-8" in message
    assert "line 2" in message


# --- CSV header and cells ------------------------------------------------------------------


def test_csv_unknown_duplicate_and_missing_columns() -> None:
    error = failure("name,bmc_adress,bmc_username,bmc_password,name\nn1,h1,u,p,n1\n", CSV)
    assert where(error) == [(None, "name"), (None, "bmc_adress"), (None, "bmc_address")]
    assert "did you mean 'bmc_address'" in str(error.errors[1]["message"])


def test_csv_blank_required_cell() -> None:
    error = failure(HEADER + "n1,a01,1,compute,,,u,p,\nn2,a01,2,compute,h2,,,p,\n", CSV)
    assert where(error) == [(1, "bmc_address"), (2, "bmc_username")]


def test_csv_cell_beyond_the_header() -> None:
    error = failure("name,bmc_address,bmc_username,bmc_password\nn1,h1,u,p,surplus\n", CSV)
    assert where(error) == [(1, None)]


def test_csv_bad_cells_on_several_rows() -> None:
    error = failure(
        HEADER + "n1,a01,1,compute,h1,notaport,u,p,aa:bb:cc:00:00:01\n"
        "n2,a01,2,compute,h2,,u,p,aa:bb:cc:00:00:02\n"
        "n3,a01,3,compute,h3,,u,p,aa:bb:cc:00:00:03;01:00:5e:00:00:01\n",
        CSV,
    )
    assert where(error) == [(1, "bmc_port"), (3, "macs")]
    assert "multicast" in str(error.errors[1]["message"])


# --- secrets ---------------------------------------------------------------------------------


def test_the_bmc_password_never_appears_in_errors() -> None:
    secret = "Hunter2!pw"
    error = failure(
        f"defaults: {{bmc_username: admin, bmc_password: {secret}}}\nnodes:\n"
        f"  - {{name: n1, bmc_address: '{secret}'}}\n"
        f"  - {{name: n2, bmc_address: h2, role: '{secret} x', bmc_password: '{secret}{secret}"
        f"{secret}'}}\n"
        f"  - {{name: '{secret}', bmc_address: h3, bmc_password: 'o\"ther{secret}'}}\n"
    )
    assert len(error.errors) == 4
    assert secret not in str(error)
    assert secret not in repr(error.errors)
    assert secret.lower() not in repr(error.errors)


def test_the_bmc_password_never_appears_in_csv_errors() -> None:
    error = failure("name,bmc_address,bmc_username,bmc_password\nn1,pass'word!,u,pass'word!\n", CSV)
    assert where(error) == [(1, "bmc_address")]
    assert "pass'word!" not in repr(error.errors)
    assert "pass\\'word!" not in repr(error.errors)
