"""A live view of nodes working towards a state, for ``--wait`` and the demo.

Polls the API (the reconciler does the work; the CLI only watches) and shows a count per
state and the nodes still on their way: redrawn on a terminal, one line per change
elsewhere. Ends when every node reached the goal or failed; failures are listed with
their last error.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from provisioner.cli.client import ApiClient, CliError, path_segment
from provisioner.cli.output import STATE_STYLES, cell, console, state_text
from provisioner.text import printable

Fetch = Callable[[], list[dict[str, Any]]]
# Shown individually while not done: more would scroll the counts off the screen.
_ROWS = 12


def by_rack(client: ApiClient, rack: str) -> Fetch:
    def fetch() -> list[dict[str, Any]]:
        nodes: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            params: dict[str, str | int] = {"rack": rack, "limit": 1000}
            if cursor:
                params["cursor"] = cursor
            page = client.get("/nodes", params=params)
            nodes.extend(page["items"])
            cursor = page["next_cursor"]
            if not cursor:
                return nodes

    return fetch


def by_name(client: ApiClient, names: list[str]) -> Fetch:
    return lambda: [client.get(f"/nodes/{path_segment(name)}") for name in names]


def watch(fetch: Fetch, goal: str, title: str, timeout: float, interval: float = 1.0) -> None:
    """Show progress until every node is ``goal`` or failed; raise :class:`CliError`
    naming the failed (or, at the timeout, the unfinished) nodes.

    On a terminal the view is redrawn in place; elsewhere (a log file, a pipe, CI) each
    change is one plain line as it happens, so that the log tells the story without
    control sequences."""
    deadline = time.monotonic() + timeout
    out = console()
    started = time.monotonic()
    if out.is_terminal:
        with Live(console=out, refresh_per_second=4) as live:
            nodes = _poll(
                fetch,
                goal,
                deadline,
                timeout,
                interval,
                lambda nodes: live.update(_view(nodes, goal, title, time.monotonic() - started)),
            )
    else:
        lines = _Lines(title, started)
        nodes = _poll(fetch, goal, deadline, timeout, interval, lines.update)
    failed = [n for n in nodes if n["state"] == "failed"]
    if failed:
        raise CliError(
            f"{len(failed)} of {len(nodes)} node(s) failed: "
            + "; ".join(
                f"{n['name']}: {n.get('last_error') or 'no error recorded'}" for n in failed
            )
        )
    out.print(f"all {len(nodes)} node(s) {goal} in {time.monotonic() - started:.0f} s")


def _poll(
    fetch: Fetch,
    goal: str,
    deadline: float,
    timeout: float,
    interval: float,
    show: Callable[[list[dict[str, Any]]], None],
) -> list[dict[str, Any]]:
    while True:
        nodes = fetch()
        show(nodes)
        if all(n["state"] in (goal, "failed") for n in nodes):
            return nodes
        if time.monotonic() > deadline:
            stuck = [n for n in nodes if n["state"] not in (goal, "failed")]
            raise CliError(
                f"{len(stuck)} node(s) not {goal} after {timeout:.0f} s: "
                + "; ".join(
                    f"{n['name']} ({n['state']}, last error: {n.get('last_error') or 'none'})"
                    for n in stuck[:20]
                )
            )
        time.sleep(interval)


class _Lines:
    """Progress as lines: the counts once, then a line for each node that changed state
    (with its last error when it failed)."""

    def __init__(self, title: str, started: float) -> None:
        self.title = title
        self.started = started
        self.states: dict[str, str] = {}

    def update(self, nodes: list[dict[str, Any]]) -> None:
        elapsed = f"{time.monotonic() - self.started:4.0f} s"
        if not self.states:
            counts = Counter(n["state"] for n in nodes)
            summary = ", ".join(f"{count} {state}" for state, count in sorted(counts.items()))
            self._echo(f"{elapsed}  {self.title}: {len(nodes)} node(s), {summary}")
        else:
            for node in nodes:
                before, now = self.states.get(node["name"]), node["state"]
                if before == now:
                    continue
                change = f"{before} -> {now}" if before else now
                why = f" ({node.get('last_error') or 'no error recorded'})"
                self._echo(f"{elapsed}  {node['name']}: {change}{why if now == 'failed' else ''}")
        self.states = {n["name"]: n["state"] for n in nodes}

    @staticmethod
    def _echo(line: str) -> None:
        # echo flushes: a reader of the log sees each line when it happens.
        typer.echo(printable(line))


def _view(nodes: list[dict[str, Any]], goal: str, title: str, elapsed: float) -> Group:
    counts = Counter(n["state"] for n in nodes)
    summary = Text(printable(f"{title}  {elapsed:4.0f} s   "))
    for state, count in sorted(counts.items(), key=lambda item: item[0] != goal):
        summary.append(printable(f"{state} {count}  "), style=STATE_STYLES.get(state, ""))
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("NODE", "STATE", "POWER", "LAST ERROR"):
        table.add_column(column)
    working = [n for n in nodes if n["state"] != goal]
    for node in working[:_ROWS]:
        table.add_row(
            cell(node["name"]),
            state_text(node["state"]),
            cell(node.get("power_state")),
            cell(node.get("last_error"), "red"),
        )
    if len(working) > _ROWS:
        table.add_row(Text(f"... and {len(working) - _ROWS} more", style="dim"), "", "", "")
    return Group(summary, table)
