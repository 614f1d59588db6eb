"""The `stepflow` command.

    stepflow validate FILE
    stepflow run FILE [--input NAME=VALUE ...] [--id ID] [--no-wait] [--json] [--no-cache]
    stepflow rerun ID (--from STEP | --from-failed) [--file FILE] [--input ...] [--id ID]
                                                [--no-wait] [--json]   reuse what ran before STEP
    stepflow result ID [--json]
    stepflow status ID [--json]                 the run's steps now
    stepflow watch ID                           follow it until it ends
    stepflow list [--status S] [--pipeline P] [--json]
    stepflow approve ID STEP [--comment C]      approval steps
    stepflow reject ID STEP [--comment C]
    stepflow input ID STEP VALUE                input steps (VALUE: JSON, else text)
    stepflow pause ID | resume ID
    stepflow cancel ID [--terminate [--reason R]] | cancel ID --step STEP [--comment C]
    stepflow history ID [--json]                a readable timeline of its events
    stepflow ui ID                              its Web UI link
    stepflow schedule create FILE (--cron EXPR | --every DURATION) [--input ...] [--id ID]
    stepflow schedule list | pause ID | unpause ID | trigger ID | delete ID
    stepflow tools [--json]
    stepflow dev start | stop | status
    stepflow payloads prune [--older-than 30d] [--dry-run] [--json]   clean the local store
    stepflow cache prune [--dry-run] [--json]    remove expired results from the local cache
    stepflow codec-server [--port 8081] [--origin URL]   decrypt runs for the Web UI

Every command that talks to Temporal connects per TEMPORAL_* settings and the
TOML config file; `stepflow --profile NAME COMMAND` picks its profile (as
TEMPORAL_PROFILE does).

Exit codes: 0 succeeded, 1 the pipeline failed (or, for `watch`, was
cancelled), 2 bad input or usage: an unknown id, a request the run refused
(anything that kept the command from doing its job), with one clear line.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import importlib.metadata
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from pydantic import ValidationError
from pydantic_settings import SettingsError
from rich.markup import escape
from temporalio.service import RPCError

from stepflow.activities.registry import load_tool_modules
from stepflow.client.api import (
    ControlRejected,
    PipelineError,
    PipelineRun,
    RunAlreadyStarted,
    RunNotFound,
    StepflowClient,
)
from stepflow.client.cli_common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    add_input_option,
    err,
    out,
    parse_inputs,
)
from stepflow.client.codec_command import add_codec_server_command
from stepflow.client.control_commands import add_control_commands
from stepflow.client.loading import (
    check_spec,
    load_spec_file,
    model_warnings,
    pipeline_json_schema,
)
from stepflow.client.payloads_command import add_payloads_command
from stepflow.client.render import print_result
from stepflow.client.rerun import RerunRefused, read_input
from stepflow.client.schedule_commands import add_schedule_commands
from stepflow.client.schedules import ScheduleError, ScheduleNotFound
from stepflow.client.unserved import warn_while_unserved
from stepflow.client.watch import watch
from stepflow.runtime import devserver, exit_now
from stepflow.runtime.connection import ConnectionFailed
from stepflow.runtime.encryption import EncryptionError
from stepflow.runtime.logging import configure_logging
from stepflow.runtime.payload_storage import PayloadStoreError
from stepflow.runtime.routing import explain_settings_error
from stepflow.runtime.settings import get_settings
from stepflow.workflows.models import PipelineResult, PipelineSpec, PipelineStatus
from stepflow.workflows.validation import SpecError, resolve_inputs


def _result_exit(result: PipelineResult) -> int:
    return EXIT_OK if result.status is PipelineStatus.SUCCEEDED else EXIT_FAILED


def _show(result: PipelineResult, as_json: bool) -> int:
    if as_json:
        out.print_json(result.model_dump_json())
    else:
        print_result(out, result)
    return _result_exit(result)


def _warn(spec: PipelineSpec, where: str) -> None:
    for warning in model_warnings(spec):
        err.print(f"{where}: warning: {warning}", markup=False, highlight=False)


async def cmd_validate(args: argparse.Namespace) -> int:
    if args.json:
        return _validate_as_json(args.file)
    spec = load_spec_file(args.file)
    check_spec(spec)
    _warn(spec, args.file)
    out.print(f"{args.file}: pipeline {spec.name!r} is valid ({len(spec.steps)} steps)")
    return EXIT_OK


def _validate_as_json(file: str) -> int:
    """`validate --json`: every issue with its step and field, for editors and CI."""
    report: dict[str, Any] = {"file": file, "valid": True, "issues": [], "warnings": []}
    try:
        spec = load_spec_file(file)
        check_spec(spec)
    except SpecError as error:
        report["valid"] = False
        report["issues"] = [
            {"step": i.step, "field": i.field, "message": i.message} for i in error.issues
        ]
    else:
        report.update(pipeline=spec.name, steps=len(spec.steps), warnings=model_warnings(spec))
    out.print_json(data=report)
    return EXIT_OK if report["valid"] else EXIT_USAGE


async def cmd_schema(args: argparse.Namespace) -> int:
    out.print_json(data=pipeline_json_schema(), indent=2 if args.indent else None)
    return EXIT_OK


async def _wait_for_result(
    client: StepflowClient, workflow_id: str, run_id: str | None
) -> PipelineResult:
    # A run nobody serves waits silently in Temporal: say so, and what to start.
    watcher = asyncio.create_task(warn_while_unserved(client.temporal, workflow_id, err.print))
    try:
        if err.is_terminal:  # the steps as they go, as `stepflow watch` shows them
            await watch(client, workflow_id, err)
        return await client.get_result(workflow_id, run_id)
    finally:
        watcher.cancel()


async def cmd_run(args: argparse.Namespace) -> int:
    spec = load_spec_file(args.file)
    inputs = parse_inputs(spec, args.input)
    resolve_inputs(spec, inputs)  # a wrong input is refused before, and without, a connection
    _warn(spec, args.file)
    client = await StepflowClient.connect()
    run = await client.start_pipeline(spec, inputs, workflow_id=args.id, no_cache=args.no_cache)
    err.print(f"started {run.workflow_id}")
    return await _follow(client, run, args)


async def cmd_rerun(args: argparse.Namespace) -> int:
    client = await StepflowClient.connect()
    spec = load_spec_file(args.file) if args.file else None
    if spec is not None:
        _warn(spec, args.file)
    # Inputs are read by the types the pipeline that runs declares: the earlier run's by default.
    declared = spec or (await read_input(client.temporal, args.workflow_id)).spec
    inputs = parse_inputs(declared, args.input)
    run = await client.rerun(
        args.workflow_id,
        args.from_step,
        from_failed=args.from_failed,
        pipeline=spec,
        inputs=inputs,
        workflow_id=args.id,
    )
    err.print(f"started {run.workflow_id}, a rerun of {args.workflow_id}")
    return await _follow(client, run, args)


async def _follow(client: StepflowClient, run: PipelineRun, args: argparse.Namespace) -> int:
    """After `run` or `rerun` started a run: its link, then its id (`--no-wait`) or its result."""
    err.print(f"Web UI: {run.ui_url}")
    if args.no_wait:
        if args.json:
            out.print_json(
                data={"workflow_id": run.workflow_id, "run_id": run.run_id, "ui_url": run.ui_url}
            )
        return EXIT_OK
    result = await _wait_for_result(client, run.workflow_id, run.run_id)
    return _show(result, args.json)


async def cmd_result(args: argparse.Namespace) -> int:
    client = await StepflowClient.connect()
    result = await _wait_for_result(client, args.workflow_id, None)
    code = _show(result, args.json)
    if not args.json:
        err.print(f"Web UI: {client.ui_url(args.workflow_id)}")
    return code


async def cmd_cache_prune(args: argparse.Namespace) -> int:
    from stepflow.activities.result_cache import cache_directory, prune_cache

    settings = get_settings()
    removed, freed = prune_cache(settings, dry_run=args.dry_run)
    if args.json:
        out.print_json(data={"removed": removed, "bytes": freed, "dry_run": args.dry_run})
        return EXIT_OK
    verb = "would remove" if args.dry_run else "removed"
    out.print(
        f"{verb} {removed} expired result(s), {freed:,} bytes, from {cache_directory(settings)}",
        markup=False,
        highlight=False,
    )
    return EXIT_OK


async def cmd_tools(args: argparse.Namespace) -> int:
    settings = get_settings()
    tools = load_tool_modules(settings.tool_modules)
    unread: dict[str, str] = {}
    if settings.mcp_servers:  # their tools are read from the servers, which this connects to
        from stepflow.activities.mcp.discovery import load_mcp_tools

        listing = load_mcp_tools(settings=settings)
        tools = sorted([*tools, *listing.tools], key=lambda t: t.name)
        unread = listing.problems
    if args.json:
        out.print_json(
            data=[
                {"name": t.name, "description": t.description, "parameters": t.json_schema()}
                for t in tools
            ]
        )
    else:
        for definition in tools:
            first_line = definition.description.splitlines()[0] if definition.description else ""
            # A server's description is foreign text: no markup in it.
            out.print(f"[bold]{definition.name}[/bold]  {escape(first_line)}")
    for problem in unread.values():  # what could be read is listed; each server not, named
        err.print(f"stepflow: {problem}", markup=False, highlight=False)
    return EXIT_USAGE if unread else EXIT_OK


async def cmd_dev(args: argparse.Namespace) -> int:
    settings = get_settings()
    if args.action == "start":
        started = devserver.ensure_dev_server(settings)
        err.print(
            ("started" if started else "reusing")
            + f" the Temporal server on localhost:{devserver.GRPC_PORT}"
            f" (Web UI {settings.ui_url})"
        )
        started = devserver.ensure_background_worker(settings)
        err.print(
            ("started" if started else "reusing")
            + f" the worker (log: {settings.home / 'worker.log'})"
        )
    elif args.action == "stop":
        for line in devserver.stop_all(settings):
            err.print(line)
    else:
        for line in devserver.status(settings):
            out.print(line)
    return EXIT_OK


def _version() -> str:
    try:
        return importlib.metadata.version("stepflow")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout without installing
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stepflow",
        description="Durable LLM-agent pipelines on Temporal.",
        epilog="Exit codes: 0 succeeded, 1 the pipeline failed, 2 bad input or usage.",
    )
    parser.add_argument(
        "--profile",
        help="the Temporal connection profile of the TOML config file (TEMPORAL_CONFIG_FILE, "
        "default ~/.config/temporalio/temporal.toml); default: TEMPORAL_PROFILE, else default",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    parser.add_argument("--version", action="version", version=f"stepflow {_version()}")

    p = sub.add_parser("validate", help="check a pipeline file without running it")
    p.add_argument("file")
    p.add_argument("--json", action="store_true", help="every issue as JSON (exit 2 if any)")
    p.set_defaults(handler=cmd_validate)

    p = sub.add_parser(
        "schema",
        help="print the JSON Schema of pipeline files, for editors "
        "(# yaml-language-server: $schema=...)",
    )
    p.add_argument("--indent", action="store_true", help="indented, for reading")
    p.set_defaults(handler=cmd_schema)

    p = sub.add_parser("run", help="start a pipeline and (by default) wait for its result")
    p.add_argument("file")
    add_input_option(p, "a pipeline input; repeat for more (JSON for non-string inputs)")
    p.add_argument("--id", help="workflow id (default: <pipeline-name>-<short-uuid>)")
    p.add_argument("--no-wait", action="store_true", help="print the run's id and return")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument(
        "--no-cache", action="store_true", help="compute every `cache:` step afresh (and keep it)"
    )
    p.set_defaults(handler=cmd_run)

    p = sub.add_parser(
        "rerun",
        help="run an ended run again from a step, taking over the outputs of the steps before it",
    )
    p.add_argument("workflow_id", metavar="ID")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--from",
        dest="from_step",
        metavar="STEP",
        help="the step to run again, with everything after it (`loop.step` inside a loop)",
    )
    where.add_argument(
        "--from-failed", action="store_true", help="every step that failed, and everything after"
    )
    p.add_argument("--file", help="a changed pipeline: it may change the step and what follows")
    add_input_option(p, "an input to change; the others are the earlier run's")
    p.add_argument("--id", help="workflow id (default: <pipeline-name>-<short-uuid>)")
    p.add_argument("--no-wait", action="store_true", help="print the run's id and return")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=cmd_rerun)

    p = sub.add_parser("result", help="wait for a run's result and print it")
    p.add_argument("workflow_id", metavar="ID")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_result)

    add_control_commands(sub)
    add_schedule_commands(sub)
    add_codec_server_command(sub)
    add_payloads_command(sub)

    p = sub.add_parser("cache", help="the result cache of `cache:` steps")
    cache_sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    prune = cache_sub.add_parser("prune", help="remove expired results from the local cache")
    prune.add_argument("--dry-run", action="store_true", help="say what would go; remove nothing")
    prune.add_argument("--json", action="store_true")
    prune.set_defaults(handler=cmd_cache_prune)

    p = sub.add_parser("tools", help="list the registered tools")
    p.add_argument("--json", action="store_true", help="with their argument schemas")
    p.set_defaults(handler=cmd_tools)

    p = sub.add_parser("dev", help="the embedded dev server and a background worker")
    p.add_argument("action", choices=["start", "stop", "status"])
    p.set_defaults(handler=cmd_dev)
    return parser


def _one_line_errors(
    handler: Callable[[argparse.Namespace], Coroutine[Any, Any, int]], args: argparse.Namespace
) -> int:
    try:
        return asyncio.run(handler(args))
    except SpecError as error:
        where = getattr(args, "file", None)
        for issue in error.issues:
            err.print(f"{where}: {issue}" if where else str(issue), markup=False, highlight=False)
        return EXIT_USAGE
    except (
        UsageError,
        RerunRefused,
        RunNotFound,
        RunAlreadyStarted,
        ControlRejected,
        ScheduleError,
        ScheduleNotFound,
        ConnectionFailed,
        PayloadStoreError,
        EncryptionError,
        devserver.DevServerError,
        ImportError,
    ) as error:
        err.print(f"stepflow: {error}", markup=False, highlight=False)
        return EXIT_USAGE
    except RPCError as error:  # the server refused, e.g. a visibility query it cannot run
        err.print(f"stepflow: the server said: {error.message}", markup=False, highlight=False)
        return EXIT_USAGE
    except PipelineError as error:
        err.print(f"stepflow: {error}", markup=False, highlight=False)
        return EXIT_FAILED
    except KeyboardInterrupt:
        err.print("stopped waiting; the run goes on (stepflow result ID waits again)")
        return 130


@functools.cache
def _parser() -> argparse.ArgumentParser:
    """Built once per process (about 15 ms): tests and scripts call `main` many times."""
    return build_parser()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.profile:  # every connection reads it (runtime.connection), as the temporal CLI does
        os.environ["TEMPORAL_PROFILE"] = args.profile
    return _one_line_errors(args.handler, args)


def entry() -> None:
    """The `stepflow` console script: `main`, with an exit code the SDK cannot turn into 134."""
    try:
        settings = get_settings()
    except (ValidationError, SettingsError) as err:  # one line, not pydantic's page
        print(f"stepflow: {explain_settings_error(err)}", file=sys.stderr)
        exit_now(2)
    configure_logging(settings, command=True)  # warnings go to stderr, never into --json output
    exit_now(main())


if __name__ == "__main__":
    entry()
