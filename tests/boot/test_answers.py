"""Answer files: kickstart checked by pykickstart's real ksvalidator, autoinstall parsed
as YAML, preseed line by line, and the shell they carry parsed (and where it can be,
run) by a real sh."""

from __future__ import annotations

import dataclasses
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from provisioner.boot import answers
from provisioner.boot.answers import AnswerContext, ImageSpec, RoleSpec
from provisioner.profiles import Profile, load_profiles, shipped_profiles_dir

KSVALIDATOR = Path(sys.executable).parent / "ksvalidator"
CALLBACK = "http://10.1.0.1:8000/callback/tok-123"
ANSWER = "http://10.1.0.1:8000/boot/answers/tok-123"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOM0 ops@example.com"
PROFILES = load_profiles(shipped_profiles_dir()).profiles

IMAGES = {
    "rocky-9": ImageSpec(
        "rocky-9",
        "rhel",
        "9.4",
        "https://dl.rockylinux.org/pub/rocky/9/BaseOS/x86_64/os/",
        "kickstart",
    ),
    "alma-9": ImageSpec(
        "alma-9",
        "rhel",
        "9.4",
        "https://repo.almalinux.org/almalinux/9/BaseOS/x86_64/os/",
        "kickstart",
    ),
    "fedora-41": ImageSpec(
        "fedora-41",
        "fedora",
        "41",
        "https://dl.fedoraproject.org/pub/fedora/linux/releases/41/Everything/x86_64/os/",
        "kickstart",
        "inst.text",
    ),
    "debian-12": ImageSpec("debian-12", "debian", "12", "http://deb.debian.org/debian", "preseed"),
    "ubuntu-24.04": ImageSpec(
        "ubuntu-24.04",
        "ubuntu",
        "24.04",
        "http://archive.ubuntu.com/ubuntu",
        "autoinstall",
        "cloud-config-url=/dev/null",
    ),
}
KS_VERSION = {"rhel": "RHEL9", "fedora": "F41"}
ROLE = RoleSpec("compute", ("tmux", "lldpd"), "puppet.example.com", "production")
NO_PUPPET = RoleSpec("storage")


def context(image_name: str, profile: Profile | None = None, **changes: object) -> AnswerContext:
    ctx = AnswerContext(
        hostname="node01",
        domain="lab.example.com",
        image=IMAGES[image_name],
        role=ROLE,
        profile=profile,
        challenge="Chall-3nge_xyz",
        callback_url=CALLBACK,
        answer_url=ANSWER,
        ssh_keys=(KEY,),
    )
    return dataclasses.replace(ctx, **changes)  # type: ignore[arg-type]


def profile(name: str, **changes: object) -> Profile:
    base = next(p for p in PROFILES if p.name == name)
    return Profile.model_validate(base.model_dump() | changes)


def callback_lines(text: str, event: str) -> list[str]:
    return [line for line in text.splitlines() if f"{CALLBACK}/{event}" in line]


def sh_syntax_ok(script: str) -> None:
    result = subprocess.run(["sh", "-n"], input=script, capture_output=True, text=True)
    assert result.returncode == 0, (result.stderr, script)


# --- kickstart ----------------------------------------------------------------------


def _storage_include(text: str) -> str:
    """The storage section %pre writes, as Anaconda reads it for a disk named sda."""
    body = text.split("cat > /tmp/provisioner-storage.ks <<PROVISIONER_EOF\n")[1]
    return body.split("PROVISIONER_EOF\n")[0].replace("$disk", "sda")


def _sections(text: str, header: str) -> list[str]:
    return re.findall(rf"^{re.escape(header)}.*?\n(.*?)^%end$", text, re.S | re.M)


@pytest.mark.parametrize("image", ["rocky-9", "alma-9", "fedora-41"])
def test_kickstart_passes_ksvalidator(image: str, tmp_path: Path) -> None:
    """Every shipped profile and no profile, with and without Puppet: the file as served,
    and as Anaconda reads it once %pre wrote the storage include. One ksvalidator run
    checks them all (it names each file and sums the errors in its exit status)."""
    files = []
    for hw in [*PROFILES, None]:
        for role in (ROLE, NO_PUPPET):
            text = answers.render_answer(context(image, hw, role=role))
            assert ("csr_attributes.yaml" in text) == (role.puppet_server is not None)
            scripts = _sections(text, "%pre") + _sections(text, "%post")
            for script in scripts + _sections(text, "%onerror"):
                sh_syntax_ok(script)
            name = f"{hw.name if hw else 'none'}-{role.name}"
            served = tmp_path / f"{name}.ks"
            served.write_text(text)
            flat = tmp_path / f"{name}-flat.ks"
            flat.write_text(
                text.replace("%include /tmp/provisioner-storage.ks\n", _storage_include(text))
            )
            files += [served, flat]
    version = KS_VERSION[IMAGES[image].os_family]
    result = subprocess.run([KSVALIDATOR, "-v", version, *files], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("Checking kickstart file") == len(files) == 4 * (len(PROFILES) + 1)


def test_kickstart_hardware_profile() -> None:
    hw = profile("lab-virtual-server", kernel_args=["nomodeset"])
    text = answers.render_answer(context("rocky-9", hw))
    assert "bootloader --timeout=5 --append='console=tty0 console=ttyS0,115200n8 nomodeset'" in text
    storage = _storage_include(text)
    assert "part biosboot --fstype=biosboot" in storage
    assert "efi" not in storage
    assert "ignoredisk --only-use=sda" in storage
    uefi = _storage_include(answers.render_answer(context("rocky-9", profile("dell-poweredge"))))
    assert "part /boot/efi --fstype=efi" in uefi
    assert "biosboot" not in uefi
    # Unknown hardware: Anaconda adds what the firmware it booted from needs.
    assert "reqpart" in _storage_include(answers.render_answer(context("rocky-9")))
    assert "repo --name=AppStream --baseurl=https://dl.rockylinux.org/pub/rocky/9/AppStream/" in (
        text
    )


def test_kickstart_root_account_and_callbacks() -> None:
    text = answers.render_answer(context("alma-9"))
    assert "rootpw --lock" in text
    assert f"sshkey --username=root '{KEY}'" in text
    hashed = answers.render_answer(context("alma-9", root_password_hash="$6$salt$abc/def"))
    assert "rootpw --iscrypted '$6$salt$abc/def'" in hashed
    pre = _sections(text, "%pre")[0]
    assert pre.splitlines()[0] == (
        f"curl -fsS --retry 5 --retry-connrefused -X POST {CALLBACK}/started || true"
    )
    last_post = _sections(text, "%post --nochroot")[0].splitlines()
    assert CALLBACK + "/progress" in last_post[0]
    assert '-d \'{"message": "OS installed and configured"}\'' in last_post[0]
    assert last_post[-1].endswith(f"{CALLBACK}/done || true")
    assert callback_lines(_sections(text, "%onerror")[0], "failed")


# --- the disk selector, run by a real sh over a fake /sys/block ---------------------


def _fake_disk(root: Path, name: str, gb: float, model: str = "", removable: bool = False) -> None:
    disk = root / name
    (disk / "device").mkdir(parents=True)
    (disk / "size").write_text(f"{int(gb * 10**9 / 512)}\n")
    (disk / "removable").write_text("1\n" if removable else "0\n")
    (disk / "device" / "model").write_text(model + "   \n")


def _select(hw: Profile, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    text = answers.render_answer(context("rocky-9", hw))
    script = text.split("<<'PROVISIONER_EOF'\n")[1].split("PROVISIONER_EOF\n")[0]
    sys_block = tmp_path / "block"
    for args in [
        ("sda", 16, "IDSDM"),  # an internal SD module
        ("sdb", 480, "SSDSC2KB480G8"),
        ("sdc", 4000, "ST4000NM0035"),
        ("sdd", 240, "SSDSC2KB240G8", True),  # a USB key
        ("loop0", 2),
    ]:
        _fake_disk(sys_block, *args)  # type: ignore[arg-type]
    script = script.replace("/sys/block", str(sys_block))
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True)


@pytest.mark.parametrize(
    ("root_disk", "chosen"),
    [
        ({"hint": "smallest"}, "/dev/sda"),
        ({"hint": "smallest", "size_gb_min": 100}, "/dev/sdb"),
        ({"hint": "largest"}, "/dev/sdc"),
        ({"hint": "smallest", "model": "^ST4000"}, "/dev/sdc"),
        ({"hint": "largest", "model": "SSDSC2KB"}, "/dev/sdb"),
        ({"hint": "smallest", "model": "^nothing$"}, None),
        ({"hint": "smallest", "size_gb_min": 5000}, None),
    ],
)
def test_disk_selector(root_disk: dict[str, object], chosen: str | None, tmp_path: Path) -> None:
    result = _select(profile("generic", root_disk=root_disk), tmp_path)
    if chosen is None:
        assert result.returncode != 0
        assert "no disk matches" in result.stderr
    else:
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == chosen


def test_disk_selector_refuses_python_only_regex() -> None:
    hw = profile("generic", root_disk={"model": r"^\d+GB"})
    with pytest.raises(ValueError, match="grep -E"):
        answers.render_answer(context("rocky-9", hw))


# --- preseed ------------------------------------------------------------------------

_PRESEED_TYPES = {"string", "boolean", "select", "multiselect", "note", "password"}


def _preseed_entries(text: str) -> dict[str, str]:
    """question -> value, continuation lines joined as debconf joins them."""
    entries: dict[str, str] = {}
    logical = ""
    for line in text.splitlines():
        if not logical and (not line.strip() or line.startswith("#")):
            continue
        logical += line
        if logical.endswith("\\"):
            logical = logical[:-1]
            continue
        owner, question, kind, *value = logical.split(" ", 3)
        assert owner in {"d-i", "tasksel", "popularity-contest"}, logical
        assert "/" in question, logical
        assert kind in _PRESEED_TYPES, logical
        entries[question] = value[0] if value else ""
        logical = ""
    assert not logical
    return entries


@pytest.mark.parametrize("profile_name", [p.name for p in PROFILES] + [None])
def test_preseed_is_well_formed(profile_name: str | None) -> None:
    hw = profile(profile_name) if profile_name else None
    text = answers.render_answer(context("debian-12", hw))
    entries = _preseed_entries(text)
    for question in ("preseed/early_command", "partman/early_command", "preseed/late_command"):
        sh_syntax_ok(entries[question])
    assert CALLBACK + "/started" in entries["preseed/early_command"]
    assert (
        entries["preseed/late_command"]
        .rstrip()
        .endswith(f"--post-data '' {CALLBACK}/done && break; sleep 5; done")
    )
    assert CALLBACK + "/failed" in entries["partman/early_command"]
    for event in ("started", "progress", "done", "failed"):
        for line in callback_lines(text, event):
            assert line.lstrip().startswith(("d-i ", "disk=", "for try"))
    assert entries["pkgsel/include"] == "tmux lldpd"
    assert entries["passwd/root-password-crypted"] == "!"
    assert entries["netcfg/get_hostname"] == "node01"
    if hw:
        serial = f"console={hw.console.port},{hw.console.speed}n8"
        assert entries["debian-installer/add-kernel-opts"] == f"console=tty0 {serial}"


def test_preseed_mirror_and_password() -> None:
    text = answers.render_answer(
        context("debian-12", root_password_hash="$y$j9T$abc$def", domain=None)
    )
    entries = _preseed_entries(text)
    assert entries["mirror/protocol"] == "http"
    assert entries["mirror/http/hostname"] == "deb.debian.org"
    assert entries["mirror/http/directory"] == "/debian"
    assert entries["passwd/root-password-crypted"] == "$y$j9T$abc$def"
    assert entries["netcfg/get_domain"] == ""


# --- autoinstall --------------------------------------------------------------------


def _autoinstall(ctx: AnswerContext) -> dict[str, object]:
    text = answers.render_answer(ctx)
    assert text.startswith("#cloud-config\n")
    document = yaml.safe_load(text)
    assert set(document) == {"autoinstall"}
    config: dict[str, object] = document["autoinstall"]
    assert config["version"] == 1
    return config


@pytest.mark.parametrize("profile_name", [p.name for p in PROFILES] + [None])
def test_autoinstall_document(profile_name: str | None) -> None:
    hw = profile(profile_name) if profile_name else None
    config = _autoinstall(context("ubuntu-24.04", hw))
    assert config["storage"] == {"layout": {"name": "direct", "match": {"size": "smallest"}}}
    assert config["packages"] == ["tmux", "lldpd"]
    late = config["late-commands"]
    assert isinstance(late, list)
    assert late[-1] == f"curl -fsS --retry 5 --retry-connrefused -X POST {CALLBACK}/done || true"
    assert callback_lines("\n".join(config["early-commands"]), "started")  # type: ignore[arg-type]
    assert callback_lines("\n".join(config["error-commands"]), "failed")  # type: ignore[arg-type]
    for command in [*late, *config["early-commands"]]:  # type: ignore[misc]
        sh_syntax_ok(command)
    grub = [c for c in late if "grub.d" in c]
    assert bool(grub) == (hw is not None)
    if hw:
        assert f"console={hw.console.port},{hw.console.speed}n8" in grub[0]


@pytest.mark.parametrize(
    ("root_disk", "match"),
    [
        ({"hint": "largest"}, {"size": "largest"}),
        (
            {"hint": "/dev/disk/by-path/pci-0000:00:1f.2-ata-1"},
            {"path": "/dev/disk/by-path/pci-0000:00:1f.2-ata-1"},
        ),
        (
            {"hint": "smallest", "model": "^SAMSUNG MZ.*$", "serial": "S3Z"},
            {"size": "smallest", "model": "SAMSUNG MZ*", "serial": "*S3Z*"},
        ),
        ({"wwn": r"^0x5000c500"}, {"size": "smallest", "wwn": "0x5000c500*"}),
    ],
)
def test_autoinstall_storage_match(root_disk: dict[str, object], match: dict[str, str]) -> None:
    config = _autoinstall(context("ubuntu-24.04", profile("generic", root_disk=root_disk)))
    assert config["storage"] == {"layout": {"name": "direct", "match": match}}


def test_autoinstall_refuses_regex_it_cannot_express() -> None:
    hw = profile("generic", root_disk={"model": "^(INTEL|SAMSUNG)"})
    with pytest.raises(ValueError, match="glob"):
        answers.render_answer(context("ubuntu-24.04", hw))


def test_meta_data_per_deployment() -> None:
    first = yaml.safe_load(answers.meta_data(context("ubuntu-24.04")))
    other = yaml.safe_load(answers.meta_data(context("ubuntu-24.04", callback_url=CALLBACK + "x")))
    assert first["local-hostname"] == "node01"
    assert first["instance-id"] != other["instance-id"]
    assert "tok-123" not in first["instance-id"]


# --- every format ------------------------------------------------------------------

ALL = ["rocky-9", "debian-12", "ubuntu-24.04"]


@pytest.mark.parametrize("image", ALL)
def test_callbacks_one_line_each_with_full_url(image: str) -> None:
    text = answers.render_answer(context(image))
    for event in ("started", "progress", "done"):
        assert len(callback_lines(text, event)) == 1, event
    # preseed has no failure hook but the disk selection; the others have one each.
    assert len(callback_lines(text, "failed")) == 1


@pytest.mark.parametrize("image", ALL)
def test_puppet_csr_attributes(image: str, tmp_path: Path) -> None:
    text = answers.render_answer(context(image))
    line = next(ln for ln in text.splitlines() if "csr_attributes.yaml" in ln and "printf" in ln)
    command = yaml.safe_load(line.lstrip(" -")) if image.startswith("ubuntu") else line
    command = command.removeprefix("d-i preseed/late_command string").strip().rstrip(" ;\\")
    # Run the command that writes the file, into a scratch root instead of the target.
    command = re.sub(r"(/target)?/etc/puppetlabs", str(tmp_path), command)
    subprocess.run(["sh", "-c", command], check=True)
    written = yaml.safe_load((tmp_path / "puppet" / "csr_attributes.yaml").read_text())
    assert written == {
        "custom_attributes": {"challengePassword": "Chall-3nge_xyz"},
        "extension_requests": {"pp_role": "compute"},
    }
    assert (tmp_path / "puppet" / "csr_attributes.yaml").stat().st_mode & 0o777 == 0o600
    assert "server = puppet.example.com" in text
    assert "environment = production" in text


@pytest.mark.parametrize("image", ALL)
def test_no_puppet_without_a_server(image: str) -> None:
    text = answers.render_answer(context(image, role=NO_PUPPET))
    assert "puppetlabs" not in text
    assert "challengePassword" not in text


@pytest.mark.parametrize("image", ALL)
def test_ssh_key_comment_cannot_inject_shell(image: str, tmp_path: Path) -> None:
    key = "ssh-ed25519 AAAAC3Nza it's $(touch pwned) `touch pwned2`; rm -rf /"
    config = _autoinstall(context("ubuntu-24.04", ssh_keys=(key,)))
    command = next(c for c in config["late-commands"] if "authorized_keys" in c)  # type: ignore[attr-defined]
    command = command.replace("/target", str(tmp_path))
    subprocess.run(["sh", "-c", command], check=True, cwd=tmp_path)
    assert (tmp_path / "root" / ".ssh" / "authorized_keys").read_text() == key + "\n"
    assert not (tmp_path / "pwned").exists()
    assert not (tmp_path / "pwned2").exists()
    # The other formats quote it the same way (preseed) or hand it to kickstart's shlex.
    text = answers.render_answer(context(image, ssh_keys=(key,)))
    assert shlex.quote(key) in text


@pytest.mark.parametrize("image", ALL)
@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"role": RoleSpec("compute", ("foo; rm -rf /",))}, "not a package name"),
        ({"role": RoleSpec("compute", ("foo\nbar",))}, "not a package name"),
        ({"role": RoleSpec("compute", ("$(reboot)",))}, "not a package name"),
        ({"role": RoleSpec("compute", puppet_server="puppet; rm -rf /")}, "hostname"),
        (
            {"role": RoleSpec("compute", puppet_server="puppet", puppet_environment="a b")},
            "puppet environment",
        ),
        ({"role": RoleSpec("no such role!")}, "not a valid name"),
        ({"ssh_keys": ("ssh-ed25519 AAAA\nssh-rsa BBBB",)}, "OpenSSH public key"),
        ({"ssh_keys": ('command="reboot" ssh-ed25519 AAAA',)}, "OpenSSH public key"),
        ({"root_password_hash": "plaintext"}, "crypt"),
        ({"root_password_hash": "$6$salt$hash\nd-i x string y"}, "crypt"),
        ({"challenge": "two words"}, "challenge"),
        ({"hostname": "bad host"}, "node name"),
        ({"domain": "10.0.0.1"}, "not a DNS domain"),
        ({"callback_url": "http://x/callback/${net0/mac}"}, "iPXE"),
        ({"answer_url": "ftp://x/answers"}, "http"),
    ],
)
def test_hostile_values_are_refused(image: str, changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        answers.render_answer(context(image, **changes))


def test_kickstart_groups_only_in_kickstart() -> None:
    role = RoleSpec("compute", ("@^minimal-environment", "@core"))
    assert "@^minimal-environment\n" in answers.render_answer(context("rocky-9", role=role))
    with pytest.raises(ValueError, match="not a package name"):
        answers.render_answer(context("debian-12", role=role))


def test_unknown_template_and_family_mismatch() -> None:
    bad = dataclasses.replace(IMAGES["rocky-9"], answer_template="jumpstart")
    with pytest.raises(ValueError, match="unknown answer template 'jumpstart'"):
        answers.render_answer(context("rocky-9", image=bad))
    with pytest.raises(ValueError, match="unknown answer template"):
        answers.answer_media_type("jumpstart")
    with pytest.raises(ValueError, match="kickstart template installs"):
        answers.render_answer(
            context("rocky-9", image=dataclasses.replace(IMAGES["rocky-9"], os_family="debian"))
        )


def test_media_types() -> None:
    assert answers.answer_media_type("kickstart") == "text/plain; charset=utf-8"
    assert answers.answer_media_type("preseed") == "text/plain; charset=utf-8"
    assert answers.answer_media_type("autoinstall") == "application/yaml; charset=utf-8"


# --- kernel arguments ----------------------------------------------------------------


def _ipxe_safe(args: str) -> None:
    tokens = args.split(" ")
    assert all(tokens), "no empty token (double space) nor leading/trailing space"
    for token in tokens:
        assert token not in {";", "||", "&&"}, token
        assert not token.startswith("#"), token
        assert not set(token) & set('${}"\\\n\r\t'), token


def test_kernel_arguments_kickstart() -> None:
    hw = profile("dell-poweredge", kernel_args=["nomodeset"])
    args = answers.kernel_arguments(context("fedora-41", hw))
    assert args == (
        f"inst.ks={ANSWER} inst.repo={IMAGES['fedora-41'].repo_url} ip=dhcp "
        "console=tty0 console=ttyS1,115200n8 nomodeset inst.text"
    )
    _ipxe_safe(args)


def test_kernel_arguments_preseed() -> None:
    args = answers.kernel_arguments(context("debian-12", profile("lab-virtual-server")))
    assert args == (
        f"auto=true priority=critical url={ANSWER} interface=auto hostname=node01 "
        "domain=lab.example.com console=tty0 console=ttyS0,115200n8"
    )
    assert "domain=" not in answers.kernel_arguments(context("debian-12", domain=None))
    _ipxe_safe(args)


def test_kernel_arguments_newlines_are_only_separators() -> None:
    image = dataclasses.replace(IMAGES["rocky-9"], kernel_args="a=1\nchain http://x")
    args = answers.kernel_arguments(context("rocky-9", image=image))
    assert args.endswith(" a=1 chain http://x")
    assert "\n" not in args


def test_kernel_arguments_autoinstall() -> None:
    args = answers.kernel_arguments(context("ubuntu-24.04"))
    # ';' inside a token is no command separator to iPXE (only a token that is exactly
    # ';' is): the argument reaches the kernel as it is.
    assert args == f"autoinstall ds=nocloud-net;s={ANSWER}/ ip=dhcp cloud-config-url=/dev/null"
    _ipxe_safe(args)


@pytest.mark.parametrize(
    "kernel_args", ["a=${net0/mac}", 'a="b c"', "; reboot", "|| shell", "#x", "a\\b"]
)
def test_kernel_arguments_refuse_what_ipxe_would_interpret(kernel_args: str) -> None:
    image = dataclasses.replace(IMAGES["rocky-9"], kernel_args=kernel_args)
    with pytest.raises(ValueError, match="iPXE"):
        answers.kernel_arguments(context("rocky-9", image=image))
