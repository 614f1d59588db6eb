"""Retries, timeouts and `on_failure`, decided by the real Temporal server."""

from __future__ import annotations

import itertools

from stepflow.client.api import StepflowClient
from stepflow.workflows.models import PipelineStatus, StepStatus
from tests.support.helpers import pipeline, step
from tests.support.tools import journal_read


async def test_flaky_tool_succeeds_on_attempt_3_with_the_configured_backoff(
    worker: None, stepflow: StepflowClient, journal: str
) -> None:
    spec = pipeline(
        step(
            "call",
            "flaky",
            args={"journal": journal, "succeed_on": 3},
            retry={"max_attempts": 5, "initial_interval": "500ms", "backoff_coefficient": 2},
        )
    )
    result = await stepflow.run_pipeline(spec)

    record = result.step("call")
    assert record.status is StepStatus.SUCCEEDED
    assert record.attempts == 3
    attempts = journal_read(journal)
    assert [a["attempt"] for a in attempts] == [1, 2, 3]
    # Temporal waited at least the configured intervals: 0.5 s, then 0.5 x 2 = 1 s.
    gaps = [b["time"] - a["time"] for a, b in itertools.pairwise(attempts)]
    assert gaps[0] >= 0.45 and gaps[1] >= 0.95, gaps
    # The idempotency key is the one key for the call, whatever the attempt.
    assert len({a["key"] for a in attempts}) == 1
    assert record.output == {"attempt": 3, "key": attempts[0]["key"]}


async def test_running_out_of_attempts_fails_the_pipeline_with_the_tools_error(
    worker: None, stepflow: StepflowClient, journal: str
) -> None:
    spec = pipeline(
        step(
            "call",
            "flaky",
            args={"journal": journal, "succeed_on": 9},
            retry={"max_attempts": 2, "initial_interval": "100ms"},
        ),
        step("after", "echo", depends_on=["call"]),
    )
    result = await stepflow.run_pipeline(spec)

    assert result.status is PipelineStatus.FAILED
    call = result.step("call")
    assert call.status is StepStatus.FAILED
    assert call.attempts == 2
    assert call.error_type == "ConnectionError"
    assert call.error == "flaky failure on attempt 2"
    assert result.step("after").status is StepStatus.SKIPPED
    assert result.error == "step 'call' failed: flaky failure on attempt 2"


async def test_non_retryable_errors_fail_at_once(worker: None, stepflow: StepflowClient) -> None:
    spec = pipeline(
        step(
            "by_type",
            "fail",
            args={"message": "bad", "error": "QuotaExceeded"},
            retry={
                "max_attempts": 5,
                "initial_interval": "100ms",
                "non_retryable_errors": ["QuotaExceeded"],
            },
            on_failure="continue",
        ),
        step(
            "by_tool",
            "fail",
            args={"message": "no such file", "non_retryable": True},
            retry={"max_attempts": 5, "initial_interval": "100ms"},
            on_failure="continue",
        ),
    )
    result = await stepflow.run_pipeline(spec)
    assert result.step("by_type").attempts == 1
    assert result.step("by_type").error_type == "QuotaExceeded"
    assert result.step("by_tool").attempts == 1
    assert result.step("by_tool").error_type == "ToolError"


async def test_hanging_tool_times_out_and_is_retried(
    worker: None, stepflow: StepflowClient, journal: str
) -> None:
    spec = pipeline(
        step(
            "slow",
            "hang_first",
            args={"journal": journal},
            timeout={"start_to_close": "1s"},
            retry={"initial_interval": "100ms"},
        )
    )
    result = await stepflow.run_pipeline(spec)

    record = result.step("slow")
    assert record.status is StepStatus.SUCCEEDED
    assert record.attempts == 2
    first, second = journal_read(journal)
    assert second["time"] - first["time"] >= 1.0  # the retry came after the 1 s timeout


async def test_a_step_that_always_times_out_ends_timed_out(
    worker: None, stepflow: StepflowClient, journal: str
) -> None:
    spec = pipeline(
        step(
            "slow",
            "slow_heartbeat",
            args={"journal": journal, "block_on_attempt": 1},
            timeout={"start_to_close": "500ms"},
            retry={"max_attempts": 1},
            on_failure="continue",
        )
    )
    result = await stepflow.run_pipeline(spec)
    record = result.step("slow")
    assert record.status is StepStatus.TIMED_OUT
    assert record.error == "start-to-close timeout"
    assert record.attempts == 1


async def test_on_failure_fail_stops_the_pipeline_and_cancels_running_steps(
    worker: None, stepflow: StepflowClient, journal: str
) -> None:
    spec = pipeline(
        step(
            "long",
            "slow_heartbeat",
            args={"journal": journal, "seconds": 30},
            timeout={"heartbeat": "2s"},
        ),
        step("boom", "fail", args={"message": "broken", "non_retryable": True}),
        step("later", "echo", depends_on=["boom"]),
    )
    result = await stepflow.run_pipeline(spec)

    assert result.status is PipelineStatus.FAILED
    assert result.step("boom").status is StepStatus.FAILED
    assert result.step("long").status is StepStatus.CANCELLED
    assert result.step("later").status is StepStatus.SKIPPED
    assert result.step("later").reason == "pipeline failed at step 'boom'"


async def test_on_failure_continue_skips_dependents_and_keeps_independent_work(
    worker: None, stepflow: StepflowClient
) -> None:
    spec = pipeline(
        step(
            "bad", "fail", args={"message": "broken", "non_retryable": True}, on_failure="continue"
        ),
        step("child", "echo", depends_on=["bad"]),
        step("grandchild", "echo", depends_on=["child"]),
        step("independent", "echo", args={"value": "still here"}),
        step(
            "after_independent",
            "echo",
            args={"value": "{{ steps.independent.output }}"},
            depends_on=["independent"],
        ),
    )
    result = await stepflow.run_pipeline(spec)

    assert result.status is PipelineStatus.SUCCEEDED
    assert result.step("bad").status is StepStatus.FAILED
    assert result.step("child").status is StepStatus.SKIPPED
    assert result.step("child").reason == "dependency 'bad' failed"
    assert result.step("grandchild").reason == "dependency 'child' skipped"
    assert result.output("after_independent") == "still here"


async def test_on_failure_fallback_hands_the_value_to_dependents(
    worker: None, stepflow: StepflowClient
) -> None:
    spec = pipeline(
        step(
            "lookup",
            "fail",
            args={"message": "service down", "non_retryable": True},
            on_failure={"fallback": {"price": 0}},
        ),
        step(
            "use",
            "echo",
            args={"value": "price {{ steps.lookup.output.price }}"},
            depends_on=["lookup"],
        ),
    )
    result = await stepflow.run_pipeline(spec)

    lookup = result.step("lookup")
    assert result.status is PipelineStatus.SUCCEEDED
    assert lookup.status is StepStatus.SUCCEEDED and lookup.used_fallback
    assert lookup.error == "service down"
    assert result.output("use") == "price 0"


async def test_arguments_that_fail_the_schema_at_run_time_fail_without_retry(
    worker: None, stepflow: StepflowClient
) -> None:
    spec = pipeline(
        step("a", "echo", args={"value": "not a number"}),
        step(
            "b",
            "flaky",
            args={"journal": "/dev/null", "succeed_on": "{{ steps.a.output }}"},
            depends_on=["a"],
            retry={"max_attempts": 3},
            on_failure="continue",
        ),
    )
    result = await stepflow.run_pipeline(spec)
    record = result.step("b")
    assert record.status is StepStatus.FAILED
    assert record.error_type == "ToolArgumentsInvalid"
    assert record.attempts == 1
    assert "succeed_on" in (record.error or "")
