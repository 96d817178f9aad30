"""``python -m pxe.tftp --root DIR --port P``: the TFTP server alone, in processes of its
own (the boot storm benchmark runs it so)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from pathlib import Path

from pxe.tftp.server import TftpServer


def main(argv: list[str] | None = None) -> int:
    """Standalone server, for benchmarks and trials; the service embeds TftpServer."""
    parser = argparse.ArgumentParser(prog="python -m pxe.tftp", description=main.__doc__)
    parser.add_argument("--root", type=Path, required=True, help="directory to serve")
    parser.add_argument("--host", default="0.0.0.0")  # noqa: S104
    parser.add_argument("--port", type=int, default=69)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    parser.add_argument(
        "--workers", type=int, default=1, help="processes sharing the port (SO_REUSEPORT)"
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(message)s")
    # Forked before any event loop exists; the first process stops the others.
    workers: list[int] = []
    for _ in range(args.workers - 1):
        pid = os.fork()
        if pid == 0:
            workers = []
            break
        workers.append(pid)

    async def serve() -> None:
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stopping.set)
        server = TftpServer(args.root)
        await server.start(args.host, args.port, reuse_port=args.workers > 1)
        async with server:
            await stopping.wait()

    if args.uvloop:
        import uvloop

        uvloop.run(serve())
    else:
        asyncio.run(serve())
    for pid in workers:
        os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
