"""Agent steps are checked before anything starts, like tool steps: step and field named."""

from __future__ import annotations

from pathlib import Path

import pytest

from stepflow.workflows.validation import structural_issues
from tests.support.helpers import agent, pipeline
from tests.test_validation import bad, validate

GOOD_AGENT = """
name: agents
inputs:
  topic: {type: string, default: tides}
steps:
  - id: facts
    kind: tool
    tool: echo
    args: {value: {query: "{{ inputs.topic }}"}}
  - id: research
    kind: agent
    depends_on: [facts]
    instructions: Research {{ inputs.topic }} with word_count.
    input: "{{ steps.facts.output }}"
    tools: [word_count, echo]
    tool_calls: sequential
    max_model_calls: 4
    output_schema:
      type: object
      properties: {summary: {type: string}}
      required: [summary]
    model_retry: {max_attempts: 8, initial_interval: 2s}
    model_timeout: {start_to_close: 2m}
    tool_timeout: {start_to_close: 10s}
  - id: review
    kind: agent
    depends_on: [research]
    instructions: Review the research.
    input: "{{ steps.research.output.summary }}"
    output_schema: tests.support.schemas:Verdict
"""


def test_a_good_agent_pipeline_is_valid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, output = validate(tmp_path, capsys, GOOD_AGENT)
    assert code == 0, output


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        pytest.param(
            "- {id: a, kind: agent, instructions: x, tools: [wordcount]}",
            "step 'a': tools[0]: unknown tool 'wordcount' (did you mean 'word_count'?)",
            id="unknown-tool",
        ),
        pytest.param(
            "- {id: a, kind: agent, instructions: x, tools: [echo, echo]}",
            "step 'a': tools: tool 'echo' is listed twice",
            id="tool-twice",
        ),
        pytest.param(
            """
            - {id: a, kind: tool, tool: echo}
            - {id: b, kind: agent, instructions: x, input: "{{ steps.a.output }}"}
            """,
            "step 'b': input: {{ steps.a.output }} uses step 'a', which is not in depends_on",
            id="undeclared-reference-in-input",
        ),
        pytest.param(
            "- {id: a, kind: agent, instructions: 'Use {{ inputs.nope }}'}",
            "step 'a': instructions:",
            id="unknown-input-in-instructions",
        ),
        pytest.param(
            "- {id: a, kind: agent, instructions: x, output_schema: {type: objekt}}",
            "step 'a': output_schema: output_schema is not a valid JSON schema",
            id="bad-json-schema",
        ),
        pytest.param(
            "- {id: a, kind: agent, instructions: x, output_schema: 'tests.support.schemas:Nope'}",
            "step 'a': output_schema: output_schema 'tests.support.schemas:Nope' is not a pydantic",
            id="bad-model-path",
        ),
        pytest.param(
            # Inside a trusted module (tests/conftest.py), so the import is tried.
            "- {id: a, kind: agent, instructions: x, output_schema: 'tests.support.schemas.x:M'}",
            "step 'a': output_schema: output_schema 'tests.support.schemas.x:M': cannot import "
            "'tests.support.schemas.x'",
            id="unimportable-model",
        ),
        pytest.param(
            "- {id: a, kind: agent, instructions: x, max_model_calls: 0}",
            "step 'a': max_model_calls:",
            id="zero-model-calls",
        ),
        pytest.param(
            "- {id: a, kind: agent, instructions: x, tool_calls: all}",
            "step 'a': tool_calls:",
            id="bad-tool-call-mode",
        ),
        pytest.param(
            "- {id: a, kind: agent, instructions: x, model_timeout: {start_to_close: soon}}",
            "step 'a': model_timeout.start_to_close:",
            id="bad-model-timeout",
        ),
        pytest.param(
            "- {id: a, kind: agent, instructions: x, prompt: y}",
            "step 'a': prompt: unknown key (a typo?)",
            id="unknown-key",
        ),
        pytest.param(
            "- {id: a, kind: agent}",
            "step 'a': instructions: Field required",
            id="no-instructions",
        ),
    ],
)
def test_agent_mistakes_are_named_by_step_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], steps: str, expected: str
) -> None:
    code, output = validate(tmp_path, capsys, bad(steps))
    assert code == 2, output
    assert expected in " ".join(output.split()), output


def test_context_must_be_dependencies_or_full(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = bad("- {id: a, kind: agent, instructions: x}", extra="context: everything\n")
    code, output = validate(tmp_path, capsys, text)
    assert code == 2
    assert "context" in output


def test_local_tools_must_be_among_the_step_s_tools() -> None:
    spec = pipeline(agent("a", tools=["echo"], local_tools=["echo", "record"]))
    assert [str(i) for i in structural_issues(spec)] == [
        "step 'a': local_tools: tool 'record' is not in the step's tools"
    ]
