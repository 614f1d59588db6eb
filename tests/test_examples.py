"""The example pipelines, end to end on the offline model against the real test server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import jsonschema
import pytest

from examples.tools import check_python
from stepflow.activities.builtin.files import write_file
from stepflow.client.api import ControlRejected, StepflowClient
from stepflow.client.loading import load_spec_file
from stepflow.runtime.settings import Settings
from stepflow.workflows.models import AgentStep, PipelineResult, PipelineStatus, StepStatus

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
RESEARCH = EXAMPLES / "research_report.yaml"
CODE_TASK = EXAMPLES / "code_task.yaml"
RELEASE_NOTES = EXAMPLES / "release_notes.yaml"
RESEARCHERS = ["research-1", "research-2", "research-3"]


@pytest.fixture
def settings(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The suite's settings with the example tools loaded, and no model configured (offline)."""
    modules = [*settings.tool_modules, "examples.tools"]  # the suite's test tools stay loaded
    monkeypatch.setenv("STEPFLOW_TOOL_MODULES", ",".join(modules))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    return Settings()


def assert_all_succeeded(result: PipelineResult) -> None:
    unhappy = {
        r.id: f"{r.status}: {r.error or r.reason}"
        for r in result.steps
        if r.status is not StepStatus.SUCCEEDED
    }
    assert result.status is PipelineStatus.SUCCEEDED and not unhappy, (result.error, unhappy)


def assert_agents_answered_offline(result: PipelineResult, path: Path) -> None:
    spec = load_spec_file(path)
    agents = [s.id for s in spec.steps if isinstance(s, AgentStep)]
    assert agents
    calls = 0
    for step_id in agents:
        record = result.step(step_id)
        assert record.model == "offline", step_id
        usage = record.usage
        assert usage is not None and usage.model_calls >= 1, step_id
        assert usage.prompt_tokens > 0 and usage.completion_tokens > 0, step_id
        calls += usage.model_calls
    assert result.usage.model_calls == calls


async def test_research_report_plans_researches_in_parallel_writes_and_reviews(
    worker: None, stepflow: StepflowClient, settings: Settings
) -> None:
    result = await stepflow.run_pipeline(RESEARCH)  # the default topic

    assert_all_succeeded(result)
    assert_agents_answered_offline(result, RESEARCH)

    aspects = result.output("plan")["aspects"]
    assert len(aspects) == 3 and all(set(a) == {"aspect", "question"} for a in aspects)

    research = [result.step(r) for r in RESEARCHERS]
    for record in research:
        assert record.tool_calls is not None and record.tool_calls >= 1, record.id
        assert "search_notes" in record.output  # the offline answer quotes its tool results
        assert "durable-execution.md" in record.output  # ...which found the notes on the topic
    # The three ran side by side: each started before any of them ended, all before the writer.
    starts = [r.started_at for r in research if r.started_at is not None]
    ends = [r.ended_at for r in research if r.ended_at is not None]
    assert len(starts) == len(ends) == 3
    assert max(starts) < min(ends)
    writer_start = result.step("writer").started_at
    assert writer_start is not None and max(ends) <= writer_start

    review = load_spec_file(RESEARCH).step("review")
    assert isinstance(review, AgentStep) and isinstance(review.output_schema, dict)
    review_schema = review.output_schema
    jsonschema.validate(result.output("review"), review_schema)
    assert result.output("length") == len(result.output("writer").split())

    saved = settings.workspace / "reports" / "durable-execution.md"
    assert result.output("save")["path"] == "reports/durable-execution.md"
    text = saved.read_text(encoding="utf-8")
    assert text.startswith(result.output("writer"))
    assert f"Review: {result.output('review')['verdict']}" in text


async def test_code_task_analyzes_generates_writes_validates_and_summarises(
    worker: None, stepflow: StepflowClient, settings: Settings
) -> None:
    result = await stepflow.run_pipeline(CODE_TASK)

    assert_all_succeeded(result)
    assert_agents_answered_offline(result, CODE_TASK)

    copied = result.output("setup")["paths"]
    assert "todo-app/todo/models.py" in copied and len(copied) == 5
    analyze = result.step("analyze")
    assert analyze.tool_calls == 2  # list_files and read_files
    assert analyze.output["target_file"] == "todo-app/todo/models.py"

    generated = result.output("generate")
    assert generated["path"] == "todo-app/todo/models.py"
    written = settings.workspace / generated["path"]
    assert written.read_text(encoding="utf-8") == generated["content"]
    assert result.output("write") == {
        "path": generated["path"],
        "bytes": len(generated["content"].encode()),
    }

    check = result.output("validate")
    assert check["compiles"] is True and check["errors"] == []
    assert "TodoList" in check["definitions"]
    assert isinstance(result.output("cleanup"), str) and result.output("cleanup")


async def test_code_task_prompts_are_smaller_with_dependency_scoped_context(
    worker: None, stepflow: StepflowClient
) -> None:
    spec = load_spec_file(CODE_TASK)
    scoped = await stepflow.run_pipeline(spec)
    full = await stepflow.run_pipeline(spec.model_copy(update={"context": "full"}))

    assert_all_succeeded(scoped)
    assert_all_succeeded(full)
    assert scoped.usage.model_calls == full.usage.model_calls
    assert scoped.output("generate") == full.output("generate")
    tokens = {
        step_id: [usage.prompt_tokens for r in (scoped, full) if (usage := r.step(step_id).usage)]
        for step_id in ("analyze", "generate", "cleanup")
    }
    assert tokens["analyze"][0] == tokens["analyze"][1]  # the first agent step has no history
    assert tokens["generate"][0] < tokens["generate"][1]
    assert tokens["cleanup"][0] < tokens["cleanup"][1]
    assert scoped.usage.prompt_tokens < full.usage.prompt_tokens


def test_check_python_compiles_without_running_and_reports_errors(settings: Settings) -> None:
    marker = settings.workspace / "ran"
    write_file("good.py", f"open({str(marker)!r}, 'w').close()\n")
    good = check_python("good.py")
    assert good.compiles and good.errors == [] and not marker.exists()

    write_file("bad.py", "def broken(:\n    pass\n")
    bad = check_python("bad.py")
    assert not bad.compiles and bad.errors == ["line 1: invalid syntax"]


async def _until_waiting(stepflow: StepflowClient, workflow_id: str, step_id: str) -> str | None:
    """The step's rendered message once it waits for someone (polls the status query)."""
    for _ in range(200):
        record = (await stepflow.status(workflow_id)).step(step_id)
        if record.status is StepStatus.WAITING:
            return record.message
        await asyncio.sleep(0.05)
    raise AssertionError(f"step {step_id!r} never waited")


async def test_release_notes_waits_for_an_input_and_an_approval_then_publishes(
    worker: None, stepflow: StepflowClient, settings: Settings
) -> None:
    run = await stepflow.start_pipeline(RELEASE_NOTES, {"version": "2.0.0"})

    asked = await _until_waiting(stepflow, run.workflow_id, "highlights")
    assert asked is not None and asked.startswith("How many of these changes")
    with pytest.raises(ControlRejected, match="less than the minimum of 1"):
        await stepflow.give_input(run.workflow_id, "highlights", 0)
    await stepflow.give_input(run.workflow_id, "highlights", 2)

    asked = await _until_waiting(stepflow, run.workflow_id, "sign-off")
    assert asked == "Publish the notes for 2.0.0 with 2 highlights?"
    await stepflow.approve(run.workflow_id, "sign-off", comment="ship it")

    result = await stepflow.get_result(run.workflow_id)
    assert_all_succeeded(result)
    assert result.output("sign-off") == {"approved": True, "comment": "ship it", "by": "user"}
    published = (settings.workspace / "releases" / "2.0.0.md").read_text(encoding="utf-8")
    assert published.startswith(result.output("draft"))
    assert published.endswith("Highlights: the first 2.")


async def test_release_notes_publishes_nothing_when_the_sign_off_is_rejected(
    worker: None, stepflow: StepflowClient, settings: Settings
) -> None:
    run = await stepflow.start_pipeline(RELEASE_NOTES)
    await _until_waiting(stepflow, run.workflow_id, "highlights")
    await stepflow.give_input(run.workflow_id, "highlights", 1)
    await _until_waiting(stepflow, run.workflow_id, "sign-off")
    await stepflow.reject(run.workflow_id, "sign-off", comment="typo in line 2")

    result = await stepflow.get_result(run.workflow_id)
    assert result.status is PipelineStatus.FAILED
    assert result.step("sign-off").error == "rejected: typo in line 2"
    assert result.step("publish").status is StepStatus.SKIPPED
    assert not (settings.workspace / "releases").exists()
