"""The lab's run-time control channel: each serving process listens on a Unix socket
``<control dir>/lab-<pid>.sock`` and answers one JSON line with one JSON line.

Requests: ``{"op": "fault", "node": NAME, "fault": "slow:200"}`` sets a node's fault;
``{"op": "status"}`` describes every node of the process (power, boot flags, boot
progress, installed OS, fault). A client asks every socket in the directory, since it
cannot know which process serves a node.
"""

from __future__ import annotations

import json
import os
import socket
import socketserver
import threading
from collections.abc import Mapping, Sized
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from lab import faults

if TYPE_CHECKING:
    from lab.machine import Machine

_TIMEOUT = 5.0


class ServedBmc(Protocol):
    """What the channel needs of a BMC, IPMI or Redfish: both front a machine."""

    @property
    def port(self) -> int: ...
    @property
    def machine(self) -> Machine: ...
    @property
    def gate(self) -> faults.FaultGate: ...
    @property
    def sessions(self) -> Sized: ...


class ControlServer:
    def __init__(self, directory: Path, bmcs: Mapping[str, ServedBmc]) -> None:
        self.path = directory / f"lab-{os.getpid()}.sock"
        self._bmcs = bmcs
        self._server: socketserver.UnixStreamServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        with suppress(FileNotFoundError):
            self.path.unlink()  # left by a process of the same pid that was killed
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                self.request.settimeout(_TIMEOUT)
                try:
                    request = json.loads(self.rfile.readline())
                    answer = outer.answer(request)
                except (ValueError, TypeError, KeyError, AttributeError) as exc:
                    answer = {"error": str(exc)}
                self.wfile.write(json.dumps(answer).encode() + b"\n")

        self._server = socketserver.UnixStreamServer(str(self.path), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="lab-control", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        with suppress(FileNotFoundError):
            self.path.unlink()

    def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "status":
            return {"nodes": {name: _describe(bmc) for name, bmc in self._bmcs.items()}}
        if op == "fault":
            bmc = self._bmcs.get(str(request["node"]).lower())
            if bmc is None:
                return {"unknown": request["node"]}
            # One attribute store: the packet thread sees the old fault or the new one.
            bmc.gate.fault = faults.parse_fault(str(request["fault"]))
            return {"node": bmc.machine.name, "fault": str(bmc.gate.fault)}
        raise ValueError(f"unknown op {op!r}; known: fault, status")


def _describe(bmc: ServedBmc) -> dict[str, Any]:
    machine = bmc.machine
    return {
        "port": bmc.port,
        "power": machine.power_state(),
        "boot": {
            "valid": machine.boot.valid,
            "persistent": machine.boot.persistent,
            "uefi": machine.boot.uefi,
            "device": machine.boot.device,
        },
        "boots": machine.boots[-20:],
        "boot_mode": machine.boot_mode,
        "state": machine.progress.state,
        "last_hop": machine.progress.last_hop,
        "installed": machine.installed.image if machine.installed else None,
        "deployment": machine.installed.deployment if machine.installed else None,
        "fault": str(bmc.gate.fault),
        "sessions": len(bmc.sessions),
    }


def ask(directory: Path, request: dict[str, Any]) -> list[dict[str, Any]]:
    """Every serving process's answer to ``request``."""
    sockets = sorted(directory.glob("lab-*.sock"))
    if not sockets:
        raise FileNotFoundError(f"no lab is running with control directory {directory}")
    answers = []
    for path in sockets:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(_TIMEOUT)
            try:
                conn.connect(str(path))
            except (ConnectionRefusedError, FileNotFoundError):
                continue  # a process that died without removing its socket
            conn.sendall(json.dumps(request).encode() + b"\n")
            reply = conn.makefile("rb").readline()
        answers.append(json.loads(reply))
    return answers


def set_fault(directory: Path, node: str, fault: faults.Fault) -> dict[str, Any]:
    for answer in ask(directory, {"op": "fault", "node": node, "fault": str(fault)}):
        if "node" in answer or "error" in answer:
            return answer
    raise LookupError(f"no running lab process serves node {node!r}")


def status(directory: Path) -> dict[str, Any]:
    nodes: dict[str, Any] = {}
    for answer in ask(directory, {"op": "status"}):
        nodes.update(answer.get("nodes", {}))
    return dict(sorted(nodes.items()))
