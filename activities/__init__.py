"""Everything that touches the outside world: tools and model calls.

Write a tool::

    from stepflow.activities import tool

    @tool
    def word_count(text: str) -> int:
        \"\"\"Count the words in a text.\"\"\"
        return len(text.split())
"""

from stepflow.activities.context import ToolContext, ToolError, tool_context
from stepflow.activities.registry import (
    ToolDefinition,
    all_tools,
    get_tool,
    load_tool_modules,
    tool,
)

__all__ = [
    "ToolContext",
    "ToolDefinition",
    "ToolError",
    "all_tools",
    "get_tool",
    "load_tool_modules",
    "tool",
    "tool_context",
]
