"""Hardware profiles: the shipped files, matching inventory facts, and broken files."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import yaml

from provisioner import inspection
from provisioner.profiles import ProfileSet, load_profiles, shipped_profiles_dir

SHIPPED = {
    "dell-poweredge",
    "hpe-proliant",
    "supermicro",
    "lenovo-thinksystem",
    "lab-virtual-server",
    "lab-qemu",
    "generic",
}


def profile(name: str, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": name,
        "description": f"test profile {name}",
        "priority": 50,
        "match": {"vendor": ["^Acme$"]},
        "boot_mode": "uefi",
        "console": {"port": "ttyS1", "speed": 115200},
    }
    body.update(fields)
    return body


def write(directory: Path, file: str, body: dict[str, Any] | str) -> None:
    text = body if isinstance(body, str) else yaml.safe_dump(body)
    (directory / file).write_text(text, encoding="utf-8")


@pytest.fixture(scope="module")
def shipped() -> ProfileSet:
    return load_profiles(shipped_profiles_dir())


def test_shipped_profiles_all_load(shipped: ProfileSet) -> None:
    assert shipped.errors == ()
    assert {p.name for p in shipped.profiles} == SHIPPED
    # The fallback is the only profile matching anything, and every other one outranks it.
    fallbacks = [p for p in shipped.profiles if not p.match.vendor and not p.match.product]
    assert [p.name for p in fallbacks] == ["generic"]
    assert shipped.profiles[-1].name == "generic"
    assert all(p.priority > 0 for p in shipped.profiles[:-1])


def test_shipped_directory_is_the_checkout_one_here() -> None:
    assert shipped_profiles_dir() == Path(__file__).resolve().parents[1] / "hardware_profiles"


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        ({"manufacturer": "Dell Inc.", "product": "PowerEdge R640"}, "dell-poweredge"),
        ({"manufacturer": "Dell Inc.", "product": "PowerEdge R650"}, "dell-poweredge"),
        ({"manufacturer": "DELL", "product": "PowerEdge R7525"}, "dell-poweredge"),
        ({"manufacturer": "Dell Inc.  ", "product": "  PowerEdge C6420"}, "dell-poweredge"),
        ({"manufacturer": "HPE", "product": "ProLiant DL380 Gen10"}, "hpe-proliant"),
        ({"manufacturer": "HPE", "product": "ProLiant DL360 Gen10"}, "hpe-proliant"),
        ({"manufacturer": "HP", "product": "ProLiant DL360 Gen9"}, "hpe-proliant"),
        (
            {"manufacturer": "Hewlett Packard Enterprise", "product": "ProLiant DL325 Gen10 Plus"},
            "hpe-proliant",
        ),
        ({"manufacturer": "Supermicro", "product": "SYS-1029P-WTR"}, "supermicro"),
        ({"manufacturer": "Super Micro Computer", "product": "X11DPi-N"}, "supermicro"),
        ({"manufacturer": "Super Micro Computer, Inc.", "product": "Super Server"}, "supermicro"),
        # Whitebox chassis: the product FRU is empty or a placeholder, the board is not.
        (
            {
                "manufacturer": "To be filled by O.E.M.",
                "product": "",
                "board_manufacturer": "Supermicro",
                "board_product": "X11DPi-N",
            },
            "supermicro",
        ),
        ({"manufacturer": "", "board_manufacturer": "Supermicro"}, "supermicro"),
        ({"manufacturer": "Lenovo", "product": "ThinkSystem SR650"}, "lenovo-thinksystem"),
        ({"manufacturer": "Lenovo", "product": "ThinkSystem SR630 V2"}, "lenovo-thinksystem"),
        ({"manufacturer": "LENOVO", "product": "7X06CTO1WW"}, "lenovo-thinksystem"),
        (
            {"manufacturer": "Lenovo", "product": "ThinkSystem SR650 -[7X06CTO1WW]-"},
            "lenovo-thinksystem",
        ),
        (
            {"manufacturer": "Provisioner Lab", "product": "Virtual Server VS-1"},
            "lab-virtual-server",
        ),
        ({"manufacturer": "Provisioner Lab", "product": "Virtual Server VQ-1"}, "lab-qemu"),
    ],
)
def test_vendor_facts_match_their_profile(
    shipped: ProfileSet, facts: dict[str, Any], expected: str
) -> None:
    found = shipped.match(facts)
    assert found is not None
    assert found.name == expected


@pytest.mark.parametrize(
    "facts",
    [
        {"manufacturer": "Quanta Cloud Technology Inc.", "product": "D52B-1U"},
        {"manufacturer": "Dell Inc.", "product": "Precision 7920 Rack"},
        {"manufacturer": "LENOVO", "product": "ThinkPad T14"},
        {"manufacturer": "HPEX", "product": "ProLiant DL380 Gen10"},
        {"manufacturer": "Provisioner Lab", "product": "Virtual Server VS-2"},
        {"manufacturer": None, "product": 42},
        {},
    ],
)
def test_unknown_hardware_gets_the_generic_profile(
    shipped: ProfileSet, facts: dict[str, Any]
) -> None:
    found = shipped.match(facts)
    assert found is not None
    assert found.name == "generic"


def test_vendor_defaults(shipped: ProfileSet) -> None:
    by_name = {p.name: p for p in shipped.profiles}
    for name in ("dell-poweredge", "hpe-proliant", "supermicro", "lenovo-thinksystem"):
        assert by_name[name].boot_mode == "uefi"
        assert by_name[name].console.port == "ttyS1"  # the BMC's serial-over-LAN is COM2
        assert by_name[name].console.speed == 115200
        assert by_name[name].root_disk.hint == "smallest"
        assert by_name[name].notes.raid
        assert by_name[name].notes.bios
    assert by_name["lab-virtual-server"].console.port == "ttyS0"


def test_highest_priority_wins_and_ties_go_by_name(tmp_path: Path) -> None:
    write(tmp_path, "acme.yaml", profile("acme", priority=10))
    write(tmp_path, "acme-x1.yaml", profile("acme-x1", priority=20, match={"product": ["^X1"]}))
    write(tmp_path, "zz-acme.yaml", profile("zz-acme", priority=20))
    write(tmp_path, "fallback.yaml", profile("fallback", priority=0, match={}))
    profiles = load_profiles(tmp_path)
    assert profiles.errors == ()
    assert [p.name for p in profiles.profiles] == ["acme-x1", "zz-acme", "acme", "fallback"]

    def best(manufacturer: str, product: str) -> str | None:
        found = profiles.match({"manufacturer": manufacturer, "product": product})
        return found.name if found else None

    assert best("Acme", "X1 Carbon") == "acme-x1"  # same priority as zz-acme: name decides
    assert best("Acme", "Y2") == "zz-acme"
    assert best("Other", "Y2") == "fallback"


def test_without_a_fallback_unknown_hardware_matches_nothing(tmp_path: Path) -> None:
    write(tmp_path, "acme.yaml", profile("acme"))
    profiles = load_profiles(tmp_path)
    assert profiles.match({"manufacturer": "acme", "product": "X"}) is not None
    assert profiles.match({"manufacturer": "Dell Inc.", "product": "PowerEdge R640"}) is None


def test_broken_files_are_reported_and_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write(tmp_path, "good.yaml", profile("good"))
    write(tmp_path, "bad-yaml.yaml", "name: bad-yaml\nmatch: {vendor: [Acme\n")
    write(
        tmp_path,
        "unknown-field.yaml",
        profile("unknown-field", console={"port": "ttyS0", "parity": "none"}),
    )
    write(tmp_path, "bad-regex.yaml", profile("bad-regex", match={"vendor": ["^Acme$", "Acme("]}))
    write(tmp_path, "wrong-name.yaml", profile("right-name"))
    write(tmp_path, "good.yml", profile("good", priority=99))
    write(tmp_path, "not-a-mapping.yaml", "- just\n- a list\n")
    write(tmp_path, "README.md", "not a profile")
    write(tmp_path, ".#good.yaml", "editor lock file")

    with caplog.at_level(logging.WARNING, logger="provisioner.profiles"):
        profiles = load_profiles(tmp_path)

    assert [p.name for p in profiles.profiles] == ["good"]
    assert profiles.profiles[0].priority == 50  # good.yaml comes first and is kept
    errors = {(e.file, e.field): e.message for e in profiles.errors}
    assert len(profiles.errors) == len(errors) == 6  # one per bad file
    assert "line 3" in errors[("bad-yaml.yaml", None)]
    assert "unknown field" in errors[("unknown-field.yaml", "console.parity")]
    assert "not a valid regular expression" in errors[("bad-regex.yaml", "match.vendor.1")]
    assert "file name 'wrong-name'" in errors[("wrong-name.yaml", "name")]
    assert "already defined in good.yaml" in errors[("good.yml", "name")]
    assert "mapping" in errors[("not-a-mapping.yaml", None)]
    logged = " ".join(r.getMessage() for r in caplog.records)
    for file, _ in errors:
        assert file in logged


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"console": {"port": "ttyS9"}}, "console.port"),
        ({"console": {"port": "ttyS0", "speed": 14400}}, "console.speed"),
        ({"boot_mode": "legacy"}, "boot_mode"),
        ({"priority": -1}, "priority"),
        ({"match": {"vendor": [""]}}, "match.vendor.0"),
        ({"match": {"vendor": "Acme"}}, "match.vendor"),
        ({"match": {"product": [7]}}, "match.product.0"),
        ({"root_disk": {"hint": "sda"}}, "root_disk.hint"),
        ({"root_disk": {"size_gb_min": 0}}, "root_disk.size_gb_min"),
        ({"root_disk": {"model": "[ssd"}}, "root_disk.model"),
        ({"kernel_args": ["console=ttyS0,115200n8"]}, "kernel_args.0"),
        ({"kernel_args": ["quiet splash"]}, "kernel_args.0"),
        ({"notes": {"raid": "x", "firmware": "y"}}, "notes.firmware"),
    ],
)
def test_schema_errors_name_the_field(tmp_path: Path, fields: dict[str, Any], field: str) -> None:
    write(tmp_path, "acme.yaml", profile("acme", **fields))
    profiles = load_profiles(tmp_path)
    assert profiles.profiles == ()
    assert [(e.file, e.field) for e in profiles.errors] == [("acme.yaml", field)]


def test_missing_required_fields_are_each_reported(tmp_path: Path) -> None:
    write(tmp_path, "acme.yaml", {"name": "acme"})
    fields = {e.field for e in load_profiles(tmp_path).errors}
    assert fields == {"description", "priority", "match", "boot_mode", "console"}


def test_a_missing_directory_is_an_error_not_a_crash(tmp_path: Path) -> None:
    profiles = load_profiles(tmp_path / "nope")
    assert profiles.profiles == ()
    assert len(profiles.errors) == 1
    assert profiles.errors[0].file == str(tmp_path / "nope")
    assert profiles.match({"manufacturer": "Dell Inc."}) is None


def test_patterns_are_case_insensitive_searches(tmp_path: Path) -> None:
    write(tmp_path, "acme.yaml", profile("acme", match={"product": ["X1"]}))
    profiles = load_profiles(tmp_path)
    assert profiles.match({"product": "Acme x1 Carbon"}) is not None
    assert profiles.match({"product": "Acme X2"}) is None
    assert profiles.profiles[0].model_dump(mode="json")["match"] == {
        "vendor": [],
        "product": ["X1"],
    }


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        # The BMC alone (no agent has run): its word, not the catch-all's.
        (
            {"manufacturer": "Provisioner Lab", "product": "Virtual Server VS-1"},
            "lab-virtual-server",
        ),
        # DMI the profiles do not know, a BMC they do: the BMC's profile.
        (
            {
                "manufacturer": "Dell Inc.",
                "product": "PowerEdge R650",
                "in_band": {"system": {"vendor": "To Be Filled By O.E.M.", "product": ""}},
            },
            "dell-poweredge",
        ),
        # The inside first when both are known.
        (
            {
                "manufacturer": "Provisioner Lab",
                "product": "Virtual Server VS-1",
                "in_band": {
                    "system": {"vendor": "Provisioner Lab", "product": "Virtual Server VQ-1"}
                },
            },
            "lab-qemu",
        ),
        ({"in_band": {"system": {"vendor": "QEMU", "product": "Standard PC"}}}, "generic"),
    ],
)
def test_inspection_takes_the_better_of_in_band_and_bmc_profiles(
    shipped: ProfileSet, facts: dict[str, Any], expected: str
) -> None:
    found = inspection.profile_for(facts, shipped)
    assert found is not None
    assert found.name == expected
