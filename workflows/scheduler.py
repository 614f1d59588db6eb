"""`DagScheduler`: which steps of a pipeline's DAG start next, and what a settled step means.

Pure Python, no Temporal: the pipeline workflow asks it what to start and tells it
what ended; it knows nothing of activities, records or time, so it is tested
without a server (tests/test_scheduler.py).

The rules:
- a step is ready once its dependencies have settled as its `trigger` asks
  (`all_succeeded`, the default: every one succeeded; `none_failed`: none failed,
  skipped ones are fine; `all_done`: whatever happened; `one_succeeded`: at
  least one succeeded); ready steps start in the order the spec lists them;
- at most `max_concurrency` steps run at once; approval and input steps wait for
  a person and take no slot, nor does a running step while it waits for one (a
  plan waiting for approval: `wait_for_person`), which takes its slot back once
  answered even if the others are taken meanwhile;
- a step that ends without succeeding skips the pending dependents whose trigger
  it can no longer meet, and theirs, each with the reason ("dependency 'x'
  failed"); a dependent whose trigger it still meets waits on;
- once halted (the run fails or is cancelled) nothing starts or is skipped any
  more: the caller ends every pending step with its own reason.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from stepflow.workflows.records import StepStatus

_SETTLED = frozenset(
    {
        StepStatus.SUCCEEDED,
        StepStatus.FAILED,
        StepStatus.TIMED_OUT,
        StepStatus.SKIPPED,
        StepStatus.CANCELLED,
    }
)
_FAILED = frozenset({StepStatus.FAILED, StepStatus.TIMED_OUT, StepStatus.CANCELLED})


@dataclass(frozen=True)
class Node:
    """One step as the scheduler sees it."""

    id: str
    depends_on: Sequence[str] = ()
    human: bool = False
    """Waits for a person (approval, input): takes no concurrency slot."""
    trigger: str = "all_succeeded"
    """When it may start once its dependencies settled (`spec.Trigger`)."""


def _blocks(trigger: str, status: StepStatus) -> bool:
    """Whether one dependency settling in `status` means a step with `trigger` never runs."""
    if trigger == "all_succeeded":
        return status is not StepStatus.SUCCEEDED
    if trigger == "none_failed":
        return status in _FAILED
    return False  # all_done, one_succeeded: only known once every dependency settled


Skip = tuple[str, str]
"""A step skipped because of a dependency, and why."""


class DagScheduler:
    """The ready set of one pipeline run, indexed once so each settled step costs its dependents."""

    def __init__(
        self,
        nodes: Sequence[Node],
        max_concurrency: int,
        statuses: Mapping[str, StepStatus] | None = None,
    ) -> None:
        """Index the DAG.

        Args:
            nodes: Every step, in spec order.
            max_concurrency: Steps other than human ones running at once.
            statuses: Where each step stands when a continued run takes over; missing
                steps are PENDING. Only PENDING steps can start; a dependency counts
                as met once it SUCCEEDED.
        """
        statuses = statuses or {}
        self.max_concurrency = max_concurrency
        self._order = {n.id: i for i, n in enumerate(nodes)}
        self._human = {n.id for n in nodes if n.human}
        self._trigger = {n.id: n.trigger for n in nodes}
        self._pending = {
            n.id: None
            for n in nodes
            if statuses.get(n.id, StepStatus.PENDING) is StepStatus.PENDING
        }
        # Dependencies not settled yet, and (for `one_succeeded`) whether one succeeded.
        self._unmet = {
            n.id: sum(
                1 for d in set(n.depends_on) if statuses.get(d, StepStatus.PENDING) not in _SETTLED
            )
            for n in nodes
        }
        self._any_succeeded = {
            n.id
            for n in nodes
            if any(statuses.get(d) is StepStatus.SUCCEEDED for d in n.depends_on)
        }
        self._dependents: dict[str, list[str]] = {n.id: [] for n in nodes}
        for n in nodes:
            for dep in dict.fromkeys(n.depends_on):
                # An unknown dependency fails the run before it starts; here it must not raise.
                self._dependents.setdefault(dep, []).append(n.id)
        # A continued run: a pending step whose dependencies all settled is ready (a blocked
        # one was skipped by the run before, when its dependency settled).
        self._ready = [
            (self._order[sid], sid)
            for sid, n in self._unmet.items()
            if n == 0 and sid in self._pending
        ]
        heapq.heapify(self._ready)
        self._running: set[str] = set()
        self._busy = 0
        self._away: set[str] = set()
        """Running steps that wait for a person now and hold no slot meanwhile."""
        self.halted = False

    # -- what the run asks ---------------------------------------------------------

    @property
    def busy(self) -> int:
        """Running steps that take a slot."""
        return self._busy

    @property
    def running(self) -> frozenset[str]:
        return frozenset(self._running)

    @property
    def away(self) -> frozenset[str]:
        """Running steps that wait for a person now, holding no slot."""
        return frozenset(self._away)

    def is_pending(self, step_id: str) -> bool:
        return step_id in self._pending

    def has_ready(self) -> bool:
        return any(sid in self._pending for _, sid in self._ready)

    def can_start(self) -> bool:
        """A ready step could start now: there is a free slot, or a person to ask."""
        return (
            not self.halted
            and self.has_ready()
            and (self._busy < self.max_concurrency or self._human_ready())
        )

    def _human_ready(self) -> bool:
        return any(sid in self._human and sid in self._pending for _, sid in self._ready)

    # -- what the run tells it ------------------------------------------------------

    def start_ready(self) -> list[str]:
        """Every ready step there is room for, in spec order; they count as running now."""
        if self.halted:
            return []
        started: list[str] = []
        deferred = []
        while self._ready:
            entry = heapq.heappop(self._ready)
            step_id = entry[1]
            if step_id not in self._pending:
                continue  # cancelled while it waited its turn
            human = step_id in self._human
            if not human and self._busy >= self.max_concurrency:
                deferred.append(entry)
                continue
            self._start(step_id)
            started.append(step_id)
        for entry in deferred:
            heapq.heappush(self._ready, entry)
        return started

    def resume(self, step_id: str, *, away: bool = False) -> None:
        """A step a continued run took over running (a person still to answer) runs here too;
        `away`: a step that takes a slot, waiting for a person (it takes none till answered)."""
        self._pending.pop(step_id, None)
        if away:
            self._running.add(step_id)
            self._away.add(step_id)
        else:
            self._start(step_id)

    def wait_for_person(self, step_id: str) -> None:
        """A running step now waits for a person: its slot is free for others meanwhile."""
        if step_id in self._running and step_id not in self._human | self._away:
            self._away.add(step_id)
            self._busy -= 1

    def answered(self, step_id: str) -> None:
        """The person answered: the step takes its slot back, at once (it had it before)."""
        if step_id in self._away:
            self._away.discard(step_id)
            self._busy += 1

    def _start(self, step_id: str) -> None:
        self._pending.pop(step_id, None)
        self._running.add(step_id)
        if step_id not in self._human:
            self._busy += 1

    def settle(self, step_id: str, status: StepStatus) -> list[Skip]:
        """`step_id` (running or still pending) ended in `status`: release or skip its dependents.

        Returns:
            The steps skipped because of it, transitively, each with its reason.
        """
        if step_id in self._running:
            self._running.discard(step_id)
            if step_id in self._away:
                self._away.discard(step_id)
            elif step_id not in self._human:
                self._busy -= 1
        self._pending.pop(step_id, None)
        if status is not StepStatus.SUCCEEDED and self.halted:
            return []  # the whole run stops; the caller gives every pending step its reason
        skipped: list[Skip] = []
        settled = [(step_id, status)]
        while settled:
            cause, cause_status = settled.pop()
            for dependent in self._dependents[cause]:
                self._unmet[dependent] -= 1
                if cause_status is StepStatus.SUCCEEDED:
                    self._any_succeeded.add(dependent)
                if dependent not in self._pending:
                    continue
                trigger = self._trigger[dependent]
                blocked = _blocks(trigger, cause_status) or (
                    self._unmet[dependent] == 0
                    and trigger == "one_succeeded"
                    and dependent not in self._any_succeeded
                )
                if blocked:
                    del self._pending[dependent]
                    if _blocks(trigger, cause_status):
                        what = cause_status.value.lower().replace("_", " ")
                        reason = f"dependency {cause!r} {what}"
                    else:
                        reason = "no dependency succeeded"
                    skipped.append((dependent, reason))
                    settled.append((dependent, StepStatus.SKIPPED))
                elif self._unmet[dependent] == 0:
                    heapq.heappush(self._ready, (self._order[dependent], dependent))
        return skipped

    def halt(self) -> None:
        """The run fails: nothing starts any more, and failures skip nothing on their own."""
        self.halted = True

    def stop(self) -> list[str]:
        """Halt, forget the running steps, and hand back every pending step in spec order."""
        self.halt()
        self._ready.clear()
        self._running.clear()
        self._away.clear()
        self._busy = 0
        pending = sorted(self._pending, key=self._order.__getitem__)
        self._pending.clear()
        return pending
