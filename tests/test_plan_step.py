"""Plan steps against the real dev server and the scripted model server: a model's plan is
checked like a pipeline file (and against `allow`), repaired, approved, and run as a child
pipeline run. Tools journal every call, so each test also shows what ran (and what never did).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from stepflow.client.api import ControlRejected, StepflowClient
from stepflow.client.cli import main
from stepflow.client.plan_checks import plan_issues, plan_step_issues
from stepflow.client.plan_view import plan_lines, plan_table
from stepflow.client.timeline import format_lines
from stepflow.workflows.control import RunStatus
from stepflow.workflows.models import (
    PipelineSpec,
    PipelineStatus,
    PlanAllow,
    StepRecord,
    StepStatus,
)
from stepflow.workflows.requests import check_decision
from stepflow.workflows.run_view import details_markdown
from stepflow.workflows.validation import structural_issues
from tests.support.control_tools import assert_mentions, history, timers, wait_step
from tests.support.crash import wait_for_journal
from tests.support.helpers import pipeline, step
from tests.support.model_server import ScriptedModelServer, json_answer, text
from tests.support.plans import TOPIC, plan_step, planned, ran, recorded
from tests.support.processes import tool_worker_env
from tests.support.tools import journal_read
from tests.support.worker_processes import run_through_worker_crash

# -- a plan that is valid at once ------------------------------------------------------------


async def test_a_valid_plan_runs_as_a_child_run_and_its_outputs_are_the_steps_output(
    worker: None, stepflow: StepflowClient, model_server: ScriptedModelServer, journal: str
) -> None:
    plan = planned(
        recorded("fetch", journal, "{{ inputs.request }}"),
        {
            "id": "sum_up",
            "kind": "agent",
            "instructions": "Sum up what was fetched.",
            "input": "{{ steps.fetch.output }}",
            "depends_on": ["fetch"],
        },
        said="{{ steps.sum_up.output }}",
        fetched="{{ steps.fetch.output }}",
    )
    model_server.play(json_answer(plan), text("the tides, summed up"))
    spec = pipeline(
        plan_step(),
        step("after", "echo", args={"value": "{{ steps.plan.output.said }}"}, depends_on=["plan"]),
        inputs=TOPIC,
    )
    run = await stepflow.start_pipeline(spec)
    result = await stepflow.get_result(run.workflow_id)

    assert result.status is PipelineStatus.SUCCEEDED, result.error
    record = result.step("plan")
    assert record.output == {"said": "the tides, summed up", "fetched": "tides"}
    assert result.output("after") == "the tides, summed up"
    assert record.plan == plan
    assert record.child == f"{run.workflow_id}/plan/plan"
    assert ran(journal) == ["fetch"]
    # The planner's tokens and the planned run's both count for the step.
    assert record.usage is not None and record.usage.model_calls == 2
    # The planner was told how to plan and got the plan schema; the planned agent saw the
    # request only through its dependency.
    planner, summer = model_server.requests
    assert_mentions(planner.text, "Plan the work on tides", "Answer with a plan", "StepflowPlan")
    assert "tides" in summer.text and "Plan the work" not in summer.text
    assert model_server.unexpected == []
    child = await stepflow.get_result(record.child)
    assert [r.id for r in child.steps] == ["fetch", "sum_up"]

    # `stepflow history` shows the plan under the planner's line, as a table.
    lines = format_lines(await stepflow.history(run.workflow_id))
    at = next(
        i for i, line in enumerate(lines) if re.search("planner of step plan +completed", line)
    )
    assert lines[at].endswith("completed: a plan of 2 steps"), lines
    table = "\n".join(lines[at : at + 6])
    assert_mentions(table, r"fetch\s+tool\s+record", r"sum_up\s+agent\s+default model\s+fetch")


# -- repairs ----------------------------------------------------------------------------------


async def test_an_invalid_plan_goes_back_with_its_errors_until_it_is_valid(
    worker: None, stepflow: StepflowClient, model_server: ScriptedModelServer, journal: str
) -> None:
    unknown_dependency = planned(recorded("a", journal, 1, depends_on=["nope"]))
    bad_template = planned(
        recorded("a", journal, 1), recorded("b", journal, "{{ steps.a.output }}")
    )
    good = planned(
        recorded("a", journal, 1),
        recorded("b", journal, "{{ steps.a.output }}", depends_on=["a"]),
    )
    model_server.play(json_answer(unknown_dependency), json_answer(bad_template), json_answer(good))
    result = await stepflow.run_pipeline(pipeline(plan_step(), inputs=TOPIC))

    assert result.status is PipelineStatus.SUCCEEDED, result.error
    assert result.step("plan").plan == good
    assert result.output("plan") == {"a": 1, "b": 1}
    first_repair = model_server.requests[1].text
    assert_mentions(first_repair, "Your plan is not valid", r"1\. step 'a': depends_on: unknown")
    second_repair = model_server.requests[2].text
    assert_mentions(second_repair, r"step 'b': args.value: .*steps.a.output.* not in depends_on")
    assert ran(journal) == ["a", "b"]  # only the valid plan ran


async def test_a_plan_that_never_becomes_valid_fails_the_step_as_plan_invalid(
    worker: None, stepflow: StepflowClient, model_server: ScriptedModelServer, journal: str
) -> None:
    model_server.play(
        json_answer(planned(recorded("a", journal, 1, depends_on=["a"]))),
        json_answer({"steps": []}),
    )
    result = await stepflow.run_pipeline(
        pipeline(plan_step(max_plan_repairs=1), inputs=TOPIC, name="never-valid")
    )

    assert result.status is PipelineStatus.FAILED
    record = result.step("plan")
    assert record.status is StepStatus.FAILED
    assert record.error_type == "PlanInvalid"
    assert_mentions(record.error or "", "after 1 repair", r"1\. steps: give at least one step")
    assert record.plan is None and record.child is None  # nothing of it ran
    assert record.usage is not None and record.usage.model_calls == 2
    assert journal_read(journal) == []
    assert model_server.unexpected == []


async def test_a_tool_outside_allow_is_refused_and_never_runs(
    worker: None, stepflow: StepflowClient, model_server: ScriptedModelServer, journal: str
) -> None:
    sneaky = planned(
        recorded("grab", journal, "secret"),
        {"id": "helper", "kind": "agent", "instructions": "x", "tools": ["record"]},
    )
    fixed = planned(step("grab", "echo", args={"value": "{{ inputs.request }}"}))
    model_server.play(json_answer(sneaky), json_answer(fixed))
    allow = {"tools": ["echo"], "max_steps": 3}
    result = await stepflow.run_pipeline(pipeline(plan_step(allow=allow), inputs=TOPIC))

    assert result.status is PipelineStatus.SUCCEEDED, result.error
    assert result.output("plan") == {"grab": "tides"}
    repair = model_server.requests[1].text
    assert_mentions(
        repair,
        r"step 'grab': tool: tool 'record' is not allowed in this plan \(allowed: echo\)",
        r"step 'helper': tools\[0\]: tool 'record' is not allowed",
    )
    assert journal_read(journal) == []  # `record` never ran, not even once


# -- approval ---------------------------------------------------------------------------------


async def test_a_plan_waits_for_approval_and_runs_once_approved(
    worker: None,
    stepflow: StepflowClient,
    temporal_client: Client,
    model_server: ScriptedModelServer,
    journal: str,
) -> None:
    plan = planned(recorded("a", journal, "{{ inputs.request }}"))
    model_server.play(json_answer(plan))
    spec = pipeline(plan_step(approve=True), inputs=TOPIC)
    run = await stepflow.start_pipeline(spec)
    handle = temporal_client.get_workflow_handle(run.workflow_id)

    state = await wait_step(handle, "plan", "WAITING")
    record = state.step("plan")
    assert record.waiting_for == "approval"
    assert record.plan == plan  # shown before anything of it runs
    assert record.message == "Run the plan of step plan? 1 step: a"
    assert journal_read(journal) == []

    answer = await stepflow.approve(run.workflow_id, "plan", "fine")
    assert "plan" in answer
    result = await stepflow.get_result(run.workflow_id)
    assert result.status is PipelineStatus.SUCCEEDED, result.error
    assert result.output("plan") == {"a": "tides"}
    assert result.step("plan").comment == "fine"
    assert ran(journal) == ["a"]


async def test_a_rejected_plan_fails_the_step_and_never_runs(
    worker: None,
    stepflow: StepflowClient,
    temporal_client: Client,
    model_server: ScriptedModelServer,
    journal: str,
) -> None:
    model_server.play(json_answer(planned(recorded("a", journal, 1))))
    spec = pipeline(
        plan_step(approve={"message": "Run it?"}, on_failure="continue"),
        step("other", "echo", args={"value": "went on"}),
        inputs=TOPIC,
    )
    run = await stepflow.start_pipeline(spec)
    handle = temporal_client.get_workflow_handle(run.workflow_id)
    state = await wait_step(handle, "plan", "WAITING")
    assert state.step("plan").message == "Run it?"

    await stepflow.reject(run.workflow_id, "plan", "too risky")
    result = await stepflow.get_result(run.workflow_id)

    record = result.step("plan")
    assert record.status is StepStatus.FAILED
    assert (record.error_type, record.error) == ("Rejected", "rejected: too risky")
    assert record.child is None
    assert result.output("other") == "went on"
    assert journal_read(journal) == []


@pytest.mark.parametrize(
    ("on_timeout", "outcome"), [("approve", StepStatus.SUCCEEDED), ("reject", StepStatus.FAILED)]
)
async def test_an_unanswered_plan_is_decided_by_on_timeout(
    worker: None,
    stepflow: StepflowClient,
    temporal_client: Client,
    model_server: ScriptedModelServer,
    journal: str,
    on_timeout: str,
    outcome: StepStatus,
) -> None:
    model_server.play(json_answer(planned(recorded("a", journal, 1))))
    approve = {"timeout": "1s", "on_timeout": on_timeout}
    spec = pipeline(plan_step(approve=approve), inputs=TOPIC)
    run = await stepflow.start_pipeline(spec)
    result = await stepflow.get_result(run.workflow_id)

    assert result.step("plan").status is outcome, result.step("plan").error
    assert ran(journal) == (["a"] if on_timeout == "approve" else [])
    handle = temporal_client.get_workflow_handle(run.workflow_id)
    assert [t.total_seconds() for t in timers(await history(handle))] == [1.0]


async def test_approve_is_refused_for_a_plan_step_that_is_not_waiting(
    worker: None,
    stepflow: StepflowClient,
    temporal_client: Client,
    model_server: ScriptedModelServer,
    journal: str,
) -> None:
    """Until its plan is made the step is not waiting: an approval then would approve nothing."""
    model_server.play(json_answer(planned(recorded("a", journal, 1))))
    spec = pipeline(
        step("first", "record", args={"journal": journal, "value": 1, "seconds": 2}),
        plan_step(approve=True, depends_on=["first"]),
        inputs=TOPIC,
    )
    run = await stepflow.start_pipeline(spec)
    handle = temporal_client.get_workflow_handle(run.workflow_id)
    await wait_step(handle, "first", "RUNNING")
    with pytest.raises(ControlRejected, match="not waiting for approval of its plan"):
        await stepflow.approve(run.workflow_id, "plan")
    await wait_step(handle, "plan", "WAITING")
    await stepflow.approve(run.workflow_id, "plan")
    assert (await stepflow.get_result(run.workflow_id)).status is PipelineStatus.SUCCEEDED


def test_check_decision_knows_plan_steps() -> None:
    spec = PipelineSpec.model_validate(
        {
            "name": "p",
            "steps": [
                {"id": "asks", "kind": "plan", "instructions": "x", "approve": True},
                {"id": "runs", "kind": "plan", "instructions": "x"},
            ],
        }
    )
    steps = {s.id: s for s in spec.steps}
    waiting = StepRecord(id="asks", kind="plan", status=StepStatus.WAITING, waiting_for="approval")
    records = {"asks": waiting, "runs": StepRecord(id="runs", kind="plan")}
    check_decision(steps, records, "asks")  # accepted
    with pytest.raises(Exception, match="plan step without `approve`"):
        check_decision(steps, records, "runs")
    records["asks"] = StepRecord(id="asks", kind="plan", status=StepStatus.RUNNING)
    with pytest.raises(Exception, match=r"not waiting for approval of its plan \(it is RUNNING\)"):
        check_decision(steps, records, "asks")


# -- a worker killed while the planned pipeline runs ------------------------------------------


def started(journal: str) -> Counter[str]:
    """How many times each planned step's tool started."""
    return Counter(e["step"] for e in journal_read(journal) if e["event"] == "start")


async def test_worker_killed_mid_plan_repeats_no_completed_step_and_never_plans_again(
    temporal_env: WorkflowEnvironment,
    stepflow: StepflowClient,
    model_server: ScriptedModelServer,
    task_queue: str,
    journal: str,
    tmp_path: Path,
) -> None:
    quick = {"initial_interval": "100ms"}
    slow = {"start_to_close": "5s"}
    plan = planned(
        recorded("one", journal, 1),
        step(
            "two",
            "record",
            args={"journal": journal, "value": 2, "seconds": 3},
            depends_on=["one"],
            on_failure="fail",
        ),
        recorded("three", journal, "{{ steps.two.output }}", depends_on=["two"]),
        done="{{ steps.three.output }}",
    )
    model_server.play(json_answer(plan))
    # The pipeline's defaults apply to the planned steps: a dead worker's attempt of `two`
    # times out after 5 s and is retried quickly.
    spec = pipeline(
        plan_step(),
        inputs=TOPIC,
        defaults={"retry": quick, "timeout": slow},
    )
    env = tool_worker_env(
        temporal_env.client.service_client.config.target_host,
        task_queue,
        OPENAI_BASE_URL=model_server.base_url,
        OPENAI_API_KEY="sk-test-not-a-real-key",
    )
    crash = await run_through_worker_crash(
        stepflow,
        env,
        tmp_path,
        spec,
        # `one` done, `two` started (it takes 3 s): the worker dies in the middle of it.
        kill_when=lambda _: wait_for_journal(journal, lambda entries: started(journal)["two"] == 1),
    )

    result = crash.result
    assert result.status is PipelineStatus.SUCCEEDED, result.error
    assert result.output("plan") == {"done": 2}
    assert started(journal) == {"one": 1, "two": 2, "three": 1}
    assert len(model_server.requests) == 1  # planned once: the answer is in history
    assert model_server.unexpected == []


# -- checks before a run starts ----------------------------------------------------------------


def test_stepflow_validate_refuses_a_plan_step_allowing_an_unknown_tool(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STEPFLOW_TOOL_MODULES", "tests.support.tools")
    path = tmp_path / "planned.yaml"
    spec = {
        "name": "planned",
        "inputs": TOPIC,
        "steps": [plan_step(allow={"tools": ["echo", "recrod"]})],
    }
    path.write_text(json.dumps(spec))
    code = main(["validate", str(path)])
    output = capsys.readouterr()
    assert code == 2, output
    assert_mentions(
        output.err + output.out,
        r"step 'plan': allow.tools\[1\]: unknown tool 'recrod' \(did you mean 'record'\?\)",
    )


def test_plan_step_issues_check_tools_and_room_for_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEPFLOW_TOOL_MODULES", "tests.support.tools")
    deep = "d" * 200
    spec = PipelineSpec.model_validate(
        {
            # Room for the plan step's own id, not for its plan's steps' ids under it.
            "name": "p" * 70,
            "steps": [
                plan_step("fine", allow={"tools": ["echo"]}),
                plan_step("odd", allow={"tools": ["nope"]}),
                {
                    "id": deep,
                    "kind": "loop",
                    "max_iterations": 1,
                    "steps": [
                        {
                            "id": deep,
                            "kind": "loop",
                            "max_iterations": 1,
                            "steps": [
                                {
                                    "id": deep,
                                    "kind": "loop",
                                    "max_iterations": 1,
                                    "steps": [plan_step(deep, allow={"tools": ["echo"]})],
                                }
                            ],
                        }
                    ],
                },
                plan_step("slow", allow={"tools": ["echo"]}, retry={"max_interval": "500ms"}),
            ],
        }
    )
    messages = [str(issue) for issue in plan_step_issues(spec)]
    assert messages[0] == "step 'odd': allow.tools[0]: unknown tool 'nope'"
    assert any("nested too deep" in m for m in messages), messages
    assert any("step 'slow': retry: max_interval" in m and "is shorter" in m for m in messages)
    assert len(messages) == 3, messages


def test_structural_checks_of_plan_steps() -> None:
    spec = PipelineSpec.model_validate(
        {
            "name": "p",
            "steps": [
                plan_step(
                    "a",
                    allow={"tools": ["echo", "echo"], "kinds": ["tool"], "models": ["m", " "]},
                    approve={"on_timeout": "approve"},
                ),
                plan_step("b", allow={"kinds": []}),
                plan_step("c", allow={"kinds": ["tool"]}),
                plan_step("d", input="{{ steps.a.output }}"),
            ],
        }
    )
    messages = [str(issue) for issue in structural_issues(spec)]
    assert [m for m in messages if "inputs.topic" not in m] == [
        "step 'a': allow.tools: 'echo' is listed twice",
        "step 'a': allow.models[1]: a model name cannot be empty",
        "step 'a': approve.on_timeout: has no effect without a timeout",
        "step 'b': allow.kinds: a plan needs at least one step kind",
        "step 'c': allow.tools: a plan of tool steps only needs tools to call",
        "step 'd': input: {{ steps.a.output }} uses step 'a', which is not in depends_on: a "
        "step sees only the outputs of the steps it depends on",
    ], messages
    assert "for_each" not in PipelineSpec.model_json_schema()["$defs"]["PlanStep"]["properties"]


def test_a_plan_steps_approval_message_is_checked_like_its_other_templates() -> None:
    spec = PipelineSpec.model_validate(
        {
            "name": "p",
            "steps": [
                plan_step("a", approve={"message": "Run it for {{ steps.b.output }}?"}),
                plan_step("b"),
            ],
        }
    )
    messages = [str(issue) for issue in structural_issues(spec)]
    assert any(
        m.startswith("step 'a': approve.message: {{ steps.b.output }} uses step 'b'")
        for m in messages
    ), messages


# -- the plan check and the table, without a server --------------------------------------------


def test_plan_issues_name_the_step_and_field_of_each_problem(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from stepflow.activities.registry import load_tool_modules

    load_tool_modules(["tests.support.tools"])
    allow = PlanAllow(tools=["echo", "record"], kinds=["tool", "agent"], max_steps=3, models=["m"])
    plan = {
        "steps": [
            {"id": "a", "kind": "tool", "tool": "record", "args": {"value": 1}},
            {"id": "b", "kind": "agent", "instructions": "x", "model": "big", "retry": {}},
            {"id": "c", "kind": "pipeline", "steps": [{"id": "x", "kind": "tool", "tool": "echo"}]},
            {"id": "d", "kind": "tool", "tool": "echo", "depends_on": ["zz"]},
        ],
        "outputs": {"r": "{{ steps.a.output }}"},
        "notes": "mine",
    }
    messages = [str(issue) for issue in plan_issues(plan, allow)]
    assert messages == [
        "notes: a plan has only `steps` and `outputs`",
        "steps: 4 steps, over the 3 this plan may have (allow.max_steps)",
        "step 'a': args.journal: Field required",
        "step 'b': retry: may not be set in a plan (the pipeline decides it)",
        "step 'b': model: model 'big' is not allowed in this plan (allowed: m)",
        "step 'c': kind 'pipeline' is not allowed in this plan (allowed: tool, agent)",
        "step 'd': depends_on: unknown step 'zz'",
    ], messages
    assert plan_issues([1], allow) and plan_issues({"steps": "x"}, allow)


def test_plan_table_shows_each_step_and_what_it_uses() -> None:
    plan = {
        "steps": [
            {"id": "look", "kind": "tool", "tool": "list_files"},
            {
                "id": "think",
                "kind": "agent",
                "model": "m",
                "tools": ["read_files"],
                "depends_on": ["look"],
            },
            "not a step",
        ],
        "outputs": {"summary": "{{ steps.think.output }}"},
    }
    lines = plan_lines(plan)
    text = "\n".join(lines)
    assert_mentions(
        text, r"look\s+tool\s+list_files\s+-", r"think\s+agent\s+m; tools: read_files\s+look"
    )
    assert "outputs: summary" in text
    assert plan_table({}).row_count == 0


def test_the_web_uis_details_show_the_plan_under_the_steps() -> None:
    plan = {
        "steps": [
            {"id": "look", "kind": "tool", "tool": "list_files"},
            {"id": "th|nk", "kind": "agent", "depends_on": ["look"]},
        ]
    }
    records = [
        StepRecord(id="plan", kind="plan", status=StepStatus.RUNNING, plan=plan),
        StepRecord(id="after", kind="tool"),
    ]
    text = details_markdown("demo", RunStatus.RUNNING, records, datetime(2026, 1, 1, tzinfo=UTC))

    steps_table, _, plan_part = text.partition("plan of step **plan**")
    assert "| after |" in steps_table
    assert "| look | tool | list_files | - |" in plan_part
    assert "| th\\|nk | agent | default model | look |" in plan_part  # a cell cannot end early
    many = {"steps": [{"id": f"s{i}", "kind": "tool", "tool": "t"} for i in range(50)]}
    record = StepRecord(id="plan", kind="plan", status=StepStatus.SUCCEEDED, plan=many)
    text = details_markdown("demo", RunStatus.RUNNING, [record], datetime(2026, 1, 1, tzinfo=UTC))
    assert "| s39 |" in text and "| s40 |" not in text and "... 10 more" in text


# -- the schema a planner is given, and the offline planner --------------------------------------


@pytest.mark.parametrize(
    "allow",
    [
        PlanAllow(tools=["echo", "record"]),
        PlanAllow(tools=["record"], kinds=["tool"]),
        PlanAllow(kinds=["agent"], max_steps=1),
        PlanAllow(tools=["record", "echo"], max_steps=2, models=["m"]),
    ],
    ids=["tools-and-agents", "tools-only", "one-agent", "two-steps"],
)
def test_the_offline_planner_answers_a_valid_plan_within_allow(allow: PlanAllow) -> None:
    from stepflow.activities.offline_model import offline_completion
    from stepflow.activities.plan_check import plan_output_schema
    from stepflow.activities.registry import load_tool_modules

    load_tool_modules(["tests.support.tools"])
    schema = plan_output_schema(allow)
    messages = [
        {"role": "system", "content": "Plan it."},
        {"role": "user", "content": "Input:\ntides"},
    ]
    reply = offline_completion(messages, [], schema.json_schema)
    plan, errors = schema.check(reply["message"]["content"])
    assert errors is None, errors
    assert 1 <= len(plan["steps"]) <= allow.max_steps
    assert {s["kind"] for s in plan["steps"]} <= set(allow.kinds)
    # Asked again after a repair, it answers the same plan.
    repair = {"role": "user", "content": "Your plan is not valid: 1. ..."}
    again = offline_completion([*messages, reply["message"], repair], [], schema.json_schema)
    assert again["message"]["content"] == reply["message"]["content"]


def test_the_plan_schema_is_narrowed_by_allow() -> None:
    from jsonschema import Draft202012Validator

    from stepflow.activities.plan_check import PLAN_SCHEMA_TITLE, plan_json_schema
    from stepflow.activities.registry import load_tool_modules

    load_tool_modules(["tests.support.tools"])
    schema = plan_json_schema(PlanAllow(tools=["echo", "record"], max_steps=5, models=["m"]))
    Draft202012Validator.check_schema(schema)
    assert schema["title"] == PLAN_SCHEMA_TITLE
    steps = schema["properties"]["steps"]
    assert steps["maxItems"] == 5
    variants = {v["title"]: v for v in steps["items"]["anyOf"]}
    assert set(variants) == {"tool step: echo", "tool step: record", "agent step"}
    record_args = variants["tool step: record"]["properties"]["args"]
    assert record_args["required"] == ["journal"]
    agent_step = variants["agent step"]["properties"]
    assert agent_step["tools"]["items"] == {"enum": ["echo", "record"]}
    assert agent_step["model"]["enum"] == ["m"]
    assert "retry" not in agent_step and "cache" not in agent_step
    valid = Draft202012Validator(schema)
    good = planned(
        step("a", "record", args={"journal": "{{ inputs.request }}", "seconds": "{{ x }}"})
    )
    assert valid.is_valid(good)
    assert not valid.is_valid(planned(step("a", "fail", args={"message": "x"})))
    only_tools = plan_json_schema(PlanAllow(tools=["echo"], kinds=["tool"]))
    assert [v["title"] for v in only_tools["properties"]["steps"]["items"]["anyOf"]] == [
        "tool step: echo"
    ]
