"""Payload converters the SDK builds (several a step) share one set of encoders and convert alike."""

from __future__ import annotations

import dataclasses

from temporalio.converter import WorkflowSerializationContext

from stepflow.runtime.converter import StepflowPayloadConverter
from stepflow.runtime.payload_storage import stepflow_data_converter
from stepflow.runtime.settings import Settings
from stepflow.workflows.models import ToolCallOutput


async def test_copies_share_the_encoders_and_convert_alike(settings: Settings) -> None:
    converter = stepflow_data_converter(settings)
    assert converter.payload_converter_class is StepflowPayloadConverter
    encoders = list(StepflowPayloadConverter().converters.values())
    context = WorkflowSerializationContext(namespace="default", workflow_id="run-1")
    for copy in (dataclasses.replace(converter), converter.with_context(context), converter):
        inner = copy.payload_converter
        inner = getattr(inner, "_inner_payload_converter", inner)  # the SDK wraps it
        assert isinstance(inner, StepflowPayloadConverter)
        assert list(inner.converters.values()) == encoders
        assert copy.external_storage is not None and copy.payload_codec is not None
        value = ToolCallOutput(output={"answer": [1, 2]}, attempt=2)
        assert await copy.decode(await copy.encode([value]), [ToolCallOutput]) == [value]
