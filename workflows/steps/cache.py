"""The result cache around a tool or agent step: look before running, keep after success.

Lookups and stores are activities (`activities.result_cache`), so the workflow
stays deterministic and a hit is in history: a replay takes the same output
without looking again. The worker adds to the key what only it knows (a tool's
`version`, the default model). A cache that cannot be read or written costs a
miss, never the step.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy

from stepflow.workflows.models import (
    CACHE_LOOKUP_ACTIVITY,
    CACHE_STORE_ACTIVITY,
    AgentStep,
    CacheAnswer,
    CacheLookup,
    CacheStore,
    StepRecord,
    ToolStep,
    effective_cache,
)
from stepflow.workflows.steps.base import StepContext

CACHE_CALL_TIMEOUT = timedelta(seconds=30)
CACHE_RETRY = RetryPolicy(maximum_attempts=3, initial_interval=timedelta(milliseconds=200))


async def cached(
    ctx: StepContext,
    step: ToolStep | AgentStep,
    record: StepRecord,
    material: dict[str, Any],
    compute: Callable[[], Awaitable[Any]],
) -> Any:
    """`compute()`'s output, or a fresh one the cache kept for the same `material`."""
    policy = effective_cache(step, ctx.spec.defaults)
    if policy is None:
        return await compute()
    key = ctx.key(step)
    # `--no-cache` computes afresh, and keeps what it computed for the runs after it.
    answer: CacheAnswer = await workflow.execute_activity(
        CACHE_LOOKUP_ACTIVITY,
        CacheLookup(
            step_id=step.id,
            kind=step.kind,
            material=material,
            ttl=policy.ttl,
            refresh=ctx.no_cache,
        ),
        result_type=CacheAnswer,
        start_to_close_timeout=CACHE_CALL_TIMEOUT,
        retry_policy=CACHE_RETRY,
        summary=f"{key} · cache lookup",
    )
    if answer.hit:
        record.cached = True
        record.cached_from = answer.source_run
        return answer.output
    output = await compute()
    await workflow.execute_activity(
        CACHE_STORE_ACTIVITY,
        CacheStore(
            step_id=step.id,
            key=answer.key,
            output=output,
            source_run=workflow.info().workflow_id,
            ttl=policy.ttl,
        ),
        start_to_close_timeout=CACHE_CALL_TIMEOUT,
        retry_policy=CACHE_RETRY,
        summary=f"{key} · cache store",
    )
    return output
