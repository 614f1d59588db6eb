"""The built-in offline model: a deterministic stand-in for a chat model.

When no API key or base URL is configured, agent steps talk to this model
instead of a real one, so that the demo and the examples run with no network.
`offline_completion` is a pure function of the request (no I/O, no clock, no
randomness): the same request always gets the same reply, which is what makes
offline runs replayable and benchmarks comparable. Its reply has the shape of
a Chat Completions choice, so the caller reads it the way it reads the API's.

Behaviour:

- **The conversation.** The step's user message is the last user message whose
  content starts with ``"Input:\\n"`` (the first user message if none does);
  the step's instructions are the last system message before it (else the
  first system message). The user message holds the step input (plain text, or
  JSON if the input is structured) up to the first ``"\\n\\nOutput of step
  'ID':\\n"`` section; each such section is the output of an earlier step. Only
  the turns after the step's user message belong to this step (earlier ones
  are history from other steps).
- **Tool calls.** In the first round only (no assistant turn yet after the
  step's user message), if the step has tools, the model calls every tool
  whose name appears as a whole word in the instructions or in the step's user
  message: one call per such tool, all in one reply (so they can run in
  parallel), in the order of the tools list. Arguments are synthesized from
  the tool's parameters schema (see below), so they validate. If no tool is
  named, none is called. Tools are never called after the first round, so the
  offline model never loops. Call ids are ``offline_call_<n>``, numbered after
  the tool calls already in the conversation, so they are unique in it.
- **Final answer.** Otherwise the model answers (``finish_reason`` ``"stop"``).
  Without an output schema the answer is a plain text labelled as offline::

      [offline model] <first line of the instructions>

      Input: <first 200 characters of the input>

      Context: <ids of the earlier steps' outputs given, if any>

      Tool results:
      - <tool name>: <first 200 characters of its result>

  (whitespace runs collapsed to one space, "..." where cut short; the context
  and tool sections only when there are any). With an output schema the
  answer is the JSON text of an instance synthesized from the schema. The
  instance is checked against the schema; if it does not validate, it is
  synthesized again without hints, then without hints and defaults, and the
  first valid one is used (the first one if none is). A repair turn (a user
  message starting with ``"Your answer did not match the output schema"``) is
  answered the same way.
- **Synthesis from a JSON schema** (`synthesize`). Supports ``type`` (a list
  of types: the first non-null one; no type: guessed from the other keywords,
  else string), ``properties`` and ``required`` (required properties are
  filled, optional ones only when they have a hint that validates), ``items``
  and ``prefixItems`` (arrays get max(1, minItems) items, at most maxItems),
  ``enum`` (the first value), ``const``, ``default`` (used when present and no
  hint applies), ``anyOf``/``oneOf`` (the first non-null branch), ``allOf``
  (merged), ``$ref`` into ``$defs``/``definitions`` (any local JSON pointer),
  ``minLength``/``maxLength`` (padded with "." or truncated),
  ``minimum``/``maximum``/``exclusiveMinimum``/``exclusiveMaximum``/
  ``multipleOf``, array items made distinct where possible (string "(2)", "(3)"
  suffixes, the next enum value or number) and
  ``format`` (date-time ``2024-01-01T00:00:00Z``, date ``2024-01-01``, email
  ``offline@example.com``, uri ``https://example.com/offline`` and a few
  more). ``additionalProperties`` and ``pattern`` are ignored. Strings are
  ``"offline: "`` followed by the first 80 characters of the input text
  (whitespace collapsed; just ``"offline"`` without input), fitted to the
  length bounds; booleans are true; integers the minimum or 1; numbers the
  minimum or 1.0; null is null.
  Recursive schemas stop nesting after a few levels (nullable branches
  become null, arrays get only minItems items).
- **Hints.** Every JSON object in the step's user message (the input, if it
  parses as a JSON object, and each earlier step's output that does) gives
  hints: the top-level keys of all of them first, then the keys of their
  values that are objects (flattened one level); the first occurrence of a
  key wins. A property whose name is a hint takes the hint's value when that
  value validates against the property's schema; otherwise it is synthesized.
  The input text strings are derived from is the step input alone (after
  ``"Input:\n"``, before the first ``"Output of step"`` section). The
  input's ``last_review`` and ``previous_review`` keys give no hints (a new
  review does not copy the old one).
- **Reviews: revise first, approve a revision.** An enum answer takes its first
  value, so a review whose verdict is ``enum: [revise, approve]`` says
  ``revise``. But when the step's input shows it looks at a revision, every
  enum in the final answer that offers ``approve`` (or ``approved``) takes that
  value instead, hints notwithstanding. The input shows a revision when it is a
  JSON object whose ``last_review`` or ``previous_review`` is not empty (null,
  ``""``, ``[]`` and ``{}`` are empty), or when a line of it starts with
  ``Last review:`` or ``Previous review:`` (any case) followed by something
  other than nothing, ``null`` or ``none``. A review loop that hands the
  reviewer the previous iteration's review (``last_review: "{{
  loop.previous.review.output }}"``, null on the first iteration) therefore
  asks for one revision and approves the next: its ``until`` ends it on
  iteration 2, every time (`examples/research_report.yaml`). Tool arguments
  are never affected.
- **Plans.** Asked for a plan (the output schema's title is ``StepflowPlan``,
  `activities.plan_check`), the model answers with a small valid plan built
  from what the schema allows (`offline_plan`): a tool step ``survey`` calling
  the first allowed tool that needs no arguments (e.g. ``list_files``), an agent
  step ``analyze`` (after it) on ``{{ inputs.request }}``, and an agent step
  ``summarize`` after that, whose output the plan returns as ``summary``. Steps
  of a kind the plan may not use are left out, and the plan is cut to
  ``max_steps``. The agent steps are given no tools, so they answer from their
  input and what their dependencies found. A plan of tool steps only, with no
  tool that needs no arguments, calls the first tool with synthesized arguments
  whose strings are ``{{ inputs.request }}``. A repair turn gets the same plan.
- **Usage.** Tokens are estimated at about 4 characters per token
  (`estimate_tokens`): the prompt counts the messages, the tools (if any) and
  the output schema (if any); the completion counts the reply's content and
  tool calls.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from typing import Any

from jsonschema import Draft202012Validator, validators

from stepflow.activities.plan_check import PLAN_SCHEMA_TITLE
from stepflow.workflows.json_schemas import NO_RETRIEVAL
from stepflow.workflows.models import OFFLINE_MODEL

__all__ = [
    "OFFLINE_MODEL",
    "REPAIR_PREFIX",
    "REVISION_KEYS",
    "estimate_tokens",
    "offline_completion",
    "offline_plan",
    "synthesize",
]

REPAIR_PREFIX = "Your answer did not match the output schema"
"""How the workflow's repair turn starts (a user message)."""

INPUT_PREFIX = "Input:\n"
LABEL = "[offline model]"
CALL_ID_PREFIX = "offline_call_"
TEXT_CHARS = 80
"""Characters of input text in a synthesized string."""
SUMMARY_CHARS = 200
"""Characters of input and of each tool result in a plain-text answer."""
NEST_LIMIT = 6
"""Object/array depth after which recursion is cut short (null branches, minItems items)."""
HARD_LIMIT = 64
"""Schema depth after which synthesis gives up (null): only reached by cycles with no way out."""

_SECTION = re.compile(r"\n\nOutput of step '([^\n]*?)':\n")

REVISION_KEYS = ("last_review", "previous_review")
"""Keys of a JSON input that hold the review of the previous version: a revision is reviewed."""
_REVISION_LINE = re.compile(r"^[ \t]*(?:last|previous) review:(?P<value>.*)$", re.I | re.M)
"""A line of a text input that gives the previous review (`Last review: ...`)."""
_EMPTY_REVIEW = frozenset({"", "null", "none"})
APPROVALS = ("approve", "approved")
"""Enum values that approve: what the offline model answers when it reviews a revision."""

FORMATS: dict[str, str] = {
    "date-time": "2024-01-01T00:00:00Z",
    "date": "2024-01-01",
    "time": "00:00:00Z",
    "duration": "PT1S",
    "email": "offline@example.com",
    "idn-email": "offline@example.com",
    "uri": "https://example.com/offline",
    "iri": "https://example.com/offline",
    "url": "https://example.com/offline",
    "uri-reference": "https://example.com/offline",
    "hostname": "example.com",
    "idn-hostname": "example.com",
    "ipv4": "127.0.0.1",
    "ipv6": "::1",
    "uuid": "00000000-0000-0000-0000-000000000000",
}
"""Fixed, plausible values of string formats, so answers look real and stay deterministic."""


# ---------------------------------------------------------------------------
# Token estimate


def estimate_tokens(value: Any) -> int:
    """An approximate token count: about 4 characters per token.

    A string counts its characters, anything else the characters of its JSON
    text (keys sorted, so that dict order does not change the count). Not a
    real tokenizer: it only has to be a deterministic function of the request,
    so that benchmarks can compare prompt sizes with the offline model.

    Returns:
        ceil(characters / 4); at least 1 for a non-empty value, 0 for "".
    """
    if isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    return math.ceil(len(text) / 4)


# ---------------------------------------------------------------------------
# Schema synthesis


def synthesize(schema: dict[str, Any], hints: dict[str, Any], text: str) -> Any:
    """An instance of a JSON schema, filled from hints where they fit.

    Best effort: for a schema it cannot satisfy (patterns, contradictory
    bounds) the result may not validate; the workflow's repair loop deals with
    that, so this never raises for a schema it does not understand.

    Args:
        schema: A JSON schema (what pydantic's `model_json_schema()` emits, or hand-written).
        hints: Values by property name; one is used where it validates against the property.
        text: The step's input text; strings are derived from it.

    Returns:
        A JSON-compatible value.
    """
    return _Synthesizer(schema, hints, text).run()


class _Synthesizer:
    """One synthesis: the root schema (for `$ref`s and validation) and what fills it."""

    def __init__(
        self,
        root: Any,
        hints: dict[str, Any],
        text: str,
        *,
        use_defaults: bool = True,
        approve: bool = False,
    ) -> None:
        self.root = root
        self.hints = hints
        self.text = " ".join(text.split()) if isinstance(text, str) else ""
        self.use_defaults = use_defaults
        self.approve = approve
        """A revision is reviewed: an enum that offers an approval takes it."""
        self._validator: Any = None

    def run(self) -> Any:
        return self.gen(self.root, depth=0, nest=0, variant=0)

    # -- validation against a subschema, `$ref`s resolved against the root

    def validates(self, value: Any, schema: Any) -> bool:
        try:
            if self._validator is None:
                root = self.root if isinstance(self.root, dict | bool) else {}
                cls = validators.validator_for(root, default=Draft202012Validator)
                self._validator = cls(root, registry=NO_RETRIEVAL)  # never fetch a `$ref`
            return bool(self._validator.evolve(schema=schema).is_valid(value))
        except Exception:  # an invalid or unresolvable schema: the value is no better than none
            return False

    # -- schema plumbing

    def resolve(self, ref: Any) -> Any:
        """The subschema a local `$ref` points to; {} (anything) for one it cannot follow."""
        if not isinstance(ref, str) or not ref.startswith("#"):
            return {}
        node: Any = self.root
        pointer = ref[1:]
        if pointer in ("", "/"):
            return node
        for raw in pointer.lstrip("/").split("/"):
            part = raw.replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                return {}
        return node

    def flatten(self, schema: Any, depth: int) -> Any:
        """The schema with its `$ref` and `allOf` folded in, so one dict says it all."""
        if not isinstance(schema, dict) or depth > HARD_LIMIT:
            return schema
        if "$ref" in schema:
            target = self.flatten(self.resolve(schema["$ref"]), depth + 1)
            rest = {k: v for k, v in schema.items() if k != "$ref"}
            if target is False:
                return False
            schema = _merge(rest, target if isinstance(target, dict) else {})
        if isinstance(schema.get("allOf"), list):
            merged = {k: v for k, v in schema.items() if k != "allOf"}
            for branch in schema["allOf"]:
                flat = self.flatten(branch, depth + 1)
                if flat is False:
                    return False
                if isinstance(flat, dict):
                    merged = _merge(merged, flat)
            schema = merged
        return schema

    # -- generation

    def gen(self, schema: Any, depth: int, nest: int, variant: int) -> Any:
        if depth > HARD_LIMIT:
            return None
        if schema is True:
            return self.string({}, variant)
        if not isinstance(schema, dict):
            return None
        schema = self.flatten(schema, depth)
        if not isinstance(schema, dict):
            return None if schema is False else self.string({}, variant)
        if "const" in schema:
            return schema["const"]
        enum = schema.get("enum")
        if isinstance(enum, list) and enum:
            approval = self.approval(schema, depth)
            return approval if approval is not None else enum[variant % len(enum)]
        if self.use_defaults and "default" in schema and self.validates(schema["default"], schema):
            return schema["default"]
        for key in ("anyOf", "oneOf"):
            branches = schema.get(key)
            if isinstance(branches, list) and branches:
                rest = {k: v for k, v in schema.items() if k not in ("anyOf", "oneOf", "default")}
                branch = self.pick_branch(branches, depth, nest)
                return self.gen(_merge(rest, branch), depth + 1, nest, variant)
        kind = _type_of(schema)
        if kind == "null":
            return None
        if kind == "boolean":
            return variant % 2 == 0
        if kind == "integer":
            return _integer(schema, variant)
        if kind == "number":
            return _number(schema, variant)
        if kind == "array":
            return self.array(schema, depth, nest)
        if kind == "object":
            return self.object(schema, depth, nest, variant)
        return self.string(schema, variant)

    def approval(self, schema: Any, depth: int) -> Any:
        """The approving value of an enum, when a revision is reviewed; else None."""
        if not self.approve:
            return None
        schema = self.flatten(schema, depth)
        enum = schema.get("enum") if isinstance(schema, dict) else None
        if not isinstance(enum, list):
            return None
        return next((v for v in enum if isinstance(v, str) and v in APPROVALS), None)

    def pick_branch(self, branches: list[Any], depth: int, nest: int) -> dict[str, Any]:
        """The first non-null branch; the null one once nesting is deep (recursive models)."""
        flat = [self.flatten(b, depth + 1) for b in branches]
        dicts = [b if isinstance(b, dict) else {} for b in flat if b is not False]
        if not dicts:
            return {}
        nulls = [b for b in dicts if _type_of(b) == "null" and "const" not in b and "enum" not in b]
        others = [b for b in dicts if not any(b is n for n in nulls)]
        if nulls and (nest >= NEST_LIMIT or not others):
            return nulls[0]
        return others[0] if others else dicts[0]

    def string(self, schema: dict[str, Any], variant: int) -> str:
        fmt = schema.get("format")
        if isinstance(fmt, str) and fmt in FORMATS:
            value = FORMATS[fmt]
        else:
            value = f"offline: {self.text[:TEXT_CHARS]}" if self.text else "offline"
        if variant:
            value = f"{value} ({variant + 1})"
        min_len = _as_int(schema.get("minLength"))
        max_len = _as_int(schema.get("maxLength"))
        if min_len is not None and len(value) < min_len:
            value += "." * (min_len - len(value))
        if max_len is not None and len(value) > max_len:
            value = value[: max(max_len, 0)]
        return value

    def array(self, schema: dict[str, Any], depth: int, nest: int) -> list[Any]:
        min_items = max(_as_int(schema.get("minItems")) or 0, 0)
        count = min_items if nest >= NEST_LIMIT else max(1, min_items)
        max_items = _as_int(schema.get("maxItems"))
        if max_items is not None:
            count = min(count, max(max_items, 0))
        prefix = schema.get("prefixItems")
        prefix = prefix if isinstance(prefix, list) else []
        items = schema.get("items", {})
        if isinstance(items, list):  # draft 4-7 tuple form
            prefix, items = items, schema.get("additionalItems", {})
        result: list[Any] = []
        for index in range(count):
            if index < len(prefix):
                item_schema = prefix[index]
            elif items is False:
                break
            else:
                item_schema = items
            # Items differ (strings get "(2)", "(3)", ...), as a real list's would.
            result.append(self.gen(item_schema, depth + 1, nest + 1, index))
        return result

    def object(
        self, schema: dict[str, Any], depth: int, nest: int, variant: int = 0
    ) -> dict[str, Any]:
        properties = schema.get("properties")
        properties = properties if isinstance(properties, dict) else {}
        required = schema.get("required")
        required = [r for r in required if isinstance(r, str)] if isinstance(required, list) else []
        extra = schema.get("additionalProperties")
        result: dict[str, Any] = {}
        names = list(properties) + [r for r in required if r not in properties]
        for name in names:
            sub = properties.get(name, extra if isinstance(extra, dict) else {})
            hinted = name in self.hints and self.approval(sub, depth + 1) is None
            if hinted and self.validates(self.hints[name], sub):
                result[name] = self.hints[name]
            elif name in required:
                result[name] = self.gen(sub, depth + 1, nest + 1, variant)
        return result


def _merge(base: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """Both schemas' constraints in one (for `allOf` and for `$ref` with sibling keywords)."""
    merged = dict(base)
    for key, value in other.items():
        if key not in merged:
            merged[key] = value
            continue
        mine = merged[key]
        if key == "properties" and isinstance(mine, dict) and isinstance(value, dict):
            props = dict(mine)
            for name, sub in value.items():
                props[name] = {"allOf": [props[name], sub]} if name in props else sub
            merged[key] = props
        elif key == "required" and isinstance(mine, list) and isinstance(value, list):
            merged[key] = mine + [r for r in value if r not in mine]
        elif key == "type":
            mine_t = mine if isinstance(mine, list) else [mine]
            value_t = value if isinstance(value, list) else [value]
            both = [t for t in mine_t if t in value_t]
            if not both and "integer" in mine_t + value_t and "number" in mine_t + value_t:
                both = ["integer"]
            merged[key] = both if both else mine
        elif key == "enum" and isinstance(mine, list) and isinstance(value, list):
            both = [v for v in mine if v in value]
            merged[key] = both if both else mine
        elif key in ("minimum", "exclusiveMinimum", "minLength", "minItems") and _numeric(
            mine, value
        ):
            merged[key] = max(mine, value)
        elif key in ("maximum", "exclusiveMaximum", "maxLength", "maxItems") and _numeric(
            mine, value
        ):
            merged[key] = min(mine, value)
    return merged


def _numeric(*values: Any) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


def _as_int(value: Any) -> int | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return int(value)
    return None


def _type_of(schema: dict[str, Any]) -> str:
    """The type to produce: the first non-null one given, else guessed from the keywords."""
    declared = schema.get("type")
    if isinstance(declared, list):
        names = [t for t in declared if isinstance(t, str)]
        non_null = [t for t in names if t != "null"]
        if non_null:
            return non_null[0]
        if names:
            return "null"
    elif isinstance(declared, str):
        return declared
    if any(k in schema for k in ("properties", "required", "additionalProperties")):
        return "object"
    if any(k in schema for k in ("items", "prefixItems", "minItems", "maxItems")):
        return "array"
    if any(k in schema for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")):
        return "number"
    return "string"


def _num(value: Any) -> float | None:
    """The value as a number, None for anything else (booleans included)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    return None


def _bounds(schema: dict[str, Any]) -> tuple[float | None, bool, float | None, bool]:
    """(low, low is exclusive, high, high is exclusive), draft 4's boolean form included."""
    minimum, maximum = _num(schema.get("minimum")), _num(schema.get("maximum"))
    ex_min, ex_max = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    low, low_excl = minimum, minimum is not None and ex_min is True
    high, high_excl = maximum, maximum is not None and ex_max is True
    ex_low, ex_high = _num(ex_min), _num(ex_max)
    if ex_low is not None and (low is None or ex_low >= low):
        low, low_excl = ex_low, True
    if ex_high is not None and (high is None or ex_high <= high):
        high, high_excl = ex_high, True
    return low, low_excl, high, high_excl


def _step(schema: dict[str, Any]) -> float | None:
    step = _num(schema.get("multipleOf"))
    return step if step is not None and step > 0 else None


def _integer(schema: dict[str, Any], variant: int) -> int:
    low, low_excl, high, high_excl = _bounds(schema)
    lo = None if low is None else (math.floor(low) + 1 if low_excl else math.ceil(low))
    hi = None if high is None else (math.ceil(high) - 1 if high_excl else math.floor(high))
    value = lo if lo is not None else 1
    if lo is None and hi is not None and value > hi:
        value = hi
    step = _step(schema)
    increment = 1
    if step is not None and float(step).is_integer():
        increment = int(step)
        value = math.ceil(value / increment) * increment
    bumped = value + variant * increment
    return bumped if hi is None or bumped <= hi else value


def _number(schema: dict[str, Any], variant: int) -> float:
    low, low_excl, high, high_excl = _bounds(schema)
    if low is None:
        value = 1.0
        if high is not None and (value > high or (value == high and high_excl)):
            value = float(high) - 1.0 if high_excl else float(high)
    elif not low_excl:
        value = float(low)
    elif high is None or low + 1 < high:
        value = float(low) + 1.0
    else:
        value = (float(low) + float(high)) / 2
    step = _step(schema)
    if step is not None:
        value = math.ceil(value / step) * step
    if variant:
        bumped = value + variant * (step if step is not None else 1.0)
        if high is None or bumped < high or (bumped == high and not high_excl):
            value = bumped
    return float(value)


# ---------------------------------------------------------------------------
# Reading the conversation


def _text(content: Any) -> str:
    """A message's content as text: strings as they are, content parts joined, else JSON."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, str):
                parts.append(part)
        return "\n".join(parts)
    return json.dumps(content, ensure_ascii=False, default=str)


def _role(message: Any) -> str:
    return message.get("role", "") if isinstance(message, dict) else ""


def _tool_calls(message: Any) -> list[dict[str, Any]]:
    if _role(message) != "assistant":
        return []
    calls = message.get("tool_calls")
    return [c for c in calls if isinstance(c, dict)] if isinstance(calls, list) else []


def _call_name(call: dict[str, Any]) -> str:
    function = call.get("function")
    name = function.get("name") if isinstance(function, dict) else call.get("name")
    return name if isinstance(name, str) else ""


def _collapse(text: str, limit: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit] + "..."


def _parse_object(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


class _Conversation:
    """What the model reads off a message list: the step's part of it and its input."""

    def __init__(self, messages: list[dict[str, Any]]) -> None:
        self.messages = [m for m in messages if isinstance(m, dict)]
        users = [i for i, m in enumerate(self.messages) if _role(m) == "user"]
        step_users = [
            i for i in users if _text(self.messages[i].get("content")).startswith(INPUT_PREFIX)
        ]
        self.start = step_users[-1] if step_users else (users[0] if users else -1)
        user_text = _text(self.messages[self.start].get("content")) if self.start >= 0 else ""
        systems = [i for i, m in enumerate(self.messages) if _role(m) == "system"]
        before = [i for i in systems if i < self.start]
        chosen = before[-1] if before else (systems[0] if systems else None)
        self.instructions = (
            _text(self.messages[chosen].get("content")) if chosen is not None else ""
        )
        self.user_text = user_text
        body = user_text[len(INPUT_PREFIX) :] if user_text.startswith(INPUT_PREFIX) else user_text
        parts = _SECTION.split(body)
        self.input_text = parts[0]
        self.sections: list[tuple[str, str]] = list(zip(parts[1::2], parts[2::2], strict=True))
        self.turns = self.messages[self.start + 1 :] if self.start >= 0 else self.messages

    def first_round(self) -> bool:
        """No assistant turn yet in this step: the only round in which tools are called."""
        return not any(_role(m) == "assistant" for m in self.turns)

    def revision(self) -> bool:
        """Whether the input gives the previous review: the step reviews a revision."""
        value = _parse_object(self.input_text)
        if value is not None and any(value.get(k) not in (None, "", [], {}) for k in REVISION_KEYS):
            return True
        return any(
            m.group("value").strip().lower() not in _EMPTY_REVIEW
            for m in _REVISION_LINE.finditer(self.input_text)
        )

    def hints(self) -> dict[str, Any]:
        given = _parse_object(self.input_text)
        if given is not None:  # the previous review is no hint for the next one
            given = {k: v for k, v in given.items() if k not in REVISION_KEYS}
        objects = [given] + [_parse_object(b) for _, b in self.sections]
        found = [o for o in objects if o is not None]
        hints: dict[str, Any] = {}
        for obj in found:
            for key, value in obj.items():
                hints.setdefault(key, value)
        for obj in found:
            for value in obj.values():
                if isinstance(value, dict):
                    for key, inner in value.items():
                        hints.setdefault(key, inner)
        return hints

    def used_call_ids(self) -> set[str]:
        return {
            c["id"] for m in self.messages for c in _tool_calls(m) if isinstance(c.get("id"), str)
        }

    def call_count(self) -> int:
        return sum(len(_tool_calls(m)) for m in self.messages)

    def tool_results(self) -> Iterator[tuple[str, str]]:
        """(tool name, result text) of this step's tool turns, in order."""
        names = {
            c.get("id"): _call_name(c) for m in self.messages for c in _tool_calls(m) if c.get("id")
        }
        for message in self.turns:
            if _role(message) != "tool":
                continue
            name = message.get("name")
            if not isinstance(name, str) or not name:
                call_id = message.get("tool_call_id")
                name = names.get(call_id) or (call_id if isinstance(call_id, str) else "") or "tool"
            text = _text(message.get("content"))
            try:  # a JSON result reads better compact
                text = json.dumps(json.loads(text), ensure_ascii=False)
            except (ValueError, RecursionError):
                pass
            yield name, text


def _tool_spec(tool: Any) -> tuple[str, dict[str, Any]]:
    """(name, parameters schema) of an OpenAI tool param (the flat form accepted too)."""
    if not isinstance(tool, dict):
        return "", {}
    function = tool.get("function")
    if not isinstance(function, dict):
        function = tool
    name = function.get("name")
    params = function.get("parameters")
    return (
        name if isinstance(name, str) else "",
        params if isinstance(params, dict) else {"type": "object", "properties": {}},
    )


def _named(name: str, text: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(name)}(?!\w)", text) is not None


# ---------------------------------------------------------------------------
# The model


def offline_completion(
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]],
    output_schema: dict[str, Any] | None,
) -> dict[str, Any]:
    """The offline model's reply to a Chat Completions request (see the module docstring).

    Args:
        messages: The conversation: system, user, assistant (maybe with tool calls), tool.
        tools: OpenAI tool params (`{"type": "function", "function": {...}}`).
        output_schema: The JSON schema the final answer must match; None for plain text.

    Returns:
        `{"message": ..., "finish_reason": "stop" | "tool_calls", "usage": {...}}`, the
        message shaped like the API's assistant message.
    """
    convo = _Conversation(messages if isinstance(messages, list) else [])
    tools = tools if isinstance(tools, list) else []
    hints = convo.hints()

    message: dict[str, Any]
    calls = _plan_calls(convo, tools, hints) if tools and convo.first_round() else []
    if calls:
        message = {"role": "assistant", "content": None, "tool_calls": calls}
        finish_reason = "tool_calls"
    else:
        if output_schema is not None and output_schema.get("title") == PLAN_SCHEMA_TITLE:
            content = json.dumps(offline_plan(output_schema), ensure_ascii=False)
        elif output_schema is not None:
            answer = _answer(output_schema, hints, convo.input_text, approve=convo.revision())
            content = json.dumps(answer, ensure_ascii=False)
        else:
            content = _plain_answer(convo)
        message = {"role": "assistant", "content": content}
        finish_reason = "stop"

    prompt = estimate_tokens(messages) + (estimate_tokens(tools) if tools else 0)
    if output_schema is not None:
        prompt += estimate_tokens(output_schema)
    completion = (estimate_tokens(message["content"]) if message["content"] else 0) + (
        estimate_tokens(calls) if calls else 0
    )
    return {
        "message": message,
        "finish_reason": finish_reason,
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
    }


def _plan_calls(
    convo: _Conversation, tools: list[dict[str, Any]], hints: dict[str, Any]
) -> list[dict[str, Any]]:
    """One call per tool named in the instructions or the step's user message."""
    used = convo.used_call_ids()
    number = convo.call_count()
    seen: set[str] = set()
    calls: list[dict[str, Any]] = []
    for tool in tools:
        name, params = _tool_spec(tool)
        if not name or name in seen:
            continue
        seen.add(name)
        if not (_named(name, convo.instructions) or _named(name, convo.user_text)):
            continue
        args = _answer(params, hints, convo.input_text)
        number += 1
        while f"{CALL_ID_PREFIX}{number}" in used:
            number += 1
        calls.append(
            {
                "id": f"{CALL_ID_PREFIX}{number}",
                "type": "function",
                "function": {
                    "name": name,
                    "arguments": json.dumps(
                        args if isinstance(args, dict) else {}, ensure_ascii=False
                    ),
                },
            }
        )
    return calls


def _answer(
    schema: dict[str, Any], hints: dict[str, Any], text: str, *, approve: bool = False
) -> Any:
    """The first of (with hints, without hints, without defaults either) that validates.

    `approve`: a revision is reviewed, so enums that offer an approval take it.
    """
    attempts = [
        _Synthesizer(schema, hints, text, approve=approve),
        _Synthesizer(schema, {}, text, approve=approve),
        _Synthesizer(schema, {}, text, use_defaults=False, approve=approve),
    ]
    first: Any = None
    for index, synth in enumerate(attempts):
        value = synth.run()
        if index == 0:
            first = value
        if synth.validates(value, schema):
            return value
    return first


REQUEST = "{{ inputs.request }}"
"""What a planned step reads the plan step's request as."""


def offline_plan(schema: dict[str, Any]) -> dict[str, Any]:
    """A small valid plan within what a plan schema allows (see the module docstring)."""
    steps_schema = _get(schema, "properties", "steps")
    max_steps = _as_int(steps_schema.get("maxItems")) or 1
    variants = _get(steps_schema, "items").get("anyOf")
    variants = [v for v in variants if isinstance(v, dict)] if isinstance(variants, list) else []
    tools = [
        (_get(v, "properties", "tool").get("const"), _get(v, "properties", "args"))
        for v in variants
        if _get(v, "properties", "kind").get("const") == "tool"
    ]
    may_use_agents = any(_get(v, "properties", "kind").get("const") == "agent" for v in variants)
    steps: list[dict[str, Any]] = []
    survey = next((name for name, args in tools if not args.get("required")), None)
    if survey is not None:
        steps.append(
            {
                "id": "survey",
                "kind": "tool",
                "description": f"See what there is to work on ({survey}).",
                "tool": survey,
                "args": {},
            }
        )
    if may_use_agents:
        found = " with what step survey found" if steps else ""
        steps.append(
            {
                "id": "analyze",
                "kind": "agent",
                "description": "Work out what the request needs.",
                "depends_on": [s["id"] for s in steps],
                "instructions": f"Analyse the request{found}: what to change, where, and how to "
                "check it.",
                "input": REQUEST,
            }
        )
        steps.append(
            {
                "id": "summarize",
                "kind": "agent",
                "description": "Summarise the work for the requester.",
                "depends_on": ["analyze"],
                "instructions": "Summarise the analysis for the requester in a few lines.",
                "input": REQUEST,
            }
        )
    if not steps and tools:
        name, args_schema = tools[0]
        # Its argument schemas may refer to the plan schema's `$defs`: the root is the plan's.
        args = _Synthesizer(schema, {}, "").gen(args_schema, 0, 0, 0) if args_schema else {}
        steps.append(
            {
                "id": "run",
                "kind": "tool",
                "tool": name,
                "args": {
                    key: REQUEST if isinstance(value, str) else value
                    for key, value in (args.items() if isinstance(args, dict) else [])
                },
            }
        )
    steps = steps[: max(max_steps, 1)]
    plan: dict[str, Any] = {"steps": steps}
    if steps:
        last = steps[-1]["id"]
        plan["outputs"] = {
            "summary" if last == "summarize" else "result": f"{{{{ steps.{last}.output }}}}"
        }
    return plan


def _get(schema: Any, *keys: str) -> dict[str, Any]:
    """`schema[k1][k2]...` where each is a dict; {} where one is not."""
    node = schema
    for key in keys:
        node = node.get(key) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else {}


def _plain_answer(convo: _Conversation) -> str:
    lines = [line.strip() for line in convo.instructions.splitlines() if line.strip()]
    heading = _collapse(lines[0], SUMMARY_CHARS) if lines else "(no instructions)"
    parts = [f"{LABEL} {heading}"]
    input_text = _collapse(convo.input_text, SUMMARY_CHARS)
    parts.append(f"Input: {input_text or '(none)'}")
    if convo.sections:
        parts.append("Context: " + ", ".join(f"step '{sid}'" for sid, _ in convo.sections))
    results = [f"- {name}: {_collapse(text, SUMMARY_CHARS)}" for name, text in convo.tool_results()]
    if results:
        parts.append("Tool results:\n" + "\n".join(results))
    return "\n\n".join(parts)
