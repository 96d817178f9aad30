"""Run blocking BMC driver calls from async code, bounded and with hard deadlines.

Slots are held until the worker thread really finishes, not merely until the caller
gives up: a hung BMC then ties up at most ``per_bmc`` threads, later callers for it wait
without a thread and time out on their own deadline, and calls to other BMCs go on.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from provisioner.bmc.base import BmcError, Driver, ErrorKind, Target
from provisioner.bmc.registry import DriverFactory, service_drivers

log = logging.getLogger(__name__)

T = TypeVar("T")
SessionKey = tuple[str, int, str]

# Worth another attempt with a fresh session; a refused password or an unsupported
# command will not get better by asking again.
_RETRYABLE = frozenset({ErrorKind.UNREACHABLE, ErrorKind.TIMEOUT, ErrorKind.PROTOCOL})
# The driver bounds its own login by target.timeout and says more precisely what went
# wrong than the pool can; the pool's hard stop comes this much later.
_GRACE = 0.5


@dataclass
class _Ticket:
    """Shared by one call's caller and its worker thread: whoever comes second learns
    whether the worker's session may go back to the cache."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    driver: Driver | None = None
    abandoned: bool = False
    finished: bool = False

    def abandon(self) -> None:
        with self.lock:
            if self.finished:
                return
            self.abandoned = True
            driver = self.driver
        if driver is not None:
            driver.abort()  # frees the worker thread, and the BMC's slot, sooner


@dataclass(frozen=True)
class _Idle:
    target: Target
    driver: Driver


class BmcPool:
    """Calls ``fn(driver)`` in a worker thread, one logged-in driver per
    (address, port, username), reused while it works and dropped after any error.

    ``max_workers`` bounds calls in flight across all BMCs; ``per_bmc`` bounds them per
    (address, port). Calls sharing one session run one at a time (pyghmi would
    serialise them anyway), so ``per_bmc`` above 1 only lets different users overlap.

    ``driver_factory`` logs in; by default the service's registry, which picks the
    driver each target names. Tests pass one factory to reach every BMC through it.
    """

    def __init__(
        self,
        max_workers: int = 64,
        per_bmc: int = 1,
        *,
        driver_factory: DriverFactory | None = None,
    ) -> None:
        if max_workers < 1 or per_bmc < 1:
            raise ValueError("max_workers and per_bmc must be at least 1")
        self._factory: DriverFactory = driver_factory or service_drivers()
        self._max_workers = max_workers
        self._executor = ThreadPoolExecutor(max_workers, thread_name_prefix="bmc")
        self._workers = asyncio.Semaphore(max_workers)
        self._per_bmc: defaultdict[tuple[str, int], asyncio.Semaphore] = defaultdict(
            lambda: asyncio.Semaphore(per_bmc)
        )
        self._sessions: defaultdict[SessionKey, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._idle: dict[SessionKey, _Idle] = {}
        self._idle_lock = threading.Lock()
        self._closed = False

    async def call(
        self,
        target: Target,
        fn: Callable[[Driver], T],
        *,
        deadline: float | None = None,
        idempotent: bool = False,
    ) -> T:
        """Return ``fn(driver)`` or raise :class:`BmcError`.

        ``deadline``: seconds from now after which the caller gets a TIMEOUT error, even
        if the BMC or pyghmi hangs; by default enough for every attempt. Each attempt is
        cut off at ``target.timeout`` (plus a little grace) or, with a deadline, at its
        share of what is left of it: ``fn`` may make many IPMI calls (an inventory reads
        FRU, SDR and more), each bounded by ``target.timeout`` in the driver. Pass
        ``idempotent=True`` for reads: failed attempts are then retried with a fresh
        session up to ``target.retries`` times.
        """
        if self._closed:
            raise RuntimeError("the BMC pool is closed")
        loop = asyncio.get_running_loop()
        attempts = 1 + max(0, target.retries) if idempotent else 1
        budget = deadline if deadline is not None else attempts * (target.timeout + _GRACE)
        end = loop.time() + budget
        attempt = 1
        while True:
            try:
                left = end - loop.time()
                limit = (
                    left / (attempts - attempt + 1)
                    if deadline is not None
                    else min(left, target.timeout + _GRACE)
                )
                return await self._attempt(target, fn, end, budget, limit)
            except BmcError as err:
                if attempt >= attempts or err.kind not in _RETRYABLE or loop.time() >= end:
                    raise
                log.info(
                    "BMC %s:%s attempt %d of %d failed (%s); retrying",
                    target.address,
                    target.port,
                    attempt,
                    attempts,
                    err.kind,
                )
                attempt += 1

    def close(self) -> None:
        """Log out of cached sessions and stop taking calls; threads still stuck on a
        hung BMC are left to finish on their own."""
        self._closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)
        with self._idle_lock:
            idle = list(self._idle.values())
            self._idle.clear()
        for entry in idle:
            entry.driver.close()

    async def _attempt(
        self, target: Target, fn: Callable[[Driver], T], end: float, budget: float, limit: float
    ) -> T:
        """One try, given ``limit`` seconds once a worker has started it."""
        loop = asyncio.get_running_loop()
        where = f"{target.address}:{target.port}"
        releases: list[Callable[[], None]] = []

        def release() -> None:
            while releases:
                releases.pop()()

        try:
            async with asyncio.timeout_at(end):
                for gate in (
                    self._sessions[(target.address, target.port, target.username)],
                    self._per_bmc[target.key],
                    self._workers,
                ):
                    await gate.acquire()
                    releases.append(gate.release)
        except TimeoutError:
            release()
            raise BmcError(
                ErrorKind.TIMEOUT,
                f"Gave up after {budget:g} s waiting for a turn to call the BMC at {where}: "
                "an earlier call to it is still running or hung, or all "
                f"{self._max_workers} BMC workers are busy.",
            ) from None
        except BaseException:
            release()
            raise

        ticket = _Ticket()
        future = loop.run_in_executor(self._executor, self._run, target, fn, ticket)
        future.add_done_callback(_settle(release))
        stop = min(end, loop.time() + limit)
        timer = asyncio.timeout_at(stop)
        try:
            async with timer:
                return await asyncio.shield(future)
        except TimeoutError:
            if not timer.expired():
                raise
            ticket.abandon()
            raise BmcError(
                ErrorKind.TIMEOUT,
                f"The BMC at {where} did not complete the call within {limit:.3g} s; it "
                "was abandoned and its session will not be reused. Check that the BMC is "
                "responsive.",
            ) from None
        except asyncio.CancelledError:
            ticket.abandon()
            raise

    def _run(self, target: Target, fn: Callable[[Driver], T], ticket: _Ticket) -> T:
        """In a worker thread: check a driver out, call, then cache or drop it."""
        driver = self._checkout(target)
        with ticket.lock:
            ticket.driver = driver
            abandoned = ticket.abandoned
        if abandoned:  # the caller gave up while we were logging in
            driver.close()
            raise BmcError(ErrorKind.TIMEOUT, "abandoned")
        try:
            result = fn(driver)
        except BaseException:
            driver.close()  # it may be broken or half-way through something
            raise
        with ticket.lock:
            ticket.finished = True
            keep = not ticket.abandoned and not self._closed
            if keep:
                with self._idle_lock:
                    self._idle[(target.address, target.port, target.username)] = _Idle(
                        target, driver
                    )
        if not keep:
            driver.close()
        return result

    def _checkout(self, target: Target) -> Driver:
        with self._idle_lock:
            idle = self._idle.pop((target.address, target.port, target.username), None)
        if idle is not None:
            if _serves(idle, target):
                return idle.driver
            idle.driver.close()  # password, timeout, cipher suite or driver changed
        return self._factory(target)


def _serves(idle: _Idle, target: Target) -> bool:
    """Whether a cached session may serve ``target``: made for the same settings, or for
    the same but the certificate pin, where the pin is the one this session presented
    (pinned on its first contact, and recorded on the node since). Without this, the
    sync after a first contact would log in to every BMC again."""
    if idle.target == target:
        return True
    return (
        idle.target.tls_fingerprint is None
        and target.tls_fingerprint is not None
        and replace(idle.target, tls_fingerprint=target.tls_fingerprint) == target
        and (idle.driver.certificate_fingerprint() or "").lower() == target.tls_fingerprint.lower()
    )


def _settle(release: Callable[[], None]) -> Callable[[asyncio.Future[Any]], None]:
    """Done-callback of a worker's future: free its slots, and mark an error seen; the
    caller may have stopped waiting for it."""

    def done(future: asyncio.Future[Any]) -> None:
        release()
        if not future.cancelled():
            future.exception()

    return done
