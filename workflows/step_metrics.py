"""`stepflow_steps_total{pipeline,kind,status}`: steps counted as they reach a final status.

Metrics are not commands: recording one adds nothing to history. The SDK's
workflow meter drops what is recorded while a workflow replays, so each step
is counted once, by the worker that saw it end; a continued run does not count
again the steps it took over. With the worker's metrics off the meter is a no-op.
"""

from __future__ import annotations

from collections.abc import Iterable

from temporalio import workflow
from temporalio.common import MetricCounter

from stepflow.workflows.models import StepRecord, StepStatus

STEPS_METRIC = "stepflow_steps_total"

FINAL = frozenset(
    {
        StepStatus.SUCCEEDED,
        StepStatus.FAILED,
        StepStatus.TIMED_OUT,
        StepStatus.SKIPPED,
        StepStatus.CANCELLED,
    }
)


class StepCounter:
    """Counts each step of one pipeline run once, when it has reached a final status."""

    def __init__(self, pipeline: str, taken_over: Iterable[StepRecord] = ()) -> None:
        """`taken_over`: the records a continued run starts with, counted by the run before."""
        self._pipeline = pipeline
        self._counted = {r.id for r in taken_over if r.status in FINAL}
        self._counter: MetricCounter | None = None

    def count(self, records: Iterable[StepRecord]) -> None:
        """Count the steps among `records` that ended since the last call."""
        for record in records:
            if record.status in FINAL and record.id not in self._counted:
                self._counted.add(record.id)
                if self._counter is None:
                    self._counter = workflow.metric_meter().create_counter(
                        STEPS_METRIC, "Steps that reached a final status, by pipeline and kind."
                    )
                self._counter.add(
                    1,
                    {
                        "pipeline": self._pipeline,
                        "kind": record.kind,
                        "status": record.status.value.lower(),
                    },
                )
