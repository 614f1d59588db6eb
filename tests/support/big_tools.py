"""Tools with large results, for the payload store tests (`tests/test_large_outputs.py`)."""

from __future__ import annotations

import hashlib

from stepflow.activities import tool
from tests.support.tools import journal_write


def big_value(size: int, seed: str = "stepflow") -> str:
    """`size` characters that differ all along, so a cut or a swapped block shows in a digest."""
    blocks = []
    length = 0
    counter = 0
    while length < size:
        block = hashlib.sha256(f"{seed}/{counter}".encode()).hexdigest()
        blocks.append(block)
        length += len(block)
        counter += 1
    return "".join(blocks)[:size]


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@tool
async def big_text(journal: str, size: int, seed: str = "stepflow") -> str:
    """Return `big_value(size, seed)`; journal each attempt."""
    journal_write(journal, "start", size=size)
    return big_value(size, seed)


@tool
def big_text_sync(journal: str, size: int, seed: str = "stepflow") -> str:
    """The sync twin of `big_text` (runs in the worker's thread pool)."""
    journal_write(journal, "start", size=size)
    return big_value(size, seed)


@tool
async def measure(text: str) -> dict[str, object]:
    """What a dependent step received: its length and digest."""
    return {"length": len(text), "sha256": digest(text)}
