"""Database outages, told apart from other failures and logged once each.

While the database is down, every background loop of a replica (reconciler ticks, lease
renewals, power-sync rounds, webhook rounds, the boot-hop writer) and many requests fail,
several times a second. A traceback for each would bury the one fact that matters (the
database is unreachable, since when, and when it came back) and fill the disk during a
long outage. So a process keeps one :class:`Outage` per engine (:func:`of`): the first
failure to reach the database is logged as one line and the rest are only counted, until
something reaches it again, which is logged as one line too. Any other exception is a bug
or a bad row, not the weather: it is logged with its traceback every time.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psycopg
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

log = logging.getLogger(__name__)

# Characters of the driver's message an outage line quotes.
_REASON = 200
_SERVER_GONE = frozenset({"57P01", "57P02", "57P03"})
_SQLITE_UNAVAILABLE = ("database is locked", "unable to open database")


def unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database cannot be reached (refused, cut, shutting
    down, starting up), as opposed to an error of the statement or the transaction
    (a deadlock, a constraint, a missing table), which is worth a traceback."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True  # SQLAlchemy found the connection dead
    driver = exc.orig if isinstance(exc, DBAPIError) else exc
    if isinstance(driver, psycopg.OperationalError):
        # No SQLSTATE: the server never answered (refused, cut); class 08 is the
        # connection's; 57P01-57P03: shutting down, crashed, not yet accepting.
        state = driver.sqlstate
        return state is None or state.startswith("08") or state in _SERVER_GONE
    if isinstance(driver, sqlite3.OperationalError):
        # The file is locked past the busy timeout, or cannot be opened.
        return any(words in str(driver) for words in _SQLITE_UNAVAILABLE)
    return False


def reason(exc: BaseException) -> str:
    """The driver's own first line: SQLAlchemy's message would add the statement and
    its parameters, which may hold secrets (token hashes, BMC passwords encrypted)."""
    driver = exc.orig if isinstance(exc, DBAPIError) else exc
    text = str(driver).strip().splitlines()
    first = text[0] if text else type(driver).__name__
    return first if len(first) <= _REASON else first[:_REASON] + "..."


class Outage:
    """Whether the database answered the last time this process tried, and since when
    it has not. Thread-safe: loops report from the event loop, steps from worker
    threads."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._since: float | None = None  # when the first failure of this outage was
        self._failures = 0  # failures reported in this outage
        self.outages = 0  # since the process started

    @property
    def down(self) -> bool:
        return self._since is not None

    def failed(self, doing: str, exc: BaseException) -> None:
        """``doing`` (what failed, for the log) raised ``exc``: the first failure of an
        outage is logged, later ones are counted; any other error is logged with its
        traceback."""
        if not unreachable(exc):
            log.error("%s failed", doing, exc_info=exc)
            return
        with self._lock:
            first = self._since is None
            if first:
                self._since = self._clock()
                self._failures = 0
                self.outages += 1
            self._failures += 1
        if first:
            log.error(
                "database unreachable: %s (%s); further failures are not logged until "
                "it answers again",
                reason(exc),
                doing,
            )

    def answered(self) -> None:
        """Something reached the database: ends an outage, if there was one."""
        if self._since is None:  # the common case, without the lock
            return
        with self._lock:
            since, failures, self._since = self._since, self._failures, None
        if since is not None:
            log.warning(
                "database reachable again after %.1f s (%d failures meanwhile)",
                self._clock() - since,
                failures,
            )

    @contextmanager
    def watch(self, doing: str) -> Iterator[None]:
        """Run the block as one round of a loop that must outlive any failure: an
        exception is reported (:meth:`failed`) and goes no further; a block that ends
        normally reached the database (:meth:`answered`). Only for blocks that always
        ask the database something."""
        try:
            yield
        except Exception as exc:
            self.failed(doing, exc)
        else:
            self.answered()


_outages: weakref.WeakKeyDictionary[Engine, Outage] = weakref.WeakKeyDictionary()
_outages_lock = threading.Lock()


def of(engine: Engine) -> Outage:
    """The :class:`Outage` of ``engine``'s database in this process. One per engine, not
    one per process: a replica has one engine, which its loops and requests share, and
    the many apps of a test run, each with its own engine, do not share one."""
    with _outages_lock:
        outage = _outages.get(engine)
        if outage is None:
            outage = _outages[engine] = Outage()
        return outage
