"""How `stepflow watch` decides that a run is over and how it ended."""

from __future__ import annotations

from stepflow.client.runs import RunSummary
from stepflow.client.watch import Seen


def test_watch_trusts_temporal_for_a_closed_run_that_cannot_answer() -> None:
    """No worker to answer the query: the exit code still follows how Temporal closed the run."""
    closed = RunSummary("wf", "run", "p", status="SUCCEEDED", execution_status="COMPLETED")
    assert Seen(None, closed, "no answer").over and Seen(None, closed, "no answer").succeeded
    failed = RunSummary("wf", "run", "p", status="FAILED", execution_status="FAILED")
    assert not Seen(None, failed, "no answer").succeeded
    running = RunSummary("wf", "run", "p", status="RUNNING", execution_status="RUNNING")
    assert not Seen(None, running, "no answer").over
