"""What an MCP tool call's result becomes: the step's output, or the error the model reads.

- structured content (JSON) -> that value; a bare `{"result": x}` that only wraps a
  non-object answer (as MCP server libraries do, per the tool's output schema) -> `x`;
- a single text block -> the text;
- anything else (images, audio, resources, several blocks) -> a list of the blocks in
  MCP's own JSON (`{"type": "image", "data": <base64>, "mimeType": "image/png"}`).

A large result (a big image) goes to the payload store like any large output:
the data converter keeps payloads over the threshold out of history.
"""

from __future__ import annotations

from typing import Any

from mcp.types import CallToolResult, TextContent

MAX_ERROR_CHARS = 4000
"""Of an error result's text: it goes into history and to the model."""


def tool_output(result: CallToolResult, output_schema: dict[str, Any] | None) -> Any:
    """The output of a successful call (see the module's rules)."""
    if result.structured_content is not None:
        return _unwrapped(result.structured_content, output_schema)
    blocks = result.content
    if not blocks:
        return None
    if len(blocks) == 1 and isinstance(blocks[0], TextContent):
        return blocks[0].text
    return [block.model_dump(mode="json", by_alias=True, exclude_none=True) for block in blocks]


def _unwrapped(structured: dict[str, Any], output_schema: dict[str, Any] | None) -> Any:
    properties = (output_schema or {}).get("properties")
    if (
        isinstance(properties, dict)
        and set(properties) == {"result"}
        and set(structured) == {"result"}
    ):
        return structured["result"]
    return structured


def error_text(result: CallToolResult) -> str:
    """The message of a result marked `isError`: its text blocks, else a note of what it held."""
    texts = [block.text for block in result.content if isinstance(block, TextContent)]
    text = "\n".join(t for t in texts if t).strip()
    if not text:
        kinds = ", ".join(sorted({block.type for block in result.content})) or "no content"
        text = f"the tool reported an error ({kinds})"
    if len(text) > MAX_ERROR_CHARS:
        text = text[:MAX_ERROR_CHARS] + " [...]"
    return text
