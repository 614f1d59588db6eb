"""How an agent step's conversation is worded: the first user turn, tool results, repair turns.

Pure functions over JSON values, used inside the workflow: the same input
always makes the same messages, so replay sends nothing new.
"""

from __future__ import annotations

import json
from typing import Any

from stepflow.workflows.models import ChatMessage

INPUT_HEADER = "Input:\n"
CONTEXT_HEADER = "\n\nOutput of step {step_id!r}:\n"
REPAIR_PREFIX = "Your answer did not match the output schema"
PLAN_REPAIR_PREFIX = "Your plan is not valid"

MAX_TOOL_RESULT_CHARS = 100_000
"""A longer tool result is cut: every later model call carries it again, in history too."""

MAX_CONVERSATION_BYTES = 1_500_000
"""Below Temporal's 2 MB payload limit, with room for the rest of the model call's input."""


def as_text(value: Any) -> str:
    """Text as it is; anything else as indented JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=2, ensure_ascii=False)


def first_user_message(step_input: Any, context: dict[str, Any]) -> ChatMessage:
    """The step's input, then the outputs it may see, each under the id of its step."""
    parts = [INPUT_HEADER + as_text(step_input)]
    for step_id, output in context.items():
        parts.append(CONTEXT_HEADER.format(step_id=step_id) + as_text(output))
    return {"role": "user", "content": "".join(parts)}


def tool_result(call_id: str, output: Any) -> ChatMessage:
    text = as_text(output)
    if len(text) > MAX_TOOL_RESULT_CHARS:
        cut = len(text) - MAX_TOOL_RESULT_CHARS
        text = f"{text[:MAX_TOOL_RESULT_CHARS]}\n[... {cut:,} more characters cut by Stepflow]"
    return {"role": "tool", "tool_call_id": call_id, "content": text}


def conversation_size(messages: list[ChatMessage]) -> int:
    """Bytes of the conversation as JSON: what a model call's input will weigh."""
    return len(json.dumps(messages, ensure_ascii=False).encode())


def tool_error(call_id: str, error: str) -> ChatMessage:
    """A call that did not run or failed: the model reads why, and may try again."""
    return {"role": "tool", "tool_call_id": call_id, "content": f"Error: {error}"}


def repair_request(error: str) -> ChatMessage:
    return {
        "role": "user",
        "content": f"{REPAIR_PREFIX}: {error}\nReply again with only the corrected JSON.",
    }


def plan_repair_request(errors: str) -> ChatMessage:
    """A plan step's invalid plan goes back with what the check found wrong with it."""
    return {
        "role": "user",
        "content": f"{PLAN_REPAIR_PREFIX}: {errors}\nReply again with only the corrected plan "
        "as JSON.",
    }
