"""Tools for the example pipelines: how a user's own tools look.

Load them with `STEPFLOW_TOOL_MODULES=examples.tools` (`make demo` does).
They work offline and deterministically, so the demo needs no network.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BaseModel, Field

from activities import tool, tool_context


class Section(BaseModel):
    heading: str
    text: str


@tool
def outline(
    topic: str, sections: Annotated[int, Field(ge=1, le=10, description="How many.")] = 3
) -> list[str]:
    """Plan the section headings of a short report on a topic."""
    angles = ["What it is", "How it works", "Where it fails", "Who uses it", "What comes next"]
    return [f"{angle}: {topic}" for angle in (angles * 2)[:sections]]


@tool
def draft_section(topic: str, heading: str) -> Section:
    """Write a first draft of one section (offline: a fixed, readable paragraph)."""
    ctx = tool_context()
    ctx.heartbeat(heading)  # a long tool would report progress like this
    words = re.findall(r"[a-z]+", topic.lower())
    text = (
        f"This section covers {heading.split(':')[0].lower()} for {topic}. "
        f"Key terms: {', '.join(sorted(set(words))) or topic}."
    )
    return Section(heading=heading, text=text)


@tool
def assemble_report(title: str, sections: list[Section]) -> str:
    """Join drafted sections into one Markdown document."""
    body = "\n\n".join(f"## {s.heading}\n\n{s.text}" for s in sections)
    return f"# {title}\n\n{body}\n"


@tool
def slugify(text: str) -> str:
    """Turn a title into a file-name-safe slug."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "untitled"
