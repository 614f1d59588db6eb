"""An output model in a module no test trusts: `tests/test_schema_imports.py` proves it is never
imported by looking for this module in `sys.modules`. Never import it anywhere else."""

from __future__ import annotations

from pydantic import BaseModel


class Answer(BaseModel):
    text: str
