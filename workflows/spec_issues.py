"""What is wrong with a pipeline, as lines a person reads: `SpecIssue`, `SpecError`.

Pure: imported by the checks (`workflows.validation`, `workflows.flow_checks`) and the client.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

MAX_ISSUE_LENGTH = 500
"""An issue is a line a person reads, whatever the file quoted into it."""


@dataclass(frozen=True)
class SpecIssue:
    """One thing wrong with a pipeline, located by step and field."""

    message: str
    step: str | None = None
    field: str | None = None

    def __str__(self) -> str:
        where = []
        if self.step is not None:
            # The end of a long path names the step at fault (`...sub.loop.write`).
            step = self.step if len(self.step) <= 60 else "..." + self.step[-40:]
            where.append(f"step {step!r}")
        if self.field:
            where.append(self.field)
        text = f"{': '.join(where)}: {self.message}" if where else self.message
        if len(text) > MAX_ISSUE_LENGTH:  # a message quoting a value from a huge file
            cut = len(text) - MAX_ISSUE_LENGTH
            text = f"{text[:MAX_ISSUE_LENGTH]}... ({cut:,} more characters)"
        return text


class SpecError(ValueError):
    """A pipeline (or its inputs) that cannot run. Lists every issue found, not just the first."""

    def __init__(self, issues: list[SpecIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))


def did_you_mean(name: str, known: Any) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
