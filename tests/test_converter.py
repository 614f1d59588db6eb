"""The data converter's copies (the SDK makes several a step) share one payload converter."""

from __future__ import annotations

import dataclasses

from temporalio.converter import WorkflowSerializationContext

from stepflow.runtime.converter import StepflowDataConverter
from stepflow.runtime.payload_storage import stepflow_data_converter
from stepflow.runtime.settings import Settings
from stepflow.workflows.models import ToolCallOutput


async def test_copies_share_the_payload_converter_and_convert_alike(settings: Settings) -> None:
    converter = stepflow_data_converter(settings)
    assert isinstance(converter, StepflowDataConverter)
    context = WorkflowSerializationContext(namespace="default", workflow_id="run-1")
    for copy in (dataclasses.replace(converter), converter.with_context(context)):
        assert isinstance(copy, StepflowDataConverter)
        assert copy.payload_converter is converter.payload_converter
        assert copy.external_storage is not None and copy.payload_codec is not None
        value = ToolCallOutput(output={"answer": [1, 2]}, attempt=2)
        assert await copy.decode(await copy.encode([value]), [ToolCallOutput]) == [value]
