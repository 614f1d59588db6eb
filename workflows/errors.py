"""Stepflow's error catalogue: every error type, its retry rule, and how a failure ends a step.

An error type is the `type` of the `ApplicationError` that carries it through
Temporal, and the `error_type` of the step record that ends with it. Whether
Temporal retries it is decided here, once: `ErrorType.X.error(message)` builds
the exception with the right `non_retryable` flag, in activities and workflows
alike.

`activity_failure` and `child_failure` turn what Temporal reports about a
finished activity or child workflow into a `StepFailure`: the step's status,
message, error type and attempts. Pure code: imported in the workflow sandbox.
"""

from __future__ import annotations

from datetime import timedelta
from enum import StrEnum
from typing import Any

import pydantic
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    CancelledError,
    ChildWorkflowError,
    RetryState,
)
from temporalio.exceptions import TimeoutError as TemporalTimeout

from stepflow.workflows.models import PipelineInput, RetrySpec
from stepflow.workflows.records import StepStatus


class ErrorType(StrEnum):
    """Every error type Stepflow raises. The value is what history and step records show."""

    # The pipeline and its run.
    INVALID_PIPELINE = "InvalidPipeline"
    """The spec or its inputs fail validation: the run fails before any step starts."""
    INVALID_WORKFLOW_INPUT = "ValidationError"
    """A run was started (around the client) with an input that is not a pipeline's.

    The value is the one such runs have always failed with.
    """
    PIPELINE_FAILED = "PipelineFailed"
    """A step with `on_failure: fail` failed for good; the details hold the `PipelineResult`."""
    INVALID_REFERENCE = "InvalidReference"
    """A template names something the step cannot see."""
    REQUEST_REJECTED = "RequestRejected"
    """A control request (update) that makes no sense now: refused before it reaches history."""
    REJECTED = "Rejected"
    """An approval step was rejected."""
    CANCELLED = "Cancelled"
    """A step was cancelled on request."""
    TIMEOUT = "Timeout"
    """An activity, a model call or a person ran out of time."""

    # Control flow.
    INVALID_EXPRESSION = "InvalidExpression"
    """A `when` or `until` that fails when evaluated (a type error, a division by zero)."""
    FOR_EACH_NOT_A_LIST = "ForEachNotAList"
    """A `for_each` template yielded something other than a list."""
    LOOP_EXHAUSTED = "LoopExhausted"
    """A loop's `until` was still false after `max_iterations` (with `on_exhausted: fail`)."""

    # Agent steps.
    MAX_MODEL_CALLS_EXCEEDED = "MaxModelCallsExceeded"
    """The agent made `max_model_calls` calls without a final answer."""
    OUTPUT_SCHEMA_MISMATCH = "OutputSchemaMismatch"
    """The final answer still fails the `output_schema` after `max_output_repairs` repairs."""
    CONVERSATION_TOO_LARGE = "ConversationTooLarge"
    """The conversation outgrew what one model call may carry."""
    BUDGET_EXCEEDED = "BudgetExceeded"
    """The run's or the step's `budget` is spent: no new model call starts."""
    PLAN_INVALID = "PlanInvalid"
    """A plan step's plan still fails validation after `max_plan_repairs` repairs."""

    # Model calls.
    MODEL_RATE_LIMITED = "ModelRateLimited"
    """The API answered 429: retried, after its `Retry-After` when it gives one."""
    MODEL_SERVER_ERROR = "ModelServerError"
    """The API answered 5xx (or 408/409): retried."""
    MODEL_TIMEOUT = "ModelTimeout"
    """The HTTP request to the API timed out: retried."""
    MODEL_CONNECTION_ERROR = "ModelConnectionError"
    """The API could not be reached: retried."""
    MODEL_REPLY_INVALID = "ModelReplyInvalid"
    """A reply that is not valid Chat Completions JSON: the next attempt may do better."""
    MODEL_REQUEST_REJECTED = "ModelRequestRejected"
    """The API refused the request itself (bad key, bad request): no retry can fix it."""
    MODEL_NOT_CONFIGURED = "ModelNotConfigured"
    """The worker has no key and no address for the step's model."""
    MODEL_NOT_FOUND = "ModelNotFound"
    """The API does not know the model (404): no retry helps; a fallback model may."""
    MODEL_CONTEXT_EXCEEDED = "ModelContextExceeded"
    """The conversation is longer than the model's context: a fallback model may take it."""
    MODEL_CONTENT_REFUSED = "ModelContentRefused"
    """The model refused the content (a content filter): a fallback model may answer."""
    MODEL_UNPRICED = "ModelUnpriced"
    """A cost budget applies but the worker has no `price` for the model."""
    MODEL_CALL_MISROUTED = "ModelCallMisrouted"
    """A model call reached the main queue while model calls run on their own queue."""
    INVALID_OUTPUT_SCHEMA = "InvalidOutputSchema"
    """The `output_schema` is unusable: no JSON Schema, an untrusted module, an outside `$ref`."""

    # Tool calls.
    TOOL_NOT_REGISTERED = "ToolNotRegistered"
    """The worker that got the call does not have the tool: its modules differ from the client's."""
    TOOL_ARGUMENTS_INVALID = "ToolArgumentsInvalid"
    """The arguments fail the tool's schema: never run."""
    TOOL_OUTPUT_NOT_SERIALIZABLE = "ToolOutputNotSerializable"
    """The tool returned something that is not JSON."""
    TOOL_REQUEST_TOO_LARGE = "ToolRequestTooLarge"
    """The arguments are larger than the tool's `max_request_bytes`: never run."""
    TOOL_OUTPUT_TOO_LARGE = "ToolOutputTooLarge"
    """The result is larger than the tool's `max_output_bytes`."""

    # Large payloads.
    OUTPUT_TOO_LARGE = "OutputTooLarge"
    """A result over Temporal's 2 MB limit with the payload store off."""
    PAYLOAD_STORE_FAILED = "PayloadStoreFailed"
    """The payload store refused the value for good (denied, no such bucket)."""
    PAYLOAD_STORE_UNAVAILABLE = "PayloadStoreUnavailable"
    """The payload store failed for now (a 503, a dropped connection): the next attempt may work."""

    @property
    def retryable(self) -> bool:
        """Whether Temporal should try again after an activity failed with this type."""
        return self in _RETRYABLE

    def error(
        self, message: str, *details: Any, next_retry_delay: timedelta | None = None
    ) -> ApplicationError:
        """The exception that carries this type through Temporal, with its retry rule."""
        return ApplicationError(
            message,
            *details,
            type=self.value,
            non_retryable=not self.retryable,
            next_retry_delay=next_retry_delay,
        )


_RETRYABLE = frozenset(
    {
        ErrorType.MODEL_RATE_LIMITED,
        ErrorType.MODEL_SERVER_ERROR,
        ErrorType.MODEL_TIMEOUT,
        ErrorType.MODEL_CONNECTION_ERROR,
        ErrorType.MODEL_REPLY_INVALID,
        ErrorType.PAYLOAD_STORE_UNAVAILABLE,
    }
)

_STATUS_OF = {ErrorType.TIMEOUT: StepStatus.TIMED_OUT, ErrorType.CANCELLED: StepStatus.CANCELLED}
"""Error types that end a step in a status of their own; every other one ends it FAILED."""


def status_of(error_type: str) -> StepStatus:
    """The status a step ends in when it fails with `error_type`."""
    return _STATUS_OF.get(error_type, StepStatus.FAILED)  # type: ignore[call-overload]


class InvalidWorkflowInput(ApplicationError):
    """A workflow's own input is invalid: the run fails at once instead of retrying its task.

    The only exception the workflows declare in `failure_exception_types`. Any
    other error in workflow code (a pydantic `ValidationError` from a model a
    deploy tightened while runs were in flight, say) fails the workflow task
    instead: Temporal retries it, and the run waits for a fixed worker.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, type=ErrorType.INVALID_WORKFLOW_INPUT.value, non_retryable=True)


class CheckedPipelineInput(PipelineInput):
    """`PipelineInput` as the pipeline workflow reads it: a non-pipeline input fails the run.

    Only a run's first input: a continued run's input that no longer parses is
    a model a deploy tightened under running runs, and waits for a fixed worker.
    Callers (and type checkers) see `PipelineInput`: this class only tells the
    SDK how to read the workflow's input.
    """

    @pydantic.model_validator(mode="wrap")
    @classmethod
    def _fail_the_run(cls, data: Any, handler: Any) -> Any:
        try:
            return handler(data)
        except pydantic.ValidationError as err:
            if isinstance(data, dict) and data.get("carried") is not None:
                raise
            raise InvalidWorkflowInput(str(err)) from None


class StepFailure(Exception):
    """A step failed for good: what its record needs."""

    def __init__(
        self,
        error_type: str,
        message: str,
        attempts: int = 1,
        agent: dict[str, Any] | None = None,
        status: StepStatus | None = None,
    ) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self.attempts = attempts
        self.status = status or status_of(error_type)
        self.agent = agent or {}
        """An agent step's model, usage and tool calls up to the failure."""


def timeout_message(err: TemporalTimeout) -> str:
    """`start-to-close timeout`, `heartbeat timeout`, ...: which of the timeouts fired."""
    kind = err.type.name.lower().replace("_", "-") if err.type else "activity"
    return f"{kind} timeout"


def activity_failure(err: ActivityError, retry: RetrySpec | None = None) -> StepFailure:
    """An activity's final failure as a step failure; attempts from the failure or the policy.

    A cancelled activity is not a failure of the step: the caller handles `CancelledError`
    causes before calling this.
    """
    cause = err.cause
    attempts = 1
    if isinstance(cause, TemporalTimeout):
        failure = StepFailure(ErrorType.TIMEOUT, timeout_message(cause))
    elif isinstance(cause, ApplicationError):
        failure = StepFailure(cause.type or "Error", cause.message)
        details = cause.details
        if details and isinstance(details[0], dict) and "attempt" in details[0]:
            attempts = int(details[0]["attempt"])
    else:
        failure = StepFailure(type(cause or err).__name__, str(cause or err))
    if (
        err.retry_state == RetryState.MAXIMUM_ATTEMPTS_REACHED
        and retry is not None
        and retry.max_attempts
    ):
        attempts = retry.max_attempts
    failure.attempts = attempts
    return failure


def child_failure(err: ChildWorkflowError) -> StepFailure:
    """A child workflow's failure (an agent step) as a step failure.

    The child fails with an `ApplicationError` whose type is from this catalogue
    and whose first detail, when it is a dict, holds the agent's model, usage and
    tool calls so far.
    """
    cause = err.cause
    if isinstance(cause, CancelledError):
        return StepFailure(ErrorType.CANCELLED, "the agent step was cancelled")
    if isinstance(cause, ApplicationError):
        details = cause.details[0] if cause.details else None
        return StepFailure(
            cause.type or "Error",
            cause.message,
            agent=details if isinstance(details, dict) else None,
        )
    if isinstance(cause, TemporalTimeout):
        return StepFailure(ErrorType.TIMEOUT, f"agent step: {timeout_message(cause)}")
    return StepFailure(type(cause or err).__name__, str(cause or err))
