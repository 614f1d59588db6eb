"""Approval and input steps: wait, durably and maybe for days, for a person's answer.

The answer arrives through run control (`approve`, `reject`, `input`) into the
run state's `answers`; a durable timer bounds the wait when the step has a timeout.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

from temporalio import workflow

from stepflow.workflows.control import INPUT, REJECT
from stepflow.workflows.errors import ErrorType, StepFailure
from stepflow.workflows.models import ApprovalStep, InputStep, StepRecord, StepStatus
from stepflow.workflows.steps.base import StepContext


class HumanRunner:
    async def run(
        self, ctx: StepContext, step: ApprovalStep | InputStep, record: StepRecord, resume: bool
    ) -> Any:
        wanted: Literal["approval", "input"] = (
            "approval" if isinstance(step, ApprovalStep) else "input"
        )
        timeout = step.timeout
        if resume and timeout is not None and record.started_at is not None:
            # The run before asked already; the timeout still counts from when it did.
            timeout = record.started_at + timeout - workflow.now()
        if step.message is not None and record.message is None:
            record.message = str(ctx.render(step, step.message))
        answers = ctx.state.answers
        ctx.state.set_status(record, StepStatus.WAITING)
        record.waiting_for = wanted
        ctx.publish()
        try:
            if timeout is not None and timeout <= timedelta(0):
                raise TimeoutError  # the deadline passed while the run continued as new
            await workflow.wait_condition(
                lambda: step.id in answers,
                timeout=timeout,
                timeout_summary=f"{step.id} · {wanted} timeout",
            )
        except TimeoutError:  # the builtin one: wait_condition's timer fired
            if step.id not in answers:  # an answer in the same task as the timer wins
                return _timed_out(step)
        finally:
            record.waiting_for = None
        action, value = answers.pop(step.id)
        ctx.state.set_status(record, StepStatus.RUNNING)
        if action == INPUT:
            return value
        record.comment = value
        if action == REJECT:
            raise StepFailure(ErrorType.REJECTED, rejected_message(value), attempts=0)
        return {"approved": True, "comment": value, "by": "user"}


def _timed_out(step: ApprovalStep | InputStep) -> Any:
    after = duration_text(step.timeout)
    if isinstance(step, ApprovalStep) and step.on_timeout == "approve":
        return {"approved": True, "comment": None, "by": "timeout"}
    if isinstance(step, ApprovalStep) and step.on_timeout == "reject":
        raise StepFailure(
            ErrorType.REJECTED, f"rejected: nobody decided within {after}", attempts=0
        )
    what = "decision" if isinstance(step, ApprovalStep) else "input"
    raise StepFailure(ErrorType.TIMEOUT, f"no {what} within {after}", attempts=0)


def rejected_message(comment: str | None) -> str:
    return "rejected" + (f": {comment}" if comment else "")


def duration_text(value: timedelta | None) -> str:
    if value is None:
        return "the timeout"
    seconds = int(value.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{value.total_seconds():g}s"
