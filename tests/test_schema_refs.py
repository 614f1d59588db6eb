"""A spec's JSON Schemas may reference only themselves, and nothing ever fetches a `$ref`.

Every test points its `$ref`s at a real HTTP server on 127.0.0.1 and ends by
checking that the server was never asked for anything: not by `stepflow
validate`, not by the workflow's own check, not by the `input` update's
validator, not by the model activity's answer check.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from temporalio.client import Client, WorkflowFailureError
from temporalio.exceptions import ApplicationError

from stepflow.activities.output_schema import ResolvedSchema, resolve_output_schema
from stepflow.workflows import requests
from stepflow.workflows.json_schemas import check_schema, outside_refs, validator_for
from stepflow.workflows.models import PipelineSpec, StepRecord, StepStatus
from stepflow.workflows.pipeline import INVALID_PIPELINE, PIPELINE_WORKFLOW
from tests.support.processes import one_error_line, process_env, stepflow_cli
from tests.support.schema_server import SchemaServer

LOCAL_ONLY = "points outside the schema; only local refs ('#/...') are allowed"


@pytest.fixture
def server() -> Iterator[SchemaServer]:
    with SchemaServer() as server:
        yield server


def input_spec(schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": "refs", "steps": [{"id": "ask", "kind": "input", "schema": schema}]}


def agent_spec(schema: dict[str, Any]) -> dict[str, Any]:
    step = {"id": "review", "kind": "agent", "instructions": "x", "output_schema": schema}
    return {"name": "refs", "steps": [step]}


def outside_cases(server: SchemaServer) -> list[tuple[dict[str, Any], str]]:
    """(spec, what the refusal says): a `$ref` to the server in each place a spec has a schema."""
    url = server.url()
    return [
        (input_spec({"$ref": url}), f"step 'ask': schema: $ref '{url}' {LOCAL_ONLY}"),
        (
            # Under `allOf`, so that every answer would need it.
            agent_spec({"type": "object", "allOf": [{"$ref": url}]}),
            f"step 'review': output_schema: $ref '{url}' at /allOf/0 {LOCAL_ONLY}",
        ),
    ]


async def test_validate_refuses_a_ref_outside_the_schema_and_fetches_nothing(
    server: SchemaServer, tmp_path: Path
) -> None:
    env = process_env("127.0.0.1:1", STEPFLOW_TOOL_MODULES="tests.support.tools")
    for index, (spec, expected) in enumerate(outside_cases(server)):
        path = tmp_path / f"refs{index}.yaml"
        path.write_text(yaml.safe_dump(spec))
        done = await stepflow_cli(env, "validate", str(path))
        one_error_line(done, expected, prefix=str(path))
    assert server.requests == []


async def test_a_run_started_around_the_client_fails_at_start_and_fetches_nothing(
    worker: None, temporal_client: Client, task_queue: str, server: SchemaServer
) -> None:
    for spec, expected in outside_cases(server):
        handle = await temporal_client.start_workflow(
            PIPELINE_WORKFLOW,
            {"spec": spec},
            id=f"raw-{uuid.uuid4().hex[:8]}",
            task_queue=task_queue,
        )
        with pytest.raises(WorkflowFailureError) as failure:
            await handle.result()
        cause = failure.value.cause
        assert isinstance(cause, ApplicationError)
        assert cause.type == INVALID_PIPELINE and cause.non_retryable
        assert expected in cause.message
    assert server.requests == []


def test_the_input_update_refuses_such_a_schema_without_fetching(server: SchemaServer) -> None:
    # A run that started before such schemas were refused can still be waiting for a value.
    spec = PipelineSpec.model_validate(input_spec({"$ref": server.url()}))
    steps = {s.id: s for s in spec.steps}
    records = {
        "ask": StepRecord.model_validate({"id": "ask", "kind": "input", "status": "WAITING"})
    }
    assert records["ask"].status is StepStatus.WAITING
    with pytest.raises(ApplicationError) as caught:
        requests.check_input(steps, records, "ask", "a value")
    assert caught.value.type == requests.REQUEST_REJECTED
    assert caught.value.message == (
        f"the schema of step 'ask' cannot check a value: $ref '{server.url()}' {LOCAL_ONLY}"
    )
    assert server.requests == []


SchemaAt = Callable[[str, str], dict[str, Any]]
"""A schema that references the server, given the URL of one schema on it and its base."""


@pytest.mark.parametrize(
    "schema_at",
    [
        pytest.param(lambda url, base: {"$ref": url}, id="ref"),
        pytest.param(lambda url, base: {"$dynamicRef": url}, id="dynamic-ref"),
        pytest.param(lambda url, base: {"items": {"$ref": url}}, id="nested-ref"),
        # Relative to the `$id`: the server, though the `$ref` names no host.
        pytest.param(
            lambda url, base: {"$id": f"{base}root.json", "$ref": "other.json"},
            id="relative-to-id",
        ),
    ],
)
def test_a_validator_never_fetches(server: SchemaServer, schema_at: SchemaAt) -> None:
    schema = schema_at(server.url(), server.url(""))
    with pytest.raises(Exception, match="Unresolvable"):
        list(validator_for(schema).iter_errors(["a value"]))
    assert server.requests == []


def test_the_answer_check_of_an_output_schema_never_fetches(server: SchemaServer) -> None:
    # The model activity's check of a final answer, for a run that got past every check.
    value, why = ResolvedSchema(json_schema={"$ref": server.url()}).check('"an answer"')
    assert value is None
    assert why is not None and why.startswith("the answer could not be checked: ")
    with pytest.raises(ApplicationError) as caught:
        resolve_output_schema({"$ref": server.url()})
    assert caught.value.type == "InvalidOutputSchema" and caught.value.non_retryable
    assert server.requests == []


def test_local_refs_are_followed() -> None:
    schema = {
        "$defs": {"score": {"type": "integer", "maximum": 10}},
        "type": "object",
        "properties": {"score": {"$ref": "#/$defs/score"}},
    }
    assert check_schema(schema) == []
    errors = [e.message for e in validator_for(schema).iter_errors({"score": 11})]
    assert errors == ["11 is greater than the maximum of 10"]


def test_only_reference_keywords_are_references() -> None:
    schema = {
        "type": "object",
        # A property named `$ref`, and data that looks like a reference: neither is one.
        "properties": {"$ref": {"type": "string"}, "const": {"$ref": "#/$defs/x"}},
        "$defs": {"x": {"type": "string"}},
        "examples": [{"$ref": "http://example.com/not-a-reference"}],
        "default": {"$ref": "http://example.com/not-a-reference"},
    }
    assert outside_refs(schema) == []
    assert check_schema(schema) == []
    assert outside_refs({"properties": {"$ref": {"$ref": "file:///etc/passwd"}}}) == [
        f"$ref 'file:///etc/passwd' at /properties/$ref {LOCAL_ONLY}"
    ]
