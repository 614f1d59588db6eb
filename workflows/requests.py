"""The checks behind the control updates' validators: is this request something that makes sense?

Each check raises `ApplicationError` of type `RequestRejected` with a message
for the person who sent it; an update whose validator raises is refused
before it reaches history. Pure functions: imported in the workflow sandbox.
"""

from __future__ import annotations

from typing import Any, NoReturn

from jsonschema.exceptions import best_match
from temporalio.exceptions import ApplicationError

from stepflow.workflows.json_schemas import outside_refs, validator_for
from stepflow.workflows.models import ApprovalStep, InputStep, PlanStep, StepRecord, StepStatus
from stepflow.workflows.run_view import ACTIVE
from stepflow.workflows.validation import did_you_mean

REQUEST_REJECTED = "RequestRejected"


def reject(message: str) -> NoReturn:
    raise ApplicationError(message, type=REQUEST_REJECTED, non_retryable=True)


def _kind_name(kind: str) -> str:
    return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind} step"


def known_record(records: dict[str, StepRecord], step_id: str) -> StepRecord:
    record = records.get(step_id)
    if record is None:
        reject(f"the pipeline has no step {step_id!r}{did_you_mean(step_id, records)}")
    return record


def check_pause(paused: bool, finished: bool) -> None:
    if finished:
        reject("the run has already ended")
    if paused:
        reject("the run is already paused")


def check_resume(paused: bool) -> None:
    if not paused:
        reject("the run is not paused")


def check_cancel_step(records: dict[str, StepRecord], step_id: str) -> None:
    record = known_record(records, step_id)
    if record.status not in ACTIVE:
        reject(f"step {step_id!r} has already ended ({record.status.value})")


def _waiting_step(
    steps: dict[str, Any], records: dict[str, StepRecord], step_id: str, kind: type
) -> None:
    record = known_record(records, step_id)
    step = steps[step_id]
    wanted = "approval" if kind is ApprovalStep else "input"
    if not isinstance(step, kind):
        reject(f"step {step_id!r} is {_kind_name(step.kind)}, not {_kind_name(wanted)}")
    if record.status is not StepStatus.WAITING:
        reject(f"step {step_id!r} is not waiting for {wanted} (it is {record.status.value})")


def check_decision(steps: dict[str, Any], records: dict[str, StepRecord], step_id: str) -> None:
    """For `approve` and `reject`: an approval step, or a plan step with `approve`, waiting."""
    step = steps.get(step_id)
    if isinstance(step, PlanStep):
        record = known_record(records, step_id)
        if not step.approve:
            reject(f"step {step_id!r} is a plan step without `approve`: its plan runs unasked")
        if record.status is not StepStatus.WAITING or record.waiting_for != "approval":
            reject(
                f"step {step_id!r} is not waiting for approval of its plan "
                f"(it is {record.status.value})"
            )
        return
    _waiting_step(steps, records, step_id, ApprovalStep)


def check_input(
    steps: dict[str, Any], records: dict[str, StepRecord], step_id: str, value: Any
) -> None:
    """For `input`: an input step that is waiting, and a value that matches its schema."""
    _waiting_step(steps, records, step_id, InputStep)
    step: InputStep = steps[step_id]
    outside = outside_refs(step.value_schema)
    if outside:  # the run started before such schemas were refused; never fetch one
        reject(f"the schema of step {step_id!r} cannot check a value: {outside[0]}")
    try:
        error = best_match(validator_for(step.value_schema).iter_errors(value))
    except Exception as err:  # e.g. a $ref to nowhere: refuse, never fail the workflow task
        reject(f"the schema of step {step_id!r} cannot check a value: {err}")
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path)
        reject(
            f"the value for step {step_id!r} does not match its schema: "
            f"{error.message}" + (f" (at {where})" if where else "")
        )
