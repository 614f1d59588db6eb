"""Output models that agent steps in the tests name by import path."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator


class Verdict(BaseModel):
    verdict: Literal["approve", "reject"]
    reasons: list[str] = Field(min_length=1)

    @field_validator("reasons")
    @classmethod
    def _no_blank_reasons(cls, reasons: list[str]) -> list[str]:
        if any(not r.strip() for r in reasons):
            raise ValueError("reasons must not be blank")
        return reasons
