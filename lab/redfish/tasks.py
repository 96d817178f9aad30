"""Asynchronous operations of one BMC (TaskService): an accepted action becomes a task,
answered 202 with its task monitor; the work runs when the task completes, a while
later, on the serving event loop. A task started with no work (the ``task-hang`` fault)
stays Running for ever. Completed tasks are kept up to a limit, the oldest overwritten
first.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from lab.redfish.odata import ROOT, Json, resource

MAX_TASKS = 32
TASKS = f"{ROOT}/TaskService/Tasks"
MONITORS = f"{ROOT}/TaskService/TaskMonitors"

log = logging.getLogger(__name__)


@dataclass
class Task:
    ident: str
    name: str
    started: datetime
    state: str = "Running"  # Redfish TaskState: Running, Completed, Exception
    ended: datetime | None = None
    messages: list[Json] = field(default_factory=list)

    @property
    def path(self) -> str:
        return f"{TASKS}/{self.ident}"

    @property
    def monitor(self) -> str:
        return f"{MONITORS}/{self.ident}"

    @property
    def running(self) -> bool:
        return self.state == "Running"

    def payload(self) -> Json:
        fields: Json = {
            "TaskState": self.state,
            "TaskStatus": "Critical" if self.state == "Exception" else "OK",
            "StartTime": _timestamp(self.started),
            "PercentComplete": 0 if self.running else 100,
            "TaskMonitor": self.monitor,
            "Messages": self.messages,
        }
        if self.ended is not None:
            fields["EndTime"] = _timestamp(self.ended)
        return resource(self.path, "Task", self.ident, self.name, **fields)


class Tasks:
    def __init__(self, limit: int = MAX_TASKS) -> None:
        self._tasks: dict[str, Task] = {}
        self._limit = limit
        self._counter = 0

    def ids(self) -> list[str]:
        return list(self._tasks)

    def get(self, ident: str) -> Task | None:
        return self._tasks.get(ident)

    def start(self, name: str, work: Callable[[], None] | None, delay: float) -> Task:
        """A running task that does ``work`` in ``delay`` seconds and then completes;
        without work it never completes. Called on the serving event loop."""
        done = [t for t in self._tasks.values() if not t.running]
        if len(self._tasks) >= self._limit and done:
            del self._tasks[done[0].ident]
        self._counter += 1
        task = Task(str(self._counter), name, datetime.now(UTC))
        self._tasks[task.ident] = task
        if work is not None:
            asyncio.get_running_loop().call_later(delay, self._finish, task, work)
        return task

    def _finish(self, task: Task, work: Callable[[], None]) -> None:
        try:
            work()
        except Exception as exc:  # the task reports it, as a BMC's would
            log.exception("task %s failed", task.ident)
            task.state = "Exception"
            task.messages.append({"MessageId": "Base.1.8.GeneralError", "Message": str(exc)})
        else:
            task.state = "Completed"
        task.ended = datetime.now(UTC)


def _timestamp(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")
