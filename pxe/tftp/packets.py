"""The TFTP wire: opcodes, block sizes, option negotiation, and the packets the server
encodes. tftpy's packet classes do the encoding (docs/tftp.md says why they are trusted
and its server is not); the per-packet path reads ACKs by index instead (session.py)."""

from __future__ import annotations

from typing import NamedTuple

from tftpy.TftpPacketFactory import TftpPacketFactory  # type: ignore[import-untyped]
from tftpy.TftpPacketTypes import (  # type: ignore[import-untyped]
    TftpPacketDAT,
    TftpPacketERR,
    TftpPacketOACK,
)

RRQ, WRQ, DATA, ACK, ERROR, OACK = 1, 2, 3, 4, 5, 6
DEFAULT_BLKSIZE = 512
# RFC 2348's maximum; it also fits an IPv4 UDP datagram (65,507 bytes of payload).
MAX_BLKSIZE = min(65464, 65507 - 4)
# RFC 2347 keeps requests within 512 bytes; the bound caps what tftpy's parser walks.
MAX_REQUEST = 1024


class Request(NamedTuple):
    filename: str
    mode: str
    options: dict[str, str]


_factory = TftpPacketFactory()


def parse_request(data: bytes) -> Request:
    """A read or write request. Raises ValueError on anything malformed."""
    try:
        packet = _factory.parse(data)
        options = {str(k): str(v) for k, v in packet.options.items()}
        return Request(str(packet.filename), str(packet.mode), options)
    except Exception as exc:
        # tftpy raises its own, struct's, and Unicode errors: all a bad request.
        raise ValueError("malformed TFTP request") from exc


def error_packet(code: int, message: str) -> bytes:
    packet = TftpPacketERR()
    packet.errorcode = code
    # tftpy encodes the message of its table for the code: give it ours.
    packet.errmsgs = {code: message.encode()}
    return bytes(packet.encode().buffer)


UNKNOWN_TID = error_packet(5, "Unknown transfer ID")


def oack_packet(options: dict[str, int]) -> bytes:
    oack = TftpPacketOACK()
    oack.options = {name: str(value) for name, value in options.items()}
    return bytes(oack.encode().buffer)


def encode_blocks(data: bytes, blksize: int) -> list[bytes]:
    """Every DATA packet of a transfer; the last one is short (empty if need be)."""
    packet = TftpPacketDAT()
    blocks = []
    for index, offset in enumerate(range(0, len(data) + 1, blksize)):
        packet.blocknumber = (index + 1) & 0xFFFF  # rolls over past 65535
        packet.data = data[offset : offset + blksize]
        blocks.append(bytes(packet.encode().buffer))
    return blocks


def negotiate(requested: dict[str, str], max_blksize: int, max_window: int) -> dict[str, int]:
    """The options to acknowledge. Names are case-insensitive. RFC 2347 lets a server
    leave out of its OACK any option it does not accept, and a client then goes on
    without it, so every option outside its RFC's range is left out rather than
    answered with a value the client did not ask for: ``blksize`` below 8 (RFC 2348),
    ``timeout`` outside 1..255 and a ``tsize`` other than 0 in a read request (RFC 2349),
    ``windowsize`` 0 (RFC 7440), unknown options and values that are not plain decimal
    numbers. Values above the server's limits are lowered, as RFC 2348 and RFC 7440
    allow. tsize is answered later, once the size is known."""
    accepted: dict[str, int] = {}
    for name, value in requested.items():
        key = name.lower()
        if not value.isdigit() or len(value) > 20:
            continue
        number = int(value)
        if key == "blksize" and number >= 8:
            accepted[key] = min(number, max_blksize)
        elif key == "tsize" and number == 0:
            accepted[key] = 0
        elif key == "timeout" and 1 <= number <= 255:
            accepted[key] = number
        elif key == "windowsize" and number >= 1:
            accepted[key] = min(number, max_window)
    return accepted


def to_netascii(data: bytes) -> bytes:
    """RFC 1350's netascii (RFC 764): CR is sent as CR NUL and LF as CR LF. A client
    that asked for netascii turns these back, so any file, binary too, arrives as it
    is stored. CRs first, so the CRs the LFs gain are not doubled."""
    return data.replace(b"\r", b"\r\0").replace(b"\n", b"\r\n")


class Refused(Exception):
    """A request answered with an ERROR packet; ``result`` is what the transfer records."""

    def __init__(self, code: int, message: str, result: str) -> None:
        super().__init__(message)
        self.packet = error_packet(code, message)
        self.result = result
