"""The sandbox Stepflow's workflows run in.

Stepflow's own workflow modules are imported inside the sandbox, so the SDK
checks them for non-determinism (clocks, I/O, threads); only third-party
libraries, which are stateless here and costly to import again for every run,
are passed through.
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
)
"""Libraries the workflow modules import, passed through the sandbox."""


def workflow_runner() -> SandboxedWorkflowRunner:
    """The runner for every worker and replayer that runs Stepflow's workflows."""
    return SandboxedWorkflowRunner(
        restrictions=SandboxRestrictions.default.with_passthrough_modules(*THIRD_PARTY_PASSTHROUGH)
    )
