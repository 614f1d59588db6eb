"""The docs cannot rot: the site builds strictly, the reference pages are the code's, and the
README's and the getting-started page's commands run as written against a real server."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from pydantic import Field
from temporalio.testing import WorkflowEnvironment

from stepflow import PipelineSpec
from stepflow.client.cli import build_parser
from stepflow.runtime.settings import Settings
from stepflow.workflows.errors import ErrorType
from tests.support.processes import ROOT, process_env

DOCS = ROOT / "docs"
RUN_AS_WRITTEN = [ROOT / "README.md", DOCS / "getting-started.md"]
"""The pages whose commands and code blocks `test_commands_run_as_written` runs."""
NOT_RUN = re.compile(r"<!--\s*not run in tests:\s*(?P<reason>\S.*?)\s*-->")
"""Put right before a block that a test cannot run, saying why (`make demo`, docker...)."""
FILE_NAME = re.compile(r"#\s*(?P<name>[\w./-]+\.(?:ya?ml|json|toml|py))\s*$")
"""A block whose first line is `# NAME` alone makes that file, unless the repository has it."""


def load_reference() -> ModuleType:
    """docs/_hooks/reference.py, the generator MkDocs runs as a hook."""
    spec = importlib.util.spec_from_file_location("docs_reference", DOCS / "_hooks/reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


reference = load_reference()


# ---------------------------------------------------------------------------
# The reference pages come from the code


def schema_fields(schema: dict[str, Any]) -> list[tuple[str, str]]:
    """(model, field) of every model in a JSON Schema, its `$defs` included."""
    models: dict[str, Any] = {str(schema.get("title")): schema, **schema.get("$defs", {})}
    return [
        (name, field) for name, model in models.items() for field in model.get("properties", {})
    ]


def section(page: str, heading: str) -> str:
    """The text of one `## heading` section of a generated page."""
    found = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", page, re.M | re.S)
    assert found, f"no section {heading!r}"
    return found.group(1)


def test_pipeline_reference_has_every_field_of_every_model_with_its_description() -> None:
    schema = PipelineSpec.model_json_schema()
    page = reference.pipeline_page()

    fields = schema_fields(schema)
    assert len(fields) > 40
    for model, field in fields:
        assert f"| `{field}` |" in section(page, model), (model, field)
    described = schema["$defs"]["AgentStep"]["properties"]["max_model_calls"]["description"]
    assert described in section(page, "AgentStep")


def test_a_field_added_to_a_model_appears_in_the_reference_with_type_default_and_description() -> (
    None
):
    class Extended(PipelineSpec):
        budget_usd: float = Field(default=2.5, description="Spend no more than this per run.")

    page = reference.pipeline_markdown(Extended.model_json_schema())

    assert "| `budget_usd` | number | `2.5` | Spend no more than this per run. |" in page


def test_cli_reference_has_every_command_and_option() -> None:
    page = reference.cli_page()

    def walk(parser: object, words: list[str]) -> list[tuple[list[str], object]]:
        found = []
        for name, _, sub in reference.subcommands(parser):
            found.append(([*words, name], sub))
            found.extend(walk(sub, [*words, name]))
        return found

    commands = walk(build_parser(), [])
    assert {"run", "validate", "schema", "payloads"} <= {words[0] for words, _ in commands}
    for words, parser in commands:
        text = section(page, "stepflow " + " ".join(words))
        for action in parser._actions:  # type: ignore[attr-defined]
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text), option


def test_settings_reference_has_every_setting_with_variable_and_file_key() -> None:
    page = reference.settings_page()

    assert len(Settings.model_fields) > 30
    for name, field in Settings.model_fields.items():
        row = next(line for line in page.splitlines() if f"`STEPFLOW_{name.upper()}`" in line)
        assert f"| `{name}` |" in row
        if field.description:
            assert " ".join(field.description.split()) in row.replace("\\|", "|")


def test_errors_reference_has_every_error_type_with_its_docstring_and_retry_rule() -> None:
    page = reference.errors_page()

    for member in ErrorType:
        row = next(line for line in page.splitlines() if line.startswith(f"| `{member.value}` |"))
        assert f"| {'yes' if member.retryable else 'no'} |" in row
    rejected = "The API refused the request itself (bad key, bad request): no retry can fix it."
    assert rejected in page


def test_error_catalogue_reads_groups_and_attribute_docstrings_from_the_source() -> None:
    source = '''
class ErrorType(StrEnum):
    """Every error type."""

    # Budgets.
    BUDGET_EXCEEDED = "BudgetExceeded"
    """The run spent its budget."""
    NO_DOC = "NoDoc"

    @property
    def retryable(self) -> bool:
        return False
'''
    assert reference.error_catalogue(source) == [
        ("Budgets", "BUDGET_EXCEEDED", "BudgetExceeded", "The run spent its budget."),
        ("Budgets", "NO_DOC", "NoDoc", ""),
    ]


@pytest.mark.deadline(180)
def test_the_site_builds_in_strict_mode_with_the_generated_pages_and_diagrams(
    tmp_path: Path,
) -> None:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    mkdocs = Path(sys.executable).parent / "mkdocs"
    done = subprocess.run(
        [str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=150,
    )

    assert done.returncode == 0, done.stderr
    site = tmp_path / "site"
    for page in ("pipeline", "cli", "settings", "errors"):
        assert (site / "reference" / page / "index.html").is_file(), page
    assert "max_model_calls" in (site / "reference/pipeline/index.html").read_text()
    concepts = (site / "concepts/index.html").read_text()
    assert concepts.count('class="mermaid"') >= 2  # the path of a run, and a crash


def test_the_readme_stays_a_few_screens_and_names_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()

    assert len(readme.encode()) < 10_000, len(readme.encode())
    assert "make demo" in readme and "make test" in readme


def test_the_readmes_links_into_the_docs_lead_to_pages() -> None:
    readme = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\((?!https?:|#)([^)#]+)", readme)

    assert targets
    for target in targets:
        assert (ROOT / target).is_file(), target


# ---------------------------------------------------------------------------
# The commands and code blocks run as written


@dataclass
class Block:
    """One fenced block of a page: what it is, where, and whether a test may run it."""

    page: Path
    line: int
    language: str
    text: str
    not_run: str | None  # the reason given in the page, if it is not run

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def makes_file(self) -> str | None:
        """The file this block is (`# NAME` on its first line), if the repository has none."""
        first = self.text.split("\n", 1)[0]
        match = FILE_NAME.fullmatch(first.strip())
        if match and not (ROOT / match.group("name")).exists():
            return match.group("name")
        return None


def blocks(page: Path) -> list[Block]:
    found: list[Block] = []
    lines = page.read_text().splitlines()
    index = 0
    while index < len(lines):
        opening = re.match(r"^(`{3,})\s*([\w-]*)", lines[index])
        if not opening:
            index += 1
            continue
        fence, language, start = opening.group(1), opening.group(2), index
        index += 1
        body: list[str] = []
        while index < len(lines) and lines[index].strip() != fence:
            body.append(lines[index])
            index += 1
        index += 1
        before = next((line for line in reversed(lines[:start]) if line.strip()), "")
        marker = NOT_RUN.search(before)
        found.append(
            Block(
                page,
                start + 1,
                language,
                "\n".join(body) + "\n",
                marker.group("reason") if marker else None,
            )
        )
    return found


def console_commands(text: str) -> list[str]:
    """The `$ ` commands of a console block (a trailing backslash continues one)."""
    commands: list[str] = []
    continued = False
    for line in text.splitlines():
        if continued:
            commands[-1] += "\n" + line
        elif line.startswith("$ "):
            commands.append(line[2:])
        else:
            continue
        continued = line.endswith("\\")
    return commands


RUNNABLE = {"console", "bash", "sh", "shell", "python"}


@pytest.mark.parametrize("page", RUN_AS_WRITTEN, ids=lambda p: p.name)
def test_every_block_a_test_does_not_run_says_why(page: Path) -> None:
    found = blocks(page)
    runnable = [b for b in found if b.language in RUNNABLE and b.not_run is None]
    skipped = [b for b in found if b.not_run is not None]

    assert runnable, f"{page.name}: no command or code block runs"
    for block in skipped:
        assert len(block.not_run or "") > 10, f"{block.where}: say why it is not run"
        assert block.language in RUNNABLE, f"{block.where}: only commands and code are run"


@pytest.fixture
def settings(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The suite's settings with the example tools the pages' pipelines use (offline model)."""
    monkeypatch.setenv(
        "STEPFLOW_TOOL_MODULES", ",".join([*settings.tool_modules, "examples.tools"])
    )
    return Settings()


PYTHON_RUNNER = (
    "import ast, asyncio, sys\n"
    "source = open(sys.argv[1]).read()\n"
    "code = compile(source, sys.argv[1], 'exec', flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)\n"
    "result = eval(code, {'__name__': '__main__'})\n"
    "if asyncio.iscoroutine(result):\n"
    "    asyncio.run(result)\n"
)
"""Runs a page's Python block as written: top-level `await`, as in `python -m asyncio`."""


def project_copy(directory: Path) -> Path:
    """A project directory as a clone has it, for commands that write files of their own.

    The examples are linked, and pyproject.toml copied for its `[tool.stepflow]` table (the
    examples' tools, importable from here), so `.stepflow/` and every file a page writes land
    here, never in the repository.
    """
    directory.mkdir()
    (directory / "examples").symlink_to(ROOT / "examples")
    (directory / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    return directory


async def run_block(block: Block, env: dict[str, str], cwd: Path) -> list[str]:
    """Run one block in `cwd`; the failures, each with its command and what it printed."""
    if block.language == "python":
        script = cwd / f"block_{block.line}.py"
        script.write_text(block.text)
        runs = [[sys.executable, "-c", PYTHON_RUNNER, str(script)]]
        shown = [block.text]
    else:
        commands = console_commands(block.text) if block.language == "console" else [block.text]
        runs = [["bash", "-c", "set -euo pipefail\n" + command] for command in commands]
        shown = commands
    failures = []
    for argv, text in zip(runs, shown, strict=True):
        process = await asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
        except TimeoutError:  # a command that waits for ever (watch, a run nobody approves)
            process.kill()
            await process.wait()
            failures.append(f"{block.where}: still running after 60 s\n{text}")
            continue
        if process.returncode != 0:
            failures.append(
                f"{block.where}: exit {process.returncode}\n{text}\n"
                f"stdout:\n{stdout.decode()}\nstderr:\n{stderr.decode()}"
            )
    return failures


@pytest.mark.deadline(300)
@pytest.mark.parametrize("page", RUN_AS_WRITTEN, ids=lambda p: p.name)
async def test_commands_run_as_written(
    page: Path,
    worker: None,
    temporal_env: WorkflowEnvironment,
    task_queue: str,
    tmp_path: Path,
) -> None:
    """Each command and code block, in page order, against the test server and a worker.

    The pages say "after `make demo`": a dev server and a worker with the examples' tools.
    Here those are the suite's server and a worker on this test's task queue.
    """
    cwd = project_copy(tmp_path / "project")
    env = process_env(
        temporal_env.client.service_client.config.target_host,
        STEPFLOW_TASK_QUEUE=task_queue,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    failures: list[str] = []
    ran = 0
    for block in blocks(page):
        if block.not_run is not None:
            continue
        name = block.makes_file
        if name is not None:
            (cwd / name).parent.mkdir(parents=True, exist_ok=True)
            (cwd / name).write_text(block.text)
        elif block.language in RUNNABLE:
            failures += await run_block(block, env, cwd)
            ran += 1

    assert ran, f"{page.name}: nothing ran"
    assert not failures, "\n\n".join(failures)
