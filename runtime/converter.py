"""`StepflowPayloadConverter`: pydantic JSON payloads, quick to build and sharing one cache.

The SDK builds a new payload converter from the data converter's class many
times a step: each copy of the data converter (`with_context`, binding the
external storage's context) runs `__post_init__`, and each workflow activation
builds a data converter of its own, twice a step. Built from scratch, the pydantic
converter makes its encoders again, with an empty cache of type adapters, which
every value then builds again. With the payload store on (the default), that was
1.2 ms of each step in a profile of `bench/overhead.py --mode product`; a copy of
the data converter cost 14 us, and 2.4 with this class.

Here every instance delegates to one set of encoders per process, built once.
Encoders keep no state but that cache, and the SDK shares them across threads
anyway (`DataConverter.default` is one object for a whole process); an instance
given a serialization context is a new one (`with_context`), never a shared one
changed.
"""

from __future__ import annotations

import functools

from temporalio.contrib.pydantic import PydanticPayloadConverter
from temporalio.converter import CompositePayloadConverter, EncodingPayloadConverter


@functools.cache
def _encoders() -> tuple[EncodingPayloadConverter, ...]:
    """The pydantic converter's encoders (binary null, protobuf, pydantic JSON), built once."""
    return tuple(PydanticPayloadConverter().converters.values())


class StepflowPayloadConverter(PydanticPayloadConverter):
    """`PydanticPayloadConverter` whose instances share the process's encoders."""

    def __init__(self) -> None:
        CompositePayloadConverter.__init__(self, *_encoders())
