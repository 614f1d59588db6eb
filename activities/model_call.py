"""The `model_call` activity: one Chat Completions request, checked before the workflow acts on it.

The provider client runs with its own retries off (`max_retries=0`): Temporal
owns retries. What the model asked for is checked here, on the worker, where
the tool registry and output models live: tool calls outside the step's list,
with malformed JSON or with arguments that fail the tool's schema come back
marked with the error (the workflow never runs them, the model reads why), and
a final answer comes back parsed or with the reason it does not match the
step's output schema. The verdicts land in history, so replay never re-judges.

`ModelCallActivity` holds what the activity needs: the worker's retry reporter,
where settings come from, and its provider clients.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import openai
import structlog
from openai.types.chat import ChatCompletion, ChatCompletionMessage
from pydantic import BaseModel, ValidationError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from stepflow.activities import budget, telemetry
from stepflow.activities.conversation_store import ConversationStore
from stepflow.activities.heartbeats import with_heartbeats
from stepflow.activities.model_endpoint import ModelEndpoint, ModelNotConfigured, resolve_endpoint
from stepflow.activities.offline_model import offline_completion
from stepflow.activities.output_schema import (
    OutputSchemaError,
    ResolvedSchema,
    resolve_output_schema,
    schema_instructions,
)
from stepflow.activities.plan_check import plan_output_schema
from stepflow.activities.progress import ProgressReporter
from stepflow.activities.registry import (
    get_tool,
    model_tool_name,
    prepare_tools,
    tool_from_model_name,
)
from stepflow.runtime.payload_storage import payload_dir
from stepflow.runtime.settings import Settings, get_settings
from stepflow.workflows.errors import ErrorType
from stepflow.workflows.models import (
    MODEL_CALL_ACTIVITY,
    ChatMessage,
    ModelCallInput,
    ModelCallOutput,
    PlannedToolCall,
    TokenUsage,
)

log = structlog.get_logger("stepflow.model")


RETRYABLE_STATUS = {408, 409, 429}
MAX_RETRY_AFTER = timedelta(minutes=15)
"""A longer Retry-After is capped: the step's own timeouts should decide, not a header."""

REQUEST_DEADLINE_MARGIN = 1.0
"""Seconds before the attempt's deadline at which the HTTP request gives up."""

SHOULD_RETRY_HEADER = "x-should-retry"
"""The API's own word on retrying (`true`/`false`), obeyed before the status, as the openai
client does (`_base_client._should_retry`)."""

CONTEXT_EXCEEDED_CODES = frozenset({"context_length_exceeded", "string_above_max_length"})
CONTEXT_EXCEEDED_WORDS = ("maximum context length", "context length exceeded", "context window")
"""How APIs say a request is longer than the model's context: OpenAI's code, and the
wording of vLLM, LiteLLM and others that send no code."""

CONTENT_REFUSED_CODES = frozenset({"content_filter", "content_policy_violation"})
"""How APIs (OpenAI, Azure OpenAI) say their content filter refused the request."""


def tool_params(names: list[str]) -> list[dict[str, Any]]:
    """The `tools` request parameter: each registered tool's name, description and schema."""
    params = []
    for name in names:
        defn = get_tool(name)
        if defn is None:
            continue  # reported per call if the model asks for it anyway
        params.append(
            {
                "type": "function",
                "function": {
                    "name": model_tool_name(defn.name),  # `files.read`: no dots for the model
                    "description": defn.description,
                    "parameters": defn.json_schema(),
                },
            }
        )
    return params


def _request_messages(
    messages: list[ChatMessage], schema: ResolvedSchema | None
) -> list[ChatMessage]:
    if schema is None or not messages or messages[0].get("role") != "system":
        return messages
    system = dict(messages[0])
    system["content"] = f"{system.get('content') or ''}\n\n{schema_instructions(schema)}"
    return [system, *messages[1:]]


def _retry_after(headers: Mapping[str, str]) -> timedelta | None:
    """`retry-after-ms` (OpenAI's), else `retry-after` in seconds or as an HTTP date."""
    delay: float | None = None
    if value := headers.get("retry-after-ms"):
        try:
            delay = float(value) / 1000
        except ValueError:
            pass
    if delay is None and (value := headers.get("retry-after")):
        try:
            delay = float(value)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value)
                delay = (when - datetime.now(UTC)).total_seconds()
            except (TypeError, ValueError):
                pass
    if delay is None or delay <= 0:
        return None
    return min(timedelta(seconds=delay), MAX_RETRY_AFTER)


def _api_message(err: openai.APIStatusError) -> str:
    body = err.body
    if isinstance(body, dict):
        message = body.get("message")
        if isinstance(body.get("error"), dict):
            message = body["error"].get("message", message)
        if isinstance(message, str) and message:
            return message
    return err.message


def _redact(text: str, endpoint: ModelEndpoint) -> str:
    """Some APIs echo the key in their errors; it must not reach history or logs."""
    if endpoint.api_key and len(endpoint.api_key) >= 8:
        text = text.replace(endpoint.api_key, "***")
    return text


def _translate(err: Exception, endpoint: ModelEndpoint) -> ApplicationError:
    """Map a client error to Temporal's terms: retryable with a delay, or not at all."""
    details = {"attempt": activity.info().attempt}
    if isinstance(err, InvalidReply):
        return ErrorType.MODEL_REPLY_INVALID.error(str(err), details)
    if isinstance(err, ModelRefused):
        return ErrorType.MODEL_CONTENT_REFUSED.error(_redact(str(err), endpoint), details)
    if isinstance(err, openai.APIStatusError):
        return _status_failure(err, endpoint, details)
    if isinstance(err, openai.APITimeoutError):
        return ErrorType.MODEL_TIMEOUT.error("model API did not answer in time", details)
    if isinstance(err, openai.APIConnectionError):
        cause = _redact(str(err.__cause__ or err), endpoint)
        return ErrorType.MODEL_CONNECTION_ERROR.error(
            f"cannot reach the model API: {cause}", details
        )
    return ApplicationError(_redact(str(err), endpoint), details, type=type(err).__name__)


def _status_failure(
    err: openai.APIStatusError, endpoint: ModelEndpoint, details: dict[str, Any]
) -> ApplicationError:
    """An HTTP error: its type from the status; retried if `x-should-retry` or the status says."""
    status = err.status_code
    api_message = _api_message(err)
    message = _redact(f"model API answered {status}: {api_message}", endpoint)
    if status == 429:
        error_type = ErrorType.MODEL_RATE_LIMITED
    elif status in RETRYABLE_STATUS or status >= 500:
        error_type = ErrorType.MODEL_SERVER_ERROR
    else:
        error_type = _rejection_type(status, err.code, api_message)
    # The header decides only whether to retry; the type still says what the API answered.
    retryable = {"true": True, "false": False}.get(
        err.response.headers.get(SHOULD_RETRY_HEADER, ""), error_type.retryable
    )
    return ApplicationError(
        message,
        details,
        type=error_type.value,
        non_retryable=not retryable,
        next_retry_delay=_retry_after(err.response.headers) if retryable else None,
    )


def _rejection_type(status: int, code: str | None, message: str) -> ErrorType:
    """A 4xx other than 408/409/429: which of them another model of a chain may not get.

    Unknown model (404), context too long, content refused: no retry helps, but another
    model may answer (`model: [primary, backup]`). Anything else (a bad key, a malformed
    request) is the request's own fault and fails as it is.
    """
    if status == 404:
        return ErrorType.MODEL_NOT_FOUND
    if status in (400, 413, 422):
        lowered = message.lower()
        if code in CONTEXT_EXCEEDED_CODES or any(w in lowered for w in CONTEXT_EXCEEDED_WORDS):
            return ErrorType.MODEL_CONTEXT_EXCEEDED
        if code in CONTENT_REFUSED_CODES:
            return ErrorType.MODEL_CONTENT_REFUSED
    return ErrorType.MODEL_REQUEST_REJECTED


async def _complete(
    client: Callable[[ModelEndpoint], openai.AsyncOpenAI],
    endpoint: ModelEndpoint,
    call: ModelCallInput,
    messages: list[ChatMessage],
    tools: list[dict[str, Any]],
    schema: ResolvedSchema | None,
) -> tuple[ChatMessage, TokenUsage]:
    """One completion, offline or over HTTP: the assistant message and the tokens it cost.

    `client`: the provider client for the endpoint.
    """
    if endpoint.offline:
        reply = offline_completion(messages, tools, schema.json_schema if schema else None)
        usage = reply.get("usage") or {}
        return reply["message"], _usage(usage)
    request: dict[str, Any] = {**endpoint.params, "model": endpoint.provider_model}
    request["messages"] = messages
    if tools:
        request["tools"] = tools
        if not call.parallel_tool_calls:
            request["parallel_tool_calls"] = False
    if schema is not None and endpoint.structured_output:
        request["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "step_output", "schema": schema.json_schema},
        }
    request["timeout"] = _request_timeout()
    try:
        completion: object = await client(endpoint).chat.completions.create(**request)
    except json.JSONDecodeError as err:
        raise InvalidReply(f"the model API answered with a body that is not JSON ({err})") from None
    try:
        message = _reply_message(completion)
        _check_refusal(completion, message)
    except (InvalidReply, ModelRefused) as err:
        err.usage = _completion_usage(completion)  # a 200 is paid for: the budgets are charged
        raise
    # Content is required back in the chat when there are no tool calls: never None.
    raw: ChatMessage = {"role": "assistant", "content": message.content or ""}
    if message.tool_calls:
        raw["tool_calls"] = [tc.model_dump(exclude_none=True) for tc in message.tool_calls]
    usage = getattr(completion, "usage", None)
    return raw, _usage(usage.model_dump() if isinstance(usage, BaseModel) else {})


def _completion_usage(completion: object) -> TokenUsage | None:
    """The tokens a completion reported; None when it reported none (or not readably)."""
    usage = getattr(completion, "usage", None)
    if not isinstance(usage, BaseModel):
        return None
    try:
        return _usage(usage.model_dump())
    except Exception:  # a reply of the wrong shape: its tokens are unknown
        return None


class PaidFailure(Exception):
    """A reply that was paid for but cannot be used: it says what it cost (`usage`)."""

    usage: TokenUsage | None = None


class InvalidReply(PaidFailure):
    """The API answered 200 with something that is not a chat completion.

    A proxy's error page, a body cut off on the way, a wrong shape: retried
    (type `ModelReplyInvalid`), since the next answer is usually whole.
    """


class ModelRefused(PaidFailure):
    """The model answered 200 but refused: its content filter stopped it, or it said why not.

    Not retried (type `ModelContentRefused`): the same conversation is refused again, though
    another model of a chain may answer it.
    """


def _check_refusal(completion: object, message: ChatCompletionMessage) -> None:
    """A checked reply (`_reply_message`) that refused: raise `ModelRefused`."""
    refusal = getattr(message, "refusal", None)
    if isinstance(refusal, str) and refusal:
        raise ModelRefused(f"the model refused to answer: {refusal}")
    choice = getattr(completion, "choices", [None])[0]
    if getattr(choice, "finish_reason", None) == "content_filter":
        raise ModelRefused("the model's answer was stopped by its content filter")


def _reply_message(completion: object) -> ChatCompletionMessage:
    """The first choice's message, once the reply has been checked to be one.

    The client builds its objects without validating them, so a reply in the
    wrong shape would otherwise fail later on a missing attribute.
    """
    if isinstance(completion, str | bytes):  # the body was not labelled JSON either
        raise InvalidReply("the model API answered with a body that is not JSON")
    if not isinstance(completion, ChatCompletion):
        raise InvalidReply("the model API answered with JSON that is not a chat completion")
    choices = getattr(completion, "choices", None)
    if not isinstance(choices, list) or not choices:
        raise InvalidReply("the model API answered with no choices")
    message = getattr(choices[0], "message", None)
    if not isinstance(message, ChatCompletionMessage):
        raise InvalidReply("the model API answered with a choice that holds no message")
    if not isinstance(message.content, str | None) or not isinstance(
        message.tool_calls, list | None
    ):
        raise InvalidReply("the model API answered with a message of the wrong shape")
    if not all(isinstance(tc, BaseModel) for tc in message.tool_calls or []):
        raise InvalidReply("the model API answered with tool calls of the wrong shape")
    return message


def _request_timeout() -> float:
    """Seconds the HTTP request may take: until just before this attempt's deadline.

    Ending first means the attempt fails as a `ModelTimeout` the retry policy
    sees, rather than being abandoned by Temporal with the request still open.
    """
    info = activity.info()
    deadlines = []
    if info.start_to_close_timeout:
        deadlines.append(info.started_time + info.start_to_close_timeout)
    if info.schedule_to_close_timeout:
        deadlines.append(info.scheduled_time + info.schedule_to_close_timeout)
    if not deadlines:
        return 600.0
    left = (min(deadlines) - datetime.now(UTC)).total_seconds()
    return max(left - REQUEST_DEADLINE_MARGIN, 1.0)


def _usage(usage: dict[str, Any]) -> TokenUsage:
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    total = int(usage.get("total_tokens") or prompt + completion)
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return TokenUsage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=total,
        model_calls=1,
        cached_tokens=int(cached or 0),
    )


def check_tool_call(raw: dict[str, Any], allowed: list[str]) -> PlannedToolCall:
    """Whether a tool call may run; if not, the error the model gets as the call's result."""
    function = raw.get("function") or {}
    name = tool_from_model_name(str(function.get("name") or ""), allowed)
    call = PlannedToolCall(id=str(raw.get("id") or ""), name=name)
    if raw.get("type", "function") != "function":
        call.error = f"tool calls of type {raw.get('type')!r} are not supported; call a function"
        return call
    defn = get_tool(name) if name in allowed else None
    if defn is None:
        available = ", ".join(model_tool_name(a) for a in allowed) or "none"
        call.error = f"tool {name!r} is not available to this step (available: {available})"
        return call
    try:
        arguments = json.loads(function.get("arguments") or "{}")
    except json.JSONDecodeError as err:
        call.error = f"the arguments of {name!r} are not valid JSON: {err}"
        return call
    if not isinstance(arguments, dict):
        call.error = f"the arguments of {name!r} must be a JSON object"
        return call
    try:
        defn.validate_args(arguments)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: {e['msg']}" for e in err.errors()
        )
        call.error = f"the arguments of {name!r} do not match its schema: {problems}"
        return call
    call.arguments = arguments
    return call


BYTES_PER_TOKEN = 4
"""About what a token of English text or JSON weighs: bounds a conversation by a context."""


def _check_size(
    call: ModelCallInput, conversation: list[ChatMessage], endpoint: ModelEndpoint
) -> None:
    """Fail the step, not the model call, when the conversation outgrew its bound.

    The step's `max_conversation_bytes` is the step's own bound (`ConversationTooLarge`);
    the model's `context_tokens` is this model's (`ModelContextExceeded`: a model of a
    chain with a longer context may take the call).
    """
    if call.max_conversation_bytes is None and not endpoint.context_tokens:
        return  # the model's own refusal says so (`ModelContextExceeded`: not retried)
    size = len(json.dumps(conversation, ensure_ascii=False).encode())
    if call.max_conversation_bytes is not None:
        if size > call.max_conversation_bytes:
            raise ErrorType.CONVERSATION_TOO_LARGE.error(
                f"the conversation has grown to {size:,} bytes, over the "
                f"{call.max_conversation_bytes:,} this step allows (max_conversation_bytes); "
                "give the step tools with smaller outputs, or fewer model calls"
            )
        return
    limit = (endpoint.context_tokens or 0) * BYTES_PER_TOKEN
    if size > limit:
        raise ErrorType.MODEL_CONTEXT_EXCEEDED.error(
            f"the conversation has grown to {size:,} bytes, over the {limit:,} that model "
            f"{endpoint.name!r} takes (about {BYTES_PER_TOKEN} bytes a token of its "
            f"context_tokens: {endpoint.context_tokens:,}); give the step tools with smaller "
            "outputs, fewer model calls, or a model with a longer context"
        )


class ModelCallActivity:
    """The `model_call` activity, with what it needs."""

    def __init__(
        self,
        progress: ProgressReporter | None = None,
        settings: Callable[[], Settings] = get_settings,
    ) -> None:
        """The activity, reporting retries through `progress`.

        Args:
            progress: Tells a pipeline when one of its model calls is retried (None: nobody).
            settings: Where each call reads the settings (models, content logging) from; by
                default the environment as it is at the call.
        """
        self.progress = progress
        self.settings = settings
        self._clients: dict[tuple[int, str | None, str | None], openai.AsyncOpenAI] = {}
        self._stores: dict[tuple[str, str, str | None], ConversationStore] = {}
        """Conversations kept by reference, one store per payload store configured."""

    def client(self, endpoint: ModelEndpoint) -> openai.AsyncOpenAI:
        """One client (one connection pool) per event loop, address and key.

        Per loop, because a pool's connections belong to the loop that opened them.
        """
        key = (id(asyncio.get_running_loop()), endpoint.base_url, endpoint.api_key)
        client = self._clients.get(key)
        if client is None:
            client = openai.AsyncOpenAI(
                api_key=endpoint.api_key, base_url=endpoint.base_url, max_retries=0
            )
            self._clients[key] = client
        return client

    async def aclose(self) -> None:
        """Close the provider clients' connections (the worker has stopped)."""
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.close()

    @activity.defn(name=MODEL_CALL_ACTIVITY)
    async def model_call(self, call: ModelCallInput) -> ModelCallOutput:
        """Ask the step's model for its next move; check it; report the tokens."""
        info = activity.info()
        settings = self.settings()
        if self.progress is not None:
            self.progress.report_retry(call.step_id, call.report_to, call.call_number)
        try:
            endpoint = resolve_endpoint(call.model, settings)
            if call.plan is not None:  # a plan step: the answer must be a valid plan
                await prepare_tools(call.plan.tools)  # MCP tools the plan may use: listed
                schema: ResolvedSchema | None = plan_output_schema(call.plan)
            elif call.output_schema:
                schema = resolve_output_schema(call.output_schema)
            else:
                schema = None
        except ModelNotConfigured as err:
            raise ErrorType.MODEL_NOT_CONFIGURED.error(str(err)) from None
        except OutputSchemaError as err:
            # The client resolved it before the run started, so this worker lacks the module:
            # retryable, so that deploying it (or a worker that has it) heals the run.
            raise ApplicationError(str(err), type=ErrorType.INVALID_OUTPUT_SCHEMA.value) from None
        bound = structlog.contextvars.bound_contextvars(
            workflow_id=info.workflow_id,
            step_id=call.step_id,
            model=endpoint.name,
            call=call.call_number,
            attempt=info.attempt,
        )
        with bound:
            budget.require_price(call, endpoint)
            # The run's budgets (spent: no call starts) asked while MCP tools are listed.
            await asyncio.gather(budget.check_budgets(call), prepare_tools(call.tools))
            conversation, stored = await self._conversation(call, settings)
            output = await self._call(call, conversation, endpoint, schema, settings)
            output.stored = stored
            await budget.charge_budgets(call, output.usage)
            return output

    async def _conversation(
        self, call: ModelCallInput, settings: Settings
    ) -> tuple[list[ChatMessage], str | None]:
        """The whole conversation, and the key it is stored under for the next call to name.

        Stored before the model is asked: a retry stores the same chunk under the same key,
        and a model reply is never paid for twice because the store failed after it.
        """
        store = self._store(settings)
        new = (call.tail or []) if call.prior else call.messages
        try:
            earlier = await store.load(call.prior) if call.prior else []
            stored = await store.save(call.prior, new) if store.enabled else None
        except Exception as err:  # missing, unreadable or unwritable: another attempt may do
            raise ErrorType.PAYLOAD_STORE_UNAVAILABLE.error(
                f"the conversation store failed: {err}"
            ) from None
        return [*earlier, *new], stored

    def _store(self, settings: Settings) -> ConversationStore:
        key = (settings.payload_store, str(payload_dir(settings)), settings.payload_s3_bucket)
        store = self._stores.get(key)
        if store is None:
            store = self._stores[key] = ConversationStore(settings)
        return store

    async def _call(
        self,
        call: ModelCallInput,
        conversation: list[ChatMessage],
        endpoint: ModelEndpoint,
        schema: ResolvedSchema | None,
        settings: Settings,
    ) -> ModelCallOutput:
        _check_size(call, conversation, endpoint)
        started = time.monotonic()
        telemetry.model_call_started(call.step_id, call.call_number, endpoint.name)
        messages = _request_messages(conversation, schema)
        try:
            message, usage = await with_heartbeats(
                _complete(self.client, endpoint, call, messages, tool_params(call.tools), schema)
            )
        except (openai.OpenAIError, InvalidReply, ModelRefused) as err:
            failure = _translate(err, endpoint)
            log.warning(
                "model call failed",
                error_type=failure.type,
                duration_ms=round((time.monotonic() - started) * 1000, 1),
            )
            telemetry.model_call_ended(endpoint.name, started, error_type=failure.type)
            paid = err.usage if isinstance(err, PaidFailure) else None
            if paid is not None and paid.total_tokens:
                # Refused or unusable, but answered and paid for: the budgets count it.
                await budget.charge_budgets(call, budget.price_usage(call, endpoint, paid))
            raise failure from None
        usage = budget.price_usage(call, endpoint, usage)
        telemetry.model_call_ended(endpoint.name, started, usage)
        output = ModelCallOutput(message=message, usage=usage, model=endpoint.name)
        output.attempt = activity.info().attempt
        output.tool_calls = [
            check_tool_call(raw, call.tools) for raw in message.get("tool_calls") or []
        ]
        if output.is_final:
            if schema is None:
                output.output = message.get("content") or ""
            else:
                output.output, output.output_error = schema.check(message.get("content"))
        fields: dict[str, Any] = {
            "duration_ms": round((time.monotonic() - started) * 1000, 1),
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "tool_calls": len(output.tool_calls),
            "offline": endpoint.offline,
        }
        if settings.log_content:  # prompts and answers may be private: only when asked for
            fields["reply"] = message
        log.info("model call succeeded", **fields)
        return output
