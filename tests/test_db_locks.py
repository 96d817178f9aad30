"""The advisory locks replicas share work by (:mod:`provisioner.db`), between engines as
between processes: each engine has its own connections, as each replica has."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import Engine

from provisioner import db


def _engines(database_url: str, count: int) -> list[Engine]:
    if not database_url.startswith("postgresql"):
        pytest.skip("advisory locks are PostgreSQL's; SQLite serves one process")
    return [db.make_engine(database_url) for _ in range(count)]


def test_one_at_a_time_runs_the_blocks_of_two_replicas_one_after_the_other(
    database_url: str,
) -> None:
    engines = _engines(database_url, 2)
    seen: list[tuple[str, int]] = []

    async def block(index: int, start_after: float) -> None:
        await asyncio.sleep(start_after)
        async with db.one_at_a_time(engines[index], "test:one-at-a-time"):
            seen.append(("in", index))
            await asyncio.sleep(0.3)
            seen.append(("out", index))

    async def both() -> None:
        await asyncio.gather(block(0, 0), block(1, 0.05))

    try:
        asyncio.run(both())
    finally:
        for engine in engines:
            engine.dispose()
    first, second = seen[0][1], seen[2][1]
    assert seen == [("in", first), ("out", first), ("in", second), ("out", second)], seen
    assert {first, second} == {0, 1}


def test_one_at_a_time_is_free_again_after_a_block_that_raised(database_url: str) -> None:
    engines = _engines(database_url, 2)

    async def failing() -> None:
        async with db.one_at_a_time(engines[0], "test:raised"):
            raise RuntimeError("the block failed")

    async def then() -> str:
        async with db.one_at_a_time(engines[1], "test:raised"):
            return "entered"

    try:
        with pytest.raises(RuntimeError):
            asyncio.run(failing())
        assert asyncio.run(asyncio.wait_for(then(), 10)) == "entered"
    finally:
        for engine in engines:
            engine.dispose()


def test_only_one_lets_one_replica_in_and_the_other_past(database_url: str) -> None:
    engines = _engines(database_url, 2)
    held: list[bool] = []

    async def both() -> None:
        async with db.only_one(engines[0], "test:only-one") as first:
            held.append(first)
            async with db.only_one(engines[1], "test:only-one") as second:
                held.append(second)

    try:
        asyncio.run(both())
    finally:
        for engine in engines:
            engine.dispose()
    assert held == [True, False]
