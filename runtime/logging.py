"""structlog, configured once per process: JSON lines for machines, readable lines for people.

The Temporal SDK logs through the standard library; those records go through
the same renderer so a worker's output is one consistent stream. Context
(workflow id, run id, step id) is bound with structlog's contextvars by the
activities. Tool arguments and outputs are never logged unless
`STEPFLOW_LOG_CONTENT=1`.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from stepflow.runtime.settings import Settings

_configured = False


def configure_logging(settings: Settings, *, command: bool = False) -> None:
    """Set up structlog and stdlib logging; later calls do nothing.

    Args:
        command: for the `stepflow` command: on a terminal a warning is one plain line
            for the person who ran it (`stepflow: warning: ...`), not a log record.
    """
    global _configured
    if _configured:
        return
    _configured = True

    as_json = settings.log_format == "json" or (
        settings.log_format == "auto" and not sys.stderr.isatty()
    )
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if as_json
        else _for_a_person
        if command and settings.log_format == "auto"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            # A line below the level goes no further: without this, every processor ran
            # for each debug line before the standard library dropped it (9 us against 1).
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *([structlog.processors.format_exc_info] if as_json else []),
                renderer,
            ],
        )
    )
    if not settings.log_content:
        handler.addFilter(_SdkContentFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())


_NOT_SHOWN = {"timestamp", "logger", "level", "event", "hint"}


def _for_a_person(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> str:
    """`stepflow: warning: task queue without workers (task_queue=x, runs=model calls): hint`."""
    what = str(event.get("event", "")).replace("_", " ")
    details = ", ".join(f"{k}={v}" for k, v in event.items() if k not in _NOT_SHOWN)
    line = f"stepflow: {event.get('level', 'info')}: {what}" + (f" ({details})" if details else "")
    hint = event.get("hint")
    return f"{line}: {hint}" if hint else line


class _SdkContentFilter(logging.Filter):
    """Keeps private content out of the Temporal SDK's own log records.

    The SDK logs a failed activity or workflow with its exception, whose message
    may quote a tool's arguments or a model's reply, and at debug level it logs
    activity results and heartbeat details whole. Without STEPFLOW_LOG_CONTENT
    those records keep what happened and lose what was said: the failure's
    message and stack trace are in the run's history, for whoever may read it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("temporalio"):
            return True
        if record.name == "temporalio.worker._activity" and record.levelno < logging.INFO:
            return False
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            kind = getattr(error, "type", None) or type(error).__name__
            record.msg = f"{record.msg} [{kind}; message not logged: STEPFLOW_LOG_CONTENT=1]"
            record.exc_info = None
            record.exc_text = None
        return True
