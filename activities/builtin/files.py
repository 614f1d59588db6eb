"""File tools confined to the workspace directory (`STEPFLOW_WORKSPACE`).

Every path a tool is given is relative to the workspace. `resolve_in_workspace`
is the single gate: it resolves `..` and symlinks (existing ones, and the parent
directories of files not yet written) and refuses anything that ends up outside
the workspace. The workspace is read from the settings at each call.

A symlink swapped in after that check cannot lead out either: the tools open
the resolved path one directory at a time from the workspace, never following
a symlink (`O_NOFOLLOW` on every component, `openat`), and refuse what changed
under them. They read and write regular files only (not FIFOs or devices),
never create links, and replace files by renaming a temporary file over them,
so a write never goes through an existing link. A hard link that someone with
shell access placed in the workspace is a file like any other: it cannot be
told apart, so keep the workspace to the worker's own user.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import os
import secrets
import stat
from collections.abc import Iterator
from functools import cache
from pathlib import Path, PurePath, PurePosixPath
from typing import Annotated, Any, BinaryIO, Literal

from pydantic import Field

from stepflow.activities.context import ToolError
from stepflow.activities.registry import get_tool, tool
from stepflow.runtime.settings import get_settings

_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # opening a FIFO must not wait for a writer
_NEW_FILE_MODE = 0o644
_NEW_DIR_MODE = 0o755
# Walking from the workspace with dir_fd needs openat(2) and friends (Linux, macOS, BSDs);
# os.replace takes dir_fd arguments wherever os.rename does.
_DIR_FD = {os.open, os.mkdir, os.stat, os.rename, os.unlink} <= os.supports_dir_fd
MAX_PATH_CHARS = 1024
"""Longest path a tool accepts (Linux allows 4096 bytes in all; a workspace needs far less)."""
_OPEN_FLAGS = {
    "rb": os.O_RDONLY,
    "wb": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
    "ab": os.O_WRONLY | os.O_CREAT | os.O_APPEND,
}
SMALL_REQUEST_BYTES = 64 * 1024
"""The request limit of tools whose arguments are a path or a pattern."""


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


class FileTooLarge(ToolError):
    """A file larger than `read_file` may return (its output limit)."""

    def __init__(self, path: str, size: int, limit: int) -> None:
        super().__init__(
            f"{path!r} is {size:,} bytes or more, over read_file's limit of {limit:,} "
            "(STEPFLOW_TOOL_MAX_OUTPUT_BYTES)",
            non_retryable=True,
        )
        self.size = size
        self.limit = limit


def _workspace() -> Path:
    return Path(get_settings().workspace).expanduser().resolve()


def resolve_in_workspace(path: str) -> Path:
    """The absolute, symlink-free location of `path` inside the workspace.

    `path` is relative to the workspace; it need not exist (the parent
    directories that do exist are resolved, symlinks included). Your own tools
    should pass every path they are given through here, and open the result
    without following symlinks (`os.O_NOFOLLOW`).

    Raises:
        PathOutsideWorkspace: `path` is absolute, or resolves outside the workspace.
        ToolError: `path` is empty, too long or not a valid path (non-retryable).
    """
    workspace = _workspace()
    if not path or not path.strip():
        raise ToolError(
            "the path is empty: give a path relative to the workspace", non_retryable=True
        )
    if "\0" in path:
        raise ToolError(f"path {path!r} contains a NUL character", non_retryable=True)
    if len(path) > MAX_PATH_CHARS:
        raise ToolError(
            f"the path is {len(path):,} characters long, over the limit of {MAX_PATH_CHARS:,}",
            non_retryable=True,
        )
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


@contextlib.contextmanager
def _parent(target: Path, path: str, *, create: bool) -> Iterator[tuple[int | None, str]]:
    """The directory holding `target` (resolved, inside the workspace), and its name in it.

    Opens each directory from the workspace down with `O_NOFOLLOW`, so a
    symlink swapped in since `resolve_in_workspace` is refused, not followed;
    `create` makes missing directories on the way. Yields `(dir_fd, name)` for
    the `dir_fd=` arguments of `os` functions (where those are not supported,
    `(None, absolute path)` after checking again by path).
    """
    workspace = _workspace()
    parts = target.relative_to(workspace).parts
    if not parts:
        raise ToolError(f"{path!r} is the workspace itself, not a file", non_retryable=True)
    if not _DIR_FD:
        if create:
            target.parent.mkdir(parents=True, exist_ok=True)
        if resolve_in_workspace(path) != target:
            raise PathOutsideWorkspace(path, workspace)
        yield None, str(target)
        return
    if create:
        workspace.mkdir(parents=True, exist_ok=True)
    fd = os.open(workspace, os.O_RDONLY | _O_DIRECTORY)
    try:
        for part in parts[:-1]:
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, _NEW_DIR_MODE, dir_fd=fd)
            try:
                child = os.open(part, os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW, dir_fd=fd)
            except OSError as err:
                # A symlink here was swapped in after the check (Linux says ENOTDIR, others ELOOP).
                if err.errno in (errno.ELOOP, errno.ENOTDIR) and _is_symlink(part, fd):
                    raise PathOutsideWorkspace(path, workspace) from None
                raise
            os.close(fd)
            fd = child
        yield fd, parts[-1]
    finally:
        os.close(fd)


def _is_symlink(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _open_regular(dir_fd: int | None, name: str, flags: int, path: str) -> int:
    """Open a regular file without following a symlink; refuse FIFOs, devices, directories."""
    try:
        fd = os.open(name, flags | _O_NOFOLLOW | _O_NONBLOCK, _NEW_FILE_MODE, dir_fd=dir_fd)
    except OSError as err:
        if err.errno == errno.ELOOP:  # the last component became a symlink
            raise PathOutsideWorkspace(path, _workspace()) from None
        if err.errno == errno.EISDIR:
            raise ToolError(f"{path!r} is a directory, not a file", non_retryable=True) from None
        raise
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        if stat.S_ISDIR(mode):
            raise ToolError(f"{path!r} is a directory, not a file", non_retryable=True)
        raise ToolError(
            f"{path!r} is not a regular file (a FIFO, a socket or a device): the file tools "
            "read and write regular files only",
            non_retryable=True,
        )
    if _O_NONBLOCK:
        os.set_blocking(fd, True)
    return fd


def open_in_workspace(path: str, mode: Literal["rb", "wb", "ab"] = "rb") -> BinaryIO:
    """Open a workspace file as the built-in tools do: for your own tools.

    The path is checked like `resolve_in_workspace` does, then opened without
    following any symlink (a link swapped in meanwhile is refused), and only if
    it is a regular file. `wb` truncates the file (not atomic: write to a new
    name and rename for that), `wb` and `ab` create it and its directories.

    Raises:
        PathOutsideWorkspace: the path leads out of the workspace, now or by the open.
        FileNotFoundInWorkspace: `rb` of a file that does not exist.
        ToolError: a directory, a FIFO or a device, or the open failed (non-retryable).
    """
    flags = _OPEN_FLAGS.get(mode)
    if flags is None:
        raise ValueError(f"mode must be rb, wb or ab, not {mode!r}")
    target = resolve_in_workspace(path)
    try:
        with _parent(target, path, create=mode != "rb") as (dir_fd, name):
            fd = _open_regular(dir_fd, name, flags, path)
    except (FileNotFoundError, NotADirectoryError):
        raise FileNotFoundInWorkspace(path, _workspace()) from None
    except OSError as err:
        message = f"cannot open {path!r}: {err.strerror or err}"
        raise ToolError(message, non_retryable=True) from None
    return os.fdopen(fd, mode)


def _read_limit() -> int:
    definition = get_tool("read_file")
    settings = get_settings()
    return definition.output_limit(settings) if definition else settings.tool_max_output_bytes


@tool(max_request_bytes=SMALL_REQUEST_BYTES)
def read_file(
    path: Annotated[str, Field(description="File path relative to the workspace.")],
) -> str:
    """Read a UTF-8 text file from the workspace and return its content.

    Args:
        path: File path relative to the workspace, e.g. `notes/summary.md`.

    Returns:
        The file's text.
    """
    limit = _read_limit()
    with open_in_workspace(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size > limit:  # refused before reading it into memory
            raise FileTooLarge(path, size, limit)
        data = handle.read(limit + 1)  # it may have grown since
    if len(data) > limit:
        raise FileTooLarge(path, len(data), limit)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ToolError(
            f"{path!r} is not UTF-8 text (byte {err.start}): read_file reads text files only",
            non_retryable=True,
        ) from None


def _write_atomically(dir_fd: int | None, name: str, data: bytes, path: str) -> None:
    """Write to a temporary file next to `name`, then rename it over `name`.

    The rename replaces whatever `name` is, a symlink included, so nothing is
    written through a link.
    """
    try:
        existing = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        mode = _NEW_FILE_MODE
    else:
        if stat.S_ISDIR(existing.st_mode):
            raise ToolError(f"{path!r} is a directory, not a file", non_retryable=True)
        mode = stat.S_IMODE(existing.st_mode) if stat.S_ISREG(existing.st_mode) else _NEW_FILE_MODE
    directory, base = os.path.split(name)  # directory: only without dir_fd
    tmp = os.path.join(directory, f".{base}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW, 0o600, dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
            os.fchmod(handle.fileno(), mode)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
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
    target = resolve_in_workspace(path)
    if target == _workspace() or target.is_dir():
        raise ToolError(f"{path!r} is a directory, not a file", non_retryable=True)
    data = content.encode("utf-8")
    try:
        with _parent(target, path, create=True) as (dir_fd, name):
            if append:
                fd = _open_regular(dir_fd, name, os.O_WRONLY | os.O_APPEND | os.O_CREAT, path)
                with os.fdopen(fd, "ab") as handle:
                    handle.write(data)
            else:
                _write_atomically(dir_fd, name, data, path)
    except ToolError:
        raise
    except OSError as err:
        raise ToolError(
            f"cannot write {path!r}: {err.strerror or err}", non_retryable=True
        ) from None
    return {"path": _relative(target), "bytes": len(data)}


def _pattern_parts(pattern: str, workspace: Path) -> tuple[str, ...]:
    if not pattern:
        raise ToolError("the pattern is empty", non_retryable=True)
    if "\0" in pattern or len(pattern) > MAX_PATH_CHARS:
        raise ToolError(f"invalid pattern {pattern[:100]!r}", non_retryable=True)
    if (
        Path(pattern).is_absolute()
        or pattern.startswith(("/", "\\"))
        or ".." in PurePath(pattern).parts
    ):
        raise PathOutsideWorkspace(pattern, workspace)
    return PurePosixPath(pattern).parts


def _matches(parts: tuple[str, ...], pattern: tuple[str, ...]) -> bool:
    """Glob matching of path parts: `*`, `?` and `[...]` within a part, `**` any parts."""

    @cache
    def match(i: int, j: int) -> bool:
        if j == len(pattern):
            return i == len(parts)
        if pattern[j] == "**":
            return any(match(k, j + 1) for k in range(i, len(parts) + 1))
        return i < len(parts) and fnmatch.fnmatchcase(parts[i], pattern[j]) and match(i + 1, j + 1)

    return match(0, 0)


@tool(max_request_bytes=SMALL_REQUEST_BYTES)
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
        Symlinked directories are not entered; symlinked files are listed when
        they lead to a file inside the workspace.
    """
    workspace = _workspace()
    wanted = _pattern_parts(pattern, workspace)
    if not workspace.is_dir():
        return []
    found: list[str] = []
    anywhere = wanted.index("**") if "**" in wanted else len(wanted)  # parts before: fixed
    # followlinks=False: a symlinked directory is never walked, wherever it points.
    for directory, dirnames, filenames in os.walk(workspace, followlinks=False):
        base = PurePosixPath(Path(directory).relative_to(workspace).as_posix())
        depth = len(base.parts)
        # Enter only directories the pattern can match below (`*.md`: none at all).
        if anywhere == len(wanted) and depth + 1 >= len(wanted):
            dirnames[:] = []
        elif depth < anywhere:
            dirnames[:] = [d for d in dirnames if fnmatch.fnmatchcase(d, wanted[depth])]
        for filename in filenames:
            relative = (base / filename).parts if base.parts else (filename,)
            if not _matches(relative, wanted):
                continue
            entry = Path(directory) / filename
            if entry.is_symlink():
                try:
                    resolved = entry.resolve(strict=True)
                except (OSError, RuntimeError):  # dangling symlinks, loops
                    continue
                if not (resolved.is_relative_to(workspace) and resolved.is_file()):
                    continue
            elif not entry.is_file():  # FIFOs, sockets, devices
                continue
            found.append("/".join(relative))
    return sorted(found)
