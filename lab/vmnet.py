"""The lab's private boot network: a network namespace with a bridge, one tap per VM,
and the DHCP server of that network (dnsmasq with the configuration `provisioner pxe
dnsmasq-config --mode full --lab` renders). Nothing the VMs send leaves the namespace.

Processes run inside it through ``ip netns exec``; a thread of this process can also
enter it (:meth:`Namespace.inside`) to open sockets there, which is how
:class:`Forwarder` makes a service listening inside reachable on the host's 127.0.0.1.

Cleaning up survives a crash: every namespace is named ``<prefix><owner pid>-<n>``; one
whose owner is gone is deleted, with every process still in it, by the next
:func:`create` with the same prefix. Processes started here also get SIGKILL when the
thread that started them ends (``PR_SET_PDEATHSIG``), so a killed lab leaves no QEMU
running. Needs root (or CAP_NET_ADMIN and CAP_SYS_ADMIN). See docs/lab-vms.md.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import itertools
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TypeVar

from pxe import dnsmasq

PREFIX = "prov-lab-"
NETWORK = ipaddress.IPv4Network("10.213.0.0/24")
BRIDGE = "br0"
IPV6_ADDRESS = "fd00:213::1/64"  # a ULA: router advertisements end iPXE's IPv6 wait
_NETNS_DIR = Path("/run/netns")
_CLONE_NEWNET = 0x40000000
_PR_SET_PDEATHSIG = 1
_counter = itertools.count()
_libc = ctypes.CDLL(None, use_errno=True)

T = TypeVar("T")


class NetworkError(RuntimeError):
    """The namespace or its DHCP server could not be set up; the message says why."""


def ip(*args: str) -> str:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise NetworkError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def _die_with_parent() -> None:
    # Runs in the child between fork and exec; ip netns exec keeps it across its exec.
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def spawn(
    args: Sequence[str], output: IO[bytes] | int, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """A process that is killed when the thread starting it ends: start long-lived
    processes from a thread that lives as long as they should."""
    return subprocess.Popen(
        list(args),
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=subprocess.STDOUT,
        env=env,
        preexec_fn=_die_with_parent,  # only prctl: nothing that could deadlock after fork
    )


def stop(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it does not exit within ``timeout`` seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)


class Namespace:
    """A named network namespace (``/run/netns/<name>``) with its loopback up."""

    def __init__(self, name: str) -> None:
        self.name = name

    def exec_args(self, args: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *args]

    def ip(self, *args: str) -> str:
        return ip("-n", self.name, *args)

    def pids(self) -> list[int]:
        return [int(p) for p in ip("netns", "pids", self.name).split()]

    def inside(self, action: Callable[[], T]) -> T:
        """``action()`` run in a thread that entered the namespace: sockets it opens
        live there (and keep working from any thread)."""
        results: list[T] = []
        errors: list[BaseException] = []

        def run() -> None:
            try:
                enter(self.name)
                results.append(action())
            except BaseException as exc:  # handed to the caller
                errors.append(exc)

        thread = threading.Thread(target=run, name=f"in {self.name}")
        thread.start()
        thread.join()
        if errors:
            raise errors[0]
        return results[0]

    def delete(self) -> None:
        """Kill every process in the namespace, then delete it (with its taps and
        bridge, which die with it)."""
        with contextlib.suppress(NetworkError):
            for _ in range(50):
                pids = self.pids()
                if not pids:
                    break
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                time.sleep(0.1)
        with contextlib.suppress(NetworkError):
            ip("netns", "del", self.name)


def enter(name: str) -> None:
    """Move the calling thread (only it) into namespace ``name``."""
    fd = os.open(_NETNS_DIR / name, os.O_RDONLY)
    try:
        if _libc.setns(fd, _CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise NetworkError(f"cannot enter network namespace {name}: {os.strerror(errno)}")
    finally:
        os.close(fd)


def _owner(name: str, prefix: str) -> int | None:
    match = re.fullmatch(re.escape(prefix) + r"(\d+)-\d+", name)
    return int(match.group(1)) if match else None


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs: a zombie (dead, not yet reaped) does not."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def remove_stale(prefix: str = PREFIX) -> list[str]:
    """Delete the namespaces named ``<prefix><pid>-<n>`` whose process ``pid`` is gone
    (a lab that crashed or was killed), with every process still in them."""
    removed = []
    for line in ip("netns", "list").splitlines():
        name = line.split()[0] if line.strip() else ""
        owner = _owner(name, prefix)
        if owner is not None and not _alive(owner):
            Namespace(name).delete()
            removed.append(name)
    return removed


def create(prefix: str = PREFIX) -> Namespace:
    """A new namespace owned by this process, after removing stale ones."""
    remove_stale(prefix)
    namespace = Namespace(f"{prefix}{os.getpid()}-{next(_counter)}")
    ip("netns", "add", namespace.name)
    namespace.ip("link", "set", "lo", "up")
    return namespace


class Forwarder:
    """TCP from the host's ``127.0.0.1:<port>`` to ``address:port`` inside a
    namespace: how the host's CLI and tests reach a service serving VMs there."""

    def __init__(self, namespace: Namespace, address: str, port: int, local_port: int = 0) -> None:
        self._namespace = namespace
        self._target = (address, port)
        self._listener = socket.create_server(("127.0.0.1", local_port))
        self.port: int = self._listener.getsockname()[1]
        self._closed = False
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name="forwarder", daemon=True).start()

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            for connection in self._connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        try:
            # This short-lived thread enters the namespace: the upstream socket lives there.
            enter(self._namespace.name)
            upstream = socket.create_connection(self._target, timeout=10)
            upstream.settimeout(None)
        except OSError:
            client.close()
            return
        with self._lock:
            self._connections |= {client, upstream}
        threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()
        self._pump(client, upstream)

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)
        with self._lock:
            # The second pump to finish closes both.
            if source in self._connections and sink not in self._connections:
                self._connections.discard(source)
                source.close()
                sink.close()
            else:
                self._connections.discard(source)


class LabNetwork:
    """A namespace with a bridge holding ``NETWORK``'s first address, taps for VMs, and
    dnsmasq as its DHCP server. Use it as a context manager: leaving it, normally or by
    an exception (Ctrl-C included), kills what runs inside and deletes the namespace."""

    def __init__(self, workdir: Path, prefix: str = PREFIX) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.address = str(NETWORK.network_address + 1)
        self.namespace = create(prefix)
        self.dhcp: subprocess.Popen[bytes] | None = None
        self.dhcp_log = workdir / "dnsmasq.log"
        self._taps = 0
        self._closers: list[Callable[[], None]] = []
        try:
            ns = self.namespace
            ns.ip("link", "add", BRIDGE, "type", "bridge", "stp_state", "0", "forward_delay", "0")
            ns.ip("addr", "add", f"{self.address}/{NETWORK.prefixlen}", "dev", BRIDGE)
            # The prefix dnsmasq advertises (--lab), usable at once (nodad).
            ns.ip("-6", "addr", "add", IPV6_ADDRESS, "dev", BRIDGE, "nodad")
            ns.ip("link", "set", BRIDGE, "up")
        except BaseException:
            self.namespace.delete()
            raise

    def __enter__(self) -> LabNetwork:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add_tap(self) -> str:
        """A new tap on the bridge, for one VM's ``-netdev tap,ifname=...``."""
        name = f"tap{self._taps}"
        self._taps += 1
        self.namespace.ip("tuntap", "add", "dev", name, "mode", "tap")
        self.namespace.ip("link", "set", name, "master", BRIDGE, "up")
        return name

    def dnsmasq_config(self, api_url: str, *, snponly: bool = False) -> str:
        """What `provisioner pxe dnsmasq-config --mode full --lab` renders for this
        network, answering on the bridge only, with the service's TFTP server on the
        bridge."""
        config = dnsmasq.parse(
            mode="full",
            network=str(NETWORK),
            api_url=api_url,
            tftp_server=self.address,
            snponly=snponly,
            interfaces=[BRIDGE],
            range_start=str(NETWORK.network_address + 100),
            range_end=str(NETWORK.network_address + 199),
            lab=True,
        )
        return dnsmasq.render(config)

    def start_dhcp(self, api_url: str, *, snponly: bool = False) -> None:
        """dnsmasq on the bridge, telling iPXE to fetch ``api_url``'s bootstrap script;
        its log (every DHCP exchange) goes to :attr:`dhcp_log`."""
        conf = self.workdir / "dnsmasq.conf"
        conf.write_text(self.dnsmasq_config(api_url, snponly=snponly))
        # Process options only, none about DHCP: stay in the foreground (a child we can
        # stop), keep leases and the log in the workdir, write no pid file, and log the
        # exchanges the configuration's "#log-dhcp" leaves to the operator.
        args = [
            "dnsmasq",
            "--keep-in-foreground",
            f"--conf-file={conf}",
            f"--dhcp-leasefile={self.workdir / 'dnsmasq.leases'}",
            f"--log-facility={self.dhcp_log}",
            "--pid-file=",
            "--log-dhcp",
        ]
        with (self.workdir / "dnsmasq.out").open("ab") as out:
            self.dhcp = spawn(self.namespace.exec_args(args), out)
        self._closers.append(self._stop_dhcp)
        time.sleep(0.2)
        if self.dhcp.poll() is not None:
            output = (self.workdir / "dnsmasq.out").read_text(errors="replace")
            raise NetworkError(f"dnsmasq exited ({self.dhcp.returncode}): {output.strip()}")

    def _stop_dhcp(self) -> None:
        if self.dhcp is not None:
            stop(self.dhcp)

    def run(
        self, args: Sequence[str], log: Path, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """``args`` run inside the namespace (output appended to ``log``), stopped when
        the network closes: the service with its TFTP server, say."""
        with log.open("ab") as output:
            process = spawn(self.namespace.exec_args(args), output, env)
        self._closers.append(lambda: stop(process))
        return process

    def forward(self, port: int, local_port: int = 0) -> Forwarder:
        """The host's 127.0.0.1:<returned .port> (``local_port``, or a free one when 0)
        forwarded to ``port`` on the bridge."""
        forwarder = Forwarder(self.namespace, self.address, port, local_port)
        self._closers.append(forwarder.close)
        return forwarder

    def on_close(self, action: Callable[[], None]) -> None:
        """``action`` runs first when the network closes (stop a VM, a service)."""
        self._closers.append(action)

    def close(self) -> None:
        try:
            for action in reversed(self._closers):
                with contextlib.suppress(Exception):
                    action()
        finally:
            self._closers.clear()
            self.namespace.delete()
