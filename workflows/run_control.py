"""Run control: the operations people use to steer a run, as one table.

Each operation (`pause`, `resume`, `cancel_step`, `approve`, `reject`, `input`) is
one `Operation`: its payload type, the check that refuses a request that makes
no sense now, what accepting it does, and the answer its sender reads. The
pipeline registers each one as an update (the check is its validator) and as a
signal of the same name and payload for senders that cannot wait for an answer
(`temporal workflow signal`): a signal cannot be refused, so one that fails the
check is logged and ignored.

A new operation is one entry in `OPERATIONS` (plus its client method and CLI
command); names and payloads are the contract of `workflows.control`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from temporalio import workflow
from temporalio.exceptions import ApplicationError

from stepflow.workflows import requests
from stepflow.workflows.control import (
    APPROVE,
    CANCEL_STEP,
    INPUT,
    PAUSE,
    REJECT,
    RESUME,
    StepInput,
    StepRequest,
)
from stepflow.workflows.run_state import RunState
from stepflow.workflows.steps import AnyStep


class Controlled(Protocol):
    """What run control may read and change of a run."""

    state: RunState
    steps: dict[str, AnyStep]

    @property
    def ended(self) -> bool: ...

    def publish(self) -> None: ...

    def note_update(self) -> None:
        """Remember that this workflow task accepted an update (see `_answer_updates_...`)."""
        ...

    def cancel_step(self, step_id: str, comment: str | None) -> None: ...


@dataclass(frozen=True)
class Operation:
    name: str
    request: type | None
    """The payload's model; None: the operation takes none."""
    check: Callable[[Controlled, Any], None]
    """Raises `ApplicationError` (type `RequestRejected`) to refuse the request."""
    apply: Callable[[Controlled, Any], str]
    """Carries the request out; returns the answer for its sender."""


# -- pause and resume ------------------------------------------------------------------


def _check_pause(run: Controlled, _: None) -> None:
    requests.check_pause(run.state.paused, run.ended)


def _pause(run: Controlled, _: None) -> str:
    run.state.paused = True
    run.publish()
    return "paused: no new step starts; running steps finish"


def _check_resume(run: Controlled, _: None) -> None:
    requests.check_resume(run.state.paused)


def _resume(run: Controlled, _: None) -> str:
    run.state.paused = False
    run.publish()
    return "resumed"


# -- cancelling one step -----------------------------------------------------------------


def _check_cancel_step(run: Controlled, request: StepRequest) -> None:
    requests.check_cancel_step(run.state.by_id, request.step)
    if request.step in run.state.cancel_requests:
        requests.reject(f"step {request.step!r} is already being cancelled")


def _cancel_step(run: Controlled, request: StepRequest) -> str:
    run.cancel_step(request.step, request.comment)
    return f"cancelled step {request.step!r}"


# -- answering a waiting step -------------------------------------------------------------

_ANSWERED = {APPROVE: "approved", REJECT: "rejected", INPUT: "gave input to"}


def _check_unanswered(run: Controlled, step_id: str) -> None:
    if step_id in run.state.answers:
        requests.reject(f"step {step_id!r} has already been answered")


def _check_decision(run: Controlled, request: StepRequest) -> None:
    _check_unanswered(run, request.step)
    requests.check_decision(run.steps, run.state.by_id, request.step)


def _check_input(run: Controlled, request: StepInput) -> None:
    _check_unanswered(run, request.step)
    requests.check_input(run.steps, run.state.by_id, request.step, request.value)


def _answer(action: str) -> Callable[[Controlled, Any], str]:
    """Hand a waiting step its answer; its runner (`steps.human`) picks it up."""

    def apply(run: Controlled, request: StepRequest | StepInput) -> str:
        # Signals note it too: runs recorded so answer in a task of their own before closing.
        run.note_update()
        value = request.value if isinstance(request, StepInput) else request.comment
        run.state.answers[request.step] = (action, value)
        return f"{_ANSWERED[action]} step {request.step!r}"

    return apply


OPERATIONS = (
    Operation(PAUSE, None, _check_pause, _pause),
    Operation(RESUME, None, _check_resume, _resume),
    Operation(CANCEL_STEP, StepRequest, _check_cancel_step, _cancel_step),
    Operation(APPROVE, StepRequest, _check_decision, _answer(APPROVE)),
    Operation(REJECT, StepRequest, _check_decision, _answer(REJECT)),
    Operation(INPUT, StepInput, _check_input, _answer(INPUT)),
)
"""Every run-control operation, each an update and a signal of its name."""


def register(run: Controlled, operations: tuple[Operation, ...] = OPERATIONS) -> None:
    """Register each operation's update (with its check as validator) and signal twin.

    Called from the workflow's `@workflow.init`, before any update or signal is
    delivered: ones that arrived with the run's first task wait for it.
    """
    for op in operations:
        update, validator, signal = _handlers(run, op)
        workflow.set_update_handler(op.name, update, validator=validator)
        workflow.set_signal_handler(op.name, signal)


def _handlers(
    run: Controlled, op: Operation
) -> tuple[Callable[..., str], Callable[..., None], Callable[..., None]]:
    def accepts(request: Any) -> bool:
        try:
            op.check(run, request)
        except Exception as err:  # a signal can only be ignored: never fail the task over one
            message = err.message if isinstance(err, ApplicationError) else repr(err)
            workflow.logger.warning("ignored signal %r: %s", op.name, message)
            return False
        return True

    if op.request is None:

        def update() -> str:
            run.note_update()
            return op.apply(run, None)

        def validator() -> None:
            op.check(run, None)

        def signal() -> None:
            if accepts(None):
                op.apply(run, None)

        return update, validator, signal

    def update_with(request: Any) -> str:
        run.note_update()
        return op.apply(run, request)

    def validator_with(request: Any) -> None:
        op.check(run, request)

    def signal_with(request: Any) -> None:
        if accepts(request):
            op.apply(run, request)

    # The SDK decodes a payload by the handler's annotation: the operation's model.
    update_with.__annotations__ = {"request": op.request, "return": str}
    validator_with.__annotations__ = {"request": op.request, "return": None}
    signal_with.__annotations__ = {"request": op.request, "return": None}
    return update_with, validator_with, signal_with
