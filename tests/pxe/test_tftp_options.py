"""Options outside their RFC's range are left out of the OACK (RFC 2347), and netascii
is sent converted (RFC 1350), with raw packets and tftp-hpa's client."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.pxe.conftest import RawClient, ServerThread, tool
from tests.pxe.test_tftp import (
    LOCAL,
    Addr,
    ack,
    block_of,
    content,
    error_code,
    lockstep,
    oack_options,
    opcode,
    rrq,
)


@pytest.mark.parametrize(
    "asked",
    [
        (("blksize", 0),),
        (("blksize", 7),),
        (("tsize", 5),),  # RFC 2349: a read request asks with tsize 0
        (("BLKSIZE", 7), ("timeout", 0), ("timeout", 256)),
    ],
)
def test_options_out_of_their_rfc_range_are_left_out(
    tftp: ServerThread, raw: Callable[..., RawClient], asked: tuple[tuple[str, object], ...]
) -> None:
    """RFC 2347: an option the server does not accept is left out of the OACK, and with
    none accepted there is no OACK at all: the first DATA block, of 512 bytes."""
    client = raw()
    client.send(rrq("undionly.kpxe", *asked), (LOCAL, tftp.port))
    first, _ = client.recv()
    assert (opcode(first), block_of(first), len(first)) == (3, 1, 4 + 512)


def test_an_accepted_option_is_answered_without_the_refused_one(
    tftp: ServerThread, raw: Callable[..., RawClient], boot_root: Path
) -> None:
    asked = (("blksize", 7), ("tsize", 0))
    data, negotiated = lockstep(raw(), (LOCAL, tftp.port), "undionly.kpxe", *asked)
    assert data == content(boot_root, "undionly.kpxe")
    assert negotiated == {"tsize": str(len(data))}
    # RFC 2348's smallest block size is a block size like any other.
    data, negotiated = lockstep(raw(), (LOCAL, tftp.port), "sub/inner.txt", ("blksize", 8))
    assert (data, negotiated) == (b"inner\n", {"blksize": "8"})


def netascii_fetch(client: RawClient, server: Addr, name: str) -> tuple[bytes, dict[str, str]]:
    """One netascii download of a file of one block, with tsize: the bytes on the wire."""
    client.send(rrq(name, ("tsize", 0), mode=b"netascii"), server)
    oack, peer = client.recv()
    client.send(ack(0), peer)
    data, _ = client.recv()
    assert (opcode(data), block_of(data)) == (3, 1)
    assert len(data) - 4 < 512
    client.send(ack(1), peer)
    return data[4:], oack_options(oack)


def test_netascii_is_sent_converted(
    make_server: Callable[..., ServerThread], raw: Callable[..., RawClient], boot_root: Path
) -> None:
    """RFC 1350: LF travels as CR LF and CR as CR NUL, from the root or a dynamic file;
    an octet request of the same file is not converted (nor served from the same cache
    entry)."""
    text = b"one\ntwo\r\nbare\rend\n"
    wire = b"one\r\ntwo\r\0\r\nbare\r\0end\r\n"
    (boot_root / "notes.txt").write_bytes(text)

    async def dynamic(filename: str, client: str) -> bytes | None:
        return text if filename == "dynamic.txt" else None

    tftp = make_server(dynamic=dynamic)
    server = (LOCAL, tftp.port)
    for name in ("notes.txt", "dynamic.txt", "notes.txt"):
        assert netascii_fetch(raw(), server, name) == (wire, {"tsize": str(len(wire))})
    assert lockstep(raw(), server, "notes.txt")[0] == text
    assert [t.result for t in tftp.wait_transfers(4)] == ["ok"] * 4


def test_tftp_hpa_in_netascii_mode_fetches_a_binary_byte_exact(
    tftp: ServerThread, boot_root: Path, tmp_path: Path
) -> None:
    """tftp-hpa's client turns netascii back into the bytes stored, so a binary holding
    CR LF and CR NUL (undionly.kpxe holds both) must be sent converted to arrive whole."""
    stored = content(boot_root, "undionly.kpxe")
    assert b"\r\n" in stored
    assert b"\r\0" in stored
    out = tmp_path / "out"
    command = [tool("tftp"), "-m", "netascii", LOCAL, str(tftp.port), "-c", "get"]
    run = subprocess.run(
        [*command, "undionly.kpxe", str(out)], capture_output=True, text=True, timeout=30
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert out.read_bytes() == stored


def test_an_unknown_mode_is_refused_with_the_modes_served(
    tftp: ServerThread, raw: Callable[..., RawClient]
) -> None:
    client = raw()
    client.send(rrq("undionly.kpxe", mode=b"mail"), (LOCAL, tftp.port))
    reply, _ = client.recv()
    assert error_code(reply) == 4
    assert b"octet or netascii" in reply
