"""Ready-set scheduling on a real server: overlap where allowed, order where required, bounds."""

from __future__ import annotations

from typing import Any

from stepflow.client.api import StepflowClient
from stepflow.workflows.models import PipelineStatus, StepStatus
from tests.support.helpers import pipeline, step
from tests.support.tools import journal_read


def intervals(journal: str) -> dict[str, tuple[float, float]]:
    """Each step's (first start, last end) from the journal."""
    spans: dict[str, list[float]] = {}
    for entry in journal_read(journal):
        if entry["event"] in ("start", "arrive"):
            spans.setdefault(entry["step"], [entry["time"], entry["time"]])
        elif entry["event"] == "end":
            spans[entry["step"]][1] = entry["time"]
    return {k: (v[0], v[1]) for k, v in spans.items()}


def most_at_once(spans: dict[str, tuple[float, float]]) -> int:
    edges = sorted([(s, 1) for s, _ in spans.values()] + [(e, -1) for _, e in spans.values()])
    running = peak = 0
    for _, delta in edges:  # ends sort before starts at equal times: touching is not overlap
        running += delta
        peak = max(peak, running)
    return peak


async def test_diamond_runs_branches_together_and_joins_after_both(
    worker: None, stepflow: StepflowClient, journal: str
) -> None:
    spec = pipeline(
        step("plan", "record", args={"journal": journal, "value": {"topic": "x"}}),
        # Both branches must be running at once for either to finish.
        step(
            "left",
            "rendezvous",
            args={"journal": journal, "group": "mid", "expect": 2},
            depends_on=["plan"],
        ),
        step(
            "right",
            "rendezvous",
            args={"journal": journal, "group": "mid", "expect": 2},
            depends_on=["plan"],
        ),
        step(
            "join",
            "record",
            args={
                "journal": journal,
                "value": ["{{ steps.left.output }}", "{{ steps.right.output }}"],
            },
            depends_on=["left", "right"],
        ),
    )
    result = await stepflow.run_pipeline(spec)

    assert result.status is PipelineStatus.SUCCEEDED
    assert result.output("join") == [2, 2]
    spans = intervals(journal)
    assert spans["plan"][1] <= min(spans["left"][0], spans["right"][0])
    assert spans["join"][0] >= max(spans["left"][1], spans["right"][1])
    assert [r.attempts for r in result.steps] == [1, 1, 1, 1]


async def test_wide_fan_out_runs_every_branch_at_once(
    worker: None, stepflow: StepflowClient, journal: str
) -> None:
    width = 25
    branches = [
        step(
            f"b{i}",
            "rendezvous",
            args={"journal": journal, "group": "fan", "expect": width},
            depends_on=["start"],
        )
        for i in range(width)
    ]
    spec = pipeline(
        step("start", "echo", args={"value": 1}),
        *branches,
        step(
            "gather",
            "echo",
            args={"value": [f"{{{{ steps.b{i}.output }}}}" for i in range(width)]},
            depends_on=[f"b{i}" for i in range(width)],
        ),
        max_concurrency=width,
    )
    result = await stepflow.run_pipeline(spec)
    assert result.status is PipelineStatus.SUCCEEDED
    assert result.output("gather") == [width] * width


async def test_max_concurrency_is_never_exceeded(
    worker: None, stepflow: StepflowClient, journal: str
) -> None:
    steps = [step(f"s{i}", "record", args={"journal": journal, "seconds": 0.3}) for i in range(6)]
    result = await stepflow.run_pipeline(pipeline(*steps, max_concurrency=2))

    assert result.status is PipelineStatus.SUCCEEDED
    assert most_at_once(intervals(journal)) == 2


async def test_outputs_flow_through_references(
    worker: None, stepflow: StepflowClient, journal: str
) -> None:
    spec = pipeline(
        step("a", "echo", args={"value": {"items": [{"name": "first"}, {"name": "second"}]}}),
        step(
            "b",
            "echo",
            args={"value": "{{ steps.a.output.items.1.name }} of {{ inputs.n }}"},
            depends_on=["a"],
        ),
        step("c", "echo", args={"value": "{{ inputs.n }}"}),
        inputs={"n": {"type": "integer", "default": 3}},
    )
    result = await stepflow.run_pipeline(spec)
    assert result.output("b") == "second of 3"
    assert result.output("c") == 3  # a whole-string reference keeps its type


async def test_a_reference_to_a_missing_field_fails_the_step_without_retrying(
    worker: None, stepflow: StepflowClient
) -> None:
    spec = pipeline(
        step("a", "echo", args={"value": {"x": 1}}),
        step(
            "b",
            "echo",
            args={"value": "{{ steps.a.output.nope }}"},
            depends_on=["a"],
            on_failure="continue",
        ),
    )
    result = await stepflow.run_pipeline(spec)
    record = result.step("b")
    assert record.status is StepStatus.FAILED
    assert record.error_type == "InvalidReference"
    assert "has no field 'nope'" in (record.error or "")


async def test_records_have_times_in_order(worker: None, stepflow: StepflowClient) -> None:
    result = await stepflow.run_pipeline(
        pipeline(step("a", "echo"), step("b", "echo", depends_on=["a"]))
    )
    a, b = result.steps
    times: list[Any] = [a.started_at, a.ended_at, b.started_at, b.ended_at]
    assert None not in times
    assert times == sorted(times)
    assert result.started_at <= a.started_at and b.ended_at <= result.ended_at  # type: ignore[operator]
