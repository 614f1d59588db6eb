"""Budgets across a run: prices, the ledger, the checks before a run starts, and runs that hit
their budget against the real dev server and the scripted model server.

Every scripted reply costs a known number of tokens, so what a run spends, and by how much
it overshoots, can be counted exactly.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from rich.console import Console
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from stepflow.activities.budget import price_usage, require_price
from stepflow.activities.model_endpoint import ModelEndpoint, resolve_endpoint
from stepflow.activities.registry import load_tool_modules
from stepflow.client.api import StepflowClient
from stepflow.client.budget_checks import budget_issues
from stepflow.client.render import usage_line
from stepflow.client.runs import RunSummary
from stepflow.client.watch import ChangeLines, Seen, live_view
from stepflow.runtime.devserver import continue_as_new_early, start_ephemeral_environment
from stepflow.runtime.settings import ModelPrice, Settings
from stepflow.runtime.telemetry import MODEL_COST
from stepflow.worker import build_worker
from stepflow.workflows.budget import (
    BUDGET_LEDGER_WORKFLOW,
    RECENT_CHARGES,
    BudgetBook,
    BudgetCharge,
    LedgerInput,
    budget_line,
    is_spent,
    ledger_workflow_id,
    money,
    spend_text,
)
from stepflow.workflows.control import PipelineState, RunStatus
from stepflow.workflows.errors import ErrorType
from stepflow.workflows.models import (
    BudgetLedger,
    BudgetSpec,
    BudgetSpent,
    ModelCallInput,
    PipelineInput,
    PipelineStatus,
    StepRecord,
    StepStatus,
    TokenUsage,
)
from stepflow.workflows.run_state import LedgerState
from tests.support.control_tools import current_details
from tests.support.helpers import agent, pipeline, step
from tests.support.model_server import (
    TEST_API_KEY,
    RecordedRequest,
    Reply,
    ScriptedModelServer,
    refusal,
    text,
    tool_calls,
)
from tests.support.processes import (
    free_port,
    process_env,
    stepflow_cli,
)
from tests.support.waiting import wait_until
from tests.support.worker_processes import running_worker

PRICE = {"input": 2.0, "output": 10.0}
"""USD per million tokens of the scripted `priced` model."""
CALL = (900, 100)
"""Prompt and completion tokens of every scripted reply: 1,000 tokens, $0.0028 at `PRICE`."""
CALL_TOKENS = sum(CALL)
CALL_COST = (CALL[0] * PRICE["input"] + CALL[1] * PRICE["output"]) / 1_000_000


def priced_models(
    monkeypatch: pytest.MonkeyPatch, server: ScriptedModelServer, **models: dict[str, Any] | None
) -> None:
    """STEPFLOW_MODELS on the (in-process) worker and the client: each model at the server,
    with its price (None: unpriced); the first is the default model."""
    config = {
        name: {"base_url": server.base_url, **({"price": price} if price else {})}
        for name, price in models.items()
    }
    monkeypatch.setenv("STEPFLOW_MODELS", json.dumps(config))
    monkeypatch.setenv("STEPFLOW_DEFAULT_MODEL", next(iter(models)))


def busy_agent(request: RecordedRequest) -> Reply:
    """Asks for a tool call every time: the step goes on calling until something stops it."""
    return tool_calls(("echo", {"value": "again"}), usage=CALL, delay=0.15)


def answer(request: RecordedRequest) -> Reply:
    return text("done", usage=CALL, delay=0.05)


@pytest.fixture
def cli_env(temporal_env: WorkflowEnvironment, task_queue: str) -> dict[str, str]:
    target = temporal_env.client.service_client.config.target_host
    return process_env(target, STEPFLOW_TASK_QUEUE=task_queue)


def watched(state: PipelineState) -> str:
    """What `stepflow watch` shows of `state` on a terminal."""
    console = Console(record=True, width=200)
    summary = RunSummary(state.workflow_id, "", state.pipeline, execution_status="RUNNING")
    console.print(live_view(Seen(state, summary)))
    return console.export_text()


def call_input(**fields: Any) -> ModelCallInput:
    return ModelCallInput(step_id="write", model=None, messages=[], **fields)


# -- prices ------------------------------------------------------------------------------------


def test_a_price_turns_tokens_into_dollars_and_cached_tokens_cost_their_own_price() -> None:
    endpoint = ModelEndpoint(name="m", price=ModelPrice(input=2.5, output=10, cached_input=1.25))
    usage = TokenUsage(prompt_tokens=1000, completion_tokens=200, total_tokens=1200, model_calls=1)
    assert price_usage(call_input(), endpoint, usage).cost == pytest.approx(0.0045)
    cached = usage.model_copy(update={"cached_tokens": 400})
    # 600 at 2.50, 400 at 1.25, 200 at 10.00 per million.
    assert price_usage(call_input(), endpoint, cached).cost == pytest.approx(0.004)
    without = ModelEndpoint(name="m", price=ModelPrice(input=2.5, output=10))
    assert price_usage(call_input(), without, cached).cost == pytest.approx(0.0045)
    assert price_usage(call_input(), ModelEndpoint(name="m"), usage).cost == 0  # unpriced


def test_prices_come_from_stepflow_models_and_offline_is_free_unless_priced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv(
        "STEPFLOW_MODELS", json.dumps({"gpt-4o": {"price": {"input": 2.5, "output": 10}}})
    )
    settings = Settings()
    assert resolve_endpoint("gpt-4o", settings).price == ModelPrice(input=2.5, output=10)
    assert resolve_endpoint("other", settings).price is None
    assert resolve_endpoint("offline", settings).price == ModelPrice(input=0, output=0)
    offline = Settings(models={"offline": {"price": {"input": 1, "output": 2}}})
    assert resolve_endpoint("offline", offline).price == ModelPrice(input=1, output=2)
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        Settings(models={"m": {"price": {"input": -1, "output": 2}}})


def test_a_cost_budget_on_an_unpriced_model_is_refused_by_the_worker() -> None:
    cost = [BudgetLedger(workflow_id="run-1", budget=BudgetSpec(cost=2.5))]
    tokens = [BudgetLedger(workflow_id="run-1", budget=BudgetSpec(tokens=1000))]
    unpriced = ModelEndpoint(name="gpt-4o")
    with pytest.raises(Exception) as raised:
        require_price(call_input(budgets=cost), unpriced)
    error: Any = raised.value
    assert error.type == ErrorType.MODEL_UNPRICED and error.non_retryable
    assert "'gpt-4o' has no price" in error.message and "STEPFLOW_MODELS" in error.message
    require_price(call_input(cost_budget=False, budgets=tokens), unpriced)  # tokens only: fine
    with pytest.raises(Exception, match="has no price"):
        require_price(call_input(cost_budget=True), unpriced)  # the step's own cost budget
    require_price(call_input(budgets=cost), resolve_endpoint("offline", Settings()))  # free


# -- the ledger --------------------------------------------------------------------------------


def test_the_ledger_adds_charges_once_each_and_notes_a_refusal() -> None:
    budget = BudgetSpec(tokens=2500, cost=1.0)
    book = BudgetBook(budget, LedgerState())
    call = BudgetCharge(usage=TokenUsage(total_tokens=1000, model_calls=1, cost=0.25))
    assert book.charge("a#1", call) and book.charge("b#1", call)
    assert not book.charge("a#1", call)  # the same charge again (a retried request)
    assert book.view().spent.total_tokens == 2000 and not is_spent(budget, book.view().spent)
    book.charge("c#1", call)
    assert is_spent(budget, book.view().spent) and not book.view().exceeded
    book.charge("c#1/refused", BudgetCharge(refused=True))
    view = book.view()
    assert view.exceeded and view.spent.model_calls == 3 and view.spent.cost == 0.75
    for n in range(RECENT_CHARGES + 10):
        book.charge(f"x{n}", BudgetCharge())
    assert len(book.state.charges) == RECENT_CHARGES and book.state.charges[-1] == "x265"


def test_the_ledger_workflow_carries_its_spend_and_charge_ids_over_continue_as_new() -> None:
    book = BudgetBook(BudgetSpec(tokens=10), LedgerState())
    book.charge("a#1", BudgetCharge(usage=TokenUsage(total_tokens=7, cost=0.5)))
    handed = LedgerInput(run_id="run-1", budget=book.budget, state=book.state, last_charge=_now())
    after = LedgerInput.model_validate_json(handed.model_dump_json())
    assert after.state.spent.total_tokens == 7 and after.run_id == "run-1"
    assert after.state.charges == ["a#1"]  # a repeated charge still counts once over there
    again = BudgetBook(after.budget, after.state)
    assert not again.charge("a#1", BudgetCharge(usage=TokenUsage(total_tokens=7)))
    # Its own workflow, beside the run's; never an agent step's (`<run>/<step id>`).
    assert ledger_workflow_id("research-3f2a9c1d") == "research-3f2a9c1d.budget"


def test_spend_reads_as_money_and_tokens_against_the_budget() -> None:
    spent = TokenUsage(total_tokens=12345, cost=0.42)
    assert spend_text(BudgetSpec(tokens=200000, cost=2.5), spent) == (
        "$0.42 of $2.50 · 12,345 of 200,000 tokens"
    )
    assert spend_text(BudgetSpec(tokens=200000), spent) == "$0.42 · 12,345 of 200,000 tokens"
    assert spend_text(BudgetSpec(cost=2.5), TokenUsage()) == "$0.00 of $2.50 · 0 tokens"
    assert (money(0.0031), money(12.5)) == ("$0.0031", "$12.50")
    view = BudgetSpent(budget=BudgetSpec(tokens=10), spent=TokenUsage(total_tokens=12))
    assert budget_line(view) == "budget: 12 of 10 tokens"
    exceeded = view.model_copy(update={"exceeded": True})
    assert budget_line(exceeded).endswith("· spent: model calls refused")


def test_watch_in_a_pipe_says_when_the_budget_ran_out_and_what_the_run_spent() -> None:
    now = _now()
    spent = BudgetSpent(budget=BudgetSpec(cost=2.5), spent=TokenUsage(total_tokens=9, cost=2.6))
    state = PipelineState(
        workflow_id="r",
        pipeline="p",
        status=RunStatus.RUNNING,
        steps=[StepRecord(id="a", kind="agent")],
        counts={},
        usage=TokenUsage(),
        started_at=now,
        as_of=now,
        budget=spent,
    )
    console = Console(record=True, width=200)
    lines = ChangeLines(console)
    summary = RunSummary("r", "", "p", execution_status="RUNNING")
    lines(Seen(state, summary))
    assert "budget" not in console.export_text(
        clear=False
    )  # nothing to say while it is within budget
    state.budget = spent.model_copy(update={"exceeded": True})
    lines(Seen(state, summary))
    lines(Seen(state, summary))
    assert console.export_text(clear=False).count("budget: $2.60 of $2.50 · 9 tokens · spent") == 1
    state.status = RunStatus.FAILED
    lines(Seen(state, summary))
    assert console.export_text(clear=False).count("budget: ") == 1  # said once


# -- checked before a run starts -----------------------------------------------------------------


def test_a_cost_budget_needs_a_price_for_every_model_under_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv(
        "STEPFLOW_MODELS",
        json.dumps({"cheap": {"price": PRICE}, "backup": {}, "planner": {"price": PRICE}}),
    )
    monkeypatch.setenv("STEPFLOW_DEFAULT_MODEL", "cheap")
    spec = pipeline(
        agent("priced"),
        agent("chain", model=["cheap", "backup"]),
        agent("free", model="offline"),
        {
            "id": "revise",
            "kind": "loop",
            "max_iterations": 2,
            "steps": [agent("write", model="unknown")],
        },
        {"id": "sub", "kind": "pipeline", "steps": [agent("inner", model="backup")]},
        {
            "id": "plan",
            "kind": "plan",
            "model": "planner",
            "instructions": "plan",
            "allow": {"tools": ["echo"], "models": ["backup"]},
        },
        budget={"cost": 2.5},
    )
    issues = budget_issues(spec)
    assert [(i.step, i.field) for i in issues] == [
        ("chain", "budget"),
        ("revise.write", "budget"),
        ("sub.inner", "budget"),
        ("plan", "budget"),
    ]
    assert "the run's budget has a `cost`, but model 'backup' has no price" in str(issues[0])
    assert '{"backup": {"price": {"input": 2.5, "output": 10}}}' in str(issues[0])
    # Tokens only: nothing to price. A step's own cost budget: its own models.
    tokens_only = spec.model_copy(update={"budget": BudgetSpec(tokens=1000)})
    assert budget_issues(tokens_only) == []
    own = pipeline(agent("a", model="backup", budget={"cost": 1}), agent("b", model="backup"))
    assert [(i.step, i.message.split(",")[0]) for i in budget_issues(own)] == [
        ("a", "the step's budget has a `cost`")
    ]


def test_with_nothing_configured_every_model_answers_offline_and_costs_nothing() -> None:
    spec = pipeline(agent("a"), agent("b", model="gpt-4o"), budget={"cost": 1})
    assert budget_issues(spec) == []


UNPRICED = """
name: unpriced
budget: {cost: 2.50}
steps:
  - {id: plan, kind: agent, instructions: "plan it", model: writer}
  - id: revise
    kind: loop
    max_iterations: 2
    steps:
      - {id: write, kind: agent, instructions: "write it", model: [writer, backup]}
"""


async def test_stepflow_validate_and_run_refuse_a_cost_budget_over_an_unpriced_model(
    cli_env: dict[str, str], tmp_path: Any
) -> None:
    path = tmp_path / "unpriced.yaml"
    path.write_text(UNPRICED)
    models = {"writer": {"base_url": "http://127.0.0.1:9/v1", "price": PRICE}, "backup": {}}
    env = {**cli_env, "STEPFLOW_MODELS": json.dumps(models)}
    done = await stepflow_cli(env, "validate", str(path))
    assert done.code == 2, done.stdout + done.stderr
    assert done.stderr.strip() == (
        f"{path}: step 'revise.write': budget: the run's budget has a `cost`, but model "
        "'backup' has no price here: add it to STEPFLOW_MODELS, e.g. "
        '{"backup": {"price": {"input": 2.5, "output": 10}}} (USD per million tokens), '
        "or budget `tokens` only"
    )
    done = await stepflow_cli(env, "run", str(path))
    assert done.code == 2 and "'backup' has no price" in done.stderr
    models["backup"] = {"price": {"input": 0, "output": 0}}  # free is a price
    env["STEPFLOW_MODELS"] = json.dumps(models)
    assert (await stepflow_cli(env, "validate", str(path))).code == 0


# -- runs that hit their budget ----------------------------------------------------------------


async def test_ten_parallel_agent_steps_stop_at_the_run_budget_one_call_over_at_most_each(
    worker: None,
    stepflow: StepflowClient,
    model_server: ScriptedModelServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    priced_models(monkeypatch, model_server, priced=PRICE)
    model_server.respond_with(busy_agent)
    budget = 30 * CALL_TOKENS
    steps = [
        agent(f"a{n}", tools=["echo"], max_model_calls=50, on_failure="continue") for n in range(10)
    ]
    result = await stepflow.run_pipeline(
        pipeline(*steps, budget={"tokens": budget}, max_concurrency=10)
    )

    assert result.status is PipelineStatus.SUCCEEDED, result.error  # on_failure: continue
    for record in result.steps:
        assert record.status is StepStatus.FAILED
        assert record.error_type == ErrorType.BUDGET_EXCEEDED
        assert "run budget spent" in (record.error or "")
    calls = result.usage.model_calls
    assert len(model_server.requests) == calls  # every call that was made was charged
    assert result.budget is not None and result.budget.exceeded
    assert result.budget.spent.total_tokens == calls * CALL_TOKENS == result.usage.total_tokens
    overshoot = result.budget.spent.total_tokens - budget
    # Reaching the budget took 30 calls; each of the other 9 steps had at most one under way.
    assert 0 <= overshoot <= 9 * CALL_TOKENS, overshoot
    print(f"\nbudget overshoot: {overshoot:,} tokens, {overshoot // CALL_TOKENS} calls")
    assert result.budget.spent.cost == pytest.approx(calls * CALL_COST)


async def test_a_step_budget_stops_each_for_each_instance_on_its_own(
    worker: None,
    stepflow: StepflowClient,
    model_server: ScriptedModelServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    priced_models(monkeypatch, model_server, priced=PRICE)
    model_server.respond_with(busy_agent)
    spec = pipeline(
        agent(
            "research",
            tools=["echo"],
            max_model_calls=20,
            for_each="{{ inputs.topics }}",
            item_failure="continue",
            budget={"tokens": 2 * CALL_TOKENS + 1},
        ),
        inputs={"topics": {"type": "array", "default": ["a", "b", "c"]}},
    )
    result = await stepflow.run_pipeline(spec)

    assert result.status is PipelineStatus.SUCCEEDED, result.error
    output = result.output("research")
    assert [item["error_type"] for item in output] == [ErrorType.BUDGET_EXCEEDED] * 3
    # Each instance: two calls under its budget, a third that spent it, no fourth.
    assert result.usage.model_calls == 9 == len(model_server.requests)
    assert result.budget is None  # the run has none of its own


async def test_the_run_budget_reaches_into_for_each_instances_and_sub_pipelines(
    worker: None,
    stepflow: StepflowClient,
    model_server: ScriptedModelServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Once the run's budget is spent, the calls of a sub-pipeline (a child run) stop too."""
    priced_models(monkeypatch, model_server, priced=PRICE)
    model_server.respond_with(answer)
    spec = pipeline(
        agent("each", for_each="{{ inputs.items }}", max_concurrency=1),
        {
            "id": "child",
            "kind": "pipeline",
            "depends_on": ["each"],
            "steps": [agent("first"), agent("second", depends_on=["first"])],
        },
        inputs={"items": {"type": "array", "default": [1, 2, 3]}},
        budget={"tokens": 4 * CALL_TOKENS},
    )
    result = await stepflow.run_pipeline(spec)

    assert result.status is PipelineStatus.FAILED
    child = result.step("child")
    assert child.error_type == ErrorType.BUDGET_EXCEEDED
    assert (child.error or "").startswith("second: ")  # the child's second call was refused
    assert child.usage is not None and child.usage.model_calls == 1
    assert result.budget is not None and result.budget.exceeded
    assert result.budget.spent.total_tokens == 4 * CALL_TOKENS == result.usage.total_tokens
    assert len(model_server.requests) == 4


async def test_cost_per_step_per_model_and_for_the_run_in_the_result_and_the_status(
    worker: None,
    stepflow: StepflowClient,
    model_server: ScriptedModelServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cheap = {"input": 1.0, "output": 1.0}
    priced_models(monkeypatch, model_server, priced=PRICE, cheap=cheap)
    model_server.respond_with(answer)
    spec = pipeline(
        agent("a"),
        agent("b", model="cheap"),
        {"id": "loop", "kind": "loop", "max_iterations": 2, "steps": [agent("c")]},
        budget={"cost": 1.0, "tokens": 100_000},
    )
    result = await stepflow.run_pipeline(spec)

    assert result.status is PipelineStatus.SUCCEEDED, result.error
    cheap_cost = CALL_TOKENS * 1.0 / 1_000_000
    assert result.step("a").usage.cost == pytest.approx(CALL_COST)  # type: ignore[union-attr]
    assert result.step("b").usage.cost == pytest.approx(cheap_cost)  # type: ignore[union-attr]
    assert result.step("loop").usage.cost == pytest.approx(2 * CALL_COST)  # type: ignore[union-attr]
    by_model = result.usage_by_model
    assert {m: u.model_calls for m, u in by_model.items()} == {"priced": 3, "cheap": 1}
    assert by_model["priced"].cost == pytest.approx(3 * CALL_COST)
    assert result.usage.cost == pytest.approx(3 * CALL_COST + cheap_cost)
    assert result.budget is not None and not result.budget.exceeded
    assert result.budget.spent.cost == pytest.approx(result.usage.cost)
    assert result.budget.spent.total_tokens == 4 * CALL_TOKENS
    line = usage_line(result) or ""
    assert "budget: $0.0094 of $1.00 · 4,000 of 100,000 tokens" in line
    assert "per model: cheap 1,000 tokens, $0.001; priced 3,000 tokens, $0.0084" in line


async def test_status_watch_and_the_web_ui_details_show_the_spend_while_it_runs(
    worker: None,
    stepflow: StepflowClient,
    temporal_client: Client,
    cli_env: dict[str, str],
    model_server: ScriptedModelServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    priced_models(monkeypatch, model_server, priced=PRICE)
    release = asyncio.Event()
    loop = asyncio.get_running_loop()

    def slow_second(request: RecordedRequest) -> Reply:
        if request.index == 0:
            return text("first", usage=CALL)
        # Holds the second step's call until the test has looked.
        asyncio.run_coroutine_threadsafe(release.wait(), loop).result(timeout=30)
        return text("second", usage=CALL)

    model_server.respond_with(slow_second)
    spec = pipeline(agent("first"), agent("second", depends_on=["first"]), budget={"cost": 2.5})
    run = await stepflow.start_pipeline(spec)
    try:

        async def charged() -> PipelineState:
            while True:
                state = await stepflow.status(run.workflow_id)
                if state.budget is not None and state.budget.spent.model_calls == 1:
                    return state
                await asyncio.sleep(0.05)

        state = await asyncio.wait_for(charged(), 20)
        assert state.budget is not None
        assert budget_line(state.budget) == "budget: $0.0028 of $2.50 · 1,000 tokens"
        assert "budget: $0.0028 of $2.50" in (usage_line(state) or "")
        # The details show what the run's records say: the first step's spend once it ended.
        handle = temporal_client.get_workflow_handle(run.workflow_id)

        async def first_step_shown() -> bool:
            details = await current_details(handle)
            return "budget: $0.0028 of $2.50 · 1,000 tokens" in details

        await wait_until(first_step_shown, "the details to show the first step's spend")
        heading, blank, spend = (await current_details(handle)).splitlines()[:3]
        assert heading.startswith("**test** · RUNNING") and blank == ""
        assert spend == "budget: $0.0028 of $2.50 · 1,000 tokens"
        lines = watched(state)
        assert "budget: $0.0028 of $2.50 · 1,000 tokens" in lines
        shown = await stepflow_cli(cli_env, "status", run.workflow_id)
        assert "budget: $0.0028 of $2.50 · 1,000 tokens" in shown.stdout
    finally:
        release.set()
    result = await stepflow.get_result(run.workflow_id)
    assert result.budget is not None and result.budget.spent.model_calls == 2


async def test_a_cost_budget_on_an_unpriced_model_fails_model_unpriced_on_the_worker(
    worker: None,
    temporal_client: Client,
    stepflow: StepflowClient,
    model_server: ScriptedModelServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Started around the client's checks (as a script with the SDK could): the worker refuses."""
    priced_models(monkeypatch, model_server, unpriced=None)
    model_server.respond_with(answer)
    spec = pipeline(agent("a"), budget={"cost": 1.0})
    assert [i.step for i in budget_issues(spec)] == ["a"]
    handle = await temporal_client.start_workflow(
        "stepflow_pipeline",
        PipelineInput(spec=spec),
        id=f"unpriced-{id(spec)}",
        task_queue=stepflow.settings.task_queue,
    )
    result = await stepflow.get_result(handle.id)

    record = result.step("a")
    assert record.error_type == ErrorType.MODEL_UNPRICED
    assert "'unpriced' has no price" in (record.error or "")
    assert model_server.requests == []  # refused before the request
    assert record.attempts == 1  # not retried


async def test_what_a_budget_costs_a_model_call(
    worker: None,
    stepflow: StepflowClient,
    temporal_client: Client,
    model_server: ScriptedModelServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The query and the charge per call: events in the ledger's history, and none in the run's."""
    priced_models(monkeypatch, model_server, priced=PRICE)

    def tooled(request: RecordedRequest) -> Reply:
        return tool_calls(("echo", {"value": 1}), usage=CALL)

    model_server.respond_with(tooled)
    calls = 20
    timings = {}
    events = {}
    ledger = (0, 0)
    for budget in (None, {"tokens": 10_000_000}):
        spec = pipeline(
            agent("a", tools=["echo"], max_model_calls=calls, on_failure="continue"),
            **({"budget": budget} if budget else {}),
        )
        started = time.monotonic()
        run = await stepflow.start_pipeline(spec)
        result = await stepflow.get_result(run.workflow_id)
        timings[budget is not None] = time.monotonic() - started
        assert result.usage.model_calls == calls
        events[budget is not None] = await _history_counts(temporal_client, run.workflow_id)
        if budget:
            ledger = await _history_counts(temporal_client, ledger_workflow_id(run.workflow_id))
    plain, budgeted = events[False], events[True]
    in_ledger = ledger[0] / calls
    ledger_tasks = ledger[1] / calls
    in_run = budgeted[0] - plain[0]
    per_call_ms = (timings[True] - timings[False]) * 1000 / calls
    print(
        f"\nper model call under a budget: {in_ledger:.1f} events, {ledger_tasks:.1f} workflow "
        f"tasks in the ledger's history, {per_call_ms:+.1f} ms; the run's history: "
        f"{in_run:+d} events in all"
    )
    assert in_ledger <= 7 and ledger_tasks <= 1.2  # 5 and 1 measured: room for a busy box
    # The run itself: the signal that closes its ledger, whatever the number of calls.
    assert in_run <= 6  # 5 measured: the signal, and the workflow task that sends it


async def _history_counts(client: Client, workflow_id: str) -> tuple[int, int]:
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    tasks = sum(
        1 for e in history.events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
    )
    return len(history.events), tasks


def _now() -> datetime:
    return datetime.now(UTC)


async def test_the_ledger_goes_on_across_continue_as_new(
    settings: Settings, model_server: ScriptedModelServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run that continues as new (here after 100 events) keeps its spend, and its budget
    stops the steps after the hand-over as it would have before it."""
    priced_models(monkeypatch, model_server, priced=PRICE)
    model_server.respond_with(answer)
    steps = [agent("s0", on_failure="continue")]
    steps += [
        agent(f"s{i}", depends_on=[f"s{i - 1}"], trigger="all_done", on_failure="continue")
        for i in range(1, 14)
    ]
    spec = pipeline(*steps, budget={"tokens": 10 * CALL_TOKENS, "cost": 1.0})
    env = await start_ephemeral_environment(extra_flags=continue_as_new_early(100))
    try:
        tools = load_tool_modules(settings.tool_modules)
        async with build_worker(env.client, settings, tools=tools):
            stepflow = StepflowClient(env.client, settings=settings)
            run = await stepflow.start_pipeline(spec)
            result = await stepflow.get_result(run.workflow_id)
            last = (await env.client.get_workflow_handle(run.workflow_id).describe()).run_id
    finally:
        await env.shutdown()

    assert result.status is PipelineStatus.SUCCEEDED, result.error
    statuses = [r.status for r in result.steps]
    assert statuses == [StepStatus.SUCCEEDED] * 10 + [StepStatus.FAILED] * 4
    assert result.budget is not None and result.budget.exceeded
    assert result.budget.spent.total_tokens == 10 * CALL_TOKENS
    assert result.budget.spent.cost == pytest.approx(10 * CALL_COST)
    assert len(model_server.requests) == 10
    assert last != run.run_id  # the run did continue as new


async def test_the_worker_counts_what_model_calls_cost_in_dollars(
    temporal_env: WorkflowEnvironment,
    task_queue: str,
    stepflow: StepflowClient,
    model_server: ScriptedModelServer,
    tmp_path: Path,
) -> None:
    """`stepflow_model_cost_total{model}` joins the worker's Prometheus metrics."""
    address = f"127.0.0.1:{free_port()}"
    models = {"priced": {"base_url": model_server.base_url, "price": PRICE}}
    env = process_env(
        temporal_env.client.service_client.config.target_host,
        STEPFLOW_TASK_QUEUE=task_queue,
        STEPFLOW_MODELS=json.dumps(models),
        STEPFLOW_DEFAULT_MODEL="priced",
        STEPFLOW_METRICS_BIND=address,
        OPENAI_API_KEY=TEST_API_KEY,
    )
    model_server.respond_with(answer)
    log = tmp_path / "worker.log"
    async with running_worker(env, log):
        result = await stepflow.run_pipeline(pipeline(agent("a"), agent("b")))
        assert result.usage.cost == pytest.approx(2 * CALL_COST)
        async with httpx.AsyncClient() as http:

            async def cost() -> float:
                response = await http.get(f"http://{address}/metrics")
                found = re.findall(rf"^{MODEL_COST}{{([^}}]*)}} (\S+)$", response.text, re.M)
                return sum(float(v) for labels, v in found if 'model="priced"' in labels)

            async def counted() -> bool:
                return await cost() == pytest.approx(2 * CALL_COST)

            await wait_until(counted, "the cost metric to reach the run's cost")


# -- the ledger workflow: limits it must never reach ---------------------------------------------


async def _ledger_result(client: Client, run_id: str) -> BudgetSpent:
    """What the ledger of run `run_id` had taken when it closed (at the run's end)."""
    ledger = client.get_workflow_handle(ledger_workflow_id(run_id), result_type=BudgetSpent)
    return await ledger.result()


async def _ledger_runs(client: Client, run_id: str) -> list[str]:
    """Statuses of the ledger's runs, oldest first (CONTINUED_AS_NEW, then COMPLETED...)."""
    ledger = ledger_workflow_id(run_id)
    runs = [
        execution
        async for execution in client.list_workflows(
            f"WorkflowId = '{ledger}' AND WorkflowType = '{BUDGET_LEDGER_WORKFLOW}'"
        )
    ]
    runs.sort(key=lambda execution: execution.start_time)
    return [execution.status.name if execution.status else "" for execution in runs]


async def test_one_long_step_charges_past_one_ledger_run_and_the_spend_stays_exact(
    settings: Settings, model_server: ScriptedModelServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More charges than one run of the ledger takes before the server suggests continuing as
    new (here at 100 events, some 20 charges; by default 4,096 events, and Temporal refuses
    any update past a run's 2,000th): every charge counts, and the budget stops the step at
    exactly its last call, in a single step that never lets its pipeline continue as new."""
    priced_models(monkeypatch, model_server, priced=PRICE)
    model_server.respond_with(busy_agent_fast)
    calls = 70
    spec = pipeline(
        agent("long", tools=["echo"], max_model_calls=calls + 20, on_failure="continue"),
        budget={"tokens": calls * CALL_TOKENS, "cost": 1.0},
    )
    env = await start_ephemeral_environment(extra_flags=continue_as_new_early(100))
    try:
        tools = load_tool_modules(settings.tool_modules)
        async with build_worker(env.client, settings, tools=tools):
            stepflow = StepflowClient(env.client, settings=settings)
            run = await stepflow.start_pipeline(spec)
            result = await stepflow.get_result(run.workflow_id)
            closed = await _ledger_result(env.client, run.workflow_id)  # its run closed it

            async def all_listed() -> bool:
                return (await _ledger_runs(env.client, run.workflow_id))[-1:] == ["COMPLETED"]

            await wait_until(all_listed, "the ledger's last run to be listed as completed")
            runs = await _ledger_runs(env.client, run.workflow_id)
    finally:
        await env.shutdown()

    record = result.step("long")
    assert record.error_type == ErrorType.BUDGET_EXCEEDED, record.error
    # One step, one call at a time: the budget stops it at the call that spent it.
    assert len(model_server.requests) == calls == result.usage.model_calls
    assert result.budget is not None and result.budget.exceeded
    assert result.budget.spent.total_tokens == calls * CALL_TOKENS
    assert closed.spent.total_tokens == calls * CALL_TOKENS and closed.exceeded
    assert closed.spent.model_calls == calls
    assert closed.spent.cost == pytest.approx(calls * CALL_COST)
    # The ledger went on in fresh runs: no run of it came near Temporal's limits.
    assert len(runs) >= 3 and set(runs[:-1]) == {"CONTINUED_AS_NEW"}, runs
    print(f"\nledger runs for {calls} charges: {len(runs)}")


def busy_agent_fast(request: RecordedRequest) -> Reply:
    return tool_calls(("echo", {"value": "again"}), usage=CALL)


async def test_twenty_five_steps_charging_at_once_lose_no_charge(
    settings: Settings,
    model_server: ScriptedModelServer,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Temporal takes a few updates in flight per workflow (10 by default; 2 on this server, so
    that 25 charges at once surely pass it): a charge refused for that is tried again with the
    same id, and counts once."""
    priced_models(monkeypatch, model_server, priced=PRICE)

    def together(request: RecordedRequest) -> Reply:
        # Replies held a while, so that 25 charges arrive at the ledger together.
        return tool_calls(("echo", {"value": "again"}), usage=CALL, delay=0.3)

    model_server.respond_with(together)
    steps = [
        agent(f"a{n}", tools=["echo"], max_model_calls=3, on_failure="continue") for n in range(25)
    ]
    spec = pipeline(*steps, budget={"tokens": 10_000_000}, max_concurrency=25)
    flags = ["--dynamic-config-value", "history.maxInFlightUpdates=2"]
    env = await start_ephemeral_environment(extra_flags=flags)
    try:
        tools = load_tool_modules(settings.tool_modules)
        async with build_worker(env.client, settings, tools=tools):
            stepflow = StepflowClient(env.client, settings=settings)
            run = await stepflow.start_pipeline(spec)
            result = await stepflow.get_result(run.workflow_id)
            closed = await _ledger_result(env.client, run.workflow_id)
    finally:
        await env.shutdown()

    calls = len(model_server.requests)
    assert calls == 25 * 3 == result.usage.model_calls
    assert closed.spent.model_calls == calls  # every charge counted, once
    assert closed.spent.total_tokens == calls * CALL_TOKENS
    assert result.budget is not None and result.budget.spent == closed.spent
    assert not closed.exceeded and not result.budget.exceeded
    # Refused charges were tried again (by the SDK's own retries of a refused request, or
    # ours), never given up.
    assert "budget not charged" not in capfd.readouterr().out


async def test_a_refused_reply_was_paid_for_and_is_charged(
    worker: None,
    stepflow: StepflowClient,
    temporal_client: Client,
    model_server: ScriptedModelServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A 200 that refused (or was stopped by the content filter) fails the step, but it cost
    its tokens: the budget counts them."""
    priced_models(monkeypatch, model_server, priced=PRICE)
    model_server.play(
        refusal("I cannot help with that", usage=CALL),
        text("", finish_reason="content_filter", usage=CALL),
    )
    spec = pipeline(
        agent("a", on_failure="continue"), agent("b", on_failure="continue"), budget={"cost": 1.0}
    )
    run = await stepflow.start_pipeline(spec)
    result = await stepflow.get_result(run.workflow_id)
    closed = await _ledger_result(temporal_client, run.workflow_id)

    assert [r.error_type for r in result.steps] == [ErrorType.MODEL_CONTENT_REFUSED] * 2
    assert closed.spent.total_tokens == 2 * CALL_TOKENS
    assert closed.spent.cost == pytest.approx(2 * CALL_COST)


async def test_a_budgeted_run_without_model_calls_starts_no_ledger(
    worker: None, stepflow: StepflowClient, temporal_client: Client
) -> None:
    """Nothing charged, nothing started: closing a ledger that never was fails nothing."""
    spec = pipeline(step("t", "echo", args={"value": 1}), budget={"tokens": 10})
    run = await stepflow.start_pipeline(spec)
    result = await stepflow.get_result(run.workflow_id)
    assert result.status is PipelineStatus.SUCCEEDED, result.error
    assert result.budget is not None and result.budget.spent.total_tokens == 0
    with pytest.raises(RPCError, match="not found"):
        await temporal_client.get_workflow_handle(ledger_workflow_id(run.workflow_id)).describe()
