"""`stepflow watch`: follow a run until it ends.

It polls the `status` query about once a second (a query costs the run
nothing: no history event, no workflow task on the server's books) and asks
Temporal itself whether the run has closed, since a terminated run never gets
to report that it ended. On a terminal the view redraws in place (rich Live);
in a pipe or a log it prints one line per change instead, so the output stays
readable as a log.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from stepflow.client.api import ControlRejected, RunSummary, StepflowClient
from stepflow.client.render import (
    RUN_STYLE,
    STATUS_STYLE,
    counts_line,
    preview,
    state_now,
    status_text,
    steps_table,
)
from stepflow.client.timeline import format_elapsed
from stepflow.workflows.budget import budget_line
from stepflow.workflows.control import PipelineState, RunStatus
from stepflow.workflows.models import StepStatus


@dataclass(frozen=True)
class Seen:
    """One poll: what the run said (None: it could not answer) and what Temporal says."""

    state: PipelineState | None
    summary: RunSummary
    problem: str | None = None

    @property
    def over(self) -> bool:
        return self.summary.closed or (self.state is not None and self.state.finished)

    @property
    def succeeded(self) -> bool:
        if self.summary.closed:  # Temporal's word is final, and needs no worker
            return self.summary.status == RunStatus.SUCCEEDED.value
        return self.state is not None and self.state.status is RunStatus.SUCCEEDED


async def follow(
    client: StepflowClient,
    workflow_id: str,
    show: Callable[[Seen], None],
    interval: float = 1.0,
) -> Seen:
    """Poll until the run ends, calling `show` after every poll; the last poll is returned.

    Raises:
        RunNotFound: no such run (found out by the first poll).
    """
    while True:
        summary = await client.describe(workflow_id)
        try:
            seen = Seen(await client.status(workflow_id), summary)
        except ControlRejected as error:  # no worker yet, say; the run may still go on
            seen = Seen(None, summary, str(error))
        show(seen)
        if seen.over:
            return seen
        await asyncio.sleep(interval)


class ChangeLines:
    """`show` for pipes and logs: a line whenever a step's (or the run's) status changes."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.seen: dict[str, str] = {}
        self.problem: str | None = None

    def __call__(self, seen: Seen) -> None:
        if seen.problem and seen.problem != self.problem:
            self.console.print(Text(f"(no answer yet: {seen.problem})", style="dim"))
        self.problem = seen.problem
        state = seen.state
        if state is None:
            return
        width = max(len(r.id) for r in state.steps)
        for record in state.steps:
            text = status_text(record)
            # A loop's next iteration is a new child run: worth a line of its own.
            key = f"{text} {record.child}" if record.child else text
            if self.seen.get(record.id, StepStatus.PENDING.value) != key:
                when = record.ended_at or (
                    record.started_at if record.status is StepStatus.RUNNING else None
                )
                since = (when or state.as_of) - state.started_at
                line = Text(f"{'+' + format_elapsed(since):>9}  {record.id:<{width}}  ")
                line.append(text, style=STATUS_STYLE[record.status])
                if record.status is StepStatus.WAITING and record.message:
                    line.append(f": {preview(record.message, 90)}")
                elif record.error and record.status is not StepStatus.SUCCEEDED:
                    line.append(f": {record.error}", style="dim")
                if record.child and record.status in (StepStatus.RUNNING, StepStatus.RETRYING):
                    line.append(f"  child {record.child}", style="dim")
                self.console.print(line)
            self.seen[record.id] = key
        run = seen.summary.status if seen.summary.closed else state.status.value
        if self.seen.get("\0run", RunStatus.RUNNING.value) != run:
            took = format_elapsed(state.as_of - state.started_at)
            self.console.print(Text(f"{'+' + took:>9}  {'run':<{width}}  {run}", style="bold"))
        self.seen["\0run"] = run
        self._budget(state, width)

    def _budget(self, state: PipelineState, width: int) -> None:
        """The spend against the run's budget: once it ran out, and when the run ends."""
        if state.budget is None:
            return
        key = "spent" if state.budget.exceeded else "ended" if state.finished else None
        if key is None or self.seen.get("\0budget") in (key, "ended"):
            return
        took = format_elapsed(state.as_of - state.started_at)
        line = Text(f"{'+' + took:>9}  {'run':<{width}}  ")
        line.append(budget_line(state.budget), style="yellow" if state.budget.exceeded else "dim")
        self.console.print(line)
        self.seen["\0budget"] = key


def live_view(seen: Seen) -> Group:
    """`show` for terminals: the steps table and a footer, redrawn in place."""
    state = seen.state
    if state is None:
        return Group(Text(f"{seen.summary.workflow_id}: {seen.problem}", style="dim"))
    table = steps_table(state.pipeline, state.steps, now=state_now(state))
    took = format_elapsed(state_now(state) - state.started_at)
    footer = Text(f"{state.status.value}", style=RUN_STYLE[state.status])
    footer.append(f" · {took} · {counts_line(state)}", style="dim")
    if state.budget is not None:
        style = "yellow" if state.budget.exceeded else "dim"
        footer.append(f" · {budget_line(state.budget)}", style=style)
    if not seen.over:
        footer.append(" · Ctrl-C stops watching; the run goes on", style="dim")
    return Group(table, footer)


async def watch(
    client: StepflowClient, workflow_id: str, console: Console, interval: float = 1.0
) -> Seen:
    """Follow the run on `console` (live on a terminal, change lines elsewhere) until it ends."""
    if not console.is_terminal:
        return await follow(client, workflow_id, ChangeLines(console), interval)
    with Live(console=console, refresh_per_second=4, transient=True) as live:
        return await follow(client, workflow_id, lambda s: live.update(live_view(s)), interval)
