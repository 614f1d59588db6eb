"""`stepflow validate`: every mistake is caught before anything starts, named by step and field."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from stepflow.client.cli import main

GOOD = """
name: good
inputs:
  topic: {type: string}
steps:
  - id: a
    kind: tool
    tool: echo
    args: {value: "{{ inputs.topic }}"}
  - id: b
    kind: tool
    tool: json_select
    args: {value: "{{ steps.a.output }}", path: "x"}
    depends_on: [a]
    retry: {max_attempts: 5, initial_interval: 2s}
    timeout: {start_to_close: 1m30s, heartbeat: 10s}
    on_failure: {fallback: null}
"""


def validate(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str) -> tuple[int, str]:
    path = tmp_path / "pipeline.yaml"
    path.write_text(textwrap.dedent(text))
    code = main(["validate", str(path)])
    captured = capsys.readouterr()
    return code, captured.err + captured.out


def bad(steps: str, extra: str = "") -> str:
    return f"name: bad\n{extra}steps:\n{textwrap.indent(textwrap.dedent(steps), '  ')}"


def test_a_good_file_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, output = validate(tmp_path, capsys, GOOD)
    assert code == 0, output
    assert "pipeline 'good' is valid (2 steps)" in output


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            bad("""
                - {id: a, kind: tool, tool: echo}
                - {id: a, kind: tool, tool: echo}
            """),
            "step 'a': id: duplicate step id",
            id="duplicate-id",
        ),
        pytest.param(
            bad("- {id: a, kind: tool, tool: echo, depends_on: [fetch]}"),
            "step 'a': depends_on: unknown step 'fetch'",
            id="unknown-dependency",
        ),
        pytest.param(
            bad("""
                - {id: a, kind: tool, tool: echo, depends_on: [c]}
                - {id: b, kind: tool, tool: echo, depends_on: [a]}
                - {id: c, kind: tool, tool: echo, depends_on: [b]}
            """),
            "dependency cycle: a -> c -> b -> a",
            id="cycle",
        ),
        pytest.param(
            bad("- {id: a, kind: tool, tool: ecko}"),
            "step 'a': tool: unknown tool 'ecko' (did you mean 'echo'?)",
            id="unknown-tool",
        ),
        pytest.param(
            bad("- {id: a, kind: tool, tool: word_count, args: {text: 42}}"),
            "step 'a': args.text: Input should be a valid string",
            id="args-fail-schema",
        ),
        pytest.param(
            bad("- {id: a, kind: tool, tool: word_count, args: {txt: hello}}"),
            "step 'a': args.txt: Extra inputs are not permitted",
            id="args-unknown-argument",
        ),
        pytest.param(
            bad("- {id: a, kind: tool, tool: word_count, args: {}}"),
            "step 'a': args.text: Field required",
            id="args-missing-argument",
        ),
        pytest.param(
            bad("""
                - {id: a, kind: tool, tool: echo}
                - {id: b, kind: tool, tool: echo}
                - {id: c, kind: tool, tool: echo, args: {value: "{{ steps.a.output }}"}, depends_on: [b]}
            """),
            "step 'c': args.value: {{ steps.a.output }} uses step 'a', which is not in depends_on",
            id="reference-to-non-dependency",
        ),
        pytest.param(
            bad(
                "- {id: a, kind: tool, tool: echo, args: {value: '{{ inputs.topik }}'}}",
                "inputs: {topic: {default: x}}\n",
            ),
            "step 'a': args.value: {{ inputs.topik }} names no declared input (did you mean 'topic'?)",
            id="reference-to-unknown-input",
        ),
        pytest.param(
            bad("- {id: a, kind: tool, tool: echo, args: {value: '{{ step.a.output }}'}}"),
            "unknown reference {{ step.a.output }}",
            id="malformed-reference",
        ),
        pytest.param(
            bad("- {id: a, tool: echo, args: {value: 1}}"),
            "step 'a': `kind` is missing: add `kind: tool`; a step is one of: tool, agent,",
            id="missing-kind-of-a-tool-step",
        ),
        pytest.param(
            bad("- {id: a, steps: []}"),
            "step 'a': `kind` is missing; a step is one of: tool, agent, approval, input, loop,",
            id="missing-kind-ambiguous",
        ),
        pytest.param(
            bad("- {id: a, kind: tol, tool: echo}"),
            "step 'a': unknown kind 'tol' (did you mean 'tool'?); a step is one of: tool, agent,",
            id="unknown-kind",
        ),
        pytest.param(
            bad("- {id: a, kind: tool, tool: echo, retyr: {max_attempts: 2}}"),
            "step 'a': retyr: unknown key (a typo?)",
            id="unknown-key-in-step",
        ),
        pytest.param(
            bad("- {id: a, kind: tool, tool: echo, retry: {max_atempts: 2}}"),
            "step 'a': retry.max_atempts: unknown key (a typo?)",
            id="unknown-key-in-retry",
        ),
        pytest.param(
            "name: bad\nmax_concurency: 3\nsteps: [{id: a, kind: tool, tool: echo}]\n",
            "max_concurency: unknown key (a typo?)",
            id="unknown-key-in-pipeline",
        ),
        pytest.param(
            bad("- {id: a, kind: tool, tool: echo, timeout: {start_to_close: 30 seconds}}"),
            "step 'a': timeout.start_to_close: invalid duration '30 seconds'",
            id="bad-duration",
        ),
        pytest.param(
            bad("- {id: a, kind: tool, tool: echo, timeout: {heartbeat: 0s}}"),
            "step 'a': timeout.heartbeat: must be longer than zero",
            id="zero-duration",
        ),
        pytest.param(
            bad("- {id: a, kind: tool, tool: echo, retry: {max_attempts: 0}}"),
            "step 'a': retry.max_attempts: Input should be greater than or equal to 1",
            id="bad-retry",
        ),
        pytest.param(
            bad("- {id: a, kind: tool, tool: echo, on_failure: retry}"),
            "step 'a': on_failure",
            id="bad-on-failure",
        ),
        pytest.param(
            bad("- {id: a, kind: tool, tool: echo, depends_on: [a]}"),
            "step 'a': depends_on: a step cannot depend on itself",
            id="self-dependency",
        ),
        pytest.param(
            bad("- {id: g, kind: approval, on_timeout: approve}"),
            "step 'g': on_timeout: has no effect without a timeout",
            id="approval-on-timeout-without-timeout",
        ),
        pytest.param(
            bad("- {id: g, kind: approval, timeout: 1d, on_timeout: later}"),
            "step 'g': on_timeout: Input should be 'approve', 'reject' or 'fail'",
            id="approval-bad-on-timeout",
        ),
        pytest.param(
            bad("- {id: g, kind: approval, timeout: {start_to_close: 1h}}"),
            "step 'g': timeout",
            id="approval-timeout-is-a-duration",
        ),
        pytest.param(
            bad("""
                - {id: a, kind: tool, tool: echo}
                - {id: g, kind: approval, message: "ship {{ steps.a.output }}?"}
            """),
            "step 'g': message: {{ steps.a.output }} uses step 'a', which is not in depends_on",
            id="approval-message-reference",
        ),
        pytest.param(
            bad("- {id: n, kind: input, schema: {type: integr}}"),
            "step 'n': schema: not a valid JSON Schema",
            id="input-bad-schema",
        ),
        pytest.param(
            bad("- {id: n, kind: input, schema: {$ref: '#/$defs/missing'}}"),
            "step 'n': schema: cannot check values: PointerToNowhere",
            id="input-schema-dangling-ref",
        ),
        pytest.param(
            bad("- {id: n, kind: input, retry: {max_attempts: 2}}"),
            "step 'n': retry: unknown key (a typo?)",
            id="input-has-no-retry",
        ),
        pytest.param("name: bad\nsteps: [\n", "is not valid YAML at line", id="not-yaml"),
        pytest.param("- just a list\n", "must be a mapping", id="not-a-mapping"),
    ],
)
def test_a_bad_file_exits_2_naming_step_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str
) -> None:
    code, output = validate(tmp_path, capsys, text)
    assert code == 2
    assert expected in output, output
    assert "Traceback" not in output


def test_every_issue_is_reported_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, output = validate(
        tmp_path,
        capsys,
        bad("""
            - {id: a, kind: tool, tool: nope}
            - {id: b, kind: tool, tool: echo, depends_on: [zz]}
        """),
    )
    assert code == 2
    assert "unknown tool 'nope'" in output and "unknown step 'zz'" in output


def test_a_missing_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["validate", str(tmp_path / "missing.yaml")])
    assert code == 2
    assert "cannot read" in capsys.readouterr().err


def test_examples_are_valid(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STEPFLOW_TOOL_MODULES", "examples.tools")
    for path in sorted(Path(__file__).parent.parent.joinpath("examples").glob("*.yaml")):
        assert main(["validate", str(path)]) == 0, capsys.readouterr().err
