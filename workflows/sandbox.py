"""The sandbox Stepflow's workflows run in.

Stepflow's own workflow code is imported inside the sandbox, so the SDK checks
it for non-determinism (clocks, I/O, threads). Passed through (imported once per
worker process, shared by every run) are the third-party libraries and
Stepflow's durable contracts: the pydantic models that workflows, activities and
client share, which define data and no workflow logic.

Why the contracts: the sandbox imports every module it does not pass through
again for each workflow it starts (every agent step is a workflow of its own),
and building the contracts' pydantic models is most of that. Replaying a
committed history per workflow (tools-dag and agent-offline-full with its two
agent steps; 2-core machine, min of 5): all of Stepflow sandboxed 202 ms; only
the contracts passed through 37-48 ms, as before this module (workflow modules
passing Stepflow's imports through, default runner: 37-55 ms); all of Stepflow
passed through 12-16 ms. `tests/test_sandbox.py` proves the contracts import
cleanly in the sandbox too.
"""

from __future__ import annotations

from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

THIRD_PARTY_PASSTHROUGH = (
    "pydantic",
    "pydantic_core",
    "annotated_types",
    "typing_extensions",
    "typing_inspection",
    "jsonschema",
    "jsonschema_specifications",
    "referencing",
    "rpds",
    "attrs",
    "attr",
    # What jsonschema's format checkers import when they are installed.
    "idna",
    "jsonpointer",
    "rfc3339_validator",
    "six",
    # `when:` and `until:` expressions (workflows.expressions).
    "jinja2",
    "markupsafe",
)
"""Libraries the workflow modules import, passed through the sandbox."""

CONTRACT_PASSTHROUGH = tuple(
    f"stepflow.workflows.{name}"
    for name in (
        "models",
        "spec",
        "spec_settings",
        "records",
        "run_state",
        "control",
        "durations",
        "expressions",
        "step_settings",
    )
)
"""Stepflow's pure data contracts: pydantic models and names, no workflow logic; and the
expression environment, whose compiled expressions are then cached once per worker."""


PURE_PASSTHROUGH = tuple(
    f"stepflow.workflows.{name}"
    for name in (
        "templates",
        "validation",
        "spec_issues",
        "flow_checks",
        "json_schemas",
        "scheduler",
        "errors",
        "conversation",
        "activity_options",
        "run_view",
        "requests",
        "plan_rows",
    )
)
"""Stepflow's pure helpers of workflow logic: functions of their arguments, no workflow API,
no state of a run. Passed through, a workflow start does not import them again: replaying an
agent step and its pipeline (agent-scripted@by-reference, min of 5) took 120-169 ms with them
sandboxed and 72-73 ms passed through, about 25-45 ms of worker CPU a workflow. They stay
checked: `tests/test_sandbox.py` replays the committed histories with nothing of Stepflow
passed through, so a clock or I/O slipped into one of them fails that test."""


def workflow_runner() -> SandboxedWorkflowRunner:
    """The runner for every worker and replayer that runs Stepflow's workflows."""
    return SandboxedWorkflowRunner(
        restrictions=SandboxRestrictions.default.with_passthrough_modules(
            *THIRD_PARTY_PASSTHROUGH, *CONTRACT_PASSTHROUGH, *PURE_PASSTHROUGH
        )
    )
