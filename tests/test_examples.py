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
from stepflow.workflows.models import (
    AgentStep,
    LoopStep,
    PipelineResult,
    PipelineSpec,
    PipelineStatus,
    PipelineStep,
    StepStatus,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
RESEARCH = EXAMPLES / "research_report.yaml"
CODE_TASK = EXAMPLES / "code_task.yaml"
RELEASE_NOTES = EXAMPLES / "release_notes.yaml"
TRIAGE = EXAMPLES / "triage.yaml"
TRANSLATE = EXAMPLES / "translate.yaml"


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
    """Every agent step answered offline; loops and sub-pipelines count their agents' calls."""
    spec = load_spec_file(path)
    agents = [s.id for s in spec.steps if isinstance(s, AgentStep) and result.step(s.id).usage]
    nested = [s.id for s in spec.steps if isinstance(s, LoopStep | PipelineStep)]
    assert agents
    calls = 0
    for step_id in agents + nested:
        record = result.step(step_id)
        if step_id in agents:
            assert record.model == "offline", step_id
        usage = record.usage
        assert usage is not None and usage.model_calls >= 1, step_id
        assert usage.prompt_tokens > 0 and usage.completion_tokens > 0, step_id
        calls += usage.model_calls
    assert result.usage.model_calls == calls


def with_step(spec: PipelineSpec, step_id: str, **changes: object) -> PipelineSpec:
    """The spec with one top-level step's fields changed."""
    steps = [s.model_copy(update=changes) if s.id == step_id else s for s in spec.steps]
    return spec.model_copy(update={"steps": steps})


async def test_research_report_fans_out_per_aspect_and_revises_until_approved(
    worker: None, stepflow: StepflowClient, settings: Settings
) -> None:
    run = await stepflow.start_pipeline(RESEARCH)  # the default topic
    result = await stepflow.get_result(run.workflow_id)

    assert_all_succeeded(result)
    assert_agents_answered_offline(result, RESEARCH)

    # The plan decides how many researchers run: one instance of `research` per aspect.
    aspects = result.output("plan")["aspects"]
    assert len(aspects) == 3 and all(set(a) == {"aspect", "question"} for a in aspects)
    research = result.step("research")
    assert (research.items, research.items_done, research.items_failed) == (3, 3, 0)
    findings = result.output("research")
    assert isinstance(findings, list) and len(findings) == len(aspects)
    for aspect, finding in zip(aspects, findings, strict=True):
        assert f'"aspect": "{aspect["aspect"]}"' in finding  # each instance got its own item
        assert "search_notes" in finding  # the offline answer quotes its tool results
        assert "durable-execution.md" in finding  # ...which found the notes on the topic
    # Each instance is an agent child `<run id>/research[i]`; they ran side by side.
    children = [
        await stepflow.temporal.get_workflow_handle(f"{run.workflow_id}/research[{i}]").describe()
        for i in range(len(aspects))
    ]
    starts = [c.start_time for c in children]
    ends = [c.close_time for c in children if c.close_time is not None]
    assert len(ends) == len(starts) == 3 and max(starts) < min(ends)

    # The loop: the first review asks for a revision, the second approves, `until` ends it.
    revise = result.step("revise")
    assert (revise.iteration, revise.max_iterations) == (2, 3)
    assert revise.child == f"{run.workflow_id}/revise/2"
    first = await stepflow.get_result(f"{run.workflow_id}/revise/1")
    assert first.output("review")["verdict"] == "revise"
    final = result.output("revise")
    assert set(final) == {"writer", "length", "review"}
    assert final["review"]["verdict"] == "approve"
    assert "draft 2 of at most 3" in final["writer"]  # the writer saw `loop.iteration`
    loop = load_spec_file(RESEARCH).step("revise")
    assert isinstance(loop, LoopStep)
    review = next(s for s in loop.steps if s.id == "review")
    assert isinstance(review, AgentStep) and isinstance(review.output_schema, dict)
    jsonschema.validate(final["review"], review.output_schema)
    assert final["length"] == len(final["writer"].split())

    saved = settings.workspace / "reports" / "durable-execution.md"
    assert result.output("save")["path"] == "reports/durable-execution.md"
    text = saved.read_text(encoding="utf-8")
    assert text.startswith(final["writer"])
    assert "Review: approve, score 1/10" in text
    assert result.outputs == {
        "report": "reports/durable-execution.md",
        "aspects": aspects,
        "verdict": "approve",
        "words": final["length"],
    }


async def test_research_report_fails_with_loop_exhausted_when_the_reviewer_never_approves(
    worker: None, stepflow: StepflowClient, settings: Settings
) -> None:
    """One draft only: the offline reviewer asks for a revision of it, and no iteration is left."""
    spec = with_step(load_spec_file(RESEARCH), "revise", max_iterations=1)
    result = await stepflow.run_pipeline(spec, {"topic": "sagas"})

    assert result.status is PipelineStatus.FAILED
    revise = result.step("revise")
    assert revise.status is StepStatus.FAILED and revise.error_type == "LoopExhausted"
    assert revise.iteration == 1
    assert "`until` still false after 1 iterations" in (revise.error or "")
    assert result.step("save").status is StepStatus.SKIPPED
    assert result.outputs is None
    assert not (settings.workspace / "reports" / "sagas.md").exists()

    # `on_exhausted: last` keeps the last draft instead, and its "revise" verdict is saved.
    kept = await stepflow.run_pipeline(with_step(spec, "revise", on_exhausted="last"))
    assert_all_succeeded(kept)
    assert kept.outputs is not None and kept.outputs["verdict"] == "revise"
    assert "Review: revise" in (settings.workspace / "reports" / "durable-execution.md").read_text()


async def test_triage_escalates_an_urgent_message_and_translates_the_reply(
    worker: None, stepflow: StepflowClient, settings: Settings
) -> None:
    run = await stepflow.start_pipeline(TRIAGE)  # the default message reports an outage
    result = await stepflow.get_result(run.workflow_id)

    assert result.status is PipelineStatus.SUCCEEDED, result.error
    assert_agents_answered_offline(result, TRIAGE)
    assert result.output("scan") == ["down", "urgently", "data loss"]
    assert result.step("escalate").status is StepStatus.SUCCEEDED
    answer = result.step("answer")
    assert (answer.status, answer.reason) == (StepStatus.SKIPPED, "condition false")
    # The join ran although one of its dependencies was skipped (`trigger: none_failed`).
    assert result.output("reply") == result.output("escalate")

    # The sub-pipeline (translate.yaml) ran as the child `<run id>/translate`.
    translate = result.step("translate")
    assert translate.child == f"{run.workflow_id}/translate"
    child = await stepflow.get_result(translate.child)
    assert child.pipeline == "translate"
    assert [r.id for r in child.steps] == ["translation", "words"]
    assert child.outputs == result.output("translate")
    translated = result.output("translate")
    assert translated["language"] == "fr"
    assert translated["text"].startswith(
        '[offline model] Translate the input into the language "fr".'
    )
    assert translated["words"] == len(translated["text"].split())

    saved = (settings.workspace / "tickets" / "T-1042.md").read_text(encoding="utf-8")
    assert saved.startswith('# T-1042\nFlags: ["down", "urgently", "data loss"]\n')
    assert translated["text"] in saved and result.output("reply") in saved
    assert result.outputs == {
        "flags": ["down", "urgently", "data loss"],
        "reply": translated["text"],
        "language": "fr",
        "saved": "tickets/T-1042.md",
    }


async def test_triage_answers_a_question_from_the_notes_on_the_other_branch(
    worker: None, stepflow: StepflowClient, settings: Settings
) -> None:
    inputs = {
        "ticket": "T-7",
        "message": "How do retries with backoff work for our exports?",
        "language": "de",
    }
    result = await stepflow.run_pipeline(TRIAGE, inputs)

    assert result.status is PipelineStatus.SUCCEEDED, result.error
    assert result.output("scan") == []
    escalate = result.step("escalate")
    assert (escalate.status, escalate.reason) == (StepStatus.SKIPPED, "condition false")
    assert result.step("answer").tool_calls == 1
    assert "retries-and-idempotency.md" in result.output("answer")
    assert result.output("reply") == result.output("answer")
    assert result.outputs is not None and result.outputs["language"] == "de"
    assert (settings.workspace / "tickets" / "T-7.md").is_file()


async def test_translate_runs_on_its_own_too(worker: None, stepflow: StepflowClient) -> None:
    result = await stepflow.run_pipeline(TRANSLATE, {"text": "Thanks!", "language": "es"})

    assert_all_succeeded(result)
    assert result.outputs is not None
    assert result.outputs["language"] == "es"
    assert result.outputs["words"] == len(result.outputs["text"].split())


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


async def test_a_rerun_of_the_research_report_from_the_writer_saves_the_model_calls_before_it(
    worker: None, stepflow: StepflowClient, settings: Settings
) -> None:
    """The day the writer's prompt was wrong: rerun from it, keep the plan and the research."""
    old = await stepflow.start_pipeline(RESEARCH)
    first = await stepflow.get_result(old.workflow_id)
    assert_all_succeeded(first)

    run = await stepflow.rerun(old.workflow_id, "revise.writer")
    again = await stepflow.get_result(run.workflow_id)

    assert again.status is PipelineStatus.SUCCEEDED, again.error
    assert [again.step(s).status for s in ("plan", "research")] == [StepStatus.REUSED] * 2
    assert again.outputs == first.outputs
    saved = first.usage.model_calls - again.usage.model_calls
    print(
        f"\nresearch report: {first.usage.model_calls} model calls; the rerun from "
        f"revise.writer made {again.usage.model_calls}, saving {saved}"
    )
    assert again.usage.model_calls < first.usage.model_calls
