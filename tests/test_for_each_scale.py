"""A for_each over 10,000 items completes, and no run in the chain nears Temporal's
10,240-event warning line: past `INLINE_ITEMS` the instances run in child runs of
`BATCH_ITEMS` each. The test prints the wall time and the largest history."""

from __future__ import annotations

import time

import pytest
from temporalio.client import Client

from stepflow.client.api import StepflowClient
from stepflow.workflows.models import PipelineStatus
from stepflow.workflows.steps.for_each import BATCH_ITEMS
from tests.support.helpers import pipeline, step

ITEMS = 10_000
WARNING_LINE = 10_240


async def history_lengths(client: Client, workflow_id: str) -> dict[str, int]:
    """Events in the run's history and in each of its batch children's."""
    lengths = {}
    for wid in [workflow_id] + [
        f"{workflow_id}/each/batch-{n}" for n in range(1, ITEMS // BATCH_ITEMS + 1)
    ]:
        history = await client.get_workflow_handle(wid).fetch_history()
        lengths[wid] = len(history.events)
    return lengths


@pytest.mark.deadline(600)
async def test_a_for_each_over_10000_items_completes_in_bounded_histories(
    worker: None, stepflow: StepflowClient, temporal_client: Client
) -> None:
    spec = pipeline(
        step("items", "echo", args={"value": list(range(ITEMS))}),
        step(
            "each",
            "echo",
            depends_on=["items"],
            for_each="{{ steps.items.output }}",
            args={"value": "{{ item }}"},
            max_concurrency=200,
        ),
        max_concurrency=10,
    )
    started = time.monotonic()
    run = await stepflow.start_pipeline(spec)
    result = await stepflow.get_result(run.workflow_id)
    elapsed = time.monotonic() - started

    assert result.status is PipelineStatus.SUCCEEDED, result.error
    assert result.output("each") == list(range(ITEMS))
    record = result.step("each")
    assert (record.items, record.items_done, record.items_failed) == (ITEMS, ITEMS, 0)
    lengths = await history_lengths(temporal_client, run.workflow_id)
    largest = max(lengths.values())
    print(f"\n{ITEMS:,} items: {elapsed:.1f} s; largest history {largest:,} events; {lengths}")
    assert largest < WARNING_LINE
