"""`stepflow_steps_total{pipeline,kind,status}`: steps counted as they reach a final status.

Metrics are not commands: recording one adds nothing to history. The SDK's
workflow meter drops what is recorded while a workflow replays, so each step
is counted once, by the worker that saw it end; a continued run does not count
again the steps it took over. With the worker's metrics off the meter is a no-op.
"""

from __future__ import annotations

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
        StepStatus.REUSED,
    }
)


class StepCounter:
    """Counts each step of one pipeline run once, when it reaches a final status.

    Told of each status change (`RunState.on_status`), so a step costs O(1) however
    many the run has; the steps a continued run takes over ended in the run before,
    which counted them, and change no more.
    """

    def __init__(self, pipeline: str) -> None:
        self._pipeline = pipeline
        self._counted: set[str] = set()
        self._counter: MetricCounter | None = None

    def count(self, record: StepRecord) -> None:
        """`record`'s status changed (`RunState.on_status`): count it if final now, once."""
        if record.status not in FINAL or record.id in self._counted:
            return
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
