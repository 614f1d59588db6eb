"""Continue-as-new for pipelines: when to hand a run's state over, and what may start meanwhile.

The server suggests a fresh history once a run's has grown long. Activities and
child workflows belong to the run that started them and cannot move, so the run
first drains: it waits for them to finish, then hands its `RunState` to the next
run of its chain (approval and input steps go on waiting there).

While it drains, steps of independent branches still start as long as a step
that was running when the suggestion came still runs (one long agent step must
not freeze the rest of the DAG) and the history stays within
`DRAIN_EVENT_BUDGET` events of where the suggestion came. Once those steps have
finished, nothing new starts, and the run hands over as soon as nothing runs.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from temporalio import workflow

from stepflow.workflows.models import PipelineInput
from stepflow.workflows.run_state import RunState

CONTINUE_AS_NEW_PATCH = "continue-as-new-when-suggested"
"""Runs that went past the server's suggestion before this code replay without continuing."""

START_WHILE_DRAINING_PATCH = "start-steps-while-draining"
"""Runs that drained before this code replay starting nothing until they handed over."""

DRAIN_EVENT_BUDGET = 4_000
"""Events a draining run may add by starting new steps.

The server suggests continuing as new at 4,096 events by default (10,240 is
its warning, 51,200 its hard limit): a run that drains past the suggestion
by this many still hands over below the warning.
"""

MAX_CARRIED_BYTES = 2_000_000
"""The largest next-run input (spec, inputs, run state) a run hands over without a payload store.

Below Temporal's 2 MB. A run whose state has outgrown it does not continue as
new: it runs on in one history (the suggestion comes early; Temporal's hard
limit is 51,200 events or 50 MB) and says so in the worker log. Runs started by
a client with the payload store on (`PipelineInput.payload_store`) have no such
limit: the store keeps a large input outside history.
"""


class Handover:
    """One pipeline run's way to its continue-as-new."""

    def __init__(self) -> None:
        self.draining = False
        """The server suggested continuing as new: the run hands over once nothing runs."""
        self._refused = False
        """The state is too big to hand over: this run goes on to the end."""
        self._blockers: frozenset[str] = frozenset()
        """Steps running when the suggestion came; while one runs, new steps may start."""
        self._until = 0
        """History length past which a draining run starts nothing more."""

    def suggested(self) -> bool:
        """The server suggests a fresh history (it has grown long), and this run can hand over."""
        return (
            not self._refused
            and workflow.info().is_continue_as_new_suggested()
            # Runs that went past the suggestion on older code replay as they ran.
            and workflow.patched(CONTINUE_AS_NEW_PATCH)
        )

    def begin(self, running: Iterable[str]) -> None:
        """Start draining; `running`: the steps (taking a slot) that hold the hand-over up."""
        self.draining = True
        if workflow.patched(START_WHILE_DRAINING_PATCH):
            self._blockers = frozenset(running)
            self._until = workflow.info().get_current_history_length() + DRAIN_EVENT_BUDGET

    def lets_steps_start(self, running: Collection[str]) -> bool:
        """Whether a ready step may start now, given the steps `running`."""
        if not self.draining:
            return True
        return any(step_id in running for step_id in self._blockers) and (
            workflow.info().get_current_history_length() < self._until
        )

    def hand_over(self, input: PipelineInput, state: RunState) -> None:
        """Continue as new with `state`; returns only if the state is too big to carry."""
        info = workflow.info()
        carried = state.handover()
        next_input = input.model_copy(update={"carried": carried})
        # With the payload store any size goes, and measuring would serialize the whole
        # input once more: 76 ms a hand-over at 10,000 steps, half of them done.
        size = 0 if input.payload_store else len(next_input.model_dump_json().encode())
        if size <= MAX_CARRIED_BYTES:
            workflow.logger.info(
                "continuing as new after %d events: run %d of the chain",
                info.get_current_history_length(),
                carried.runs + 1,
            )
            # Memo and search attributes carry over by default.
            workflow.continue_as_new(next_input)
        workflow.logger.warning(
            "not continuing as new: the run's state is %d bytes, over the %d a new run's "
            "input may take; the run goes on in this history",
            size,
            MAX_CARRIED_BYTES,
        )
        self._refused = True
        self.draining = False
