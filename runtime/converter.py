"""`StepflowDataConverter`: the SDK's `DataConverter`, whose copies share one payload converter.

The SDK copies a worker's data converter for each payload it converts in a
workflow task or an activity (`with_context`, and again to bind the external
storage's context), at least six copies a tool step. A copy made with
`dataclasses.replace` runs `__post_init__`, which builds a new payload converter
from its class; the copy then either overwrites it or keeps it with an empty
cache. For the pydantic converter that build is the costly part: a composite of
encoders and a fresh cache of type adapters, which each value then builds again.
With the payload store on (the default), Stepflow's worker paid 1.2 ms per step
for it in a profile of `bench/overhead.py --mode product`, a minimal SDK worker
without external storage nothing (its `with_context` returns itself).

Here every copy gets the payload converter built once for its class. A payload
converter is shared across threads anyway (`DataConverter.default` is one object
for a whole process), and one that takes a serialization context returns a new
converter from `with_context` rather than changing itself.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from temporalio.converter import DataConverter, PayloadConverter


@functools.cache
def _payload_converter(payload_converter_class: type[PayloadConverter]) -> PayloadConverter:
    """The payload converter a `DataConverter` of this class builds, built once."""
    return DataConverter(payload_converter_class=payload_converter_class).payload_converter


@dataclass(frozen=True)
class StepflowDataConverter(DataConverter):
    """A `DataConverter` whose copies reuse the payload converter built for its class."""

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "payload_converter", _payload_converter(self.payload_converter_class)
        )
        object.__setattr__(self, "failure_converter", self.failure_converter_class())
