"""File tools confined to the workspace directory (`STEPFLOW_WORKSPACE`).

Every path a tool is given is relative to the workspace. `resolve_in_workspace`
is the single gate: it resolves `..` and symlinks (existing ones, and the parent
directories of files not yet written) and refuses anything that ends up outside
the workspace. The workspace is read from the settings at each call.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path, PurePath
from typing import Annotated, Any

from pydantic import Field

from activities.context import ToolError
from activities.registry import tool
from runtime.settings import get_settings

# Refuse to open the final path component if it became a symlink after the check.
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NEW_FILE_MODE = 0o644


class PathOutsideWorkspace(ToolError):
    """A path that is absolute, or that leads (via `..` or a symlink) out of the workspace."""

    def __init__(self, path: str, workspace: Path) -> None:
        super().__init__(
            f"path {path!r} is outside the workspace {str(workspace)!r}: use a path relative "
            "to the workspace that stays inside it",
            non_retryable=True,
        )
        self.path = path
        self.workspace = workspace


class FileNotFoundInWorkspace(ToolError):
    """A file to read that does not exist in the workspace."""

    def __init__(self, path: str, workspace: Path) -> None:
        super().__init__(
            f"no file {path!r} in the workspace {str(workspace)!r}", non_retryable=True
        )
        self.path = path
        self.workspace = workspace


def _workspace() -> Path:
    return Path(get_settings().workspace).expanduser().resolve()


def resolve_in_workspace(path: str) -> Path:
    """The absolute, symlink-free location of `path` inside the workspace.

    `path` is relative to the workspace; it need not exist (the parent
    directories that do exist are resolved, symlinks included).

    Raises:
        PathOutsideWorkspace: `path` is absolute, or resolves outside the workspace.
        ToolError: `path` is empty or not a valid path (non-retryable).
    """
    workspace = _workspace()
    if not path or not path.strip():
        raise ToolError(
            "the path is empty: give a path relative to the workspace", non_retryable=True
        )
    if "\0" in path:
        raise ToolError(f"path {path!r} contains a NUL character", non_retryable=True)
    if Path(path).is_absolute() or path.startswith(("/", "\\")):
        raise PathOutsideWorkspace(path, workspace)
    try:
        resolved = (workspace / path).resolve(strict=False)
    except (OSError, RuntimeError) as err:  # symlink loops, unreadable components
        raise ToolError(f"cannot resolve path {path!r}: {err}", non_retryable=True) from None
    if not resolved.is_relative_to(workspace):
        raise PathOutsideWorkspace(path, workspace)
    return resolved


def _relative(resolved: Path) -> str:
    return resolved.relative_to(_workspace()).as_posix()


@tool
def read_file(
    path: Annotated[str, Field(description="File path relative to the workspace.")],
) -> str:
    """Read a UTF-8 text file from the workspace and return its content.

    Args:
        path: File path relative to the workspace, e.g. `notes/summary.md`.

    Returns:
        The file's text.
    """
    target = resolve_in_workspace(path)
    if target.is_dir():
        raise ToolError(f"{path!r} is a directory, not a file", non_retryable=True)
    try:
        fd = os.open(target, os.O_RDONLY | _O_NOFOLLOW)
    except FileNotFoundError:
        raise FileNotFoundInWorkspace(path, _workspace()) from None
    except OSError as err:
        raise ToolError(
            f"cannot read {path!r}: {err.strerror or err}", non_retryable=True
        ) from None
    with os.fdopen(fd, "rb") as handle:
        data = handle.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ToolError(
            f"{path!r} is not UTF-8 text (byte {err.start}): read_file reads text files only",
            non_retryable=True,
        ) from None


def _write_atomically(target: Path, data: bytes) -> None:
    """Write to a temporary file next to `target`, then rename it over `target`."""
    try:
        mode = stat.S_IMODE(target.stat().st_mode)
    except FileNotFoundError:
        mode = _NEW_FILE_MODE
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, mode)
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise


@tool
def write_file(
    path: Annotated[str, Field(description="File path relative to the workspace.")],
    content: Annotated[str, Field(description="The text to write (UTF-8).")],
    append: Annotated[
        bool, Field(description="Add to the end of the file instead of replacing it.")
    ] = False,
) -> dict[str, Any]:
    """Write a UTF-8 text file in the workspace, creating parent directories as needed.

    Replaces the file atomically (readers see the old or the new content, never
    a mix) unless `append` is true, which adds to the end of the file.

    Args:
        path: File path relative to the workspace, e.g. `reports/today.md`.
        content: The text to write.
        append: Add `content` to the end of the file (created if missing) instead
            of replacing the file.

    Returns:
        `{"path": <path relative to the workspace>, "bytes": <bytes written>}`.
    """
    workspace = _workspace()
    workspace.mkdir(parents=True, exist_ok=True)
    target = resolve_in_workspace(path)
    if target == workspace or target.is_dir():
        raise ToolError(f"{path!r} is a directory, not a file", non_retryable=True)
    data = content.encode("utf-8")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # Directories just created cannot be symlinks, but check again in case one raced in.
        if resolve_in_workspace(path) != target:
            raise PathOutsideWorkspace(path, workspace)
        if append:
            fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _O_NOFOLLOW, 0o644)
            with os.fdopen(fd, "ab") as handle:
                handle.write(data)
        else:
            _write_atomically(target, data)
    except ToolError:
        raise
    except OSError as err:
        raise ToolError(
            f"cannot write {path!r}: {err.strerror or err}", non_retryable=True
        ) from None
    return {"path": _relative(target), "bytes": len(data)}


@tool
def list_files(
    pattern: Annotated[
        str, Field(description="Glob pattern relative to the workspace, e.g. `**/*.md`.")
    ] = "**/*",
) -> list[str]:
    """List the files in the workspace that match a glob pattern.

    Args:
        pattern: Glob pattern relative to the workspace: `*` matches within one
            directory, `**` any number of directories. The default lists every file.

    Returns:
        Paths relative to the workspace (files only, `/`-separated), sorted.
    """
    workspace = _workspace()
    if not pattern:
        raise ToolError("the pattern is empty", non_retryable=True)
    if (
        Path(pattern).is_absolute()
        or pattern.startswith(("/", "\\"))
        or ".." in PurePath(pattern).parts
    ):
        raise PathOutsideWorkspace(pattern, workspace)
    if not workspace.is_dir():
        return []
    try:
        matches = list(workspace.glob(pattern))
    except (ValueError, NotImplementedError) as err:
        raise ToolError(f"invalid pattern {pattern!r}: {err}", non_retryable=True) from None
    found: set[str] = set()
    for match in matches:
        try:
            resolved = match.resolve(strict=True)
        except (OSError, RuntimeError):  # dangling symlinks, loops
            continue
        if resolved.is_relative_to(workspace) and resolved.is_file():
            found.add(match.relative_to(workspace).as_posix())
    return sorted(found)
