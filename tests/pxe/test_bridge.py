"""The pxe process's API link, against httpx.MockTransport: per-node files, outages
logged once, transfer reports batched through a bounded queue, and the token kept out
of the logs."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from pxe.bridge import ApiBridge
from pxe.tftp import Transfer

TOKEN = "prov_secret-token-never-logged-1234"
API = "http://10.20.0.2:8080"

Handler = Callable[[httpx.Request], httpx.Response]


def bridge(handler: Handler, **tuning: Any) -> ApiBridge:
    return ApiBridge(API, TOKEN, transport=httpx.MockTransport(handler), **tuning)


def transfer(n: int, result: str = "ok") -> Transfer:
    return Transfer("10.20.0.50", 2000 + n, "10.20.0.3", f"file-{n}", 100 * n, 0.25, result)


def refused(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("Connection refused", request=request)


@pytest.fixture(autouse=True)
def _no_token_in_logs(caplog: pytest.LogCaptureFixture) -> Any:
    caplog.set_level(logging.DEBUG)
    yield
    assert TOKEN not in caplog.text


def test_dynamic_file_content_comes_from_the_api() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=b"DEFAULT local\n")

    async def scenario() -> bytes | None:
        async with bridge(handler) as b:
            return await b.dynamic_file("pxelinux.cfg/01-52-54-00-12-34-56", "10.20.0.50")

    assert asyncio.run(scenario()) == b"DEFAULT local\n"
    (request,) = seen
    assert request.method == "GET"
    assert request.url.path == "/boot/tftp/pxelinux.cfg/01-52-54-00-12-34-56"
    assert request.url.params["client"] == "10.20.0.50"
    assert request.headers["authorization"] == f"Bearer {TOKEN}"


def test_unknown_file_is_none() -> None:
    async def scenario() -> bytes | None:
        async with bridge(lambda _: httpx.Response(404, json={"detail": "no"})) as b:
            return await b.dynamic_file("grub/grub.cfg-01-aa", "10.20.0.50")

    assert asyncio.run(scenario()) is None


def test_names_that_climb_out_are_not_asked_for() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=b"x")

    async def scenario() -> list[bytes | None]:
        async with bridge(handler) as b:
            return [
                await b.dynamic_file(name, "10.20.0.50")
                for name in ("../api/v1/nodes", "a/../../x", "a//b", "./x")
            ]

    assert asyncio.run(scenario()) == [None, None, None, None]
    assert seen == []


def test_odd_characters_stay_inside_one_path_segment() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(404)

    async def scenario() -> None:
        async with bridge(handler) as b:
            await b.dynamic_file("a?b#c%d", "10.20.0.50")

    asyncio.run(scenario())
    assert seen[0].url.raw_path.startswith(b"/boot/tftp/a%3Fb%23c%25d?")


def test_api_down_is_none_and_logged_once_per_outage(caplog: pytest.LogCaptureFixture) -> None:
    up = False

    def handler(request: httpx.Request) -> httpx.Response:
        if not up:
            refused(request)
        return httpx.Response(200, content=b"ok")

    async def scenario() -> list[bytes | None]:
        nonlocal up
        async with bridge(handler) as b:
            results = [await b.dynamic_file(f"f{i}", "10.20.0.50") for i in range(50)]
            up = True
            results.append(await b.dynamic_file("f", "10.20.0.50"))
            return results

    results = asyncio.run(scenario())
    assert results == [None] * 50 + [b"ok"]
    warnings = [r.getMessage() for r in caplog.records if r.name == "pxe.bridge"]
    assert len(warnings) == 2, warnings
    assert "failed to supply a TFTP file: Connection refused" in warnings[0]
    assert "answers again (50 requests failed meanwhile)" in warnings[1]


def test_server_errors_are_none() -> None:
    async def scenario() -> bytes | None:
        async with bridge(lambda _: httpx.Response(500)) as b:
            return await b.dynamic_file("f", "10.20.0.50")

    assert asyncio.run(scenario()) is None


def test_reports_are_batched() -> None:
    batches: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/boot/trace/tftp"
        assert request.headers["authorization"] == f"Bearer {TOKEN}"
        batches.append(json.loads(request.content))
        return httpx.Response(202, json={"accepted": 1})

    async def scenario() -> ApiBridge:
        async with bridge(handler, flush_interval=0.05) as b:
            for n in range(250):
                b.observe(transfer(n))
            await asyncio.sleep(0.3)
        return b

    b = asyncio.run(scenario())
    assert [len(batch["transfers"]) for batch in batches] == [100, 100, 50]
    assert batches[0]["transfers"][3] == {
        "client": "10.20.0.50",
        "server": "10.20.0.3",
        "file": "file-3",
        "bytes": 300,
        "duration": 0.25,
        "result": "ok",
    }
    assert (b.sent, b.dropped) == (250, 0)


def test_a_few_reports_go_out_after_the_interval() -> None:
    batches: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        batches.append(json.loads(request.content))
        return httpx.Response(202)

    async def scenario() -> None:
        async with bridge(handler, flush_interval=0.05) as b:
            b.observe(transfer(1, "file not found"))
            await asyncio.sleep(0.2)
            assert len(batches) == 1
            b.observe(transfer(2))
        # Leaving sends what is still queued.

    asyncio.run(scenario())
    assert [t["file"] for batch in batches for t in batch["transfers"]] == ["file-1", "file-2"]
    assert batches[0]["transfers"][0]["result"] == "file not found"


def test_queue_is_bounded_and_drops_the_oldest(caplog: pytest.LogCaptureFixture) -> None:
    posted: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        posted.extend(t["file"] for t in json.loads(request.content)["transfers"])
        return httpx.Response(202)

    async def scenario() -> ApiBridge:
        b = bridge(handler, queue_size=10, batch_size=4)
        for n in range(25):
            b.observe(transfer(n))  # no flusher running: the API is as good as down
        await b.aclose()
        return b

    b = asyncio.run(scenario())
    assert b.dropped == 15
    assert posted == [f"file-{n}" for n in range(15, 25)]


def test_reports_wait_out_an_outage_with_back_off(caplog: pytest.LogCaptureFixture) -> None:
    up = False
    attempts = 0
    posted: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal attempts
        attempts += 1
        if not up:
            refused(request)
        posted.extend(t["file"] for t in json.loads(request.content)["transfers"])
        return httpx.Response(202)

    async def scenario() -> ApiBridge:
        nonlocal up
        async with bridge(handler, flush_interval=0.02, max_backoff=0.1, batch_size=5) as b:
            for n in range(40):
                b.observe(transfer(n))  # would wake the flusher each time
                await asyncio.sleep(0.005)
            failed_attempts = attempts
            up = True
            await asyncio.sleep(0.5)
        # Down for 40 reports, retried at 0.02 s doubling to 0.1 s: a handful of
        # requests (about 6 on an idle machine), not one per report.
        assert 1 <= failed_attempts < 20
        return b

    b = asyncio.run(scenario())
    assert posted == [f"file-{n}" for n in range(40)]
    assert (b.sent, b.dropped) == (40, 0)
    outage = [r.getMessage() for r in caplog.records if "failed to take" in r.getMessage()]
    assert len(outage) == 1


def test_a_refused_token_drops_the_batch_and_says_why(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> ApiBridge:
        b = bridge(lambda _: httpx.Response(401))
        b.observe(transfer(1))
        assert await b.flush() is True
        await b.aclose()
        return b

    b = asyncio.run(scenario())
    assert b.dropped == 1
    assert "give pxe serve an operator token" in caplog.text


def test_shutdown_with_the_api_down_does_not_hang(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with bridge(refused, close_timeout=0.5) as b:
            b.observe(transfer(1))

    asyncio.run(asyncio.wait_for(scenario(), 5))
    assert "1 transfer reports not delivered at shutdown" in caplog.text


def test_observe_never_raises_or_blocks() -> None:
    b = bridge(refused, queue_size=3)
    for n in range(1000):
        b.observe(transfer(n))
    assert b.dropped == 997
    asyncio.run(b.aclose())
