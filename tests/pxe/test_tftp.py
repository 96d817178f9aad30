"""The boot network's TFTP server against real clients (curl, tftp-hpa), the lab's client
and raw packets: byte-exact transfers, confinement to the root, option negotiation,
retransmission, dynamic files, robustness under malformed packets, metrics, and the
reply's source address."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from lab.tftp_client import TftpError, fetch
from pxe.tftp import MAX_BLKSIZE, TftpServer, Transfer
from tests.pxe.conftest import BINARIES, IPXE, SECRET, RawClient, ServerThread, tool

Addr = tuple[str, int]
LOCAL = "127.0.0.1"


def rrq(
    name: bytes | str, *options: tuple[str, object], opcode: int = 1, mode: bytes = b"octet"
) -> bytes:
    raw_name = name.encode() if isinstance(name, str) else name
    packet = opcode.to_bytes(2, "big") + raw_name + b"\0" + mode + b"\0"
    for key, value in options:
        packet += key.encode() + b"\0" + str(value).encode() + b"\0"
    return packet


def ack(block: int) -> bytes:
    return b"\0\4" + (block & 0xFFFF).to_bytes(2, "big")


def opcode(packet: bytes) -> int:
    return int.from_bytes(packet[:2], "big")


def block_of(packet: bytes) -> int:
    return int.from_bytes(packet[2:4], "big")


def oack_options(packet: bytes) -> dict[str, str]:
    assert opcode(packet) == 6, packet
    fields = packet[2:].split(b"\0")[:-1]
    return {fields[i].decode(): fields[i + 1].decode() for i in range(0, len(fields), 2)}


def error_code(packet: bytes) -> int:
    assert opcode(packet) == 5, packet
    return block_of(packet)


def lockstep(
    client: RawClient, server: Addr, name: str, *options: tuple[str, object]
) -> tuple[bytes, dict[str, str]]:
    """A download by hand, without loss: the content and the OACK's options."""
    client.send(rrq(name, *options), server)
    blksize, window, negotiated, chunks, expected = 512, 1, {}, [], 1
    while True:
        data, peer = client.recv()
        if opcode(data) == 6:
            negotiated = oack_options(data)
            blksize = int(negotiated.get("blksize", 512))
            window = int(negotiated.get("windowsize", 1))
            client.send(ack(0), peer)
            continue
        assert opcode(data) == 3, data
        assert block_of(data) == expected & 0xFFFF
        chunks.append(data[4:])
        last = len(data) - 4 < blksize
        if last or expected % window == 0:
            client.send(ack(expected), peer)
        expected += 1
        if last:
            return b"".join(chunks), negotiated


def content(root: Path, name: str) -> bytes:
    return (root / name).read_bytes()


# ---- real clients -----------------------------------------------------------------------


@pytest.mark.parametrize("name", BINARIES)
def test_curl_fetches_byte_exact(
    tftp: ServerThread, boot_root: Path, tmp_path: Path, name: str
) -> None:
    out = tmp_path / "out"
    url = f"tftp://{LOCAL}:{tftp.port}/{name}"
    subprocess.run(
        [tool("curl"), "-sS", "--tftp-blksize", "1468", "-o", str(out), url], check=True, timeout=30
    )
    assert out.read_bytes() == content(boot_root, name)
    [transfer] = tftp.wait_transfers(1)
    assert transfer.result == "ok"
    assert transfer.options["blksize"] == 1468


@pytest.mark.parametrize("name", BINARIES)
def test_tftp_hpa_fetches_byte_exact(
    tftp: ServerThread, boot_root: Path, tmp_path: Path, name: str
) -> None:
    out = tmp_path / "out"
    command = [tool("tftp"), "-m", "binary", LOCAL, str(tftp.port), "-c", "get", name, str(out)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stdout + run.stderr
    assert out.read_bytes() == content(boot_root, name)


def test_100_concurrent_fetches(tftp: ServerThread, boot_root: Path, tmp_path: Path) -> None:
    curl = tool("curl")
    names = [BINARIES[i % 2 * 2] for i in range(100)]  # undionly.kpxe and snponly.efi
    processes = [
        subprocess.Popen(
            [
                curl,
                "-sS",
                "--tftp-blksize",
                "1468",
                "-o",
                str(tmp_path / str(i)),
                f"tftp://{LOCAL}:{tftp.port}/{names[i]}",
            ]
        )
        for i in range(30)
    ]

    async def lab_clients() -> list[bytes]:
        return await asyncio.gather(
            *(
                fetch(LOCAL, tftp.port, names[i], blksize=1468 if i % 3 else None, tsize=True)
                for i in range(30, 100)
            )
        )

    fetched = asyncio.run(lab_clients())
    for process in processes:
        assert process.wait(30) == 0
    for i in range(30):
        assert (tmp_path / str(i)).read_bytes() == content(boot_root, names[i])
    for i, data in zip(range(30, 100), fetched, strict=True):
        assert data == content(boot_root, names[i])
    transfers = tftp.wait_transfers(100)
    assert {t.result for t in transfers} == {"ok"}


# ---- confinement ------------------------------------------------------------------------


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every path the server opens, made absolute through the directory descriptor."""
    paths: list[str] = []
    real_open = os.open

    def spy(path: str, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        base = os.readlink(f"/proc/self/fd/{dir_fd}") if dir_fd is not None else ""
        paths.append(os.path.join(base, path))
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", spy)
    return paths


ESCAPES = [
    "../../etc/passwd",
    "/etc/passwd",
    "../outside/secret",
    "escape",
    "escape-dir/secret",
    "sub/../../outside/secret",
]


@pytest.mark.parametrize("name", ESCAPES)
def test_escapes_refused_and_nothing_outside_opened(
    tftp: ServerThread,
    raw: Callable[..., RawClient],
    boot_root: Path,
    opened: list[str],
    name: str,
) -> None:
    client = raw()
    client.send(rrq(name), (LOCAL, tftp.port))
    reply, _ = client.recv()
    assert error_code(reply) == 2
    [transfer] = tftp.wait_transfers(1)
    assert transfer.result == "access violation"
    assert transfer.filename == name
    assert SECRET not in reply
    outside = str(boot_root.parent / "outside")
    assert not [path for path in opened if path.startswith(outside) or "passwd" in path]
    # The spy sees what the server opens: a file reached through an inner symlink.
    lockstep(raw(), (LOCAL, tftp.port), "alias.kpxe")
    assert str(boot_root / "undionly.kpxe") in opened


def test_nul_non_utf8_directory_and_bad_mode_refused(
    tftp: ServerThread, raw: Callable[..., RawClient]
) -> None:
    client = raw()
    server = (LOCAL, tftp.port)
    cases = [
        (b"\0\1undionly.kpxe\0../escape\0octet\0", 4),  # NUL inside the name
        (rrq(b"\xff\xfe.kpxe"), 4),
        (rrq("undionly.kpxe", mode=b"mail"), 4),
        (rrq("sub"), 2),
        (rrq("escape-dir"), 2),
    ]
    for packet, code in cases:
        client.send(packet, server)
        reply, _ = client.recv()
        assert error_code(reply) == code, packet


def test_inner_symlink_and_subdirectory_served(
    tftp: ServerThread, raw: Callable[..., RawClient], boot_root: Path
) -> None:
    data, _ = lockstep(raw(), (LOCAL, tftp.port), "alias.kpxe", ("blksize", 1468))
    assert data == content(boot_root, "undionly.kpxe")
    data, _ = lockstep(raw(), (LOCAL, tftp.port), "sub/inner.txt")
    assert data == b"inner\n"


def test_writes_refused(
    tftp: ServerThread, raw: Callable[..., RawClient], boot_root: Path, tmp_path: Path
) -> None:
    local = tmp_path / "upload"
    local.write_bytes(b"overwrite attempt\n")
    command = [
        tool("tftp"),
        "-m",
        "binary",
        LOCAL,
        str(tftp.port),
        "-c",
        "put",
        str(local),
        "undionly.kpxe",
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert "Error code 2" in run.stdout + run.stderr
    client = raw()
    client.send(rrq("new-file", opcode=2), (LOCAL, tftp.port))
    reply, _ = client.recv()
    assert error_code(reply) == 2
    client.send(b"\0\2no-terminators", (LOCAL, tftp.port))
    reply, _ = client.recv()
    assert error_code(reply) == 2
    assert content(boot_root, "undionly.kpxe") == (IPXE / "undionly.kpxe").read_bytes()
    assert not (boot_root / "new-file").exists()
    assert [t.result for t in tftp.wait_transfers(3)] == ["access violation"] * 3


# ---- options ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("asked", "answered"),
    [
        (("blksize", 1468), {"blksize": "1468"}),
        (("BlkSize", 1024), {"blksize": "1024"}),
        (("blksize", 4), {}),
        (("blksize", 65536), {"blksize": str(MAX_BLKSIZE)}),
        (("blksize", 10**12), {"blksize": str(MAX_BLKSIZE)}),
        (("blksize", "abc"), {}),
        (("blksize", "-5"), {}),
        (("timeout", 0), {}),
        (("timeout", 256), {}),
        (("TIMEOUT", 7), {"timeout": "7"}),
        (("windowsize", 0), {}),
        (("WindowSize", 100000), {"windowsize": "64"}),
        (("multicast", 1), {}),
    ],
)
def test_option_negotiation(
    tftp: ServerThread,
    raw: Callable[..., RawClient],
    boot_root: Path,
    asked: tuple[str, object],
    answered: dict[str, str],
) -> None:
    data, negotiated = lockstep(raw(), (LOCAL, tftp.port), "undionly.kpxe", asked)
    assert data == content(boot_root, "undionly.kpxe")
    assert {k.lower(): v for k, v in negotiated.items()} == answered


def test_tsize_probe_then_abort_then_fetch(
    tftp: ServerThread, raw: Callable[..., RawClient], boot_root: Path
) -> None:
    """EDK2: ask tsize, read the size from the OACK, abort with error 8, fetch for real."""
    client = raw()
    client.send(rrq("ipxe.efi", ("tsize", 0), ("blksize", 1468)), (LOCAL, tftp.port))
    reply, peer = client.recv()
    size = len(content(boot_root, "ipxe.efi"))
    assert oack_options(reply) == {"tsize": str(size), "blksize": "1468"}
    client.send(b"\0\5\0\x08Abort\0", peer)
    [probe] = tftp.wait_transfers(1)
    assert probe.result == "aborted by client"
    assert probe.options == {"tsize": size, "blksize": 1468}
    data, negotiated = lockstep(raw(), (LOCAL, tftp.port), "ipxe.efi", ("TSIZE", 0))
    assert data == content(boot_root, "ipxe.efi")
    assert negotiated == {"tsize": str(size)}


def test_first_retransmission_within_a_second_and_a_half(
    tftp: ServerThread, raw: Callable[..., RawClient]
) -> None:
    client = raw()
    client.send(rrq("undionly.kpxe"), (LOCAL, tftp.port))
    first, peer = client.recv()  # dropped: not acknowledged
    sent = time.monotonic()
    again, again_peer = client.recv(timeout=1.5)
    assert 0.8 < time.monotonic() - sent < 1.5
    assert (again, again_peer) == (first, peer)


def test_timeout_option_sets_the_retransmission_interval(
    tftp: ServerThread, raw: Callable[..., RawClient]
) -> None:
    client = raw()
    client.send(rrq("undionly.kpxe", ("timeout", 2)), (LOCAL, tftp.port))
    oack, _ = client.recv()
    assert oack_options(oack) == {"timeout": "2"}
    sent = time.monotonic()
    again, _ = client.recv(timeout=3)
    assert again == oack
    assert 1.8 < time.monotonic() - sent < 2.8


def test_duplicate_acks_do_not_duplicate_data(
    tftp: ServerThread, raw: Callable[..., RawClient], boot_root: Path
) -> None:
    """Sorcerer's apprentice: every ACK sent twice must not double the DATA packets."""
    client = raw()
    client.send(rrq("undionly.kpxe"), (LOCAL, tftp.port))
    blocks: list[int] = []
    while True:
        data, peer = client.recv()
        blocks.append(block_of(data))
        client.send(ack(block_of(data)), peer)
        client.send(ack(block_of(data)), peer)
        if len(data) < 516:
            break
    assert blocks == list(range(1, len(content(boot_root, "undionly.kpxe")) // 512 + 2))
    with pytest.raises(TimeoutError):
        client.recv(timeout=0.3)


def test_gives_up_after_retries(
    make_server: Callable[..., ServerThread], raw: Callable[..., RawClient]
) -> None:
    tftp = make_server(timeout=0.05, max_timeout=0.1, retries=2)
    client = raw()
    client.send(rrq("undionly.kpxe"), (LOCAL, tftp.port))
    [transfer] = tftp.wait_transfers(1, timeout=3)
    assert transfer.result == "timeout"
    assert transfer.bytes == 0
    copies = []
    try:
        while True:
            copies.append(client.recv(timeout=0.3)[0])
    except TimeoutError:
        pass
    assert len(copies) == 3  # the first send and two retries
    assert tftp.metric("provisioner_tftp_errors_total", kind="retransmission") == 2


def test_windowsize_by_lab_client(tftp: ServerThread, boot_root: Path) -> None:
    data = asyncio.run(fetch(LOCAL, tftp.port, "ipxe.efi", blksize=1468, windowsize=16, tsize=True))
    assert data == content(boot_root, "ipxe.efi")
    [transfer] = tftp.wait_transfers(1)
    assert transfer.options == {"blksize": 1468, "windowsize": 16, "tsize": len(data)}


def test_windowsize_resends_from_an_earlier_ack(
    tftp: ServerThread, raw: Callable[..., RawClient], boot_root: Path
) -> None:
    expected = content(boot_root, "snponly.efi")

    def block(n: int) -> bytes:
        return expected[(n - 1) * 512 : n * 512]

    client = raw()
    client.send(rrq("snponly.efi", ("windowsize", 4)), (LOCAL, tftp.port))
    oack, peer = client.recv()
    assert oack_options(oack) == {"windowsize": "4"}
    client.send(ack(0), peer)
    window = [client.recv()[0] for _ in range(4)]
    assert [block_of(p) for p in window] == [1, 2, 3, 4]
    client.send(ack(2), peer)  # blocks 3 and 4 "lost"
    window = [client.recv()[0] for _ in range(4)]
    assert [block_of(p) for p in window] == [3, 4, 5, 6]
    assert [p[4:] for p in window] == [block(3), block(4), block(5), block(6)]
    client.send(ack(6), peer)
    assert [block_of(client.recv()[0]) for _ in range(4)] == [7, 8, 9, 10]


def test_block_numbers_roll_over(make_server: Callable[..., ServerThread], boot_root: Path) -> None:
    big = random.Random(7).randbytes(65540 * 8 + 3)  # past block 65535 at blksize 8
    (boot_root / "big.bin").write_bytes(big)
    tftp = make_server()
    assert asyncio.run(fetch(LOCAL, tftp.port, "big.bin", blksize=8, windowsize=64)) == big
    [transfer] = tftp.wait_transfers(1)
    assert (transfer.result, transfer.bytes) == ("ok", len(big))


# ---- dynamic files ----------------------------------------------------------------------


def test_dynamic_files(make_server: Callable[..., ServerThread], boot_root: Path) -> None:
    asked: list[tuple[str, str]] = []

    async def dynamic(filename: str, client: str) -> bytes | None:
        asked.append((filename, client))
        if filename == "boom":
            raise RuntimeError("callback bug")
        if filename == "slow":
            await asyncio.sleep(30)
        if filename.startswith("pxelinux.cfg/01-"):
            return f"DEFAULT local # {filename} for {client}\n".encode()
        return None

    tftp = make_server(dynamic=dynamic, dynamic_timeout=0.3)

    async def scenario() -> None:
        config = await fetch(LOCAL, tftp.port, "pxelinux.cfg/01-52-54-00-12-34-56", tsize=True)
        assert config == b"DEFAULT local # pxelinux.cfg/01-52-54-00-12-34-56 for 127.0.0.1\n"
        for name, code in [("grub/grub.cfg-01-52-54-00-12-34-56", 1), ("boom", 0), ("slow", 0)]:
            with pytest.raises(TftpError) as error:
                await fetch(LOCAL, tftp.port, name)
            assert error.value.code == code
        # A slow callback holds up nobody else.
        slow = asyncio.ensure_future(fetch(LOCAL, tftp.port, "slow"))
        assert await fetch(LOCAL, tftp.port, "undionly.kpxe") == content(boot_root, "undionly.kpxe")
        with pytest.raises(TftpError):
            await slow

    asyncio.run(scenario())
    results = {t.filename: t.result for t in tftp.wait_transfers(6)}
    assert results == {
        "pxelinux.cfg/01-52-54-00-12-34-56": "ok",
        "grub/grub.cfg-01-52-54-00-12-34-56": "file not found",
        "boom": "dynamic file failed",
        "slow": "dynamic file failed",
        "undionly.kpxe": "ok",
    }
    # Files under the root and refused names never reach the callback.
    assert {name for name, _ in asked} == {
        "pxelinux.cfg/01-52-54-00-12-34-56",
        "grub/grub.cfg-01-52-54-00-12-34-56",
        "boom",
        "slow",
    }


# ---- robustness -------------------------------------------------------------------------


FUZZ = [
    b"",
    b"\x00",
    b"\x01",
    b"\x00\x00",
    b"\x00\x07abc\x00octet\x00",
    b"\x00\x63",
    b"\x00\x00sub\x00octet\x00",
    rrq("sub"),
    rrq("undionly.kpxe", ("blksize", "abc")),
    rrq("undionly.kpxe", ("blksize", "")),
    rrq("\u00e9t\u00e9.kpxe"),
    rrq(b"\xc3\x28"),
    b"\x00\x01undionly.kpxe",
    b"\x00\x01undionly.kpxe\x00octet",
    b"\x00\x01undionly.kpxe\x00octet\x00blksize\x00",
    b"\x00\x01undionly.kpxe\x00octet\x00blksize",
    b"\x00\x01undionly.kpxe\x00octet\x00\x00\x00",
    b"\x00\x01undionly.kpxe\x00octet\x00" + b"a\x001\x00" * 200,
    b"\x00\x01undionly.kpxe\x00octet\x00" + b"a\x001\x00" * 5000,
    b"\x00\x01undionly.kpxe\x00octet\x00" + b"\x00" * 5000,
    b"\x00\x01" + b"A" * 65000,
    b"\x00\x04\x00\x01",
    b"\x00\x03\x00\x01data",
    b"\x00\x05\x00\x08Abort\x00",
    b"\x00\x06blksize\x00512\x00",
    b"\x00\x02x\x00octet\x00",
]


def test_fuzz_never_disturbs_transfers_in_flight(
    tftp: ServerThread, raw: Callable[..., RawClient], boot_root: Path
) -> None:
    server = (LOCAL, tftp.port)
    expected = content(boot_root, "ipxe.efi")
    rng = random.Random(42)

    async def scenario() -> list[bytes]:
        downloads = [
            asyncio.ensure_future(fetch(LOCAL, tftp.port, "ipxe.efi", blksize=bs))
            for bs in (512, 1468, 8192, 512, 1468)
        ]
        fuzzer = raw()
        for round_ in range(20):
            for packet in FUZZ:
                fuzzer.send(packet, server)
            for _ in range(20):
                fuzzer.send(rng.randbytes(rng.randrange(1, 600)), server)
            # blksize=65536 on a file over 64 KiB: clamped to what a datagram holds.
            if round_ == 0:
                big = raw()
                big.send(rrq("ipxe.efi", ("blksize", 65536)), server)
            await asyncio.sleep(0.005)
        return await asyncio.gather(*downloads)

    assert all(data == expected for data in asyncio.run(scenario()))
    # The 65536-byte-block client, and a session disturbed by a stranger.
    data, negotiated = lockstep(raw(), server, "ipxe.efi", ("blksize", 65536))
    assert (data, negotiated) == (expected, {"blksize": str(MAX_BLKSIZE)})
    owner, stranger = raw(), raw()
    owner.send(rrq("undionly.kpxe"), server)
    first, peer = owner.recv()
    stranger.send(ack(1), peer)
    stranger.send(b"\x00\x05\x00\x00go away\x00", peer)
    for _ in range(2):
        reply, source = stranger.recv()
        assert (error_code(reply), source) == (5, peer)
    chunks, block = [first[4:]], 1
    while len(chunks[-1]) == 512:
        owner.send(ack(block), peer)
        packet, _ = owner.recv()
        block += 1
        assert block_of(packet) == block
        chunks.append(packet[4:])
    owner.send(ack(block), peer)
    assert b"".join(chunks) == content(boot_root, "undionly.kpxe")
    assert tftp.metric("provisioner_tftp_errors_total", kind="unknown transfer id") == 2
    assert tftp.metric("provisioner_tftp_errors_total", kind="malformed packet") > 0
    # Still serving.
    assert lockstep(raw(), server, "snponly.efi")[0] == content(boot_root, "snponly.efi")


def test_duplicate_request_starts_one_transfer(
    tftp: ServerThread, raw: Callable[..., RawClient], boot_root: Path
) -> None:
    client = raw()
    client.send(rrq("undionly.kpxe"), (LOCAL, tftp.port))
    client.send(rrq("undionly.kpxe"), (LOCAL, tftp.port))
    first, _ = client.recv()
    assert block_of(first) == 1
    with pytest.raises(TimeoutError):
        client.recv(timeout=0.2)
    assert len(tftp.server.sessions) == 1


# ---- observation ------------------------------------------------------------------------


def test_metrics_and_observer(
    tftp: ServerThread, raw: Callable[..., RawClient], boot_root: Path
) -> None:
    client = raw()
    size = len(content(boot_root, "undionly.kpxe"))
    lockstep(client, (LOCAL, tftp.port), "undionly.kpxe", ("blksize", 1468))
    client.send(rrq("missing.efi"), (LOCAL, tftp.port))
    assert error_code(client.recv()[0]) == 1
    ok, missing = tftp.wait_transfers(2)
    port = client.sock.getsockname()[1]
    assert ok == Transfer(
        LOCAL, port, LOCAL, "undionly.kpxe", size, ok.duration, "ok", {"blksize": 1468}
    )
    assert 0 < ok.duration < 5
    assert (missing.filename, missing.result, missing.bytes) == ("missing.efi", "file not found", 0)
    assert tftp.metric("provisioner_tftp_transfers_total", result="ok") == 1
    assert tftp.metric("provisioner_tftp_transfers_total", result="file not found") == 1
    assert tftp.metric("provisioner_tftp_sent_bytes_total") == size
    assert tftp.metric("provisioner_tftp_transfer_duration_seconds_count") == 2
    assert tftp.metric("provisioner_tftp_errors_total", kind="file not found") == 1


def test_failing_observer_is_contained(
    tftp: ServerThread, raw: Callable[..., RawClient], caplog: pytest.LogCaptureFixture
) -> None:
    def explode(transfer: Transfer) -> None:
        raise RuntimeError("observer bug")

    tftp.hook = explode
    for _ in range(2):
        client = raw()
        client.send(rrq("missing"), (LOCAL, tftp.port))
        assert error_code(client.recv()[0]) == 1
    tftp.wait_transfers(2)
    assert "transfer observer failed" in caplog.text


def test_replies_leave_from_the_address_asked(
    make_server: Callable[..., ServerThread], raw: Callable[..., RawClient], boot_root: Path
) -> None:
    tftp = make_server(host="0.0.0.0")  # noqa: S104 - the wildcard is what is tested
    for address in ("127.0.0.2", "127.0.0.1"):
        client = raw()
        client.send(rrq("undionly.kpxe"), (address, tftp.port))
        _, peer = client.recv()
        assert peer[0] == address
        client2 = raw()
        client2.send(rrq("missing"), (address, tftp.port))
        error, source = client2.recv()
        assert (error_code(error), source) == (1, (address, tftp.port))
        client.send(b"\0\5\0\0bye\0", peer)
    servers = {t.server for t in tftp.wait_transfers(4)}
    assert servers == {"127.0.0.1", "127.0.0.2"}


def test_stop_ends_transfers_in_flight(boot_root: Path, raw: Callable[..., RawClient]) -> None:
    finished: list[Transfer] = []

    async def scenario() -> None:
        server = TftpServer(boot_root, observer=finished.append)
        await server.start(LOCAL, 0)
        async with server:
            client = raw()
            client.send(rrq("undionly.kpxe"), (LOCAL, server.port))
            first, _ = await asyncio.get_running_loop().run_in_executor(None, client.recv)
            assert block_of(first) == 1
        assert not server.sessions

    asyncio.run(scenario())
    assert [t.result for t in finished] == ["server stopped"]
