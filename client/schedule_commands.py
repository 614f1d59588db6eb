"""`stepflow schedule create | list | pause | unpause | trigger | delete`: Temporal Schedules."""

from __future__ import annotations

import argparse
from datetime import datetime
from typing import Any

from rich.table import Table
from rich.text import Text

from stepflow.client.api import StepflowClient
from stepflow.client.cli_common import (
    EXIT_OK,
    add_input_option,
    err,
    out,
    parse_inputs,
    parse_interval,
)
from stepflow.client.loading import load_spec_file
from stepflow.client.schedules import PipelineSchedules, ScheduleSummary


def _when(value: datetime | None) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _describe(summary: ScheduleSummary) -> str:
    state = "paused" if summary.paused else f"next run {_when(summary.next_run)}"
    return f"schedule {summary.schedule_id}: pipeline {summary.pipeline} {summary.when}; {state}"


async def _schedules() -> PipelineSchedules:
    return PipelineSchedules(await StepflowClient.connect())


async def cmd_create(args: argparse.Namespace) -> int:
    spec = load_spec_file(args.file)
    inputs = parse_inputs(spec, args.input)
    every = parse_interval(args.every) if args.every else None
    schedules = await _schedules()
    summary = await schedules.create(spec, inputs, cron=args.cron, every=every, schedule_id=args.id)
    if args.json:
        out.print_json(data=summary.to_json())
    else:
        out.print(f"created {_describe(summary)}", highlight=False)
        err.print(f"its runs are named {summary.schedule_id}-<time>", highlight=False)
    return EXIT_OK


async def cmd_list(args: argparse.Namespace) -> int:
    found = await (await _schedules()).list_schedules()
    if args.json:
        out.print_json(data=[s.to_json() for s in found])
        return EXIT_OK
    if not found:
        err.print("no pipeline schedules")
        return EXIT_OK
    table = Table(show_edge=False, box=None, pad_edge=False)
    for column in ("schedule id", "pipeline", "when", "state", "next run", "last run"):
        table.add_column(column)
    for s in found:
        table.add_row(
            s.schedule_id,
            s.pipeline or "-",
            s.when,
            Text("paused", style="yellow") if s.paused else Text("active", style="green"),
            "-" if s.paused else _when(s.next_run),
            s.recent_runs[-1] if s.recent_runs else "-",
        )
    out.print(table)
    return EXIT_OK


async def cmd_pause(args: argparse.Namespace) -> int:
    await (await _schedules()).pause(args.schedule_id, args.note)
    out.print(f"paused schedule {args.schedule_id}", highlight=False)
    return EXIT_OK


async def cmd_unpause(args: argparse.Namespace) -> int:
    await (await _schedules()).unpause(args.schedule_id, args.note)
    out.print(f"unpaused schedule {args.schedule_id}", highlight=False)
    return EXIT_OK


async def cmd_trigger(args: argparse.Namespace) -> int:
    await (await _schedules()).trigger(args.schedule_id)
    out.print(f"triggered schedule {args.schedule_id}: a run starts now", highlight=False)
    return EXIT_OK


async def cmd_delete(args: argparse.Namespace) -> int:
    await (await _schedules()).delete(args.schedule_id)
    out.print(f"deleted schedule {args.schedule_id} (runs it started go on)", highlight=False)
    return EXIT_OK


def add_schedule_commands(sub: Any) -> None:
    """Register `schedule ...` on the `stepflow` parser's subparsers."""
    schedule = sub.add_parser("schedule", help="start a pipeline on a cron or an interval")
    actions = schedule.add_subparsers(dest="action", required=True, metavar="ACTION")

    p = actions.add_parser("create", help="check a pipeline file, then schedule it")
    p.add_argument("file")
    when = p.add_mutually_exclusive_group(required=True)
    when.add_argument("--cron", metavar="EXPR", help="e.g. '0 9 * * 1-5' (UTC), @hourly")
    when.add_argument("--every", metavar="DURATION", help="e.g. 30m, 1h, 1d")
    add_input_option(p, "a pipeline input for every run; repeat for more")
    p.add_argument("--id", help="schedule id (default: <pipeline-name>-schedule)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_create)

    p = actions.add_parser("list", help="the pipeline schedules")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_list)

    for name, handler, what in (
        ("pause", cmd_pause, "start no runs until unpaused"),
        ("unpause", cmd_unpause, "start runs again"),
    ):
        p = actions.add_parser(name, help=what)
        p.add_argument("schedule_id", metavar="ID")
        p.add_argument("--note", help="why (shown by `temporal schedule describe`)")
        p.set_defaults(handler=handler)

    for name, handler, what in (
        ("trigger", cmd_trigger, "start a run now"),
        ("delete", cmd_delete, "delete the schedule (its runs go on)"),
    ):
        p = actions.add_parser(name, help=what)
        p.add_argument("schedule_id", metavar="ID")
        p.set_defaults(handler=handler)
