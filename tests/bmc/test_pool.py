"""BmcPool: bounds, deadlines, retries and session reuse, against the real fixture BMC
(tests/bmc/conftest.py) and, where exact concurrency is measured, the fake driver."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from provisioner.bmc import (
    BmcError,
    BmcPool,
    BootDevice,
    BootSetting,
    Driver,
    ErrorKind,
    PowerAction,
    Target,
)
from provisioner.bmc.fake import FakeDriver, FakeFleet

TargetFor = Callable[..., Target]


def power_state(driver: Driver) -> str:
    return driver.power_state()


async def _fails(kind: ErrorKind, call: Any) -> tuple[BmcError, float]:
    started = time.monotonic()
    with pytest.raises(BmcError) as info:
        await call
    assert info.value.kind is kind, str(info.value)
    return info.value, time.monotonic() - started


# --- against the fixture BMC over UDP ----------------------------------------------


def test_calls_reuse_one_session(pool: BmcPool, bmc: Any, target_for: TargetFor) -> None:
    target = target_for(bmc)

    async def scenario() -> None:
        await pool.call(target, lambda d: d.set_power(PowerAction.ON))
        assert await pool.call(target, power_state, idempotent=True) == "on"
        assert await pool.call(target, power_state, idempotent=True) == "on"

    asyncio.run(scenario())
    assert bmc.logins == 1


def test_session_is_discarded_after_an_error(
    pool: BmcPool, bmc: Any, target_for: TargetFor
) -> None:
    target = target_for(bmc)

    async def scenario() -> None:
        await pool.call(target, power_state)
        await _fails(ErrorKind.UNSUPPORTED, pool.call(target, lambda d: d.health()))
        await pool.call(target, power_state)

    asyncio.run(scenario())
    assert bmc.logins == 2


def test_unreachable_after_bounded_retries(
    pool: BmcPool, bmc: Any, target_for: TargetFor, free_port: int
) -> None:
    target = target_for(bmc, port=free_port, timeout=0.5, retries=2)
    err, elapsed = asyncio.run(
        _fails(ErrorKind.UNREACHABLE, pool.call(target, power_state, idempotent=True))
    )
    assert 1.5 <= elapsed < target.timeout * (target.retries + 1) + 1
    assert "check the address, the port and that IPMI over LAN is enabled" in str(err)


def test_wrong_password_is_not_retried(pool: BmcPool, bmc: Any, target_for: TargetFor) -> None:
    target = target_for(bmc, password="wrong-one", retries=3)
    err, elapsed = asyncio.run(
        _fails(ErrorKind.AUTH, pool.call(target, power_state, idempotent=True))
    )
    assert elapsed < 1.0
    assert bmc.logins == 1
    assert "wrong-one" not in str(err)


def test_unknown_user_on_a_silent_bmc_stops_within_the_deadline(
    pool: BmcPool, bmc: Any, target_for: TargetFor
) -> None:
    target = target_for(bmc, username="nobody", timeout=5.0, retries=0)
    _, elapsed = asyncio.run(
        _fails(ErrorKind.TIMEOUT, pool.call(target, power_state, deadline=1.0))
    )
    assert elapsed < 1.3


def test_deadline_holds_against_a_hung_bmc(pool: BmcPool, bmc: Any, target_for: TargetFor) -> None:
    target = target_for(bmc, timeout=5.0)

    async def scenario() -> tuple[BmcError, float]:
        await pool.call(target, power_state)  # logged in
        bmc.hang = True
        return await _fails(ErrorKind.TIMEOUT, pool.call(target, power_state, deadline=0.5))

    err, elapsed = asyncio.run(scenario())
    assert elapsed < 0.8
    assert "will not be reused" in str(err)


def test_a_hung_bmc_does_not_delay_other_bmcs(
    make_bmc: Callable[[], Any], target_for: TargetFor
) -> None:
    hung = make_bmc()
    # Logins get 10 s and a retry, as the service's reads do: 20 of them against BMCs
    # served by this process's own threads can take longer than the fixture's 2 s on a
    # loaded machine, and how fast they go is not what is measured.
    healthy = [target_for(make_bmc(), timeout=10.0) for _ in range(20)]
    pool = BmcPool(max_workers=8)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        answered: list[float] = []
        given_up: list[float] = []

        async def read(target: Target) -> str:
            state = await pool.call(target, power_state, deadline=60.0, idempotent=True)
            answered.append(loop.time())
            return state

        hung.hang = True
        # Retried, the hung BMC is tried for about 20 s (pyghmi gives up a login after
        # about 5 s): time enough for a loaded machine's first healthy answer.
        hung_target = target_for(hung, timeout=60.0, retries=3)
        stuck = asyncio.create_task(pool.call(hung_target, power_state, idempotent=True))
        stuck.add_done_callback(lambda _: given_up.append(loop.time()))
        await asyncio.sleep(0.05)
        assert await asyncio.gather(*(read(t) for t in healthy)) == ["off"] * 20
        stuck.cancel()  # if it is still being tried
        with contextlib.suppress(asyncio.CancelledError, BmcError):
            await stuck
        # Healthy BMCs answered while the hung one's login was still waiting. A hung
        # BMC blocking pyghmi's shared I/O, or taking every worker, would hold them all
        # until it was given up.
        assert min(answered) < given_up[0]

    try:
        asyncio.run(scenario())
    finally:
        pool.close()


# --- exact bounds, with the fake driver ---------------------------------------------


class _InFlight:
    """Counts calls running at once, overall and per BMC port."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now: Counter[int] = Counter()
        self.peak: Counter[int] = Counter()
        self.total = 0
        self.peak_total = 0

    def work(self, port: int, seconds: float = 0.05) -> Callable[[Driver], None]:
        def fn(driver: Driver) -> None:
            with self.lock:
                self.now[port] += 1
                self.total += 1
                self.peak[port] = max(self.peak[port], self.now[port])
                self.peak_total = max(self.peak_total, self.total)
            time.sleep(seconds)
            with self.lock:
                self.now[port] -= 1
                self.total -= 1

        return fn


def _target(port: int, username: str = "admin", **kw: Any) -> Target:
    return Target("10.0.0.1", username, "admin", port=port, timeout=2.0, **kw)


def test_blocking_calls_leave_the_event_loop_free() -> None:
    # The fake driver: what is measured is where calls run, not how fast a loaded machine
    # logs in to ten BMCs (real logins run on the same worker threads, see _run).
    fleet = FakeFleet()
    for port in range(1000, 1010):
        fleet.add("10.0.0.1", port=port)
    pool = BmcPool(max_workers=32, driver_factory=fleet.driver)
    sleeps: list[tuple[float, float]] = []

    def block(driver: Driver) -> None:
        started = time.monotonic()
        time.sleep(0.2)
        sleeps.append((started, time.monotonic()))

    async def scenario() -> list[float]:
        ticks: list[float] = []

        async def ticker() -> None:
            while True:
                await asyncio.sleep(0.005)
                ticks.append(time.monotonic())

        tick = asyncio.create_task(ticker())
        await asyncio.gather(*(pool.call(_target(p), block) for p in range(1000, 1010)))
        tick.cancel()
        return ticks

    ticks = asyncio.run(scenario())
    pool.close()
    # Calls run on the loop would leave no tick inside any of their sleeps; how many land
    # there depends on how busy the machine is, so one is the proof.
    assert len(sleeps) == 10
    assert any(start < t < end for t in ticks for start, end in sleeps)


def test_calls_to_one_bmc_run_one_at_a_time() -> None:
    fleet = FakeFleet()
    fleet.add("10.0.0.1", port=1000)
    pool = BmcPool(max_workers=16, driver_factory=fleet.driver)
    seen = _InFlight()

    async def scenario() -> None:
        await asyncio.gather(*(pool.call(_target(1000), seen.work(1000)) for _ in range(6)))

    asyncio.run(scenario())
    pool.close()
    assert seen.peak[1000] == 1


def test_per_bmc_bound_lets_two_users_overlap_but_no_more() -> None:
    fleet = FakeFleet()
    users = {f"user{i}": "admin" for i in range(4)}
    fleet.add("10.0.0.1", port=1000, users=users)
    pool = BmcPool(max_workers=16, per_bmc=2, driver_factory=fleet.driver)
    seen = _InFlight()

    async def scenario() -> None:
        await asyncio.gather(
            *(pool.call(_target(1000, username=u), seen.work(1000, 0.1)) for u in list(users) * 2)
        )

    asyncio.run(scenario())
    pool.close()
    assert seen.peak[1000] == 2


def test_global_bound() -> None:
    fleet = FakeFleet()
    for port in range(1000, 1012):
        fleet.add("10.0.0.1", port=port)
    pool = BmcPool(max_workers=4, driver_factory=fleet.driver)
    seen = _InFlight()

    async def scenario() -> None:
        await asyncio.gather(*(pool.call(_target(p), seen.work(p)) for p in range(1000, 1012)))

    asyncio.run(scenario())
    pool.close()
    assert seen.peak_total == 4


def test_an_abandoned_session_is_closed_and_never_reused() -> None:
    fleet = FakeFleet()
    bmc = fleet.add("10.0.0.1", port=1000)
    drivers: list[FakeDriver] = []

    def factory(target: Target) -> Driver:
        drivers.append(fleet.driver(target))
        return drivers[-1]

    pool = BmcPool(driver_factory=factory)

    async def scenario() -> None:
        await pool.call(_target(1000), power_state)
        bmc.delay = 0.6
        _, elapsed = await _fails(
            ErrorKind.TIMEOUT, pool.call(_target(1000), power_state, deadline=0.2)
        )
        assert elapsed < 0.4
        bmc.delay = 0
        # The next call waits for the stuck one to end, then logs in afresh.
        assert await pool.call(_target(1000), power_state, deadline=2.0) == "off"

    asyncio.run(scenario())
    pool.close()
    assert bmc.logins == 2
    assert drivers[0].closed


def test_only_idempotent_calls_are_retried() -> None:
    fleet = FakeFleet()
    bmc = fleet.add("10.0.0.1", port=1000)
    pool = BmcPool(driver_factory=fleet.driver)
    target = _target(1000, retries=2)

    async def scenario() -> None:
        bmc.fail("power_state", ErrorKind.UNREACHABLE, times=2)
        assert await pool.call(target, power_state, idempotent=True) == "off"
        bmc.fail("set_power", ErrorKind.TIMEOUT)
        await _fails(ErrorKind.TIMEOUT, pool.call(target, lambda d: d.set_power(PowerAction.ON)))
        bmc.fail("power_state", ErrorKind.UNSUPPORTED)
        await _fails(ErrorKind.UNSUPPORTED, pool.call(target, power_state, idempotent=True))

    asyncio.run(scenario())
    pool.close()
    assert bmc.calls.count("power_state") == 4
    assert bmc.calls.count("set_power") == 1


def test_changed_credentials_replace_the_cached_session() -> None:
    fleet = FakeFleet()
    bmc = fleet.add("10.0.0.1", port=1000)
    pool = BmcPool(driver_factory=fleet.driver)

    async def scenario() -> None:
        await pool.call(_target(1000), power_state)
        bmc.users["admin"] = "new"
        await _fails(
            ErrorKind.AUTH, pool.call(Target("10.0.0.1", "admin", "bad", port=1000), power_state)
        )
        await pool.call(Target("10.0.0.1", "admin", "new", port=1000), power_state)

    asyncio.run(scenario())
    pool.close()
    assert bmc.logins == 2


def test_a_closed_pool_logs_out_and_refuses_calls() -> None:
    fleet = FakeFleet()
    fleet.add("10.0.0.1", port=1000)
    drivers: list[FakeDriver] = []

    def factory(target: Target) -> Driver:
        drivers.append(fleet.driver(target))
        return drivers[-1]

    pool = BmcPool(driver_factory=factory)
    asyncio.run(pool.call(_target(1000), power_state))
    pool.close()
    assert drivers[0].closed
    with pytest.raises(RuntimeError):
        asyncio.run(pool.call(_target(1000), power_state))


def test_fake_bmc_boots_from_a_one_time_override_once() -> None:
    fleet = FakeFleet()
    bmc = fleet.add("10.0.0.1", port=1000)
    pool = BmcPool(driver_factory=fleet.driver)

    async def scenario() -> None:
        t = _target(1000)
        await pool.call(t, lambda d: d.set_boot_device(BootSetting(BootDevice.NETWORK)))
        await pool.call(t, lambda d: d.set_power(PowerAction.ON))
        await pool.call(t, lambda d: d.set_power(PowerAction.CYCLE))

    asyncio.run(scenario())
    pool.close()
    assert bmc.boots == [BootDevice.NETWORK, BootDevice.DEFAULT]
