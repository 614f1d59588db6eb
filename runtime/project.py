"""A Stepflow project: one place for the settings that client and worker must share.

The `stepflow` command and the worker both read the project's settings from a
`stepflow.toml`, or the `[tool.stepflow]` table of a `pyproject.toml`, found by
walking up from the current directory as ruff and pytest do. Environment
variables (`STEPFLOW_*`) still override it. So the same command behaves the
same from any directory of the project, and `.stepflow/` (the dev server's
database, logs, payloads, workspace) belongs to the project, not to whichever
directory a command ran in.

Relative paths in the file are relative to the file's directory.
"""

from __future__ import annotations

import difflib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic_settings import SettingsError

CONFIG_FILE = "stepflow.toml"
PYPROJECT_FILE = "pyproject.toml"

PATH_SETTINGS = ("home", "workspace", "payload_dir")
"""Settings that are paths; `import_path` is a list of them."""

DEFAULT_HOME = ".stepflow"


class ProjectConfigError(SettingsError):
    """The project's configuration file cannot be used; the message names the file and key."""


@dataclass(frozen=True)
class Project:
    """Where the project is, and what its configuration file says."""

    root: Path
    config: Path | None
    values: dict[str, Any] = field(default_factory=dict)


def find_project(start: Path) -> Project | None:
    """The nearest project at or above `start`, or None when there is none.

    Raises:
        ProjectConfigError: the file found is not valid TOML.
    """
    for directory in (start, *start.parents):
        config = directory / CONFIG_FILE
        if config.is_file():
            return Project(directory, config, _read(config, ()))
        pyproject = directory / PYPROJECT_FILE
        if pyproject.is_file():
            values = _read(pyproject, ("tool", "stepflow"))
            if values is not None:
                return Project(directory, pyproject, values)
    return None


def _read(path: Path, table: tuple[str, ...]) -> Any:
    try:
        data: Any = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise ProjectConfigError(f"{path}: {err}") from None
    for key in table:
        data = data.get(key) if isinstance(data, dict) else None
    if table and data is None:
        return None  # a pyproject.toml without [tool.stepflow]: not a Stepflow project
    if not isinstance(data, dict):
        raise ProjectConfigError(f"{path}: [{'.'.join(table)}] must be a table")
    return data


def project_values(project: Project, known: list[str]) -> dict[str, Any]:
    """The file's settings, paths made absolute against the project's root.

    The dev server's state defaults to `<root>/.stepflow`, so every directory of the
    project shares one database, one worker, one payload store.

    Raises:
        ProjectConfigError: a key that names no setting (with a did-you-mean).
    """
    where = project.config or project.root
    values: dict[str, Any] = {}
    for key, value in project.values.items():
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ProjectConfigError(f"{where}: unknown setting {key!r}{hint}")
        values[key] = value
    for key in PATH_SETTINGS:
        if isinstance(values.get(key), str):
            values[key] = project.root / Path(values[key]).expanduser()
    if isinstance(values.get("import_path"), list):
        values["import_path"] = [
            str(project.root / Path(entry).expanduser()) if isinstance(entry, str) else entry
            for entry in values["import_path"]
        ]
    if isinstance(values.get("mcp_servers"), dict):  # a stdio server's `cwd`, as a path setting
        values["mcp_servers"] = {
            name: {**server, "cwd": str(project.root / Path(server["cwd"]).expanduser())}
            if isinstance(server, dict) and isinstance(server.get("cwd"), str)
            else server
            for name, server in values["mcp_servers"].items()
        }
    home = values.setdefault("home", project.root / DEFAULT_HOME)
    values.setdefault("workspace", Path(home) / "workspace")
    return values
