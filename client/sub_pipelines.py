"""Sub-pipeline files: a `kind: pipeline` step may name another file (`pipeline:
translate.yaml`). The client reads it here, relative to the file that names it (recursively:
a sub-pipeline's own files and those in loop bodies too), so the spec a run starts with holds
every sub-pipeline inline: the workflow never reads files.

Each file is read once however often it is named; files that name each other in a cycle,
and files that multiply past `MAX_INLINED_STEPS` steps, are refused.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from stepflow.client.spec_parsing import parse_spec
from stepflow.client.yaml_reader import YamlProblem, read_yaml_file
from stepflow.workflows.models import LoopStep, PipelineSpec, PipelineStep, Step
from stepflow.workflows.validation import SpecError, SpecIssue


def resolve_files_named_in(spec: PipelineSpec, path: str) -> PipelineSpec:
    """`spec`, as read from file `path`, with the files it names read and put inline.

    Raises:
        SpecError: a file is missing or invalid, or files name each other in a cycle.
    """
    return _resolve_or_raise(spec, os.path.dirname(path), [(_identity(path), path)])


def resolve_pipeline_files(spec: PipelineSpec, directory: str | Path = "") -> PipelineSpec:
    """`spec` with every `pipeline: FILE` read (recursively) and put inline; `spec` is unchanged.

    Args:
        directory: What the paths are relative to; default: the current directory.

    Raises:
        SpecError: a file is missing or invalid, or files name each other in a cycle.
    """
    return _resolve_or_raise(spec, str(directory) if str(directory) != "." else "", [])


MAX_INLINED_STEPS = 20_000
"""Steps of a pipeline with every sub-pipeline file inlined. Files that name others several
times multiply: ten levels of files naming the next twice are 1,024 copies of the last."""


def _resolve_or_raise(
    spec: PipelineSpec, directory: str, chain: list[tuple[Path, str]]
) -> PipelineSpec:
    resolved, issues = _SubPipelineFiles().spec(spec, directory, chain)
    if issues:
        raise SpecError(issues)
    total = _inlined_steps(resolved.steps, {})
    if total > MAX_INLINED_STEPS:
        raise SpecError(
            [
                SpecIssue(
                    f"with its sub-pipeline files inlined the pipeline has {total:,} steps, "
                    f"over {MAX_INLINED_STEPS:,}: do files name the same file many times?"
                )
            ]
        )
    return resolved


def _inlined_steps(steps: list[Step], seen: dict[int, int]) -> int:
    """Steps once every sub-pipeline is inlined; each spec counted once (`seen`), however
    often it is named, so this stays quick however many copies there are."""
    total = 0
    for step in steps:
        total += 1
        if isinstance(step, LoopStep):
            total += _inlined_steps(step.steps, seen)
        elif isinstance(step, PipelineStep):
            child = step.pipeline
            if isinstance(child, PipelineSpec):
                if id(child) not in seen:
                    seen[id(child)] = _inlined_steps(child.steps, seen)
                total += seen[id(child)]
            total += _inlined_steps(step.steps or [], seen)
    return total


def _identity(path: str) -> Path:
    """What makes two names of a file the same file (for cycles)."""
    try:
        return Path(path).resolve()
    except (OSError, RuntimeError):  # a symlink loop: not a file anyway
        return Path(os.path.abspath(path))


class _SubPipelineFiles:
    """Reads the sub-pipeline files of one spec, each file once however often it is named."""

    def __init__(self) -> None:
        self.read: dict[Path, tuple[PipelineSpec | None, list[str]]] = {}

    def spec(
        self, spec: PipelineSpec, directory: str, chain: list[tuple[Path, str]], prefix: str = ""
    ) -> tuple[PipelineSpec, list[SpecIssue]]:
        steps, issues = self.steps(spec.steps, directory, chain, prefix)
        return (spec if steps is None else spec.model_copy(update={"steps": steps})), issues

    def steps(
        self, steps: list[Step], directory: str, chain: list[tuple[Path, str]], prefix: str
    ) -> tuple[list[Step] | None, list[SpecIssue]]:
        """The steps with their files read (None: nothing to read), and what went wrong."""
        issues: list[SpecIssue] = []
        changed = False
        result: list[Step] = []
        for step in steps:
            path = f"{prefix}{step.id}"
            update: dict[str, Any] = {}
            if isinstance(step, LoopStep):
                body, found = self.steps(step.steps, directory, chain, f"{path}.")
                issues.extend(found)
                if body is not None:
                    update["steps"] = body
            elif isinstance(step, PipelineStep):
                if isinstance(step.pipeline, str):
                    child, messages = self.file(step.pipeline, directory, chain)
                    issues.extend(SpecIssue(m, path, "pipeline") for m in messages)
                    if child is not None:
                        update["pipeline"] = child
                elif isinstance(step.pipeline, PipelineSpec):
                    child_spec, found = self.spec(step.pipeline, directory, chain, f"{path}.")
                    issues.extend(found)
                    if child_spec is not step.pipeline:
                        update["pipeline"] = child_spec
                if step.steps is not None:
                    inner, found = self.steps(step.steps, directory, chain, f"{path}.")
                    issues.extend(found)
                    if inner is not None:
                        update["steps"] = inner
            if update:
                changed = True
                step = step.model_copy(update=update)
            result.append(step)
        return (result if changed else None), issues

    def file(
        self, name: str, directory: str, chain: list[tuple[Path, str]]
    ) -> tuple[PipelineSpec | None, list[str]]:
        """The spec in file `name` (relative to `directory`), its own files read; else why not.

        The messages start with the file's path as this process would open it.
        """
        opened = os.path.join(directory, name)
        shown = os.path.normpath(opened) if opened else name
        identity = _identity(opened)
        on_chain = [known for known, _ in chain]
        if identity in on_chain:
            names = [s for _, s in chain[on_chain.index(identity) :]]
            cycle = " -> ".join([*names, shown])
            return None, [f"a cycle of pipeline files: {cycle}"]
        if identity in self.read:
            return self.read[identity]
        found = self._read(opened, shown, [*chain, (identity, shown)])
        self.read[identity] = found
        return found

    def _read(
        self, opened: str, shown: str, chain: list[tuple[Path, str]]
    ) -> tuple[PipelineSpec | None, list[str]]:
        try:
            raw = read_yaml_file(Path(opened))
        except FileNotFoundError:
            return None, [f"{shown}: no such file"]
        except OSError as err:
            return None, [f"{shown}: cannot read: {err.strerror or err}"]
        except YamlProblem as err:
            return None, [f"{shown} {err}"]
        try:
            spec = parse_spec(raw)
        except SpecError as err:
            return None, [f"{shown}: {issue}" for issue in err.issues]
        resolved, issues = self.spec(spec, os.path.dirname(opened), chain)
        if issues:
            return None, [f"{shown}: {issue}" for issue in issues]
        return resolved, []
