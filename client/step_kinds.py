"""What to tell a user whose step has no `kind`, or one that does not exist.

pydantic picks a step's class by its `kind` and, without one, says "Unable to
extract tag using discriminator 'kind'". A user wants the kinds there are and,
where the step's keys say it, the one they meant (`tool:` and `args:` make a
tool step).
"""

from __future__ import annotations

from typing import Any, get_args

from pydantic import BaseModel
from pydantic_core import ErrorDetails

from stepflow.workflows.models import Step
from stepflow.workflows.spec_issues import did_you_mean


def step_kinds() -> dict[str, type[BaseModel]]:
    """Each `kind` a step can have, with its class, in the order the schema lists them."""
    union = get_args(Step)[0]
    kinds = {}
    for model in get_args(union):
        (kind,) = get_args(model.model_fields["kind"].annotation)
        kinds[kind] = model
    return kinds


def guess_kind(raw_step: dict[str, Any]) -> str | None:
    """The one kind whose fields hold every key the step gives, if only one does."""
    kinds = step_kinds()
    keys = set(raw_step) - {"kind"}
    fits = [kind for kind, model in kinds.items() if keys <= set(model.model_fields)]
    return fits[0] if len(fits) == 1 else None


def kind_message(error: ErrorDetails, raw_step: Any) -> str | None:
    """A message for a missing or unknown `kind`; None for any other error."""
    names = ", ".join(step_kinds())
    if error["type"] == "union_tag_not_found":
        guess = guess_kind(raw_step) if isinstance(raw_step, dict) else None
        hint = f": add `kind: {guess}`" if guess else ""
        return f"`kind` is missing{hint}; a step is one of: {names}"
    if error["type"] == "union_tag_invalid":
        tag = str(error.get("ctx", {}).get("tag", raw_step.get("kind")))
        return f"unknown kind {tag!r}{did_you_mean(tag, step_kinds())}; a step is one of: {names}"
    return None
