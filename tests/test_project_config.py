"""One place for a project's settings: client and worker read the same file from any directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stepflow.client.cli import main
from stepflow.runtime.settings import Settings, get_settings
from tests.support.processes import ROOT, process_env, stepflow_cli


@pytest.fixture
def no_stepflow_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The file alone decides (the suite's fixtures set some STEPFLOW_* variables)."""
    for name in ("STEPFLOW_TOOL_MODULES", "STEPFLOW_TASK_QUEUE", "STEPFLOW_WORKSPACE"):
        monkeypatch.delenv(name, raising=False)


def project(tmp_path: Path, file: str, text: str) -> Path:
    root = tmp_path / "project"
    (root / "deep" / "down").mkdir(parents=True)
    (root / file).write_text(text)
    return root


@pytest.mark.usefixtures("no_stepflow_env")
def test_a_stepflow_toml_holds_for_every_directory_below_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = project(
        tmp_path,
        "stepflow.toml",
        'task_queue = "projq"\ntool_modules = ["mytools"]\nimport_path = [".", "lib"]\n'
        'workspace = "data"\n',
    )
    monkeypatch.chdir(root / "deep" / "down")

    settings = Settings()

    assert (settings.task_queue, settings.tool_modules) == ("projq", ["mytools"])
    # Relative paths are the project's, not the current directory's.
    assert settings.home == root / ".stepflow"
    assert settings.workspace == root / "data"
    assert settings.import_path == [str(root / "."), str(root / "lib")]
    assert get_settings().home == root / ".stepflow"  # the cached settings follow the cwd

    monkeypatch.setenv("STEPFLOW_TASK_QUEUE", "from-env")
    assert Settings().task_queue == "from-env"  # the environment still overrides


@pytest.mark.usefixtures("no_stepflow_env")
def test_pyproject_tool_stepflow_is_a_project_and_other_pyprojects_are_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = project(tmp_path, "pyproject.toml", '[tool.stepflow]\ntask_queue = "pyq"\n')
    # A package of its own below the project, with a pyproject.toml that says nothing of us.
    (root / "deep" / "pyproject.toml").write_text('[project]\nname = "inner"\n')
    monkeypatch.chdir(root / "deep" / "down")

    assert Settings().task_queue == "pyq"
    assert Settings().home == root / ".stepflow"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('tool_module = ["x"]\n', "unknown setting 'tool_module' (did you mean 'tool_modules'?)"),
        ("task_queue = \n", "stepflow.toml: "),
        ('task_queue = ""\nmax_concurrent_workflow_tasks = 1\n', "STEPFLOW_MAX_CONCURRENT"),
    ],
)
async def test_a_bad_project_file_is_one_line_naming_it(
    tmp_path: Path, text: str, expected: str
) -> None:
    root = project(tmp_path, "stepflow.toml", text)
    env = process_env("127.0.0.1:1")
    done = await stepflow_cli(env, "tools", cwd=root / "deep")
    assert done.code == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stepflow: invalid settings: "), lines
    assert expected in lines[0], lines[0]


@pytest.mark.usefixtures("no_stepflow_env")
def test_the_examples_validate_from_any_directory_of_the_checkout(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("STEPFLOW_IMPORT_PATH", raising=False)
    monkeypatch.chdir(ROOT / "examples" / "notes")
    assert main(["validate", "--json", "../research_report.yaml"]) == 0
    assert json.loads(capsys.readouterr().out)["valid"] is True
