"""How Stepflow's workflow code runs: outside the SDK's sandbox by default, checked in it by tests.

The Temporal SDK's sandbox exists to catch non-deterministic workflow code
(clocks, I/O, threads) at run time. Stepflow's workflows run no user code: users
write pipeline files, and their tools run as activities. The workflow code is
Stepflow's own, a fixed interpreter of the pipeline, so it is checked where it
changes, as Go and Java workflow code (which have no sandbox) are:

- `tests/test_replay.py` replays every committed history in the SDK's default
  sandbox, which passes nothing of Stepflow through, so a clock, I/O or a thread
  slipped into workflow code fails there;
- the test suite's in-process workers run with `STEPFLOW_WORKFLOW_SANDBOX=1`
  (`tests/conftest.py`): Stepflow's workflow logic is imported in the sandbox and
  checked in every workflow the tests run;
- the tests that run `python worker.py` as its own process run the default.

Production workers (`STEPFLOW_WORKFLOW_SANDBOX` off, the default) run the same
code without the sandbox's cost, which grows with the workflow code a step runs:
the sandbox swaps `sys.modules`, `__import__` and the `isinstance` and `issubclass`
builtins around each piece of workflow code (the builtins for the whole process,
activity threads included), and imports the workflow modules again for each
workflow it starts: each pipeline run, each child run, each agent step. See
docs/development/testing.md for what that costs a step.

Outside the sandbox every run shares the modules' globals, across threads too:
workflow modules keep no mutable state at module level (constants, compiled
patterns, the stateless step runners, the expression environment's cache), which
`tests/test_sandbox.py` checks for `global` statements.

In the sandbox, third-party libraries and Stepflow's contracts and pure helpers
are passed through (imported once per worker process, shared by every run); the
rest, the workflow logic, is imported in the sandbox and checked.
"""

from __future__ import annotations

from temporalio.worker import UnsandboxedWorkflowRunner, WorkflowRunner
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
        "activity_contracts",
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


def workflow_runner(sandboxed: bool = True) -> WorkflowRunner:
    """The runner for every worker and replayer that runs Stepflow's workflows.

    Args:
        sandboxed: Run the workflow code in the SDK's sandbox, which checks it at run time
            (`Settings.workflow_sandbox`; workers built from settings default to off).
    """
    if not sandboxed:
        return UnsandboxedWorkflowRunner()
    return SandboxedWorkflowRunner(
        restrictions=SandboxRestrictions.default.with_passthrough_modules(
            *THIRD_PARTY_PASSTHROUGH, *CONTRACT_PASSTHROUGH, *PURE_PASSTHROUGH
        )
    )
