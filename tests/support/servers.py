"""Dev servers a test module starts for itself instead of the session's."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from temporalio.testing import WorkflowEnvironment

from stepflow.runtime.devserver import continue_as_new_early, start_ephemeral_environment


@asynccontextmanager
async def suggesting_continue_as_new_at(events: int) -> AsyncIterator[WorkflowEnvironment]:
    """A dev server that suggests continuing as new after `events` events (default: 4,096),
    so that a short test goes through several runs of one chain."""
    env = await start_ephemeral_environment(extra_flags=continue_as_new_early(events))
    try:
        yield env
    finally:
        await env.shutdown()
