"""Prompt tokens of dependency-scoped context against whole-history context.

    python bench/context.py [--pipeline examples/code_task.yaml]

One process starts one Temporal dev server and one in-process worker (as
`bench/overhead.py` does) and runs the code-task example twice on the built-in
offline model, one run after the other, in a scratch workspace:

- dependencies: the file as it is (`context: dependencies`, the default). An
  agent step's first message holds its input and the outputs of the steps in
  its `depends_on`, nothing else.
- full: the same spec with `context: full`, the whole-history baseline. An
  agent step also gets every earlier step's output and, before its own input,
  every earlier agent step's conversation (tool calls and results included).

It prints the prompt tokens of each agent step in both runs, the totals, and
the reduction. The offline model is deterministic, so one run of each is the
measurement; it answers the same in both runs (checked), so both make the same
number of model calls and the difference is the context alone.

How tokens are counted: the offline model reports, for every request, prompt
tokens = ceil(characters / 4) of the request's messages (as JSON), plus the
tool schemas and the output schema when the step has them; a step's count is
the sum over its model calls (each call resends the step's conversation so
far). That is an estimate, not a tokenizer: absolute numbers differ from a real
model's, the ratio between the two runs is what this measures. This is a
measurement, not a test: the exit code is 0 unless a run fails.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `examples` is not installed: import it from the checkout
    sys.path.insert(0, str(ROOT))

import structlog  # noqa: E402

from stepflow.activities.registry import load_tool_modules  # noqa: E402
from stepflow.client.api import StepflowClient  # noqa: E402
from stepflow.client.loading import load_spec_file  # noqa: E402
from stepflow.runtime.devserver import start_ephemeral_environment  # noqa: E402
from stepflow.runtime.settings import Settings  # noqa: E402
from stepflow.worker import build_worker  # noqa: E402
from stepflow.workflows.models import (  # noqa: E402
    OFFLINE_MODEL,
    AgentStep,
    PipelineResult,
    PipelineSpec,
    PipelineStatus,
)

DEFAULT_PIPELINE = ROOT / "examples" / "code_task.yaml"
TOOL_MODULE = "examples.tools"
MODES = ("dependencies", "full")


def offline_environment(workspace: str) -> None:
    """This process is the worker: the offline model answers, files go to a scratch workspace."""
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        os.environ.pop(name, None)
    os.environ["STEPFLOW_DEFAULT_MODEL"] = OFFLINE_MODEL
    os.environ["STEPFLOW_WORKSPACE"] = workspace
    modules = [m for m in os.environ.get("STEPFLOW_TOOL_MODULES", "").split(",") if m.strip()]
    if TOOL_MODULE not in modules:
        modules.append(TOOL_MODULE)
    os.environ["STEPFLOW_TOOL_MODULES"] = ",".join(modules)


def quiet_logs() -> None:
    """Every tool and model call logs an info line: drop them (as bench/overhead.py does)."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    logging.getLogger().setLevel(logging.WARNING)


@dataclass
class StepTokens:
    step_id: str
    calls: dict[str, int]
    prompt: dict[str, int]
    completion: dict[str, int]


async def run_both(spec: PipelineSpec, settings: Settings) -> dict[str, PipelineResult]:
    tools = load_tool_modules(settings.tool_modules)
    queue = f"bench-context-{uuid.uuid4().hex[:8]}"
    env = await start_ephemeral_environment()
    results: dict[str, PipelineResult] = {}
    try:
        stepflow = StepflowClient(env.client, settings=settings)
        async with build_worker(env.client, settings, tools=tools, task_queue=queue):
            for mode in MODES:  # one after the other: both write the same workspace files
                variant = spec.model_copy(update={"context": mode})
                result = await stepflow.run_pipeline(variant, task_queue=queue)
                if result.status is not PipelineStatus.SUCCEEDED:
                    raise SystemExit(f"the {mode} run failed: {result.error}")
                results[mode] = result
    finally:
        await env.shutdown()
    return results


def per_step(spec: PipelineSpec, results: dict[str, PipelineResult]) -> list[StepTokens]:
    rows = []
    for step in spec.steps:
        if not isinstance(step, AgentStep):
            continue
        row = StepTokens(step.id, {}, {}, {})
        for mode, result in results.items():
            record = result.step(step.id)
            if record.model != OFFLINE_MODEL or record.usage is None:
                raise SystemExit(f"step {step.id!r} ({mode}) was answered by {record.model!r}")
            row.calls[mode] = record.usage.model_calls
            row.prompt[mode] = record.usage.prompt_tokens
            row.completion[mode] = record.usage.completion_tokens
        rows.append(row)
    return rows


def reduction(scoped: int, full: int) -> str:
    return f"{(1 - scoped / full) * 100:.1f}%" if full else "-"


def report(path: Path, spec: PipelineSpec, results: dict[str, PipelineResult]) -> None:
    rows = per_step(spec, results)
    deps, full = results["dependencies"], results["full"]
    # Plain-text answers quote what the step saw, so only the others must match.
    comparable = [s.id for s in spec.steps if not isinstance(s, AgentStep) or s.output_schema]
    differing = [sid for sid in comparable if deps.output(sid) != full.output(sid)]

    print()
    print(f"{spec.name} ({path.name}): {len(spec.steps)} steps, {len(rows)} of them agent steps")
    print("prompt tokens per agent step, offline model, dependency-scoped vs whole-history context")
    print()
    header = f"{'step':<12} {'calls':>5} {'dependencies':>13} {'full':>8} {'reduction':>10}"
    print(header)
    print("-" * len(header))
    for row in rows:
        calls = row.calls["dependencies"]
        calls_text = str(calls) if calls == row.calls["full"] else f"{calls}/{row.calls['full']}"
        scoped, whole = row.prompt["dependencies"], row.prompt["full"]
        print(
            f"{row.step_id:<12} {calls_text:>5} {scoped:>13,} {whole:>8,} "
            f"{reduction(scoped, whole):>10}"
        )
    print("-" * len(header))
    total_deps, total_full = deps.usage.prompt_tokens, full.usage.prompt_tokens
    print(
        f"{'total':<12} {deps.usage.model_calls:>5} {total_deps:>13,} {total_full:>8,} "
        f"{reduction(total_deps, total_full):>10}"
    )
    later = [r for r in rows if r.prompt["dependencies"] != r.prompt["full"]]
    if later:
        scoped = sum(r.prompt["dependencies"] for r in later)
        whole = sum(r.prompt["full"] for r in later)
        print(
            f"{'with history':<12} {'':>5} {scoped:>13,} {whole:>8,} {reduction(scoped, whole):>10}"
            f"   (steps with earlier steps to see: {', '.join(r.step_id for r in later)})"
        )
    print()
    print(
        f"model calls: {deps.usage.model_calls} with dependencies, {full.usage.model_calls} with "
        f"full context"
        + (" (equal)" if deps.usage.model_calls == full.usage.model_calls else " (NOT equal)")
    )
    print(
        f"completion tokens: {deps.usage.completion_tokens:,} with dependencies, "
        f"{full.usage.completion_tokens:,} with full context"
    )
    print(
        "outputs of tool steps and structured agent steps: "
        + ("identical in both runs" if not differing else f"differ in {', '.join(differing)}")
    )
    print(
        f"prompt tokens saved: {total_full - total_deps:,} of {total_full:,} "
        f"({reduction(total_deps, total_full)} fewer with dependency-scoped context)"
    )
    print()
    print(
        "How counted: the offline model reports prompt tokens as ceil(characters / 4) of each\n"
        "request (its messages as JSON, plus tool schemas and the output schema where the step\n"
        "has them); a step's number is the sum over its model calls. An estimate, not a real\n"
        "tokenizer: compare the two columns, not the absolute numbers with a real model's."
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--pipeline", type=Path, default=DEFAULT_PIPELINE)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="stepflow-bench-context-") as workspace:
        offline_environment(workspace)
        settings = Settings()
        quiet_logs()
        load_tool_modules(settings.tool_modules)  # before loading: the spec names their tools
        spec = load_spec_file(args.pipeline)
        results = await run_both(spec, settings)
    report(args.pipeline, spec, results)


if __name__ == "__main__":
    asyncio.run(main())
