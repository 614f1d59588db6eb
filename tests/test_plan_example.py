"""examples/code_task_planned.yaml end to end on the offline model against the real test server:
the offline planner makes a small valid plan within the example's `allow`, and it runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from stepflow.client.api import StepflowClient
from stepflow.client.loading import check_spec, load_spec_file
from stepflow.client.plan_checks import plan_issues, plan_step_issues
from stepflow.client.plan_view import plan_lines
from stepflow.runtime.settings import Settings
from stepflow.workflows.models import PipelineStatus, PlanStep, StepStatus

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "code_task_planned.yaml"


@pytest.fixture
def settings(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The suite's settings with the example tools loaded, and no model configured (offline)."""
    modules = [*settings.tool_modules, "examples.tools"]
    monkeypatch.setenv("STEPFLOW_TOOL_MODULES", ",".join(modules))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    return Settings()


def test_the_example_passes_every_check(settings: Settings) -> None:
    spec = load_spec_file(EXAMPLE)
    check_spec(spec)
    assert plan_step_issues(spec) == []
    plan = spec.step("plan")
    assert isinstance(plan, PlanStep)
    assert plan.allow.tools == [
        "list_files",
        "read_files",
        "read_source",
        "write_file",
        "check_python",
    ]
    assert (plan.allow.max_steps, plan.max_plan_repairs, plan.approve) == (12, 2, False)


async def test_the_offline_planner_makes_a_valid_plan_and_it_runs(
    worker: None, stepflow: StepflowClient, settings: Settings
) -> None:
    run = await stepflow.start_pipeline(EXAMPLE)
    result = await stepflow.get_result(run.workflow_id)

    unhappy = {r.id: r.error for r in result.steps if r.status is not StepStatus.SUCCEEDED}
    assert result.status is PipelineStatus.SUCCEEDED and not unhappy, (result.error, unhappy)
    record = result.step("plan")
    assert record.model == "offline"
    plan = record.plan
    assert plan is not None
    spec = load_spec_file(EXAMPLE).step("plan")
    assert isinstance(spec, PlanStep)
    assert plan_issues(plan, spec.allow) == []  # within the example's allow
    assert [(s["id"], s["kind"]) for s in plan["steps"]] == [
        ("survey", "tool"),
        ("analyze", "agent"),
        ("summarize", "agent"),
    ]
    assert plan["steps"][0]["tool"] == "list_files"

    # The plan ran as the child run <run id>/plan/plan, which got the request.
    assert record.child == f"{run.workflow_id}/plan/plan"
    child = await stepflow.get_result(record.child)
    assert [(r.id, r.status) for r in child.steps] == [
        ("survey", StepStatus.SUCCEEDED),
        ("analyze", StepStatus.SUCCEEDED),
        ("summarize", StepStatus.SUCCEEDED),
    ]
    assert "todo-app/todo/models.py" in child.output("survey")
    assert "Give todo items a priority" in child.output("analyze")
    summary = result.outputs["result"]["summary"] if result.outputs else None
    assert isinstance(summary, str) and summary.startswith("[offline model]")
    # One planner call, two planned agent calls: every one counts for the step.
    assert record.usage is not None and record.usage.model_calls == 3
    assert result.usage.model_calls == 3

    table = "\n".join(plan_lines(plan))
    assert "survey" in table and "list_files" in table
