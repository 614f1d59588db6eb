"""Control flow is checked before anything starts: each mistake is one issue naming the step
(by its path inside loops and sub-pipelines) and the field. No server needed."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from stepflow.workflows.models import PipelineSpec
from stepflow.workflows.validation import structural_issues
from tests.support.helpers import pipeline, step


def issues(*steps: dict[str, Any], **fields: Any) -> list[str]:
    return [str(i) for i in structural_issues(pipeline(*steps, **fields))]


def echo(step_id: str, value: Any = 1, **fields: Any) -> dict[str, Any]:
    return step(step_id, "echo", args={"value": value}, **fields)


def loop(body: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    return {"id": "revise", "kind": "loop", "max_iterations": 3, "steps": body, **fields}


def test_a_valid_pipeline_with_every_construct_has_no_issues() -> None:
    child = {
        "name": "child",
        "inputs": {"text": {"type": "string"}},
        "steps": [echo("inner", "{{ inputs.text }}")],
        "outputs": {"text": "{{ steps.inner.output }}"},
    }
    assert (
        issues(
            echo("plan", [1, 2]),
            echo(
                "each",
                "{{ item }} {{ index }}",
                depends_on=["plan"],
                for_each="{{ steps.plan.output }}",
                when="item > 1",
            ),
            loop(
                [
                    echo("write", "{{ steps.each.output }} {{ loop.iteration }}"),
                    echo("review", "{{ loop.previous.review.output }}", depends_on=["write"]),
                ],
                depends_on=["each"],
                until="steps.review.output == 'ok' or loop.iteration > 2",
            ),
            {
                "id": "sub",
                "kind": "pipeline",
                "pipeline": child,
                "depends_on": ["revise"],
                "inputs": {"text": "{{ steps.revise.output.write }}"},
            },
            echo(
                "end",
                "{{ steps.sub.output }}",
                depends_on=["sub"],
                trigger="all_done",
                when="steps.sub.status == 'SUCCEEDED'",
            ),
            outputs={"final": "{{ steps.end.output }}", "plan": "{{ steps.plan.output }}"},
        )
        == []
    )


@pytest.mark.parametrize(
    ("when", "problem"),
    [
        ("steps.a.output ==", "step 'b': when: expression \"steps.a.output ==\": unexpected end"),
        ("steps.c.output", "step 'b': when: reads step 'c', which is not in depends_on"),
        ("inputs.nope", "step 'b': when: reads input 'nope', which is not declared"),
        ("item == 1", "step 'b': when: 'item' exists only inside a for_each step"),
        ("loop.iteration > 1", "step 'b': when: 'loop' exists only inside a loop's steps"),
        ("a }} {{ b", "step 'b': when: expression"),
    ],
)
def test_a_condition_that_does_not_parse_or_reads_what_the_step_cannot_see(
    when: str, problem: str
) -> None:
    found = issues(echo("a"), echo("c"), echo("b", depends_on=["a"], when=when))
    assert len(found) == 1 and found[0].startswith(problem), found


def test_item_and_index_exist_only_in_for_each_steps_and_loop_only_in_loops() -> None:
    assert issues(
        echo("a", "{{ item }}"), echo("b", "{{ index }}"), echo("c", "{{ loop.iteration }}")
    ) == [
        "step 'a': args.value: {{ item }}: 'item' exists only inside a for_each step",
        "step 'b': args.value: {{ index }}: 'index' exists only inside a for_each step",
        "step 'c': args.value: {{ loop.iteration }}: 'loop' exists only inside a loop's steps",
    ]


def test_for_each_must_be_a_template_and_cannot_read_its_own_item() -> None:
    assert issues(echo("a", for_each="[1, 2]"), echo("b", for_each="{{ item }}")) == [
        "step 'a': for_each: must be a template that yields a list, e.g. "
        "{{ steps.plan.output.items }}",
        "step 'b': for_each: {{ item }}: 'item' exists only inside a for_each step",
    ]


def test_a_loop_needs_max_iterations_and_its_body_is_checked_like_a_pipeline() -> None:
    with pytest.raises(ValidationError, match="max_iterations"):
        pipeline({"id": "l", "kind": "loop", "until": "true", "steps": [echo("a")]})
    with pytest.raises(ValidationError, match="less than or equal to 100"):
        pipeline(loop([echo("a")], max_iterations=101))
    assert issues(
        echo("x"),
        loop(
            [
                echo("write", "{{ steps.nope.output }}"),
                echo("write"),
                echo("review", depends_on=["ghost"]),
            ],
            depends_on=["x"],
            until="steps.x.output == 1",
        ),
    ) == [
        "step 'revise': until: reads step 'x', which is not a step of the loop's body",
        "step 'revise.write': id: duplicate step id",
        "step 'revise.write': args.value: {{ steps.nope.output }} uses step 'nope', which is "
        "not in depends_on: a step sees only the outputs of the steps it depends on",
        "step 'revise.review': depends_on: unknown step 'ghost'",
    ]


def test_a_loop_step_cannot_shadow_what_the_loop_depends_on() -> None:
    assert issues(echo("x"), loop([echo("x")], depends_on=["x"])) == [
        "step 'revise.x': id: a loop's step cannot have the id of a step the loop depends on"
    ]


def test_a_sub_pipeline_is_checked_with_its_inputs() -> None:
    child = {
        "name": "child",
        "inputs": {"text": {"type": "string"}, "lang": {"type": "string", "default": "fr"}},
        "steps": [echo("inner", "{{ inputs.missing }}")],
    }
    found = issues(
        {"id": "sub", "kind": "pipeline", "pipeline": child, "inputs": {"txt": "x"}},
        {"id": "file", "kind": "pipeline", "pipeline": "translate.yaml"},
        {"id": "both", "kind": "pipeline", "pipeline": child, "steps": [echo("a")]},
    )
    assert found == [
        "step 'sub.inner': args.value: {{ inputs.missing }} names no declared input",
        "step 'sub': inputs.txt: pipeline 'child' declares no input 'txt' (did you mean 'text'?)",
        "step 'sub': inputs.text: pipeline 'child' needs input 'text'",
        "step 'file': pipeline: the file 'translate.yaml' was not read: start the run with "
        "`stepflow run` or StepflowClient, which read it",
        "step 'both': pipeline: give either `pipeline` (a file) or `steps`",
    ]


def test_outputs_read_any_step_but_only_existing_ones() -> None:
    assert issues(echo("a"), outputs={"x": "{{ steps.b.output }}", "y": "{{ item }}"}) == [
        "outputs.x: {{ steps.b.output }} names no step",
        "outputs.y: {{ item }}: 'item' exists only inside a for_each step",
    ]


def test_unknown_trigger_and_for_each_on_a_person_are_schema_errors() -> None:
    with pytest.raises(ValidationError, match="trigger"):
        pipeline(echo("a", trigger="sometimes"))
    with pytest.raises(ValidationError, match="for_each"):
        PipelineSpec.model_validate(
            {"name": "t", "steps": [{"id": "a", "kind": "approval", "for_each": "{{ x }}"}]}
        )
