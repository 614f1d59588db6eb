"""The DAG scheduler on its own: ready sets, the concurrency bound, settling and skips. No server."""

from __future__ import annotations

from stepflow.workflows.models import StepStatus
from stepflow.workflows.scheduler import DagScheduler, Node


def dag(*nodes: Node, max_concurrency: int = 10, **statuses: StepStatus) -> DagScheduler:
    return DagScheduler(list(nodes), max_concurrency, statuses)


def test_steps_without_dependencies_start_at_once_in_spec_order() -> None:
    s = dag(Node("c"), Node("a"), Node("b", ["a"]), Node("d"))
    assert s.start_ready() == ["c", "a", "d"]
    assert s.start_ready() == []
    assert s.busy == 3


def test_a_step_starts_once_every_dependency_succeeded() -> None:
    s = dag(Node("a"), Node("b"), Node("join", ["a", "b", "a"]))
    s.start_ready()
    assert s.settle("a", StepStatus.SUCCEEDED) == []
    assert s.start_ready() == []
    s.settle("b", StepStatus.SUCCEEDED)
    assert s.start_ready() == ["join"]


def test_released_steps_start_in_spec_order_not_in_the_order_they_became_ready() -> None:
    s = dag(Node("root"), Node("x", ["root"]), Node("y", ["root"]), Node("z", ["root"]))
    s.start_ready()
    s.settle("root", StepStatus.SUCCEEDED)
    assert s.start_ready() == ["x", "y", "z"]


def test_max_concurrency_bounds_running_steps_and_defers_the_rest() -> None:
    s = dag(*(Node(f"s{i}") for i in range(5)), max_concurrency=2)
    assert s.start_ready() == ["s0", "s1"]
    assert not s.can_start()
    s.settle("s0", StepStatus.SUCCEEDED)
    assert s.can_start()
    assert s.start_ready() == ["s2"]


def test_human_steps_take_no_slot() -> None:
    s = dag(Node("a"), Node("ask", human=True), Node("b"), max_concurrency=1)
    assert s.start_ready() == ["a", "ask"]
    assert s.busy == 1
    s.settle("ask", StepStatus.SUCCEEDED)
    assert s.busy == 1
    assert s.start_ready() == []


def test_a_human_step_can_start_while_every_slot_is_taken() -> None:
    s = dag(Node("a"), Node("b", ["a"]), Node("ask", ["a"], human=True), max_concurrency=1)
    s.start_ready()
    s.settle("a", StepStatus.SUCCEEDED)
    s.start_ready()
    assert s.busy == 1 and s.running == {"b", "ask"}


def test_a_failed_step_skips_its_dependents_transitively_with_reasons() -> None:
    s = dag(Node("a"), Node("b", ["a"]), Node("c", ["b"]), Node("d"))
    s.start_ready()
    skipped = s.settle("a", StepStatus.TIMED_OUT)
    assert skipped == [("b", "dependency 'a' timed out"), ("c", "dependency 'b' skipped")]
    assert not s.is_pending("b") and not s.is_pending("c")
    assert not s.has_ready()


def test_a_step_reachable_twice_is_skipped_once() -> None:
    s = dag(Node("a"), Node("b", ["a"]), Node("c", ["a", "b"]))
    s.start_ready()
    assert [sid for sid, _ in s.settle("a", StepStatus.FAILED)] == ["b", "c"]


def test_a_cancelled_pending_step_never_starts_and_skips_its_dependents() -> None:
    s = dag(Node("a"), Node("b"), Node("c", ["b"]), max_concurrency=1)
    s.start_ready()
    assert s.settle("b", StepStatus.CANCELLED) == [("c", "dependency 'b' cancelled")]
    s.settle("a", StepStatus.SUCCEEDED)
    assert s.start_ready() == []
    assert not s.has_ready()


def test_a_halted_run_starts_nothing_and_skips_nothing() -> None:
    s = dag(Node("a"), Node("b"), Node("c", ["a"]), Node("d", ["b"]), max_concurrency=1)
    s.start_ready()
    s.halt()
    assert s.settle("a", StepStatus.FAILED) == []
    assert s.start_ready() == []
    assert not s.can_start()
    assert s.stop() == ["b", "c", "d"]
    assert s.busy == 0 and not s.running


def test_a_continued_run_takes_over_where_the_last_one_stood() -> None:
    s = dag(
        Node("a"),
        Node("b", ["a"]),
        Node("ask", human=True),
        Node("c", ["ask"]),
        a=StepStatus.SUCCEEDED,
        ask=StepStatus.WAITING,
    )
    assert s.start_ready() == ["b"]
    s.resume("ask")
    assert s.running == {"b", "ask"} and s.busy == 1
    s.settle("ask", StepStatus.SUCCEEDED)
    assert s.start_ready() == ["c"]


def test_ten_thousand_steps_settle_in_linear_time() -> None:
    n = 10_000
    s = dag(Node("root"), *(Node(f"s{i}", ["root"]) for i in range(n)), max_concurrency=n)
    s.start_ready()
    s.settle("root", StepStatus.SUCCEEDED)
    assert len(s.start_ready()) == n
