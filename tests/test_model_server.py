"""The scripted model server, driven through the real openai client (no Temporal needed).

If these pass, a failure elsewhere is about Stepflow, not about the fake API it talks to.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletion

from tests.support.model_server import (
    EXHAUSTED,
    FAULT_KINDS,
    NO_CHOICES,
    NOT_JSON,
    RATE_LIMITED,
    SERVER_ERROR,
    SLOW,
    TEST_API_KEY,
    TRUNCATED_JSON,
    FaultPlan,
    RecordedRequest,
    Reply,
    ScriptedModelServer,
    error,
    hang,
    json_answer,
    malformed,
    text,
    tool_calls,
)

LOOKUP_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "lookup",
        "description": "Look something up.",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
    },
}


@pytest.fixture
def server() -> Iterator[ScriptedModelServer]:
    with ScriptedModelServer() as server:
        yield server


@pytest.fixture
async def client(server: ScriptedModelServer) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key=TEST_API_KEY, max_retries=0)
    try:
        yield client
    finally:
        await client.close()


async def ask(client: openai.AsyncOpenAI, prompt: str = "hello", **kwargs: Any) -> ChatCompletion:
    return await client.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": prompt}], **kwargs
    )


async def test_text_reply_is_a_chat_completion(
    server: ScriptedModelServer, client: openai.AsyncOpenAI
) -> None:
    server.play(text("final answer"))

    completion = await ask(client)

    assert isinstance(completion, ChatCompletion)
    assert completion.model == "gpt-test"
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == "final answer"
    assert choice.message.tool_calls is None
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens >= 1
    assert completion.usage.completion_tokens == len("final answer") // 4
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )
    assert server.unexpected == []
    assert server.remaining == 0


async def test_json_answer_and_explicit_usage(
    server: ScriptedModelServer, client: openai.AsyncOpenAI
) -> None:
    server.play(json_answer({"ok": True, "items": [1, 2]}, usage=(120, 7)))

    completion = await ask(client)

    assert json.loads(completion.choices[0].message.content or "") == {"ok": True, "items": [1, 2]}
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (120, 7)
    assert completion.usage.total_tokens == 127


async def test_tool_calls_keep_malformed_arguments_raw(
    server: ScriptedModelServer, client: openai.AsyncOpenAI
) -> None:
    server.play(tool_calls(("lookup", {"q": "x"}), ("other", '{"broken')))

    completion = await ask(client, tools=[LOOKUP_TOOL])

    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls or []
    assert [call.id for call in calls] == ["call_1", "call_2"]
    assert [call.type for call in calls] == ["function", "function"]
    functions = [call.function for call in calls if call.type == "function"]
    assert [(f.name, f.arguments) for f in functions] == [
        ("lookup", '{"q": "x"}'),
        ("other", '{"broken'),
    ]
    assert server.requests[0].tools == ["lookup"]


async def test_rate_limit_carries_retry_after(
    server: ScriptedModelServer, client: openai.AsyncOpenAI
) -> None:
    server.play(error(429, "slow down", headers={"Retry-After": "2"}))

    with pytest.raises(openai.RateLimitError) as caught:
        await ask(client)

    assert caught.value.status_code == 429
    assert caught.value.response.headers["retry-after"] == "2"
    assert "slow down" in caught.value.message
    assert server.unexpected == []


async def test_bad_key_raises_authentication_error(
    server: ScriptedModelServer, client: openai.AsyncOpenAI
) -> None:
    server.play(error(401, "Incorrect API key provided"))

    with pytest.raises(openai.AuthenticationError) as caught:
        await ask(client)

    assert "Incorrect API key provided" in caught.value.message
    assert caught.value.code == "invalid_api_key"


async def test_hang_times_out_and_stop_is_prompt(
    server: ScriptedModelServer, client: openai.AsyncOpenAI
) -> None:
    server.play(hang(30, then=text("too late")))

    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        await ask(client, timeout=0.5)
    # The client's timeout ended the call, not the 30 s hang: far below it on any machine.
    assert time.monotonic() - started < 10

    stopping = time.monotonic()
    server.stop()
    # Stopping does not wait out the hanging reply.
    assert time.monotonic() - stopping < 10
    assert len(server.requests) == 1


async def test_hang_then_answers_a_patient_client(
    server: ScriptedModelServer, client: openai.AsyncOpenAI
) -> None:
    server.play(hang(0.1, then=text("eventually")))

    completion = await ask(client, timeout=5)

    assert completion.choices[0].message.content == "eventually"


async def test_delayed_replies_overlap(
    server: ScriptedModelServer, client: openai.AsyncOpenAI
) -> None:
    server.play(text("a", delay=0.3), text("b", delay=0.3))

    answers = await asyncio.gather(ask(client, "one"), ask(client, "two"))

    assert sorted(a.choices[0].message.content or "" for a in answers) == ["a", "b"]
    # A server that answered one request at a time would read the second only after the
    # first's 0.3 s delay; here it read both while the first was still being delayed.
    first, second = sorted(server.requests, key=lambda r: r.received_at)
    assert second.received_at - first.received_at < 0.3


async def test_callable_replies_see_the_request(
    server: ScriptedModelServer, client: openai.AsyncOpenAI
) -> None:
    def by_prompt(request: RecordedRequest) -> Reply:
        return text(f"answer to {request.messages[-1]['content']}")

    server.play(by_prompt, by_prompt)
    answers = await asyncio.gather(ask(client, "one"), ask(client, "two"))
    assert [a.choices[0].message.content for a in answers] == ["answer to one", "answer to two"]

    server.respond_with(lambda request: text(f"fallback for {request.model}"))
    fallback = await ask(client)
    assert fallback.choices[0].message.content == "fallback for gpt-test"
    assert server.unexpected == []


async def test_exhausted_script_answers_500_and_is_recorded(
    server: ScriptedModelServer, client: openai.AsyncOpenAI
) -> None:
    server.play(text("only one"))
    await ask(client)

    with pytest.raises(openai.InternalServerError) as caught:
        await ask(client, "one too many")

    assert EXHAUSTED in caught.value.message
    assert [r.text for r in server.unexpected] == ["one too many"]


async def test_streaming_is_rejected(
    server: ScriptedModelServer, client: openai.AsyncOpenAI
) -> None:
    server.play(text("unused"))

    with pytest.raises(openai.BadRequestError, match="streaming is not supported"):
        await ask(client, stream=True)

    assert len(server.unexpected) == 1
    assert server.remaining == 1  # a rejected request does not consume the script


async def test_requests_record_body_headers_and_authorization(
    server: ScriptedModelServer, client: openai.AsyncOpenAI
) -> None:
    server.play(tool_calls(("lookup", {"q": "needle"})), text("done"))
    first = await ask(client, "find the needle", tools=[LOOKUP_TOOL])
    call = (first.choices[0].message.tool_calls or [])[0]
    assert call.type == "function"
    await client.chat.completions.create(
        model="gpt-test",
        messages=[
            {"role": "user", "content": "find the needle"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {
                            "name": call.function.name,
                            "arguments": call.function.arguments,
                        },
                    }
                ],
            },
            {"role": "tool", "tool_call_id": call.id, "content": "found it"},
        ],
    )

    one, two = server.requests
    assert one.path == two.path == "/v1/chat/completions"
    assert one.body["model"] == "gpt-test"
    assert one.messages == [{"role": "user", "content": "find the needle"}]
    assert one.tools == ["lookup"]
    assert one.authorization == f"Bearer {TEST_API_KEY}"
    assert one.headers["content-type"] == "application/json"
    assert all(name == name.lower() for name in one.headers)
    assert one.received_at <= two.received_at
    assert [one.index, two.index] == [0, 1]
    assert two.tools == []
    assert "found it" in two.text
    assert '"q": "needle"' in two.text  # tool-call arguments count as text too
    assert TEST_API_KEY not in two.text
    assert server.unexpected == []


# --- injected faults -----------------------------------------------------------------------------

MIXED = FaultPlan(
    seed=7, rate_429=0.15, rate_500=0.15, rate_slow=0.15, slow_seconds=0.05, rate_malformed=0.3
)


async def ask_until_answered(client: openai.AsyncOpenAI, prompt: str, tries: int = 50) -> str:
    """What a retrying caller ends up with; every fault on the way is an exception to retry."""
    for _ in range(tries):
        try:
            completion = await ask(client, prompt)
            content = completion.choices[0].message.content
        except (openai.APIError, json.JSONDecodeError, TypeError):
            continue  # no choices: `completion.choices` is None
        assert content is not None
        return content
    raise AssertionError(f"no answer to {prompt!r} in {tries} tries")


async def test_the_same_seed_injects_the_same_faults() -> None:
    sequences = []
    for _ in range(2):
        with ScriptedModelServer() as server:
            server.respond_with(lambda request: text(f"echo {request.messages[-1]['content']}"))
            server.inject_faults(MIXED)
            async with openai.AsyncOpenAI(
                base_url=server.base_url, api_key=TEST_API_KEY, max_retries=0
            ) as own:
                answers = [await ask_until_answered(own, f"q{n}") for n in range(10)]
            assert answers == [f"echo q{n}" for n in range(10)]  # every fault was retried away
            faults = server.faults
            count = len(server.requests)
            assert [f.index for f in faults] == sorted({f.index for f in faults})
            by_index = {f.index: f.kind for f in faults}
            assert [by_index.get(i) for i in range(count)] == MIXED.preview(count)
            sequences.append([(f.index, f.kind, f.seconds) for f in faults])
            assert server.unexpected == []

    assert sequences[0] == sequences[1]
    assert {kind for _, kind, _ in sequences[0]} == set(FAULT_KINDS)  # seed 7 shows every kind
    other = dataclasses.replace(MIXED, seed=8)
    assert other.preview(40) != MIXED.preview(40)


async def test_faulted_requests_leave_the_script_for_the_retry(
    server: ScriptedModelServer, client: openai.AsyncOpenAI
) -> None:
    server.play(text("first"), text("second"))
    server.inject_faults(FaultPlan(seed=1, rate_500=0.5))

    assert await ask_until_answered(client, "one") == "first"
    assert await ask_until_answered(client, "two") == "second"

    failed = {f.index for f in server.faults}
    assert len(server.requests) == 2 + len(failed)
    assert server.remaining == 0 and server.unexpected == []
    server.inject_faults(None)
    server.play(text("calm"))
    assert (await ask(client)).choices[0].message.content == "calm"
    assert len(server.faults) == len(failed)


async def test_each_fault_is_the_error_the_client_raises_for_it(
    server: ScriptedModelServer, client: openai.AsyncOpenAI
) -> None:
    server.respond_with(lambda request: text("fine"))

    server.inject_faults(FaultPlan(seed=1, rate_429=1.0, retry_after=0.25))
    with pytest.raises(openai.RateLimitError) as limited:
        await ask(client)
    assert limited.value.response.headers["retry-after"] == "0.25"

    server.inject_faults(FaultPlan(seed=1, rate_500=1.0))
    with pytest.raises(openai.InternalServerError, match="injected fault: server error"):
        await ask(client)

    server.inject_faults(FaultPlan(seed=1, rate_slow=1.0, slow_seconds=0.3))
    assert (await ask(client)).choices[0].message.content == "fine"  # late, not lost
    server.inject_faults(FaultPlan(seed=1, rate_slow=1.0, slow_seconds=30))  # waits 6.9 s
    with pytest.raises(openai.APITimeoutError):  # unless the client gives up first
        await ask(client, timeout=1)

    server.inject_faults(None)
    server.play(malformed(NOT_JSON), malformed(TRUNCATED_JSON), malformed(NO_CHOICES))
    with pytest.raises(json.JSONDecodeError):
        await ask(client)
    with pytest.raises(json.JSONDecodeError):
        await ask(client)
    shapeless = await ask(client)  # the client does not validate: the caller must
    assert shapeless.choices is None

    kinds = [f.kind for f in server.faults]
    assert kinds == [RATE_LIMITED, SERVER_ERROR, SLOW, SLOW]
    assert server.unexpected == []
    with pytest.raises(ValueError):
        malformed(RATE_LIMITED)
    with pytest.raises(ValueError):
        FaultPlan(seed=1, rate_429=0.6, rate_500=0.6)
