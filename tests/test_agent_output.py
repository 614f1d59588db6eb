"""Structured output: answers checked against the step's schema, repaired, and used downstream."""

from __future__ import annotations

from typing import Any

from stepflow.client.api import StepflowClient
from stepflow.workflows.models import StepStatus
from tests.support.helpers import agent, pipeline, step
from tests.support.model_server import ScriptedModelServer, json_answer, text

VERDICT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "verdict": {"enum": ["approve", "reject"]},
        "score": {"type": "integer", "minimum": 0, "maximum": 10},
    },
    "required": ["verdict", "score"],
}


async def test_an_invalid_answer_is_repaired_and_downstream_steps_read_its_fields(
    worker: None, stepflow: StepflowClient, model_server: ScriptedModelServer
) -> None:
    model_server.play(
        json_answer({"verdict": "maybe", "score": 7}),
        json_answer({"verdict": "approve", "score": 7}),
    )
    spec = pipeline(
        agent("review", output_schema=VERDICT_SCHEMA),
        step(
            "announce",
            "echo",
            depends_on=["review"],
            args={"value": "{{ steps.review.output.verdict }}"},
        ),
    )
    result = await stepflow.run_pipeline(spec)

    assert result.step("review").status is StepStatus.SUCCEEDED
    assert result.output("review") == {"verdict": "approve", "score": 7}
    assert result.output("announce") == "approve"
    first, second = model_server.requests
    # The schema goes to the model twice over: as response_format, and in the instructions.
    assert first.body["response_format"]["json_schema"]["schema"] == VERDICT_SCHEMA
    assert '"verdict"' in first.messages[0]["content"]
    repair = second.messages[-1]
    assert repair["role"] == "user"
    assert repair["content"].startswith("Your answer did not match the output schema: verdict:")
    assert "'maybe' is not one of ['approve', 'reject']" in repair["content"]


async def test_repairs_run_out_and_the_step_fails_with_the_last_validation_error(
    worker: None, stepflow: StepflowClient, model_server: ScriptedModelServer
) -> None:
    model_server.play(text("I think it is fine"), json_answer({"verdict": "approve", "score": 11}))
    spec = pipeline(agent("review", output_schema=VERDICT_SCHEMA, max_output_repairs=1))
    result = await stepflow.run_pipeline(spec)

    record = result.step("review")
    assert record.status is StepStatus.FAILED
    assert record.error_type == "OutputSchemaMismatch"
    assert record.error == (
        "the answer does not match the output schema after 1 repair: "
        "score: 11 is greater than the maximum of 10"
    )
    assert "not valid JSON" in model_server.requests[1].messages[-1]["content"]
    assert len(model_server.requests) == 2 and not model_server.unexpected


async def test_a_pydantic_model_by_import_path_checks_answers_with_its_validators(
    worker: None, stepflow: StepflowClient, model_server: ScriptedModelServer
) -> None:
    model_server.play(
        json_answer({"verdict": "reject", "reasons": ["  "]}),
        text('```json\n{"verdict": "reject", "reasons": ["too short"]}\n```'),
    )
    spec = pipeline(agent("review", output_schema="tests.support.schemas:Verdict"))
    result = await stepflow.run_pipeline(spec)

    assert result.step("review").status is StepStatus.SUCCEEDED
    assert result.output("review") == {"verdict": "reject", "reasons": ["too short"]}
    repair = model_server.requests[1].messages[-1]["content"]
    assert "reasons: Value error, reasons must not be blank" in repair
