"""TFTP server of the boot network: the iPXE binaries, and per-MAC files for loaders that
cannot speak HTTP, from one read-only root.

tftpy's packet codec under an asyncio loop of our own, not tftpy's ``TftpServer``:
docs/tftp.md has the measurements behind that choice and what the code relies on. In
short, tftpy's loop blocks in select() on a thread of its own, one bad packet kills its
process, its defaults are wrong for a boot network (writes accepted, symlinks out of the
root served, a 5 s first retransmission, no ``timeout``/``windowsize``) and it spends
about 20 µs of CPU per packet, where a boot storm is hundreds of clients at once.

The modules, one concept each:

- ``packets``: the wire; opcodes, option negotiation, netascii, ERROR/OACK/DATA encoding.
- ``files``: which names may be served from the root, and their DATA packets, encoded
  once per (file, blksize, mode) and shared by every session through a content cache, so
  sending a block is one ``sendto()``.
- ``session``: one read transfer, its socket, windows, ACKs and retransmissions.
- ``server``: the listening socket, request validation, dynamic files, metrics.
- ``transfer``: what is reported when a transfer ends.

Use: ``await server.start(host, port)`` binds and returns; ``await server.stop()`` ends
every transfer. ``async with server:`` only guarantees the stop (start it inside).
``python -m pxe.tftp --root DIR --port P`` runs it standalone (the benchmark does).
"""

from pxe.tftp.packets import MAX_BLKSIZE
from pxe.tftp.server import TftpServer
from pxe.tftp.transfer import Transfer

__all__ = ["MAX_BLKSIZE", "TftpServer", "Transfer"]
