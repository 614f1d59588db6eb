"""`stepflow payloads prune [--older-than 30d] [--dry-run] [--json]`: clean the local store."""

from __future__ import annotations

import argparse
from datetime import timedelta
from typing import Any

from stepflow.client.api import StepflowClient
from stepflow.client.cli_common import EXIT_OK, UsageError, err, out
from stepflow.client.payload_prune import PruneReport, prune_payloads
from stepflow.runtime.payload_storage import payload_dir
from stepflow.runtime.settings import get_settings
from stepflow.workflows.durations import format_duration, parse_duration


def _age(text: str) -> timedelta:
    try:
        value = parse_duration(text)
    except ValueError as error:
        raise UsageError(f"--older-than {text!r}: {error}") from None
    if not isinstance(value, timedelta) or value <= timedelta(0):
        raise UsageError(f"--older-than {text!r}: use a positive duration, e.g. 30d, 12h")
    return value


def _megabytes(size: int) -> str:
    return f"{size / 1_000_000:,.1f} MB"


def _summary(report: PruneReport) -> str:
    verb = "would remove" if report.dry_run else "removed"
    age = format_duration(report.older_than)
    return (
        f"{verb} {len(report.removed)} payloads ({_megabytes(report.removed_bytes)}) not stored "
        f"for {age} from {report.directory}; kept {report.kept_in_use} older ones that "
        f"{report.open_runs} open runs and {report.schedules} schedules use, and "
        f"{report.kept_recent} newer ones"
    )


async def cmd_prune(args: argparse.Namespace) -> int:
    settings = get_settings()
    older_than = _age(args.older_than) if args.older_than else settings.payload_retention
    directory = payload_dir(settings)
    client = await StepflowClient.connect()
    report = await prune_payloads(client.temporal, directory, older_than, dry_run=args.dry_run)
    if args.json:
        out.print_json(
            data={
                "directory": str(report.directory),
                "older_than": format_duration(report.older_than),
                "dry_run": report.dry_run,
                "removed": [str(file.path) for file in report.removed],
                "removed_bytes": report.removed_bytes,
                "kept_in_use": report.kept_in_use,
                "kept_recent": report.kept_recent,
                "open_runs": report.open_runs,
                "schedules": report.schedules,
            }
        )
    else:
        if args.dry_run:
            for file in report.removed:
                out.print(str(file.path), markup=False, highlight=False)
        err.print(_summary(report), markup=False, highlight=False)
    if settings.payload_store == "s3":
        err.print(
            f"stepflow: the S3 store (s3://{settings.payload_s3_bucket}) is not pruned here: give "
            f"the bucket a lifecycle rule that expires objects after "
            f"{format_duration(settings.payload_retention)}",
            markup=False,
            highlight=False,
        )
    return EXIT_OK


def add_payloads_command(sub: Any) -> None:
    p = sub.add_parser(
        "payloads",
        help="the local payload store: prune what no open run uses",
        description="Large values (STEPFLOW_PAYLOAD_THRESHOLD_BYTES and up) live in the payload "
        "store. `prune` removes the local store's files that were last stored longer ago than "
        "the retention (STEPFLOW_PAYLOAD_RETENTION, default 30d) and that no open run or "
        "schedule of the namespace refers to. Finished runs whose payloads are gone can no "
        "longer show those values.",
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    prune = actions.add_parser("prune", help="remove old payloads no open run uses")
    prune.add_argument(
        "--older-than",
        metavar="AGE",
        help="remove files last stored longer ago than this, e.g. 30d, 12h "
        "(default: STEPFLOW_PAYLOAD_RETENTION)",
    )
    prune.add_argument(
        "--dry-run", action="store_true", help="list what would be removed; remove nothing"
    )
    prune.add_argument("--json", action="store_true", help="print the report as JSON")
    prune.set_defaults(handler=cmd_prune)
