"""Turn a step's retry and timeout settings into the arguments Temporal's activity calls take."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio.common import RetryPolicy

from stepflow.workflows.models import RetrySpec, TimeoutSpec


def retry_policy(retry: RetrySpec) -> RetryPolicy:
    return RetryPolicy(
        initial_interval=retry.initial_interval or timedelta(seconds=1),
        backoff_coefficient=retry.backoff_coefficient or 2.0,
        maximum_interval=retry.max_interval,
        maximum_attempts=retry.max_attempts or 0,
        non_retryable_error_types=retry.non_retryable_errors or None,
    )


def local_activity_options(retry: RetrySpec, timeout: TimeoutSpec) -> dict[str, Any]:
    """Keyword arguments for `workflow.execute_local_activity` (which has no heartbeats)."""
    options = activity_options(retry, timeout)
    del options["heartbeat_timeout"]
    return options


def activity_options(retry: RetrySpec, timeout: TimeoutSpec) -> dict[str, Any]:
    """Keyword arguments for `workflow.execute_activity`."""
    return {
        "start_to_close_timeout": timeout.start_to_close,
        "schedule_to_close_timeout": timeout.schedule_to_close,
        "heartbeat_timeout": timeout.heartbeat,
        "retry_policy": retry_policy(retry),
    }
