"""The tool registry: `@tool` turns a typed Python function into a tool.

A tool's argument schema comes from its type hints (a pydantic model built
from the signature), its description from its docstring. Each registered tool
becomes its own Temporal activity type (see `activities.tool_activities`).
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, get_type_hints, overload

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from stepflow.workflows.templates import is_templated

if TYPE_CHECKING:
    from stepflow.runtime.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])

TOOL_NAME_PATTERN = r"^[a-z][a-z0-9_]*$"


class ToolRegistrationError(ValueError):
    """A function that cannot be a tool (bad name, duplicate name, *args, a bad limit)."""


@dataclass(frozen=True)
class ToolDefinition:
    """A registered tool."""

    name: str
    description: str
    fn: Callable[..., Any]
    args_model: type[BaseModel]
    is_async: bool
    max_request_bytes: int | None = None
    """Largest arguments, as JSON, a call may carry; None: STEPFLOW_TOOL_MAX_REQUEST_BYTES."""
    max_output_bytes: int | None = None
    """Largest result, as JSON, a call may return; None: STEPFLOW_TOOL_MAX_OUTPUT_BYTES."""
    version: str | None = None
    """Part of a cached result's key: a new version never takes an older one's results."""

    def request_limit(self, settings: Settings) -> int:
        """The largest arguments (bytes of JSON) this tool accepts."""
        return self.max_request_bytes or settings.tool_max_request_bytes

    def output_limit(self, settings: Settings) -> int:
        """The largest result (bytes of JSON) this tool may return."""
        return self.max_output_bytes or settings.tool_max_output_bytes

    def json_schema(self) -> dict[str, Any]:
        """The JSON schema of the arguments (what a model is shown, too)."""
        return self.args_model.model_json_schema()

    def validate_args(self, args: dict[str, Any]) -> dict[str, Any]:
        """Validated keyword arguments for the function.

        Raises:
            pydantic.ValidationError: arguments that fail the schema (unknown ones too).
        """
        model = self.args_model.model_validate(args)
        return {name: getattr(model, name) for name in type(model).model_fields}

    def check_static_args(self, args: dict[str, Any]) -> list[tuple[str, str]]:
        """Schema errors of arguments written in a pipeline file, as (field, message).

        Values holding `{{ ... }}` are known only at run time, so errors about
        them are left for the activity to find.
        """
        try:
            self.args_model.model_validate(args)
        except ValidationError as err:
            problems = []
            for error in err.errors():
                loc = [str(part) for part in error["loc"]]
                if loc and loc[0] in args and is_templated(args[loc[0]]):
                    continue
                problems.append((".".join(loc) or "args", error["msg"]))
            return problems
        return []


_REGISTRY: dict[str, ToolDefinition] = {}


class ToolSource(Protocol):
    """Tools that are not Python functions: those of MCP servers (`activities.mcp`).

    Their names hold a dot (`files.read`), so they never collide with a `@tool`.
    """

    def find(self, name: str) -> ToolDefinition | None:
        """The tool of this name as last listed, without I/O; None if unknown here."""
        ...

    async def prepare(self, names: Sequence[str]) -> None:
        """Make `find` current for `names` (connect, list again after a change)."""
        ...


_SOURCES: list[ToolSource] = []
"""Live sources first (newest first), then fallbacks."""


def add_tool_source(source: ToolSource, *, fallback: bool = False) -> None:
    """Let `get_tool` find the tools of `source`: a worker's MCP servers, asked first, or
    (`fallback`) the tools a command read from them once, asked after every live source."""
    if source in _SOURCES:
        return
    if fallback:
        _SOURCES.append(source)
    else:
        _SOURCES.insert(0, source)


def remove_tool_source(source: ToolSource) -> None:
    if source in _SOURCES:
        _SOURCES.remove(source)


async def prepare_tools(names: Sequence[str]) -> None:
    """Before `get_tool` is asked for `names`: let each source bring them up to date.

    Raises:
        Exception: what a source raises when it cannot (a server that cannot be reached).
    """
    if any("." in name for name in names):  # Python tools need nothing
        for source in list(_SOURCES):
            await source.prepare(names)


def model_tool_name(name: str) -> str:
    """The name a model is shown: function names allow no dot (`files.read` -> `files__read`)."""
    return name.replace(".", "__")


def tool_from_model_name(name: str, allowed: Sequence[str]) -> str:
    """The tool of `allowed` a model meant by `name` (`files__read` -> `files.read`), or `name`."""
    if name in allowed:
        return name
    for candidate in allowed:
        if model_tool_name(candidate) == name:
            return candidate
    return name


def _args_model(name: str, fn: Callable[..., Any]) -> type[BaseModel]:
    hints = get_type_hints(fn, include_extras=True)
    fields: dict[str, Any] = {}
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise ToolRegistrationError(f"tool {name!r}: *args and **kwargs cannot be described")
        annotation = hints.get(param.name, Any)
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[param.name] = (annotation, default)
    model: type[BaseModel] = create_model(
        f"{name}_args", __config__=ConfigDict(extra="forbid"), **fields
    )
    return model


@overload
def tool(fn: F, /) -> F: ...
@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    max_request_bytes: int | None = None,
    max_output_bytes: int | None = None,
    version: str | None = None,
) -> Callable[[F], F]: ...


def tool(
    fn: F | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    max_request_bytes: int | None = None,
    max_output_bytes: int | None = None,
    version: str | None = None,
) -> F | Callable[[F], F]:
    """Register a function as a tool. Use as `@tool` or `@tool(name=..., description=...)`.

    The function stays callable as before. Sync functions run in the worker's
    thread pool, async ones on its event loop.

    Args:
        name: The tool's name (default: the function's); its activity is `tool_<name>`.
        description: What a model is told the tool does (default: the docstring).
        max_request_bytes: The largest arguments, measured as JSON, a call may carry;
            a larger call fails at once (`ToolRequestTooLarge`) without running the
            tool. Default: STEPFLOW_TOOL_MAX_REQUEST_BYTES.
        max_output_bytes: The largest result, measured as JSON, a call may return; a
            larger one fails the call (`ToolOutputTooLarge`, not retried). Default:
            STEPFLOW_TOOL_MAX_OUTPUT_BYTES.
        version: Change it when the tool's results change: steps with `cache:` then
            never take results an earlier version computed.
    """
    for label, limit in (
        ("max_request_bytes", max_request_bytes),
        ("max_output_bytes", max_output_bytes),
    ):
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or limit < 1
        ):
            raise ToolRegistrationError(
                f"{label} must be a positive number of bytes, not {limit!r}"
            )

    def register(func: F) -> F:
        tool_name = name or func.__name__
        if not re.match(TOOL_NAME_PATTERN, tool_name):
            raise ToolRegistrationError(
                f"tool name {tool_name!r} must be lowercase snake_case (it names an activity type)"
            )
        existing = _REGISTRY.get(tool_name)
        if existing is not None and existing.fn is not func:
            same_place = (existing.fn.__module__, existing.fn.__qualname__) == (
                func.__module__,
                func.__qualname__,
            )
            if not same_place:  # re-importing a module is fine; two tools of one name are not
                raise ToolRegistrationError(
                    f"tool {tool_name!r} is registered twice: by {existing.fn.__module__} "
                    f"and by {func.__module__}"
                )
        doc = description or inspect.getdoc(func) or ""
        _REGISTRY[tool_name] = ToolDefinition(
            name=tool_name,
            description=doc.strip(),
            fn=func,
            args_model=_args_model(tool_name, func),
            is_async=inspect.iscoroutinefunction(func),
            max_request_bytes=max_request_bytes,
            max_output_bytes=max_output_bytes,
            version=version,
        )
        return func

    if fn is not None:
        return register(fn)
    return register


def get_tool(name: str) -> ToolDefinition | None:
    """A `@tool`, else a tool a source (MCP server) has listed; None if neither knows it."""
    found = _REGISTRY.get(name)
    if found is None and "." in name:
        for source in _SOURCES:
            found = source.find(name)
            if found is not None:
                break
    return found


def all_tools() -> list[ToolDefinition]:
    """Every `@tool` (Python function) registered, sorted by name; not the MCP servers' tools."""
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


def load_tool_modules(
    modules: Iterable[str] = (), import_path: Iterable[str] | None = None
) -> list[ToolDefinition]:
    """Import the built-in tools and the given modules (which register theirs on import).

    Tool modules are code the worker runs, so they come only from where the
    environment says: installed packages, PYTHONPATH, and the directories of
    STEPFLOW_IMPORT_PATH. The current directory is not among them unless
    configured (`STEPFLOW_IMPORT_PATH=.`), also when Python itself put it first
    on sys.path (`python -m stepflow.worker`).

    Args:
        modules: Module names, as STEPFLOW_TOOL_MODULES lists them.
        import_path: Directories to import them from, searched first, relative ones
            against the current directory; None: STEPFLOW_IMPORT_PATH.

    Raises:
        ImportError: a module that cannot be imported, with the name as written and
            how to make it importable.
    """
    importlib.import_module("stepflow.activities.builtin")
    if import_path is None:
        from stepflow.runtime.settings import get_settings

        import_path = get_settings().import_path
    _drop_implicit_working_directory()
    for directory in reversed([os.path.abspath(entry) for entry in import_path]):
        if directory not in sys.path:
            sys.path.insert(0, directory)
    for module in modules:
        module = module.strip()
        if not module:
            continue
        try:
            importlib.import_module(module)
        except ImportError as err:
            message = f"cannot import tool module {module!r} (from STEPFLOW_TOOL_MODULES): {err}"
            missing = err.name if isinstance(err, ModuleNotFoundError) else None
            if missing and (module == missing or module.startswith(f"{missing}.")):
                top = module.split(".")[0]
                message += (
                    f". Install it, or add the directory that holds {top!r} to "
                    "STEPFLOW_IMPORT_PATH (`STEPFLOW_IMPORT_PATH=.` for the current directory)"
                )
            raise ImportError(message) from err
    return all_tools()


def _drop_implicit_working_directory() -> None:
    """Take out the current directory that `python -m stepflow...` put first on sys.path.

    Python does that for any `-m` module, so without this a worker started that way
    (as `stepflow dev start` does) would import tools from wherever it was started,
    while the `stepflow` command, whose sys.path starts at the venv's bin directory,
    would not. Only Stepflow's own entry points are touched: a test runner or a
    user's script started with `-m` keeps its sys.path as it is.
    """
    global _implicit_entry_checked
    if _implicit_entry_checked:  # once: sys.path[0] may be a PYTHONPATH entry by now
        return
    _implicit_entry_checked = True
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is None or not spec.name.startswith("stepflow."):
        return
    if sys.path and sys.path[0] in ("", os.getcwd()):
        del sys.path[0]


_implicit_entry_checked = False
