"""The offline model: deterministic tool calls and answers that match their schemas."""

from __future__ import annotations

import json
import math
from typing import Any, Literal

import pytest
from jsonschema import Draft202012Validator
from pydantic import BaseModel, Field

from stepflow.activities.model_endpoint import resolve_endpoint
from stepflow.activities.offline_model import (
    REPAIR_PREFIX,
    estimate_tokens,
    offline_completion,
    synthesize,
)
from stepflow.runtime.settings import Settings
from stepflow.workflows import models
from tests.support.schema_server import SchemaServer


def tool(name: str, parameters: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {"name": name, "description": f"The {name} tool.", "parameters": parameters},
    }


LOOKUP = tool(
    "lookup",
    {
        "type": "object",
        "properties": {
            "query": {"type": "string", "minLength": 3, "maxLength": 40},
            "limit": {"type": "integer", "minimum": 5, "maximum": 10},
        },
        "required": ["query", "limit"],
    },
)
WORD_COUNT = tool(
    "word_count",
    {
        "type": "object",
        "properties": {"text": {"title": "Text", "type": "string"}},
        "required": ["text"],
        "title": "word_count_args",
    },
)
FETCH = tool(
    "fetch",
    {
        "type": "object",
        "properties": {
            "url": {"type": "string", "format": "uri"},
            "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "minItems": 2},
            "verbose": {"type": "boolean", "default": False},
        },
        "required": ["url", "tags"],
    },
)
TOOLS = [LOOKUP, WORD_COUNT, FETCH]


def chat(instructions: str, user: str) -> list[dict[str, Any]]:
    return [{"role": "system", "content": instructions}, {"role": "user", "content": user}]


def with_results(messages: list[dict[str, Any]], reply: dict[str, Any]) -> list[dict[str, Any]]:
    """The conversation after the workflow ran every call of `reply`."""
    message = reply["message"]
    results = [
        {"role": "tool", "tool_call_id": call["id"], "content": json.dumps({"ok": call["id"]})}
        for call in message["tool_calls"]
    ]
    return [*messages, message, *results]


def assert_valid(value: Any, schema: dict[str, Any]) -> None:
    errors = [e.message for e in Draft202012Validator(schema).iter_errors(value)]
    assert errors == [], (value, errors)


def test_offline_model_name_is_the_shared_one(monkeypatch: pytest.MonkeyPatch) -> None:
    # A step that names the shared constant gets the built-in model, even with a real key set.
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-used")
    settings = Settings(default_model="gpt-test")
    assert resolve_endpoint(models.OFFLINE_MODEL, settings).offline
    assert not resolve_endpoint(None, settings).offline


# ---------------------------------------------------------------------------
# Tool calls


def test_calls_every_named_tool_and_only_those_in_tools_order() -> None:
    messages = chat("Use fetch to get the page.", "Input:\nThen lookup the author; ignore words.")
    reply = offline_completion(messages, TOOLS, None)

    assert reply["finish_reason"] == "tool_calls"
    message = reply["message"]
    assert message["role"] == "assistant"
    assert message["content"] is None
    calls = message["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["lookup", "fetch"]
    assert all(c["type"] == "function" for c in calls)
    assert [c["id"] for c in calls] == ["offline_call_1", "offline_call_2"]


def test_tool_arguments_validate_against_each_tools_schema() -> None:
    messages = chat("Call lookup, word_count and fetch.", "Input:\nsome text to work on")
    calls = offline_completion(messages, TOOLS, None)["message"]["tool_calls"]

    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    assert len(calls) == 3
    for call in calls:
        args = json.loads(call["function"]["arguments"])
        assert_valid(args, schemas[call["function"]["name"]])
    assert json.loads(calls[1]["function"]["arguments"]) == {
        "text": "offline: some text to work on"
    }


def test_names_match_whole_words_only() -> None:
    messages = chat("Count with word_counter; do a lookups pass.", "Input:\nfetching, refetch")
    reply = offline_completion(messages, TOOLS, None)

    assert reply["finish_reason"] == "stop"
    assert "tool_calls" not in reply["message"]


def test_tool_named_in_a_context_section_is_called() -> None:
    user = "Input:\nplain\n\nOutput of step 'plan':\nnext: word_count"
    calls = offline_completion(chat("Go.", user), TOOLS, None)["message"]["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["word_count"]


def test_no_tool_call_when_none_is_named() -> None:
    reply = offline_completion(chat("Summarize.", "Input:\nthe weather"), TOOLS, None)

    assert reply["finish_reason"] == "stop"
    assert "tool_calls" not in reply["message"]
    assert reply["message"]["content"].startswith("[offline model] Summarize.")


def test_tool_args_take_hints_from_the_input() -> None:
    user = "Input:\n" + json.dumps({"query": "durable agents", "limit": 7, "text": 3})
    calls = offline_completion(chat("lookup then word_count", user), TOOLS, None)["message"][
        "tool_calls"
    ]
    args = [json.loads(c["function"]["arguments"]) for c in calls]
    assert args[0] == {"query": "durable agents", "limit": 7}
    # `text` is 3 in the input: not a string, so it is synthesized instead.
    assert args[1]["text"].startswith("offline: {")


def test_after_tool_results_it_answers_and_never_calls_again() -> None:
    messages = chat("Use lookup and fetch.", "Input:\nStepflow")
    first = offline_completion(messages, TOOLS, None)
    messages = with_results(messages, first)

    second = offline_completion(messages, TOOLS, None)
    assert second["finish_reason"] == "stop"
    assert "tool_calls" not in second["message"]
    content = second["message"]["content"]
    assert content.startswith("[offline model] Use lookup and fetch.")
    assert "Input: Stepflow" in content
    assert "Tool results:\n" in content
    assert '- lookup: {"ok": "offline_call_1"}' in content
    assert '- fetch: {"ok": "offline_call_2"}' in content

    # Even a follow-up that names a tool again gets an answer, not another call.
    messages = [*messages, second["message"], {"role": "user", "content": "now call lookup"}]
    assert offline_completion(messages, TOOLS, None)["finish_reason"] == "stop"


def test_call_ids_stay_unique_across_earlier_calls_in_the_conversation() -> None:
    earlier = chat("Use lookup.", "Input:\nfirst step")
    earlier = with_results(earlier, offline_completion(earlier, TOOLS, None))
    earlier.append({"role": "assistant", "content": "done"})
    # `context: full`: an earlier step's conversation, then this step's own.
    messages = [*earlier, *chat("Use lookup and word_count.", "Input:\nsecond step")]

    calls = offline_completion(messages, TOOLS, None)["message"]["tool_calls"]
    ids = [c["id"] for c in calls]
    assert ids == ["offline_call_2", "offline_call_3"]
    assert len(set(ids)) == len(ids)


# ---------------------------------------------------------------------------
# Plain-text answers


def test_plain_answer_is_labelled_and_names_the_context() -> None:
    user = (
        "Input:\n"
        + "x" * 300
        + "\n\nOutput of step 'research':\n{\"facts\": [1]}"
        + "\n\nOutput of step 'draft':\nsome draft"
    )
    content = offline_completion(chat("Write it up.\nMore details.", user), [], None)["message"][
        "content"
    ]
    assert content == (
        "[offline model] Write it up.\n\n"
        f"Input: {'x' * 200}...\n\n"
        "Context: step 'research', step 'draft'"
    )


@pytest.mark.parametrize(
    "messages",
    [
        [],
        [{"role": "system", "content": "Only instructions."}],
        [{"role": "user", "content": [{"type": "text", "text": "Input:\nparts"}]}],
        [{"role": "user", "content": None}, {"role": "tool", "content": {"not": "a string"}}],
        [{"role": "user", "content": 42}],
    ],
)
def test_odd_conversations_still_get_an_answer(messages: list[dict[str, Any]]) -> None:
    reply = offline_completion(messages, [], None)
    assert reply["finish_reason"] == "stop"
    assert reply["message"]["content"].startswith("[offline model] ")
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    structured = offline_completion(messages, [LOOKUP], schema)
    assert_valid(json.loads(structured["message"]["content"]), schema)


# ---------------------------------------------------------------------------
# Structured answers

HAND_WRITTEN = {
    "type": "object",
    "properties": {
        "topic": {"type": "string"},
        "verdict": {"enum": ["good", "bad", "unsure"]},
        "score": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "count": {"type": "integer", "minimum": 3},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "minItems": 2},
        "author": {
            "type": "object",
            "properties": {
                "name": {"type": "string", "minLength": 120},
                "email": {"type": "string", "format": "email"},
                "active": {"type": "boolean"},
            },
            "required": ["name", "email", "active"],
            "additionalProperties": False,
        },
        "note": {"type": ["null", "string"], "maxLength": 5},
        "optional": {"type": "string"},
    },
    "required": ["topic", "verdict", "score", "count", "tags", "author", "note"],
    "additionalProperties": False,
}


def test_structured_answer_matches_a_hand_written_schema() -> None:
    reply = offline_completion(chat("Judge it.", "Input:\nA long essay."), [], HAND_WRITTEN)

    assert reply["finish_reason"] == "stop"
    value = json.loads(reply["message"]["content"])
    assert_valid(value, HAND_WRITTEN)
    assert value["verdict"] == "good"
    assert value["count"] == 3
    assert len(value["tags"]) == 2
    assert len(value["author"]["name"]) == 120
    assert value["author"]["email"] == "offline@example.com"
    assert value["note"] == "offli"
    assert "optional" not in value


class Source(BaseModel):
    url: str
    title: str = Field(min_length=2)


class Section(BaseModel):
    heading: str
    sources: list[Source]
    level: Literal[1, 2, 3]


class Report(BaseModel):
    topic: str
    kind: Literal["brief", "full"]
    sections: list[Section] = Field(min_length=1, max_length=3)
    confidence: float = Field(ge=0.5, le=1)
    pages: int = Field(gt=10)
    summary: str | None
    reviewer: Source | None = None
    keywords: list[str] = []
    draft: bool = True


def test_structured_answer_matches_a_pydantic_schema() -> None:
    schema = Report.model_json_schema()
    assert "$defs" in schema

    user = "Input:\n" + json.dumps({"topic": "Temporal", "pages": 3, "keywords": ["a", "b"]})
    value = json.loads(offline_completion(chat("Report.", user), [], schema)["message"]["content"])

    assert_valid(value, schema)
    report = Report.model_validate(value)
    assert report.topic == "Temporal"  # a hint
    assert report.keywords == ["a", "b"]  # an optional property with a hint
    assert report.pages == 11  # the hint 3 is not > 10: synthesized instead
    assert report.kind == "brief"
    assert report.confidence == 0.5
    assert report.summary is not None
    assert report.reviewer is None
    assert report.sections[0].level == 1


def test_hints_come_from_earlier_steps_outputs_and_nested_objects() -> None:
    schema = {
        "type": "object",
        "properties": {
            "topic": {"type": "string"},
            "year": {"type": "integer"},
            "city": {"type": "string"},
        },
        "required": ["topic", "year", "city"],
    }
    user = (
        "Input:\nplain text input"
        + "\n\nOutput of step 'a':\n"
        + json.dumps({"topic": "from a", "meta": {"city": "Oslo", "topic": "nested"}})
        + "\n\nOutput of step 'b':\n"
        + json.dumps({"topic": "from b", "year": 2024})
    )
    value = json.loads(offline_completion(chat("Go.", user), [], schema)["message"]["content"])
    assert value == {"topic": "from a", "year": 2024, "city": "Oslo"}


def test_repair_turn_answers_again_validly() -> None:
    messages = chat("Judge it.", "Input:\nessay")
    first = offline_completion(messages, [], HAND_WRITTEN)
    messages = [
        *messages,
        {"role": "assistant", "content": "not json"},
        {"role": "user", "content": f"{REPAIR_PREFIX}: 'verdict' is a required property."},
    ]
    repaired = offline_completion(messages, [LOOKUP], HAND_WRITTEN)

    assert repaired["finish_reason"] == "stop"
    value = json.loads(repaired["message"]["content"])
    assert_valid(value, HAND_WRITTEN)
    assert value == json.loads(first["message"]["content"])


def test_a_hint_that_breaks_the_whole_schema_is_dropped() -> None:
    # Each property alone accepts the hint; together they fail `not`, so hints are dropped.
    schema = {
        "type": "object",
        "properties": {"a": {"type": "integer"}},
        "required": ["a"],
        "not": {"properties": {"a": {"const": 5}}},
    }
    value = json.loads(
        offline_completion(chat("x", 'Input:\n{"a": 5}'), [], schema)["message"]["content"]
    )
    assert value == {"a": 1}


# ---------------------------------------------------------------------------
# synthesize


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        ({"type": "string"}, "offline: some input"),
        ({"type": "string", "maxLength": 7}, "offline"),
        ({"type": "string", "minLength": 22}, "offline: some input..."),
        ({"type": "string", "format": "date-time"}, "2024-01-01T00:00:00Z"),
        ({"type": "string", "format": "date"}, "2024-01-01"),
        ({"type": "string", "format": "uri"}, "https://example.com/offline"),
        ({"type": "integer"}, 1),
        ({"type": "integer", "minimum": -4}, -4),
        ({"type": "integer", "exclusiveMinimum": 4}, 5),
        ({"type": "integer", "maximum": -2}, -2),
        ({"type": "integer", "minimum": 5, "multipleOf": 4}, 8),
        ({"type": "number"}, 1.0),
        ({"type": "number", "exclusiveMinimum": 0, "maximum": 0.5}, 0.25),
        ({"type": "boolean"}, True),
        ({"type": "null"}, None),
        ({"type": ["null", "integer"]}, 1),
        ({"enum": ["x", "y"]}, "x"),
        ({"const": {"k": 1}}, {"k": 1}),
        ({"type": "string", "default": "dflt"}, "dflt"),
        ({"type": "array", "items": {"type": "integer"}}, [1]),
        ({"type": "array", "items": {"type": "integer"}, "maxItems": 0}, []),
        ({"type": "array", "items": {"enum": [1, 2]}, "minItems": 2, "uniqueItems": True}, [1, 2]),
        ({"type": "array", "prefixItems": [{"type": "boolean"}, {"type": "null"}]}, [True]),
        ({"anyOf": [{"type": "null"}, {"type": "integer"}]}, 1),
        ({"oneOf": [{"type": "boolean"}, {"type": "string"}]}, True),
        (
            {"allOf": [{"properties": {"a": {"type": "integer"}}}, {"required": ["a"]}]},
            {"a": 1},
        ),
        ({}, "offline: some input"),
        (
            {"properties": {"a": {}}, "required": ["a", "b"]},
            {"a": "offline: some input", "b": "offline: some input"},
        ),
        ({"minimum": 2}, 2.0),
    ],
)
def test_synthesize(schema: dict[str, Any], expected: Any) -> None:
    value = synthesize(schema, {}, "some   input\n")
    assert value == expected
    assert type(value) is type(expected)
    assert_valid(value, schema)


def test_synthesize_follows_refs_and_stops_recursion() -> None:
    class Node(BaseModel):
        value: int
        child: Node | None
        children: list[Node] = []

    schema = Node.model_json_schema()
    value = synthesize(schema, {}, "")
    assert_valid(value, schema)
    depth = 0
    node = value
    while node is not None:
        depth += 1
        node = node["child"]
    assert 1 < depth < 10

    draft7 = {
        "definitions": {"Leaf": {"type": "object", "properties": {"x": {"type": "integer"}}}},
        "type": "object",
        "properties": {"leaf": {"$ref": "#/definitions/Leaf", "description": "why"}},
        "required": ["leaf"],
    }
    assert synthesize(draft7, {"x": 9}, "") == {"leaf": {"x": 9}}


@pytest.mark.parametrize(
    "schema",
    [
        {"$ref": "#"},
        {"$ref": "#/$defs/missing"},
        {"$ref": "https://example.com/schema.json"},
        {"type": "object", "properties": {"a": {"$ref": "#"}}, "required": ["a"]},
        {"type": 5},
        {"type": "string", "pattern": "^[0-9]+$"},
        {"allOf": [False]},
    ],
)
def test_synthesize_does_not_raise_on_schemas_it_cannot_satisfy(schema: dict[str, Any]) -> None:
    value = synthesize(schema, {"a": 1}, "text")
    json.dumps(value)  # a JSON value, even where it cannot match the schema

    reply = offline_completion(chat("x", "Input:\ny"), [tool("t", schema)], schema)

    # A well-formed final answer the repair loop can check: JSON text, tokens counted.
    assert reply["finish_reason"] == "stop"
    json.loads(reply["message"]["content"])
    usage = reply["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0


# ---------------------------------------------------------------------------
# Determinism and usage


def test_same_request_same_reply() -> None:
    schema = Report.model_json_schema()
    for tools, output_schema in [(TOOLS, None), ([], schema), ([], None)]:
        messages = chat("Use lookup and fetch.", 'Input:\n{"topic": "t"}')
        first = offline_completion(messages, tools, output_schema)
        second = offline_completion(json.loads(json.dumps(messages)), tools, output_schema)
        assert first == second
        assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", 0),
        ("a", 1),
        ("abcd", 1),
        ("abcde", 2),
        ("é" * 8, 2),
        ({"b": 1, "a": 2}, math.ceil(len('{"a": 2, "b": 1}') / 4)),
        ([1, 2, 3], 3),
        (None, 1),
    ],
)
def test_estimate_tokens(value: Any, expected: int) -> None:
    assert estimate_tokens(value) == expected


def test_estimate_tokens_ignores_dict_order() -> None:
    assert estimate_tokens({"a": 1, "bb": [1, 2]}) == estimate_tokens({"bb": [1, 2], "a": 1})


def test_usage_counts_the_request_and_the_reply() -> None:
    messages = chat("Use lookup.", "Input:\nquestion")
    calls = offline_completion(messages, TOOLS, None)
    usage = calls["usage"]
    assert usage["prompt_tokens"] == estimate_tokens(messages) + estimate_tokens(TOOLS)
    assert usage["completion_tokens"] == estimate_tokens(calls["message"]["tool_calls"])
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]

    answer = offline_completion(messages, [], HAND_WRITTEN)
    usage = answer["usage"]
    assert usage["prompt_tokens"] == estimate_tokens(messages) + estimate_tokens(HAND_WRITTEN)
    assert usage["completion_tokens"] == estimate_tokens(answer["message"]["content"])
    assert usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]

    # A longer prompt costs more, whatever the reply.
    longer = chat("Use lookup.", "Input:\n" + "question " * 50)
    assert (
        offline_completion(longer, [], None)["usage"]["prompt_tokens"]
        > (offline_completion(messages, [], None)["usage"]["prompt_tokens"])
    )


def test_the_offline_model_never_fetches_a_ref() -> None:
    with SchemaServer() as server:
        schema = {"type": "object", "properties": {"a": {"$ref": server.url()}}}
        synthesize(schema, {"a": 1}, "text")
        offline_completion(chat("x", "Input:\ny"), [], schema)
    assert server.requests == []


# ---------------------------------------------------------------------------
# The examples' plan and review loop

PLAN: dict[str, Any] = {
    "type": "object",
    "properties": {
        "aspects": {
            "type": "array",
            "minItems": 3,
            "maxItems": 5,
            "items": {
                "type": "object",
                "properties": {"aspect": {"type": "string"}, "question": {"type": "string"}},
                "required": ["aspect", "question"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["aspects"],
    "additionalProperties": False,
}
VERDICT: dict[str, Any] = {
    "type": "object",
    "properties": {
        "verdict": {"type": "string", "enum": ["revise", "approve"]},
        "score": {"type": "integer", "minimum": 1, "maximum": 10},
        "comments": {"type": "array", "minItems": 1, "items": {"type": "string"}},
    },
    "required": ["verdict", "score", "comments"],
}


def answer(instructions: str, user: str, schema: dict[str, Any]) -> Any:
    value = json.loads(
        offline_completion(chat(instructions, user), [], schema)["message"]["content"]
    )
    assert_valid(value, schema)
    return value


def test_a_plan_gets_minitems_distinct_aspects_a_for_each_can_fan_out_over() -> None:
    plan = answer("Plan the report.", "Input:\ndurable execution", PLAN)

    assert plan["aspects"] == [
        {"aspect": "offline: durable execution", "question": "offline: durable execution"},
        {"aspect": "offline: durable execution (2)", "question": "offline: durable execution (2)"},
        {"aspect": "offline: durable execution (3)", "question": "offline: durable execution (3)"},
    ]


def review_input(last_review: Any) -> str:
    return "Input:\n" + json.dumps({"topic": "sagas", "round": 1, "last_review": last_review})


def test_a_first_review_says_revise_and_a_review_of_the_revision_approves() -> None:
    first = answer("Review the draft.", review_input(None), VERDICT)
    assert first["verdict"] == "revise"

    second = answer("Review the draft.", review_input(first), VERDICT)
    assert second["verdict"] == "approve"
    # The previous review is no hint: its comments are not copied into the new one.
    assert second["comments"] != first["comments"]
    assert second["score"] == first["score"] == 1

    # Every time: the same input gets the same verdict.
    assert answer("Review the draft.", review_input(first), VERDICT) == second


@pytest.mark.parametrize(
    ("user", "verdict"),
    [
        ("Input:\nTopic: sagas\nLast review: null", "revise"),
        ("Input:\nTopic: sagas\nLast review:", "revise"),
        ("Input:\nTopic: sagas\nPrevious review: None", "revise"),
        ("Input:\nTopic: sagas\nLast review: revise, too long", "approve"),
        ('Input:\nTopic: sagas\n  previous review: {"verdict": "revise"}', "approve"),
        ("Input:\n" + json.dumps({"previous_review": {"verdict": "revise"}}), "approve"),
        ("Input:\n" + json.dumps({"last_review": ""}), "revise"),
        ("Input:\n" + json.dumps({"last_review": {}}), "revise"),
        # Only the step's input counts, not an earlier step's output shown after it.
        ("Input:\nTopic\n\nOutput of step 'review':\nLast review: revise", "revise"),
    ],
)
def test_what_shows_a_revision(user: str, verdict: str) -> None:
    assert answer("Review.", user, VERDICT)["verdict"] == verdict


def test_a_revision_review_approves_over_a_hint_and_leaves_other_enums_and_tools_alone() -> None:
    schema = {
        "type": "object",
        "properties": {
            "verdict": {"$ref": "#/$defs/Verdict"},
            "tone": {"enum": ["formal", "casual"]},
            "status": {"enum": ["approved", "rejected"]},
        },
        "required": ["verdict", "tone", "status"],
        "$defs": {"Verdict": {"enum": ["revise", "approve"]}},
    }
    user = (
        "Input:\nLast review: too short"
        + "\n\nOutput of step 'draft':\n"
        + json.dumps({"verdict": "revise", "tone": "casual"})
    )
    assert answer("Review.", user, schema) == {
        "verdict": "approve",  # the hint `revise` gives way
        "tone": "casual",  # a hint, as usual: no approval to pick
        "status": "approved",
    }
    verdict_tool = tool(
        "judge",
        {
            "type": "object",
            "properties": {"v": VERDICT["properties"]["verdict"]},
            "required": ["v"],
        },
    )
    calls = offline_completion(chat("Use judge.", user), [verdict_tool], None)["message"][
        "tool_calls"
    ]
    assert json.loads(calls[0]["function"]["arguments"]) == {"v": "revise"}
