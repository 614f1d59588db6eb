"""`stepflow validate` is total: every file passes and runs, or is refused in one short line.

A seeded fuzzer mutates valid pipelines by the thousand (types, ranges, keys,
templates, nesting, encodings, aliases, durations) and holds `validate` to the
rule: exit 0 or 2, never a traceback, never seconds of work, never a message
that echoes the file back. A sample of the mutants that pass is then run on a
real worker: none may fail a workflow task.
"""

from __future__ import annotations

import copy
import functools
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from temporalio.api.enums.v1 import EventType

from stepflow.client.api import StepflowClient
from stepflow.client.cli import main
from stepflow.client.loading import check_spec, load_spec_file
from stepflow.workflows.models import PipelineSpec
from stepflow.workflows.validation import SpecError

SEED = int(os.environ.get("STEPFLOW_FUZZ_SEED", "20261207"))
MUTANTS = int(os.environ.get("STEPFLOW_FUZZ_MUTANTS", "1000"))
RUN_SAMPLE = 12
"""Passing mutants run on a real worker (each a real pipeline run)."""

SEEDS: list[dict[str, Any]] = [
    {
        "name": "fuzz-tools",
        "inputs": {"count": {"type": "integer", "default": 2}, "tag": {"type": "string"}},
        "defaults": {"retry": {"max_attempts": 2, "initial_interval": "10ms"}},
        "steps": [
            {"id": "a", "kind": "tool", "tool": "echo", "args": {"value": "{{ inputs.count }}"}},
            {
                "id": "b",
                "kind": "tool",
                "tool": "echo",
                "depends_on": ["a"],
                "args": {"value": "got {{ steps.a.output }} {{ inputs.tag }}"},
                "timeout": {"start_to_close": "30s"},
                "retry": {"max_attempts": 3, "max_interval": "1s"},
                "on_failure": "continue",
            },
            {"id": "c", "kind": "tool", "tool": "echo", "args": {"value": [1, {"x": None}]}},
        ],
    },
    {
        "name": "fuzz-agent",
        "max_concurrency": 4,
        "steps": [
            {"id": "plan", "kind": "agent", "instructions": "Plan it.", "input": "a topic"},
            {
                "id": "write",
                "kind": "agent",
                "depends_on": ["plan"],
                "instructions": "Write from {{ steps.plan.output }}",
                "max_model_calls": 3,
                "output_schema": {"type": "object", "properties": {"text": {"type": "string"}}},
                "on_failure": {"fallback": "nothing"},
            },
        ],
    },
    {
        "name": "fuzz-flow",
        "inputs": {"n": {"type": "integer", "default": 2}},
        "outputs": {"last": "{{ steps.loop.output.w }}", "each": "{{ steps.each.output }}"},
        "steps": [
            {"id": "list", "kind": "tool", "tool": "echo", "args": {"value": [1, 2, 3]}},
            {
                "id": "each",
                "kind": "tool",
                "tool": "echo",
                "depends_on": ["list"],
                "for_each": "{{ steps.list.output }}",
                "max_concurrency": 2,
                "item_failure": "continue",
                "when": "item != inputs.n",
                "args": {"value": "{{ index }}: {{ item }}"},
            },
            {
                "id": "loop",
                "kind": "loop",
                "depends_on": ["each"],
                "max_iterations": 2,
                "until": "steps.w.output == loop.iteration",
                "on_exhausted": "last",
                "steps": [
                    {
                        "id": "w",
                        "kind": "tool",
                        "tool": "echo",
                        "args": {"value": "{{ loop.iteration }} {{ steps.each.output }}"},
                    }
                ],
            },
            {
                "id": "sub",
                "kind": "pipeline",
                "depends_on": ["loop"],
                "trigger": "all_done",
                "inputs": {"x": "{{ steps.loop.output }}"},
                "steps": [{"id": "in", "kind": "tool", "tool": "echo", "args": {"value": 1}}],
            },
        ],
    },
    {
        "name": "fuzz-people",
        "steps": [
            {"id": "ok", "kind": "approval", "message": "Ship?", "timeout": "1h"},
            {"id": "n", "kind": "input", "schema": {"type": "integer"}, "depends_on": ["ok"]},
        ],
    },
]

ODD_VALUES: list[Any] = [
    None,
    True,
    0,
    -1,
    2**31,
    2**63,
    10**400,
    1e308,
    float("inf"),
    float("nan"),
    "",
    "x" * 5000,
    "{{",
    "}}",
    "{{ steps.nope.output }}",
    "{{ inputs.missing }}",
    "{{ steps.a.output.deep.er }}",
    "{{ steps.a.output }",
    ".inf",
    "inf",
    "-5s",
    "1e400s",
    "99999999999d",
    "0s",
    "PT1S",
    [],
    {},
    [[[[[[[[[[["deep"]]]]]]]]]]],
    {"unknown_key": 1},
    "\x00\ufeff",
]


def paths(node: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a parsed document, as a path of keys and indexes."""
    found = [at]
    if isinstance(node, dict):
        for key, value in node.items():
            found += paths(value, (*at, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += paths(value, (*at, index))
    return found


def parent_of(doc: Any, path: tuple[Any, ...]) -> Any:
    for part in path[:-1]:
        doc = doc[part]
    return doc


def mutate_value(rng: random.Random, doc: Any) -> Any:
    path = rng.choice(paths(doc)[1:])
    parent_of(doc, path)[path[-1]] = copy.deepcopy(rng.choice(ODD_VALUES))
    return doc


def mutate_key(rng: random.Random, doc: Any) -> Any:
    mappings = [p for p in paths(doc) if isinstance(_get(doc, p), dict) and _get(doc, p)]
    mapping = _get(doc, rng.choice(mappings))
    key = rng.choice(list(mapping))
    action = rng.choice(["typo", "drop", "extra"])
    if action == "typo" and isinstance(key, str):
        mapping[key[:-1] or "k"] = mapping.pop(key)
    elif action == "drop":
        del mapping[key]
    else:
        mapping[rng.choice(["when", "idd", "kind ", "steps", "__proto__"])] = "x"
    return doc


def mutate_structure(rng: random.Random, doc: Any) -> Any:
    steps = doc.get("steps")
    if isinstance(steps, list) and steps:
        action = rng.choice(["duplicate", "cycle", "self", "many", "empty"])
        if action == "duplicate":
            steps.append(copy.deepcopy(rng.choice(steps)))
        elif action == "cycle" and isinstance(steps[0], dict):
            steps[0]["depends_on"] = [s.get("id") for s in steps if isinstance(s, dict)][-1:]
        elif action == "self" and isinstance(steps[-1], dict):
            steps[-1]["depends_on"] = [steps[-1].get("id")]
        elif action == "many":
            steps.extend({"id": f"x{i}", "kind": "tool", "tool": "echo"} for i in range(60))
        else:
            doc["steps"] = []
    return doc


def _get(doc: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        doc = doc[part]
    return doc


def as_text(rng: random.Random, doc: Any) -> bytes:
    """The document as YAML, sometimes damaged as text: duplicate keys, bytes, aliases."""
    text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
    action = rng.random()
    if action < 0.06:
        line = rng.choice(text.splitlines() or [""])
        text = text + line + "\n"  # a key written twice, more often than not
    elif action < 0.10:
        return text.encode()[: rng.randrange(1, len(text) + 1)] + rng.choice(
            [b"\xe9", b"\xff\xfe", b"\x00", b"\xc3"]
        )
    elif action < 0.13:
        bomb = "lol0: &l0 [x, x, x, x, x, x, x, x, x]\n" + "".join(
            f"lol{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 9)
        )
        text = bomb + text
    elif action < 0.15:
        text = "a: " + "[" * rng.randrange(50, 3000) + "\n" + text
    return text.encode()


MUTATIONS: list[Callable[[random.Random, Any], Any]] = [
    mutate_value,
    mutate_value,
    mutate_value,
    mutate_key,
    mutate_structure,
]


@functools.cache
def mutants() -> list[tuple[int, bytes]]:
    """The same mutants for both tests (made once: a deterministic function of the seed)."""
    rng = random.Random(SEED)
    found = []
    for number in range(MUTANTS):
        doc = copy.deepcopy(rng.choice(SEEDS))
        for _ in range(rng.choice([1, 1, 2, 3])):
            try:
                doc = rng.choice(MUTATIONS)(rng, doc)
            except (IndexError, KeyError, TypeError, AttributeError):
                pass  # this mutation did not apply to what an earlier one left
        try:
            found.append((number, as_text(rng, doc)))
        except (yaml.YAMLError, ValueError, OverflowError):
            continue  # PyYAML cannot even write it: no file to validate
    return found


@pytest.mark.deadline(300)
def test_validate_passes_or_refuses_every_mutant_in_one_short_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    passed = refused = 0
    for number, content in mutants():
        path = tmp_path / f"m{number}.yaml"
        path.write_bytes(content)
        started = time.monotonic()
        code = main(["validate", str(path)])
        took = time.monotonic() - started
        captured = capsys.readouterr()
        where = f"mutant {number} (STEPFLOW_FUZZ_SEED={SEED}): {path}"
        assert code in (0, 2), f"{where}: exit {code}\n{captured.err[-2000:]}"
        assert "Traceback" not in captured.err, f"{where}\n{captured.err[-3000:]}"
        assert took < 3, f"{where}: took {took:.1f} s"
        if code == 0:
            passed += 1
            continue
        refused += 1
        lines = captured.err.strip().splitlines()
        assert lines, where
        for line in lines:
            assert line.startswith(f"{path}: "), f"{where}: {line[:300]}"
            assert len(line) < 700, f"{where}: a line of {len(line)} characters"
    # The fuzzer reaches both sides of the rule, and many of each.
    assert refused > MUTANTS / 3 and passed > 50, (refused, passed)


def valid_mutants(tmp_path: Path) -> list[PipelineSpec]:
    """The mutants `validate` passes (the same checks, without the command around them)."""
    found = []
    for number, content in mutants():
        path = tmp_path / f"m{number}.yaml"
        path.write_bytes(content)
        try:
            spec = load_spec_file(path)
            check_spec(spec)
        except SpecError:
            continue
        found.append(spec)
    return found


@pytest.mark.deadline(300)
async def test_mutants_that_pass_validate_run_without_a_failed_workflow_task(
    tmp_path: Path, worker: None, stepflow: StepflowClient
) -> None:
    people = ("approval", "input")  # they would wait for a person: not run here
    runnable = [s for s in valid_mutants(tmp_path) if not any(x.kind in people for x in s.steps)]
    for spec in random.Random(SEED).sample(runnable, min(RUN_SAMPLE, len(runnable))):
        inputs = {n: "x" for n, d in spec.inputs.items() if d.required}
        run = await stepflow.start_pipeline(spec, inputs)
        await stepflow.get_result(run.workflow_id)  # succeeded or failed as a pipeline
        history = await stepflow.temporal.get_workflow_handle(run.workflow_id).fetch_history()
        failed_tasks = [
            e for e in history.events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED
        ]
        assert not failed_tasks, f"{spec.model_dump_json()[:1500]}\n{failed_tasks[0]}"
