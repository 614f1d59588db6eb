"""Control flow against the real dev server: `when`, `trigger`, `for_each`, loops, sub-pipelines
and a pipeline's `outputs`. Tools journal every call, so each test also shows what ran."""

from __future__ import annotations

import uuid
from typing import Any

from temporalio.client import Client

from stepflow.client.api import StepflowClient
from stepflow.workflows.models import PipelineStatus, StepStatus
from tests.support.control_tools import eventually
from tests.support.helpers import pipeline, step
from tests.support.tools import journal_read


def record_step(step_id: str, journal: str, value: Any, **fields: Any) -> dict[str, Any]:
    return step(step_id, "record", args={"journal": journal, "value": value}, **fields)


def ran(journal: str) -> list[str]:
    """The steps whose tool ran, in the order they finished."""
    return [e["step"] for e in journal_read(journal) if e["event"] == "end"]


async def test_if_else_joins_with_none_failed_and_outputs_name_the_result(
    worker: None, stepflow: StepflowClient, journal: str
) -> None:
    spec = pipeline(
        record_step("size", journal, {"words": 120}),
        record_step(
            "cheap",
            journal,
            "cheap path",
            depends_on=["size"],
            when="steps.size.output.words < 1000",
        ),
        record_step(
            "thorough",
            journal,
            "thorough path",
            depends_on=["size"],
            when="steps.size.output.words >= 1000",
        ),
        record_step(
            "join",
            journal,
            "{{ steps.cheap.output }} / {{ steps.thorough.output }}",
            depends_on=["cheap", "thorough"],
            trigger="none_failed",
        ),
        outputs={"path": "{{ steps.join.output }}", "words": "{{ steps.size.output.words }}"},
    )
    result = await stepflow.run_pipeline(spec)

    assert result.status is PipelineStatus.SUCCEEDED, result.error
    assert result.step("thorough").status is StepStatus.SKIPPED
    assert result.step("thorough").reason == "condition false"
    assert result.outputs == {"path": "cheap path / null", "words": 120}
    assert ran(journal) == ["size", "cheap", "join"]


async def test_all_done_runs_after_a_failure_and_all_succeeded_is_skipped(
    worker: None, stepflow: StepflowClient, journal: str
) -> None:
    spec = pipeline(
        step(
            "broken", "fail", args={"message": "boom", "non_retryable": True}, on_failure="continue"
        ),
        record_step("after", journal, "never", depends_on=["broken"]),
        record_step("cleanup", journal, "cleaned", depends_on=["broken"], trigger="all_done"),
        record_step(
            "either", journal, "one", depends_on=["broken", "cleanup"], trigger="one_succeeded"
        ),
    )
    result = await stepflow.run_pipeline(spec)

    assert result.status is PipelineStatus.SUCCEEDED, result.error
    assert result.step("after").status is StepStatus.SKIPPED
    assert result.step("after").reason == "dependency 'broken' failed"
    assert ran(journal) == ["cleanup", "either"]


async def test_for_each_runs_one_instance_per_item_in_order(
    worker: None, stepflow: StepflowClient, journal: str, temporal_client: Client
) -> None:
    spec = pipeline(
        record_step("plan", journal, [{"aspect": "cost"}, {"aspect": "speed"}, {"aspect": "risk"}]),
        record_step(
            "research",
            journal,
            "{{ index }}: {{ item.aspect }}",
            depends_on=["plan"],
            for_each="{{ steps.plan.output }}",
            max_concurrency=2,
        ),
    )
    result = await stepflow.run_pipeline(spec)

    assert result.status is PipelineStatus.SUCCEEDED, result.error
    assert result.output("research") == ["0: cost", "1: speed", "2: risk"]
    record = result.step("research")
    assert (record.items, record.items_done, record.items_failed) == (3, 3, 0)


async def test_for_each_of_something_else_than_a_list_fails_the_step_not_the_task(
    worker: None, stepflow: StepflowClient, journal: str
) -> None:
    spec = pipeline(
        record_step("plan", journal, {"not": "a list"}),
        record_step(
            "research", journal, "x", depends_on=["plan"], for_each="{{ steps.plan.output }}"
        ),
    )
    result = await stepflow.run_pipeline(spec)

    assert result.status is PipelineStatus.FAILED
    assert result.step("research").error_type == "ForEachNotAList"


async def test_item_failure_continue_puts_errors_beside_the_successes(
    worker: None, stepflow: StepflowClient, journal: str
) -> None:
    spec = pipeline(
        record_step("plan", journal, ["ok", "bad", "ok"]),
        step(
            "each",
            "fail",
            depends_on=["plan"],
            for_each="{{ steps.plan.output }}",
            args={"message": "item {{ index }} broke", "non_retryable": True},
            when="item == 'bad'",
            item_failure="continue",
        ),
    )
    result = await stepflow.run_pipeline(spec)

    assert result.status is PipelineStatus.SUCCEEDED, result.error
    output = result.output("each")
    assert output[0] is None and output[2] is None  # `when` false for these items
    assert output[1]["error"].endswith("item 1 broke")
    assert result.step("each").items_failed == 1


async def test_a_loop_ends_when_until_is_true(
    worker: None, stepflow: StepflowClient, journal: str
) -> None:
    spec = pipeline(
        record_step("draft", journal, "v0"),
        {
            "id": "revise",
            "kind": "loop",
            "depends_on": ["draft"],
            "max_iterations": 5,
            "until": "steps.review.output == 'approve'",
            "steps": [
                record_step("write", journal, "{{ steps.draft.output }}+{{ loop.iteration }}"),
                record_step(
                    "review", journal, "approve", depends_on=["write"], when="loop.iteration >= 3"
                ),
            ],
        },
        outputs={"final": "{{ steps.revise.output.write }}"},
    )
    result = await stepflow.run_pipeline(spec)

    assert result.status is PipelineStatus.SUCCEEDED, result.error
    assert result.step("revise").iteration == 3
    assert result.outputs == {"final": "v0+3"}
    assert ran(journal) == ["draft", "write", "write", "write", "review"]


async def test_a_loop_that_never_meets_until_fails_or_keeps_the_last(
    worker: None, stepflow: StepflowClient, journal: str
) -> None:
    body = [record_step("write", journal, "try {{ loop.iteration }}")]
    loop = {"id": "revise", "kind": "loop", "max_iterations": 2, "until": "false", "steps": body}
    failed = await stepflow.run_pipeline(pipeline(loop))
    kept = await stepflow.run_pipeline(pipeline(loop | {"on_exhausted": "last"}))

    assert failed.status is PipelineStatus.FAILED
    assert failed.step("revise").error_type == "LoopExhausted"
    assert kept.status is PipelineStatus.SUCCEEDED
    assert kept.output("revise") == {"write": "try 2"}


async def test_a_sub_pipeline_runs_as_a_child_with_its_own_inputs(
    worker: None, stepflow: StepflowClient, journal: str
) -> None:
    child = {
        "name": "translate",
        "inputs": {"text": {"type": "string"}, "lang": {"type": "string", "default": "fr"}},
        "steps": [record_step("tr", journal, "{{ inputs.lang }}: {{ inputs.text }}")],
        "outputs": {"text": "{{ steps.tr.output }}"},
    }
    broken = {
        "name": "broken",
        "steps": [step("no", "fail", args={"message": "nope", "non_retryable": True})],
    }
    spec = pipeline(
        record_step("write", journal, "hello"),
        {
            "id": "translate",
            "kind": "pipeline",
            "pipeline": child,
            "depends_on": ["write"],
            "inputs": {"text": "{{ steps.write.output }}"},
        },
        {"id": "extra", "kind": "pipeline", "pipeline": broken, "on_failure": "continue"},
    )
    result = await stepflow.run_pipeline(spec)

    assert result.status is PipelineStatus.SUCCEEDED, result.error
    assert result.output("translate") == {"text": "fr: hello"}
    assert (result.step("translate").child or "").endswith("/translate")
    assert result.step("extra").status is StepStatus.FAILED
    assert "nope" in (result.step("extra").error or "")


async def test_stepflow_list_shows_the_run_but_not_its_child_runs(
    worker: None, stepflow: StepflowClient, journal: str
) -> None:
    body = [record_step("write", journal, "x")]
    loop = {"id": "revise", "kind": "loop", "max_iterations": 2, "steps": body}
    name = f"listed-{uuid.uuid4().hex[:8]}"  # other tests' runs share the server
    run = await stepflow.start_pipeline(pipeline(loop, name=name))
    await stepflow.get_result(run.workflow_id)

    async def listed() -> list[str]:
        runs = await stepflow.list_runs(limit=1000)
        return [r.workflow_id for r in runs if r.workflow_id.startswith(run.workflow_id)]

    assert await eventually(listed, lambda ids: bool(ids), "the run listed") == [run.workflow_id]
