"""Checks of control flow before anything starts: `when`, `for_each`, a loop's `until`.

Each expression must parse and read only what its step sees: the declared inputs, the
steps it depends on (or, for `until`, the loop's body), and `item`/`index`/`loop` in
their scopes. Pure functions: imported in the workflow sandbox.
"""

from __future__ import annotations

from stepflow.workflows.expressions import ExpressionError, check_expression
from stepflow.workflows.models import LoopStep, Step
from stepflow.workflows.spec_issues import SpecIssue, did_you_mean
from stepflow.workflows.templates import is_templated

SCOPED = {"item": "a for_each step", "index": "a for_each step", "loop": "a loop's steps"}
"""Names that exist only in a scope, and where."""


def control_issues(
    step: Step, inputs: set[str], scopes: frozenset[str], visible: list[str]
) -> list[SpecIssue]:
    """`when`, `for_each` and a loop's `until`: they parse and read only what the step sees."""
    issues = []
    if step.when is not None:
        allowed = frozenset({"inputs", "steps"}) | scopes
        issues.extend(_expression_issues(step.when, step.id, "when", inputs, visible, allowed))
    for_each = getattr(step, "for_each", None)
    if for_each is not None and not is_templated(for_each):
        issues.append(
            SpecIssue(
                "must be a template that yields a list, e.g. {{ steps.plan.output.items }}",
                step.id,
                "for_each",
            )
        )
    if isinstance(step, LoopStep) and step.until is not None:
        body = [s.id for s in step.steps]
        allowed = frozenset({"inputs", "steps", "loop"})
        issues.extend(_expression_issues(step.until, step.id, "until", inputs, body, allowed))
    return issues


def _expression_issues(
    text: str,
    step_id: str,
    field: str,
    inputs: set[str],
    visible: list[str],
    allowed: frozenset[str],
) -> list[SpecIssue]:
    try:
        names = check_expression(text)
    except ExpressionError as err:
        return [SpecIssue(str(err), step_id, field)]
    issues = []
    for root in sorted(names.roots - allowed):
        where = SCOPED.get(root)
        reason = f"exists only inside {where}" if where else "is not defined"
        issues.append(
            SpecIssue(
                f"{root!r} {reason}: a condition reads {', '.join(sorted(allowed))}",
                step_id,
                field,
            )
        )
    for name in sorted(names.steps - set(visible)):
        what = "in depends_on" if field == "when" else "a step of the loop's body"
        issues.append(SpecIssue(f"reads step {name!r}, which is not {what}", step_id, field))
    for name in sorted(names.inputs - inputs):
        hint = did_you_mean(name, inputs)
        issues.append(
            SpecIssue(f"reads input {name!r}, which is not declared{hint}", step_id, field)
        )
    return issues
