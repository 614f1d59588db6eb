"""Faults at scale: many pipelines at once against a model API that fails at random.

The scripted model server injects 429s (with `Retry-After`), 500s, slow answers
(some past the call's timeout) and malformed bodies, from a seed. Every run must
close in bounded time, either succeeded with the right outputs or failed with the
documented error of a model call that ran out of attempts; the journal must show
every completed tool step and tool call executed exactly once.

The first tests pin down each malformed body on its own, so the soak's failures
have a known meaning.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections import Counter, defaultdict
from typing import Any

from stepflow.client.api import StepflowClient
from stepflow.workflows.models import PipelineResult, PipelineSpec, PipelineStatus, StepStatus
from tests.support.helpers import agent, pipeline, step
from tests.support.model_server import (
    FAULT_KINDS,
    NO_CHOICES,
    NOT_JSON,
    TRUNCATED_JSON,
    FaultPlan,
    RecordedRequest,
    Reply,
    ScriptedModelServer,
    error,
    malformed,
    text,
    tool_calls,
)
from tests.support.tools import journal_read

QUICK = {"initial_interval": "100ms", "backoff_coefficient": 1.0}


# --- malformed bodies, one at a time -------------------------------------------------------------


async def test_malformed_bodies_are_retried_and_the_step_succeeds(
    worker: None, stepflow: StepflowClient, model_server: ScriptedModelServer
) -> None:
    model_server.play(
        malformed(NOT_JSON), malformed(TRUNCATED_JSON), malformed(NO_CHOICES), text("whole")
    )
    result = await stepflow.run_pipeline(pipeline(agent("a", model_retry=QUICK)))

    record = result.step("a")
    assert record.status is StepStatus.SUCCEEDED, record.error
    assert record.output == "whole"
    assert len(model_server.requests) == 4 and not model_server.unexpected


async def test_a_malformed_body_that_outlasts_the_retries_fails_the_step_clearly(
    worker: None, stepflow: StepflowClient, model_server: ScriptedModelServer
) -> None:
    model_server.respond_with(lambda request: malformed(NO_CHOICES))
    result = await stepflow.run_pipeline(
        pipeline(agent("a", model_retry={**QUICK, "max_attempts": 2}))
    )

    record = result.step("a")
    assert record.status is StepStatus.FAILED
    assert record.error_type == "ModelReplyInvalid"
    assert record.error == "model call 1 failed: the model API answered with no choices"
    assert result.status is PipelineStatus.FAILED
    assert result.error == f"step 'a' failed: {record.error}"
    assert len(model_server.requests) == 2


# --- the soak ------------------------------------------------------------------------------------

RUNS = 36
DOOMED = {5, 17, 29}
"""Runs whose model is down for good (503 on every call): they must fail, and clearly."""
STRICT = {2, 8, 11, 14, 20, 23, 26, 32, 35}
"""Runs with 2 model attempts per call: the faults alone may exhaust them."""
DEADLINE = 150.0
"""Seconds for every run to close; a generous bound against stuck runs, not a speed test."""

PLAN = FaultPlan(
    seed=20240605,
    rate_429=0.12,
    rate_500=0.12,
    rate_slow=0.12,
    slow_seconds=2.5,  # the call's HTTP request gives up after about 2 s (`model_timeout` 3s)
    rate_malformed=0.15,
    retry_after=0.2,
)
MODEL_ERRORS = {
    "ModelRateLimited",
    "ModelServerError",
    "ModelReplyInvalid",
    "ModelTimeout",
    "ModelConnectionError",
    "Timeout",
}
"""What a model call that ran out of attempts fails with, from its last attempt's fault."""

TOKEN = re.compile(r"run-\d+(?:-doomed)?")
LOOKUP = "Soak lookup agent: look the input up with the record tool, then answer."
CHECK = "Soak check agent: say that the input is checked."


def responder(journal: str) -> Any:
    """Answers from the request alone, so the order requests arrive in does not matter."""

    def answer(request: RecordedRequest) -> Reply:
        token = TOKEN.search(request.text)
        if token is None:
            return error(400, "soak: no run token in the request")
        name = token.group()
        if name.endswith("-doomed"):
            return error(503, "the provider is down")
        system = request.messages[0].get("content") or ""
        if system.startswith(CHECK):
            return text(f"checked {name}")
        results = [m["content"] for m in request.messages if m.get("role") == "tool"]
        if not results:
            return tool_calls(("record", {"journal": journal, "value": f"looked up {name}"}))
        return text(f"answer for {name}: {' | '.join(results)}")

    return answer


def soak_pipeline(number: int, journal: str) -> PipelineSpec:
    token = f"run-{number}" + ("-doomed" if number in DOOMED else "")
    attempts = 2 if number in STRICT else 3 if number in DOOMED else 20
    fields = {
        "model_retry": {
            "initial_interval": "50ms",
            "backoff_coefficient": 1.0,
            "max_attempts": attempts,
        },
        "model_timeout": {"start_to_close": "3s"},
        "depends_on": ["prep"],
        "input": "{{ steps.prep.output }}",
    }
    return pipeline(
        step("prep", "record", args={"journal": journal, "value": token}),
        agent("ask", LOOKUP, tools=["record"], **fields),
        agent("check", CHECK, **fields),
        step(
            "finish",
            "record",
            args={"journal": journal, "value": "{{ steps.ask.output }}"},
            depends_on=["ask", "check"],
        ),
        name="soak",
    )


async def wait_all(stepflow: StepflowClient, ids: list[str]) -> list[PipelineResult]:
    """Every run's result, or a failure naming the runs still open at the deadline."""
    try:
        async with asyncio.timeout(DEADLINE):
            return list(await asyncio.gather(*(stepflow.get_result(i) for i in ids)))
    except TimeoutError:
        summaries = [await stepflow.describe(i) for i in ids]
        stuck = [s.workflow_id for s in summaries if not s.closed]
        raise AssertionError(f"{len(stuck)} runs still open after {DEADLINE:g}s: {stuck}") from None


async def test_many_pipelines_through_a_faulty_model_all_close_and_lose_nothing(
    worker: None,
    stepflow: StepflowClient,
    model_server: ScriptedModelServer,
    journal: str,
) -> None:
    model_server.respond_with(responder(journal))
    model_server.inject_faults(PLAN)
    started = time.monotonic()
    batch = uuid.uuid4().hex[:8]
    runs = await asyncio.gather(
        *(
            stepflow.start_pipeline(soak_pipeline(n, journal), workflow_id=f"soak-{batch}-{n}")
            for n in range(RUNS)
        )
    )
    ids = [run.workflow_id for run in runs]
    results = await wait_all(stepflow, ids)
    wall = time.monotonic() - started

    # None stuck: Temporal itself has closed every run.
    for workflow_id in ids:
        summary = await stepflow.describe(workflow_id)
        assert summary.closed and summary.status != "RUNNING", summary

    entries = journal_read(journal)
    executions: dict[str, Counter[str]] = defaultdict(Counter)
    for entry in entries:
        executions[entry["key"]][entry["event"]] += 1
    # Every tool execution ran to its end exactly once: no key was executed twice.
    assert all(events == {"start": 1, "end": 1} for events in executions.values()), executions

    def keys_of(workflow_id: str) -> list[str]:
        return sorted(k for k in executions if k.startswith(f"{workflow_id}/"))

    succeeded = failed = 0
    for number, (run, result) in enumerate(zip(runs, results, strict=True)):
        prefix = f"{run.workflow_id}/{run.run_id}"  # idempotency keys start with it
        token = f"run-{number}" + ("-doomed" if number in DOOMED else "")
        prep, ask, check, finish = (result.step(s) for s in ("prep", "ask", "check", "finish"))
        assert prep.status is StepStatus.SUCCEEDED and prep.output == token
        must = {f"{prefix}/prep"}
        may: set[str] = set()
        if ask.status is StepStatus.SUCCEEDED:
            assert ask.output == f"answer for {token}: looked up {token}"
            assert ask.tool_calls == 1
            assert ask.usage is not None and ask.usage.model_calls == 2
            must.add(f"{prefix}/ask/call-1.1")
        elif ask.status is StepStatus.FAILED:
            if ask.tool_calls:  # failed at its second model call, after the tool ran
                must.add(f"{prefix}/ask/call-1.1")
        else:  # cancelled when `check` failed first: its tool call may have run, once
            assert ask.status is StepStatus.CANCELLED, (run, ask)
            may.add(f"{prefix}/ask/call-1.1")
        if check.status is StepStatus.SUCCEEDED:
            assert check.output == f"checked {token}"
        for record in (ask, check):
            if record.status is StepStatus.FAILED:
                # The documented error: the model call, and its last attempt's failure.
                assert record.error_type in MODEL_ERRORS, (run, record)
                assert re.match(r"model call [12] failed: ", record.error or ""), record
        if result.status is PipelineStatus.SUCCEEDED:
            succeeded += 1
            assert number not in DOOMED
            assert ask.status is check.status is finish.status is StepStatus.SUCCEEDED
            assert finish.output == ask.output
            must.add(f"{prefix}/finish")
        else:
            failed += 1
            assert number in DOOMED or number in STRICT, (run, result.error)
            assert finish.status is not StepStatus.SUCCEEDED
            culprits = {
                f"step '{r.id}' failed: {r.error}"
                for r in (ask, check)
                if r.status is StepStatus.FAILED
            }
            assert result.error in culprits, (run, result.error)
        # Nothing completed was lost, nothing ran twice, nothing ran that should not have.
        keys = set(keys_of(run.workflow_id))
        assert must <= keys <= must | may, (run, keys)

    assert failed >= len(DOOMED)
    assert not model_server.unexpected
    requests = model_server.requests
    injected = model_server.faults
    faults = Counter(f.kind for f in injected)
    assert set(faults) == set(FAULT_KINDS)  # the seed's first 60 draws hold every kind
    per_run = Counter(TOKEN.findall(requests[f.index].text)[0] for f in injected)
    seen = sorted(per_run[f"run-{n}" + ("-doomed" if n in DOOMED else "")] for n in range(RUNS))
    model_calls = sum(
        (r.usage.model_calls if r.usage else 0) for result in results for r in result.steps
    )
    print(
        f"\nsoak: {RUNS} runs ({succeeded} succeeded, {failed} failed) closed in {wall:.1f}s; "
        f"{len(requests)} model requests for {model_calls} answered calls; "
        f"{len(injected)} faults (seed {PLAN.seed}): "
        + ", ".join(f"{kind} {n}" for kind, n in sorted(faults.items()))
        + f"; faults per run min {seen[0]} median {seen[len(seen) // 2]} max {seen[-1]}"
    )
