"""The `stepflow` commands that look at and steer runs: status, watch, list, approve, reject,
input, pause, resume, cancel, history, ui.

Each is a thin shell over `StepflowClient`: what it adds is the terminal view
and the exit code. Errors (unknown id, a rejected request) are raised and
become one line on stderr in `client.cli`.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable
from typing import Any

from rich.table import Table
from rich.text import Text

from stepflow.client.api import ControlRejected, StepflowClient
from stepflow.client.cli_common import (
    EXIT_FAILED,
    EXIT_OK,
    UsageError,
    err,
    out,
    parse_value,
    quoting_hint,
)
from stepflow.client.render import format_seconds, print_state
from stepflow.client.runs import LIST_STATUSES, TERMINATED, TIMED_OUT
from stepflow.client.timeline import format_lines
from stepflow.client.watch import watch

CANCEL_WAIT_SECONDS = 10.0
"""How long `stepflow cancel` waits to report how the run ended (it goes on ending after)."""


async def cmd_status(args: argparse.Namespace) -> int:
    client = await StepflowClient.connect()
    summary = await client.describe(args.workflow_id)
    state = await client.status(args.workflow_id)
    if args.json:
        out.print_json(state.model_dump_json())
        return EXIT_OK
    closed_as = summary.status if summary.status in (TERMINATED, TIMED_OUT) else None
    print_state(out, state, client.ui_url(summary.workflow_id, summary.run_id), closed_as)
    return EXIT_OK


async def cmd_watch(args: argparse.Namespace) -> int:
    client = await StepflowClient.connect()
    seen = await watch(client, args.workflow_id, out, interval=args.interval)
    ui_url = client.ui_url(seen.summary.workflow_id, seen.summary.run_id)
    if seen.state is not None:
        closed_as = seen.summary.status if seen.summary.status in (TERMINATED, TIMED_OUT) else None
        print_state(out, seen.state, ui_url, closed_as)
    else:
        out.print(f"run {args.workflow_id} {seen.summary.status}: {seen.problem}")
    return EXIT_OK if seen.succeeded else EXIT_FAILED


async def cmd_list(args: argparse.Namespace) -> int:
    client = await StepflowClient.connect()
    try:
        runs = await client.list_runs(status=args.status, pipeline=args.pipeline, limit=args.limit)
    except ValueError as error:
        raise UsageError(str(error)) from None
    if args.json:
        out.print_json(data=[run.to_json() for run in runs])
        return EXIT_OK
    if not runs:
        err.print("no runs match")
        return EXIT_OK
    table = Table(show_edge=False, box=None, pad_edge=False)
    for column in ("workflow id", "pipeline", "status", "started", "took"):
        table.add_column(column)
    for run in runs:
        took = run.close_time - run.start_time if run.close_time and run.start_time else None
        started = (
            run.start_time.astimezone().strftime("%Y-%m-%d %H:%M:%S") if run.start_time else ""
        )
        table.add_row(
            run.workflow_id,
            run.pipeline or "-",
            Text(run.status, style=_run_style(run.status)),
            started,
            format_seconds(took) if took else "-",
        )
    out.print(table)
    return EXIT_OK


def _run_style(status: str) -> str:
    return {
        "SUCCEEDED": "green",
        "FAILED": "red",
        "WAITING": "magenta",
        "PAUSED": "yellow",
        "RUNNING": "cyan",
    }.get(status, "yellow")


async def _answer(request: Awaitable[str]) -> int:
    """Send one control request; print the run's one-line answer."""
    out.print(await request, markup=False, highlight=False)
    return EXIT_OK


async def cmd_approve(args: argparse.Namespace) -> int:
    client = await StepflowClient.connect()
    return await _answer(client.approve(args.workflow_id, args.step, args.comment))


async def cmd_reject(args: argparse.Namespace) -> int:
    client = await StepflowClient.connect()
    return await _answer(client.reject(args.workflow_id, args.step, args.comment))


async def cmd_input(args: argparse.Namespace) -> int:
    client = await StepflowClient.connect()
    value = parse_value(args.value)
    try:
        return await _answer(client.give_input(args.workflow_id, args.step, value))
    except ControlRejected as error:
        hint = quoting_hint(args.value, str(error))
        if not hint:
            raise
        raise ControlRejected(f"{error}{hint}") from None


async def cmd_pause(args: argparse.Namespace) -> int:
    client = await StepflowClient.connect()
    return await _answer(client.pause(args.workflow_id))


async def cmd_resume(args: argparse.Namespace) -> int:
    client = await StepflowClient.connect()
    return await _answer(client.resume(args.workflow_id))


async def cmd_cancel(args: argparse.Namespace) -> int:
    client = await StepflowClient.connect()
    if args.step:
        if args.terminate or args.reason:
            raise UsageError("--step cancels one step; --terminate and --reason are for the run")
        return await _answer(client.cancel_step(args.workflow_id, args.step, args.comment))
    if args.comment:
        raise UsageError("--comment goes with --step")
    if args.terminate:
        await client.terminate(args.workflow_id, args.reason)
        out.print(f"terminated run {args.workflow_id}", highlight=False)
        return EXIT_OK
    if args.reason:
        raise UsageError("--reason goes with --terminate (a cancel has no reason field)")
    await client.cancel(args.workflow_id)
    try:
        async with asyncio.timeout(CANCEL_WAIT_SECONDS):
            summary = await client.wait_closed(args.workflow_id)
    except TimeoutError:
        out.print(
            f"cancel requested for run {args.workflow_id}; it ends once its running steps "
            f"have stopped (`stepflow watch {args.workflow_id}` follows it)",
            highlight=False,
        )
        return EXIT_OK
    line = f"run {args.workflow_id} {summary.status}"
    try:
        state = await client.status(args.workflow_id)
        done = [r.id for r in state.steps if r.status.value == "SUCCEEDED"]
        line += f"; steps completed: {', '.join(done) if done else 'none'}"
    except ControlRejected:
        pass  # the run ended; what it did is in `stepflow history`
    out.print(line, highlight=False)
    return EXIT_OK


async def cmd_history(args: argparse.Namespace) -> int:
    client = await StepflowClient.connect()
    timeline = await client.history(args.workflow_id)
    if args.json:
        out.print_json(data=[event.to_json() for event in timeline])
        return EXIT_OK
    # A rerun names the run it reran, and a run its reruns: both ways, as the Web UI's.
    summary = await client.describe(args.workflow_id)
    if summary.rerun_of:
        out.print(f"rerun of {summary.rerun_of}", markup=False, highlight=False)
    for rerun in await client.reruns(args.workflow_id):
        out.print(f"rerun as {rerun.workflow_id} ({rerun.status})", markup=False, highlight=False)
    for line in format_lines(timeline):
        out.print(line, markup=False, highlight=False)
    return EXIT_OK


async def cmd_ui(args: argparse.Namespace) -> int:
    client = await StepflowClient.connect()
    summary = await client.describe(args.workflow_id)
    out.print(client.ui_url(summary.workflow_id, summary.run_id), highlight=False)
    return EXIT_OK


def add_control_commands(sub: Any) -> None:
    """Register the commands on the `stepflow` parser's subparsers."""
    p = sub.add_parser("status", help="a run's steps now (the `status` query)")
    p.add_argument("workflow_id", metavar="ID")
    p.add_argument("--json", action="store_true", help="the whole state as JSON")
    p.set_defaults(handler=cmd_status)

    p = sub.add_parser("watch", help="follow a run until it ends (exit code: its outcome)")
    p.add_argument("workflow_id", metavar="ID")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
    p.set_defaults(handler=cmd_watch)

    p = sub.add_parser("list", help="pipeline runs, newest first")
    p.add_argument("--status", type=str.upper, choices=LIST_STATUSES, metavar="STATUS")
    p.add_argument("--pipeline", metavar="NAME", help="runs of this pipeline only")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_list)

    for name, handler, what in (
        ("approve", cmd_approve, "approve a waiting approval step, or a plan step's plan"),
        ("reject", cmd_reject, "reject a waiting approval step or plan (the step fails)"),
    ):
        p = sub.add_parser(name, help=what)
        p.add_argument("workflow_id", metavar="ID")
        p.add_argument("step", metavar="STEP")
        p.add_argument("--comment", "-c", help="kept with the step's record")
        p.set_defaults(handler=handler)

    p = sub.add_parser("input", help="give a waiting input step its value")
    p.add_argument("workflow_id", metavar="ID")
    p.add_argument("step", metavar="STEP")
    p.add_argument(
        "value", metavar="VALUE", help="JSON where it parses (42, true, {...}), else text"
    )
    p.set_defaults(handler=cmd_input)

    for name, handler, what in (
        ("pause", cmd_pause, "start no new step until resumed (running ones finish)"),
        ("resume", cmd_resume, "let a paused run start steps again"),
        ("ui", cmd_ui, "print the run's Web UI link"),
    ):
        p = sub.add_parser(name, help=what)
        p.add_argument("workflow_id", metavar="ID")
        p.set_defaults(handler=handler)

    p = sub.add_parser("cancel", help="cancel a run (running steps are cancelled), or one step")
    p.add_argument("workflow_id", metavar="ID")
    p.add_argument("--step", help="cancel only this step (its on_failure applies)")
    p.add_argument("--comment", "-c", help="with --step: kept with the step's record")
    p.add_argument("--terminate", action="store_true", help="end it at once, no cleanup")
    p.add_argument("--reason", help="why (recorded with --terminate)")
    p.set_defaults(handler=cmd_cancel)

    p = sub.add_parser("history", help="a run's events as a readable timeline")
    p.add_argument("workflow_id", metavar="ID")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_history)
